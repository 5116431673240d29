"""Routing trace files: read routing decisions recorded per (step, layer) by runs elsewhere, streaming.

Two formats:
- moe-scope Parquet (`TraceWriter`, the page's "Trace (Parquet)" download): one row per (token, expert)
  with columns step, layer, token, expert, router_logit, prob, routed, served, gate, contribution.
  One Parquet row group per (step, layer); a file without step/layer columns is step 0, layer 0.
- Megatron-LM JSONL (`--moe-routing-trace-path`, megatron/core/transformer/moe/router_trace.py): one
  file per rank, one line per router call: {"step", "stage", "block", "layer", "rank", "num_tokens",
  "topk", "top_indices": [[...], ...]} (+ "mtp_idx" for MTP layers; + logit_offset/logit_bytes/
  logit_shape when the bfloat16 logits sidecar logits_rank{rank}.bin was written next to it).
  Several lines may share a (step, layer) (micro-batches); the reader yields them one by one.

Readers are generators of `RoutingRecord`: memory is bounded by one record, never by the file, and a
record by the caps of `moe.traces.records.TraceLimits` (from the memory budget), checked before reading.
Only regular files are opened; the sidecar only inside the trace's own directory. Every problem is a
ValueError naming the line (or step and layer) and the fix, echoing no string from the file.
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Iterator

import numpy as np

from moe.memory import BUDGET_ENV, describe_bytes
from moe.roots import LinksOutside, open_inside
from moe.traces.log import check_distinct
from moe.traces.parquet import iter_parquet
from moe.traces.records import (
    INT64_MAX,
    MAX_EXPERTS,
    Progress,
    RoutingRecord,
    TraceLimits,
    as_int,
    check_experts,
    open_regular,
    shown,
)

MEGATRON_FIELDS = ("step", "layer", "num_tokens", "topk", "top_indices")
LOGIT_FIELDS = ("logit_offset", "logit_bytes", "logit_shape")


def layer_label(block: str, layer: int, mtp_idx: int | None = None) -> str:
    """Megatron keys layers by (block, mtp_idx, layer): decoder layers keep their number."""
    return str(layer) if block != "mtp" else f"mtp{mtp_idx}.{layer}"


def detect_format(path: str) -> str:
    """'parquet' (magic bytes PAR1) or 'megatron' (JSON lines); ValueError otherwise (also for a non-regular file)."""
    with open_regular(path) as f:
        head = f.read(4)
    if head == b"PAR1":
        return "parquet"
    if head[:1] == b"{":
        return "megatron"
    raise ValueError(f"trace file {path!r} is neither Parquet (moe-scope download) nor JSON lines (Megatron-LM "
                     f"--moe-routing-trace-path); give one of those")


def iter_records(path: str, progress: Progress | None = None, limits: TraceLimits | None = None
                 ) -> Iterator[RoutingRecord]:
    """The records of either format, in file order."""
    limits = limits or TraceLimits.from_env()
    if detect_format(path) == "parquet":
        return iter_parquet(path, progress, limits)
    return iter_megatron(path, progress, limits)


# --- Megatron-LM JSONL -------------------------------------------------------------------------

def iter_megatron(path: str, progress: Progress | None = None, limits: TraceLimits | None = None
                  ) -> Iterator[RoutingRecord]:
    """One record per line, each line read with a cap on its bytes; logits from the sidecar when present."""
    limits = limits or TraceLimits.from_env()
    sidecar = _Sidecar(path)
    with open_regular(path) as f:
        size, done, n = max(os.fstat(f.fileno()).st_size, 1), 0, 0
        try:
            while line := f.readline(limits.line_bytes + 1):  # never more than the cap in memory
                n, done = n + 1, done + len(line)
                if len(line) > limits.line_bytes:
                    raise ValueError(f"{path!r} line {n} is longer than {describe_bytes(limits.line_bytes)}, what "
                                     f"one line may take under the memory budget; split the record or raise "
                                     f"{BUDGET_ENV}")
                if not line.strip():
                    continue
                rec = _json_line(line, n, path, last=not line.endswith(b"\n"))
                yield _megatron_record(rec, f"line {n}", sidecar, limits)
                if progress is not None and n % 16 == 0:
                    progress(done / size)
        finally:
            sidecar.close()
    if progress is not None:
        progress(1.0)


def _json_line(line: bytes, n: int, path: str, last: bool) -> dict:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        if last:
            raise ValueError(f"{path!r} line {n} is truncated (the file ends mid-record); drop the last line "
                             f"or copy the file again after the run has flushed it") from None
        why = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deep or not UTF-8"
        raise ValueError(f"{path!r} line {n} is not JSON ({why}); give a Megatron-LM routing trace "
                         f"(one JSON object per line)") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{path!r} line {n} is not a JSON object; each line must be one routing record")
    return rec


def _megatron_record(rec: dict, where: str, sidecar: "_Sidecar", limits: TraceLimits) -> RoutingRecord:
    missing = [k for k in MEGATRON_FIELDS if k not in rec]
    if missing:
        raise ValueError(f"{where} misses field(s) {missing}; a Megatron-LM routing record has "
                         f"{list(MEGATRON_FIELDS)}")
    step, layer, T = (as_int(rec[k], where, k) for k in ("step", "layer", "num_tokens"))
    K = as_int(rec["topk"], where, "topk", low=1)
    idx = _top_indices(rec["top_indices"], T, K, where)
    E = _recorded_experts(rec, T, where, limits) if any(k in rec for k in LOGIT_FIELDS) else None
    if T and E is not None and int(idx.max()) >= E:
        raise ValueError(f"{where}: 'top_indices' holds expert {int(idx.max())} but logit_shape records "
                         f"{E} experts; give the trace as written")
    logits = sidecar.logits(rec, T, E, where) if E is not None else None
    return RoutingRecord(step, _label(rec, layer, where), idx, logits, where, n_experts=E)


def _label(rec: dict, layer: int, where: str) -> str:
    block = rec.get("block", "decoder")
    if not isinstance(block, str):
        raise ValueError(f"{where}: field 'block' must be a string such as \"decoder\" or \"mtp\", got {shown(block)}")
    mtp = as_int(rec.get("mtp_idx"), where, "mtp_idx") if block == "mtp" else None
    return layer_label(block, layer, mtp)


def _top_indices(value, T: int, K: int, where: str) -> np.ndarray:
    """(T, K) int64 expert indices from the record's list of lists; integers only (no floats, strings, bools)."""
    want = f"num_tokens={T} lists of topk={K} integer expert indices"
    if not isinstance(value, list):
        raise ValueError(f"{where}: 'top_indices' must be a list of {want}")
    arr = None
    if len(value) == T and T:
        try:
            arr = np.asarray(value)  # numpy infers the type: int64 only when every entry is an integer
        except (ValueError, TypeError, OverflowError):
            pass  # ragged
    elif len(value) == T:
        return np.zeros((0, K), np.int64)
    if arr is None or arr.shape != (T, K):
        got = f"{len(value)} rows" if arr is None else f"shape {arr.shape}"
        raise ValueError(f"{where}: 'top_indices' has {got}, expected (num_tokens={T}, topk={K})")
    if (arr.dtype.kind not in "iu" or arr.dtype.kind == "u" and int(arr.max()) > INT64_MAX
            or bool in set(map(type, itertools.chain.from_iterable(value)))):  # [0, true] is int64 to numpy
        raise ValueError(f"{where}: 'top_indices' must hold integers (no fractions, non-finite numbers, strings "
                         f"or true/false); give {want}")
    idx = arr.astype(np.int64)  # (T, K)
    if int(idx.min()) < 0:
        raise ValueError(f"{where}: 'top_indices' holds {int(idx.min())}; expert indices are >= 0")
    if int(idx.max()) >= MAX_EXPERTS:
        raise ValueError(f"{where}: 'top_indices' holds expert {int(idx.max())}; expert indices are below "
                         f"{MAX_EXPERTS}")
    check_distinct(idx, f"{where}: 'top_indices'")
    return idx


