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

Readers are generators of `RoutingRecord`: memory is bounded by one record, never by the file.
Every problem is a ValueError naming the line (or row group) and the fix.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd

Progress = Callable[[float], None]  # fraction of the file read, 0..1
PARQUET_COLUMNS = ["step", "layer", "token", "expert", "router_logit", "prob", "routed", "served", "gate",
                   "contribution"]
MEGATRON_FIELDS = ("step", "layer", "num_tokens", "topk", "top_indices")


@dataclass
class RoutingRecord:
    step: int
    layer: str                       # "3" for decoder layer 3; "mtp0.1" for MTP head 0, layer 1
    top_k_index: np.ndarray          # (T, K) int64
    router_logits: np.ndarray | None  # (T, E) float32, None when the file has no logits
    where: str                       # "line 12" / "row group 3": for error messages


def layer_label(block: str, layer: int, mtp_idx: int | None = None) -> str:
    """Megatron keys layers by (block, mtp_idx, layer): decoder layers keep their number."""
    return str(layer) if block != "mtp" else f"mtp{mtp_idx}.{layer}"


def detect_format(path: str) -> str:
    """'parquet' (magic bytes PAR1) or 'megatron' (JSON lines); ValueError otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ValueError(f"cannot read trace file {path!r}: {err.strerror}") from None
    if head == b"PAR1":
        return "parquet"
    if head[:1] == b"{":
        return "megatron"
    raise ValueError(f"trace file {path!r} is neither Parquet (moe-scope download) nor JSON lines (Megatron-LM "
                     f"--moe-routing-trace-path); give one of those")


def iter_records(path: str, progress: Progress | None = None, n_experts: int | None = None
                 ) -> Iterator[RoutingRecord]:
    """The records of either format, in file order."""
    if detect_format(path) == "parquet":
        return iter_parquet(path, progress, n_experts)
    return iter_megatron(path, progress)


# --- Megatron-LM JSONL -------------------------------------------------------------------------

def iter_megatron(path: str, progress: Progress | None = None) -> Iterator[RoutingRecord]:
    """One record per line, read line by line; logits from the sidecar when present."""
    size = max(os.path.getsize(path), 1)
    done = 0
    sidecar = None
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                done += len(line)
                if not line.strip():
                    continue
                rec = _json_line(line, n, path, last=not line.endswith(b"\n"))
                logits = None
                if "logit_offset" in rec:
                    sidecar = sidecar or _open_sidecar(path, rec)
                    logits = _sidecar_logits(sidecar, rec, n) if sidecar else None
                yield _megatron_record(rec, n, logits)
                if progress is not None and n % 16 == 0:
                    progress(done / size)
    finally:
        if sidecar:
            sidecar.close()
    if progress is not None:
        progress(1.0)


def _json_line(line: bytes, n: int, path: str, last: bool) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        if last:
            raise ValueError(f"{path!r} line {n} is truncated (the file ends mid-record); drop the last line "
                             f"or copy the file again after the run has flushed it") from None
        raise ValueError(f"{path!r} line {n} is not JSON ({err.msg}); give a Megatron-LM routing trace "
                         f"(one JSON object per line)") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{path!r} line {n} is not a JSON object; each line must be one routing record")
    return rec


def _megatron_record(rec: dict, n: int, logits: np.ndarray | None) -> RoutingRecord:
    missing = [k for k in MEGATRON_FIELDS if k not in rec]
    if missing:
        raise ValueError(f"line {n} misses field(s) {missing}; a Megatron-LM routing record has "
                         f"{list(MEGATRON_FIELDS)}")
    for key in ("step", "layer", "num_tokens", "topk"):
        if isinstance(rec[key], bool) or not isinstance(rec[key], int) or rec[key] < 0:
            raise ValueError(f"line {n}: field {key!r} must be an integer >= 0, got {rec[key]!r}")
    T, K = rec["num_tokens"], rec["topk"]
    if not isinstance(rec["top_indices"], list):
        raise ValueError(f"line {n}: 'top_indices' must be a list of num_tokens={T} lists of topk={K} integers")
    try:
        idx = np.asarray(rec["top_indices"], dtype=np.int64).reshape(-1, K) if T else np.zeros((0, K), np.int64)
    except (ValueError, TypeError):
        raise ValueError(f"line {n}: 'top_indices' must be num_tokens={T} lists of topk={K} integers") from None
    if idx.shape != (T, K) or len(rec["top_indices"]) != T:
        raise ValueError(f"line {n}: 'top_indices' has shape {np.shape(rec['top_indices'])}, expected "
                         f"(num_tokens={T}, topk={K})")
    if T and idx.min() < 0:
        raise ValueError(f"line {n}: 'top_indices' holds {int(idx.min())}; expert indices are >= 0")
    label = layer_label(rec.get("block", "decoder"), rec["layer"], rec.get("mtp_idx"))
    return RoutingRecord(rec["step"], label, idx, logits, f"line {n}")


def _open_sidecar(path: str, rec: dict):
    """logits_rank{rank}.bin next to the JSONL, or None when it was not copied along."""
    side = os.path.join(os.path.dirname(os.path.abspath(path)), f"logits_rank{rec.get('rank', 0)}.bin")
    return open(side, "rb") if os.path.exists(side) else None


def _sidecar_logits(f, rec: dict, n: int) -> np.ndarray:
    """bfloat16 (T, E) at logit_offset: the upper half of a float32, so shift the raw bits up 16."""
    shape = rec.get("logit_shape")
    f.seek(int(rec["logit_offset"]))
    raw = f.read(int(rec["logit_bytes"]))
    if not isinstance(shape, list) or len(shape) != 2 or len(raw) != 2 * shape[0] * shape[1]:
        raise ValueError(f"line {n}: the logits sidecar holds {len(raw)} bytes at offset {rec['logit_offset']}, "
                         f"not logit_shape={shape} in bfloat16; copy the sidecar written with this file")
    bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16  # (T·E,)
    return bits.view(np.float32).reshape(shape)  # (T, E)


# --- moe-scope Parquet -------------------------------------------------------------------------

def trace_frame(trace, step: int = 0, layer: int | str = 0, labels=None) -> pd.DataFrame:
    """One row per (token, expert) of one forward: the tidy trace, stamped with its step and layer."""
    T, E = trace.probs.shape
    frame = pd.DataFrame({
        "step": np.full(T * E, step, dtype=np.int64),
        "layer": np.full(T * E, str(layer)),
        "token": np.repeat(np.arange(T), E),
        "expert": np.tile(np.arange(E), T),
        "router_logit": trace.router_logits.detach().cpu().float().numpy().ravel(),
        "prob": trace.probs.detach().cpu().float().numpy().ravel(),
        "routed": trace.routed.detach().cpu().numpy().ravel(),
        "served": trace.served.detach().cpu().numpy().ravel(),
        "gate": trace.gates.detach().cpu().float().numpy().ravel(),
        "contribution": trace.contributions.detach().cpu().float().numpy().ravel(),
    })
    if labels is not None:
        frame.insert(3, "topic", np.repeat(np.asarray(labels), E))
    return frame


class TraceWriter:
    """Appends one Parquet row group per (step, layer); a training loop calls write() after each forward.

        with TraceWriter("run.parquet") as w:
            for step ...: w.write(trace, step=step, layer=i)
    """

    def __init__(self, path) -> None:
        self.path, self._writer = path, None

    def write(self, trace, step: int, layer: int | str = 0) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.Table.from_pandas(trace_frame(trace, step, layer), preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)  # one row group per call

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_parquet(path: str, progress: Progress | None = None, n_experts: int | None = None
                 ) -> Iterator[RoutingRecord]:
    """Rows streamed in batches; consecutive rows with the same (step, layer) make one record."""
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own types for a damaged file
        raise ValueError(f"{path!r} is not a readable Parquet file ({' '.join(str(err).split())[:120]}); "
                         f"download the trace again") from None
    names = set(pf.schema_arrow.names)
    need = {"token", "expert", "router_logit", "routed"}
    if need - names:
        raise ValueError(f"{path!r} misses column(s) {sorted(need - names)}; give a moe-scope trace download "
                         f"(columns {PARQUET_COLUMNS})")
    stamped = {"step", "layer"} <= names
    columns = ["token", "expert", "router_logit", "routed"] + (["step", "layer"] if stamped else [])
    total, done, key, parts = max(pf.metadata.num_rows, 1), 0, None, []
    for batch in pf.iter_batches(batch_size=1 << 16, columns=columns):
        frame = batch.to_pandas()
        done += len(frame)
        steps = frame["step"].to_numpy(np.int64) if stamped else np.zeros(len(frame), np.int64)
        layers = frame["layer"].astype(str).to_numpy() if stamped else np.full(len(frame), "0")
        cut = np.flatnonzero((steps[1:] != steps[:-1]) | (layers[1:] != layers[:-1])) + 1  # run starts
        for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(frame)]):
            here = (int(steps[lo]), str(layers[lo]))
            if key is not None and here != key:
                yield _parquet_record(key, parts, n_experts)
                parts = []
            key = here
            parts.append(frame.iloc[lo:hi])
        if progress is not None:
            progress(done / total)
    if key is None:
        raise ValueError(f"{path!r} holds no rows; give a trace with at least one token")
    yield _parquet_record(key, parts, n_experts)


def _parquet_record(key: tuple[int, str], parts: list[pd.DataFrame], n_experts: int | None) -> RoutingRecord:
    """(token, expert) rows of one (step, layer) -> logits (T, E) and the chosen experts (T, K)."""
    rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    where = f"step {key[0]}, layer {key[1]}"
    expert = rows["expert"].to_numpy(np.int64)
    E = n_experts or int(expert.max()) + 1
    if len(rows) % E or expert.min() < 0 or expert.max() >= E:
        raise ValueError(f"{where}: {len(rows)} rows are not tokens × n_experts={E}; every token needs one row "
                         f"per expert")
    order = np.lexsort((expert, rows["token"].to_numpy(np.int64)))  # token-major, expert-minor
    T = len(rows) // E
    if not np.array_equal(expert[order], np.tile(np.arange(E), T)):
        raise ValueError(f"{where}: tokens do not each have one row per expert 0..{E - 1}; give the trace as "
                         f"downloaded")
    logits = rows["router_logit"].to_numpy(np.float32)[order].reshape(T, E)  # (T, E)
    routed = rows["routed"].to_numpy(bool)[order].reshape(T, E)  # (T, E)
    k = routed.sum(1)  # (T,)
    if T == 0 or k.min() != k.max() or k[0] == 0:
        raise ValueError(f"{where}: tokens route to {int(k.min())}..{int(k.max())} experts; a token-choice "
                         f"(router='topk') trace routes every token to the same top_k")
    idx = np.nonzero(routed)[1].reshape(T, int(k[0]))  # (T, K), ascending expert order
    return RoutingRecord(key[0], key[1], idx, logits, where)