def _recorded_experts(rec: dict, T: int, where: str, limits: TraceLimits) -> int:
    """E from logit_shape [T, E], with logit_offset and logit_bytes checked against it before any read."""
    missing = [k for k in LOGIT_FIELDS if k not in rec]
    if missing:
        raise ValueError(f"{where} misses field(s) {missing}; a record with logits has {list(LOGIT_FIELDS)}")
    as_int(rec["logit_offset"], where, "logit_offset")
    shape = rec["logit_shape"]
    if not isinstance(shape, list) or len(shape) != 2:
        raise ValueError(f"{where}: field 'logit_shape' must be [num_tokens, n_experts], got {shown(shape)}")
    rows, E = (as_int(v, where, "logit_shape") for v in shape)
    E = check_experts(E, f"{where}: logit_shape's n_experts")
    if rows != T or as_int(rec["logit_bytes"], where, "logit_bytes") != 2 * T * E:
        raise ValueError(f"{where}: logit_shape {[rows, E]} and logit_bytes {rec['logit_bytes']} do not describe "
                         f"num_tokens={T} tokens of bfloat16 logits; give the trace as written")
    limits.check_entries(T * E, where, f"{T:,} tokens × {E:,} experts of logits")
    return E


class _Sidecar:
    """logits_rank{rank}.bin next to the JSONL (inside its directory, symlinks followed), opened on first use."""

    def __init__(self, path: str) -> None:
        self.folder = os.path.dirname(os.path.realpath(path))
        self.rank: int | None = None
        self.file = None

    def logits(self, rec: dict, T: int, E: int, where: str) -> np.ndarray | None:
        """bfloat16 (T, E) at logit_offset: the upper half of a float32, so shift the raw bits up 16."""
        rank = as_int(rec.get("rank", 0), where, "rank")
        if self.rank is None:
            self.rank, self.file = rank, self._open(rank, where)
        elif rank != self.rank:
            raise ValueError(f"{where}: rank {rank} but earlier records have rank {self.rank}; give one rank's file")
        if self.file is None:
            return None  # the sidecar was not copied along: load-side numbers only
        offset, size = as_int(rec["logit_offset"], where, "logit_offset"), os.fstat(self.file.fileno()).st_size
        raw = b""
        if 0 <= offset <= size:  # past the end (or negative) seek() fails with an OSError: none of its bytes
            self.file.seek(offset)
            raw = self.file.read(2 * T * E)
        if len(raw) != 2 * T * E:
            raise ValueError(f"{where}: the logits sidecar holds {len(raw)} bytes at offset {rec['logit_offset']}, "
                             f"not [{T}, {E}] in bfloat16; copy the sidecar written with this file")
        bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16  # (T·E,)
        return bits.view(np.float32).reshape(T, E)  # (T, E)

    def _open(self, rank: int, where: str):
        side = os.path.join(self.folder, f"logits_rank{rank}.bin")
        if not os.path.lexists(side):
            return None
        outside = (f"{where}: logits_rank{rank}.bin links outside the trace's directory; copy the sidecar itself "
                   f"next to the trace")
        try:
            return open_inside(side, self.folder, "trace file", "", outside)
        except LinksOutside:
            raise
        except ValueError:
            raise ValueError(f"{where}: logits_rank{rank}.bin next to the trace is not a readable regular file; "
                             f"copy the sidecar written with this file") from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
