"""The fast path of the Megatron-LM trace reader: pyarrow's streaming JSON reader and vectorised counting.

Each block of lines (1 MiB or more) becomes one Arrow record batch with an explicit schema; `top_indices`
(list<list<int32>>) is flattened once and counted with one `np.bincount` over (cell, expert), where a cell is
one (step, layer) of the batch. Every check of the exact line reader (moe.traces.readers.iter_megatron) is made
on whole columns. The fast path never words an error: when pyarrow refuses a line, or a check fails, it raises
`NotFast` and the caller re-reads the file with the exact line reader, which names the line and the fix.
`FileCounts` is what both paths fill: counts per (step, layer label) of one rank file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from moe.memory import BUDGET_ENV, describe_bytes
from moe.traces.log import repeated_expert
from moe.traces.readers import layer_label
from moe.traces.records import MAX_EXPERTS, TraceLimits, open_regular

# Bytes of lines parsed per batch: pyarrow's parser holds ~40 bytes per byte of a block while it converts (numbers
# are kept as text first), so 1 MiB keeps a read near +60 MiB; a file of longer lines gets blocks of 4 of its first
# lines, and a longer line later doubles the block (starting over). pyarrow joins a line that straddles two blocks,
# so a line of up to 2 blocks is read: blocks stay at most half the line cap of the memory budget.
BLOCK_BYTES = 1 << 20
# Ids as int32: parsed faster than int64, and any id ≥ MAX_EXPERTS is refused anyway (an overflow → NotFast).
SCHEMA = pa.schema([("step", pa.int64()), ("block", pa.string()), ("mtp_idx", pa.int64()), ("layer", pa.int64()),
                    ("num_tokens", pa.int64()), ("topk", pa.int64()),
                    ("top_indices", pa.list_(pa.list_(pa.int32()))),
                    ("logit_offset", pa.int64()), ("logit_bytes", pa.int64()), ("logit_shape", pa.list_(pa.int64()))])
CELL_BYTES = 200  # a (step, layer) cell's dict entry and array header, besides its 8 bytes per expert
REQUIRED = ("step", "block", "layer", "num_tokens", "topk", "top_indices")
LOGITS = ("logit_offset", "logit_bytes", "logit_shape")


class NotFast(Exception):
    """The fast path cannot vouch for this file; read it with the exact line reader (it says what is wrong)."""


@dataclass
class FileCounts:
    """One rank file's counts: (step, layer label) → (W,) tokens per expert id, W = its largest id + 1 so far."""
    cap: int | None = None                             # bytes the counts may take (what the budget leaves them)
    cells: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    top_k: set[int] = field(default_factory=set)       # every topk the records name (one model: one value)
    recorded: set[int] = field(default_factory=set)    # every expert count logit_shape names
    records: int = 0
    with_logits: int = 0                               # records carrying logit_offset/logit_bytes/logit_shape
    used: int = 0                                      # bytes the cells take, about

    def add(self, step: int, label: str, counts: np.ndarray) -> None:
        """Add (W',) counts to the cell, widening whichever of the two is shorter (micro-batches add up)."""
        old = self.cells.get((step, label))
        self._spend(CELL_BYTES * (old is None) + 8 * max(len(counts) - (0 if old is None else len(old)), 0))
        if old is None:
            self.cells[(step, label)] = counts.astype(np.int64)
            return
        if len(old) < len(counts):
            old, counts = counts.astype(np.int64), old
        old[:len(counts)] += counts
        self.cells[(step, label)] = old

    def _spend(self, size: int) -> None:
        """Refuse, before it is allocated, a cell that takes the counts past their cap (many steps × layers)."""
        self.used += size
        if self.cap is not None and self.used > self.cap:
            raise ValueError(f"the trace's token counts per (step, layer) and expert need more than "
                             f"{describe_bytes(self.cap)}, what the memory budget leaves them; give fewer steps "
                             f"(cut the files) or raise {BUDGET_ENV}")

    @property
    def max_id(self) -> int:
        """The largest expert id with a token (-1: none)."""
        return max((int(np.flatnonzero(c)[-1]) for c in self.cells.values() if c.any()), default=-1)


def count_file(path: str, limits: TraceLimits, progress=None, cap: int | None = None) -> FileCounts:
    """Every record of `path` counted (the counts within `cap` bytes); NotFast when the exact line reader must
    decide."""
    block, most = _first_block(path, limits), max(1, limits.line_bytes // 2)
    while True:
        out = FileCounts(cap)
        try:
            _count_blocks(path, out, limits, block, progress)
            return out
        except pa.ArrowInvalid as err:
            if "straddl" not in str(err) or block >= most:
                raise NotFast from None
            block = min(2 * block, most)  # a line longer than a block: start over with larger blocks
        except (pa.ArrowException, UnicodeDecodeError, OverflowError, OSError):
            raise NotFast from None


def _first_block(path: str, limits: TraceLimits) -> int:
    """BLOCK_BYTES, or room for 4 lines as long as the first one; at most half the line cap (see BLOCK_BYTES)."""
    with open_regular(path) as f:
        first = len(f.readline(limits.line_bytes + 1))
    return max(1, min(max(BLOCK_BYTES, 4 * first), limits.line_bytes // 2))


def _count_blocks(path: str, out: FileCounts, limits: TraceLimits, block: int, progress) -> None:
    with open_regular(path) as f:
        size = f.seek(0, 2)
        f.seek(0)
        scan = _Scan(f)
        # One thread: pyarrow's threaded JSON reader left threads alive at exit once torch was loaded (SIGABRT,
        # "terminate called without an active exception", cf. apache/arrow#34314); one core per read is fair.
        reader = pj.open_json(pa.PythonFile(scan, mode="r"),
                              read_options=pj.ReadOptions(block_size=block, use_threads=False),
                              parse_options=pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore",
                                                            newlines_in_values=False))
        for batch in reader:
            count_batch(batch, out, limits)
            if progress is not None:
                progress(min(scan.seen / max(size, 1), 1.0))
    if scan.seen != size or not scan.plain or scan.lines() != out.records:
        raise NotFast  # bytes pyarrow did not read through the scan, or lines the exact reader reads otherwise


class _Scan:
    """The file as pyarrow reads it, watched on the way (no second read) for what pyarrow reads differently from
    json.loads line by line: a line holding two objects or none (blank lines), a null (pyarrow: a missing field)
    and any byte outside ASCII (RouterTracer's json.dumps writes ASCII only; a stray byte may not be UTF-8)."""

    def __init__(self, f) -> None:
        self.f, self.seen, self.newlines, self.plain, self.tail = f, 0, 0, True, b""

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        if chunk:
            self.seen += len(chunk)
            self.newlines += chunk.count(b"\n")
            self.plain = self.plain and chunk.isascii() and b"null" not in chunk and b"null" not in (
                self.tail + chunk[:3])
            self.tail = chunk[-3:]
        return chunk

    def lines(self) -> int:
        """Lines as readline counts them: a last line without its newline is one too."""
        return self.newlines + (self.tail[-1:] not in (b"", b"\n"))

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0) or self.seen:
            raise NotFast  # pyarrow reads a stream front to back; anything else would skip the scan
        return self.f.seek(0)

    def tell(self) -> int:
        return self.seen

    def close(self) -> None:
        pass  # the caller's `with` closes the file

    @property
    def closed(self) -> bool:
        return self.f.closed

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False


def count_batch(batch: pa.RecordBatch, out: FileCounts, limits: TraceLimits) -> None:
    """Check and count one batch of records; NotFast on anything the exact reader would refuse."""
    if batch.num_rows == 0:
        return
    if any(batch.column(name).null_count for name in REQUIRED):
        raise NotFast  # a field missing or null (also "block", which the exact reader defaults when absent)
    step, layer, T, K = (batch.column(n).to_numpy() for n in ("step", "layer", "num_tokens", "topk"))  # (n,) each
    if min(step.min(), layer.min(), T.min()) < 0 or K.min() < 1:
        raise NotFast
    labels = _layer_keys(batch)                                          # (n,) int64, -1 = decoder
    ids, per_record = _ids(batch.column("top_indices"), T, K)            # (N,) int32, (n,) T·K
    experts = _logit_experts(batch, T, limits, ids, per_record)          # (n,) E or -1 per record
    out.top_k.update(np.unique(K).tolist())
    out.recorded.update(np.unique(experts[experts >= 0]).tolist())
    out.records += batch.num_rows
    out.with_logits += int((experts >= 0).sum())
    key = np.stack([step, labels, layer], axis=1)                       # (n, 3)
    cells, inverse = np.unique(key, axis=0, return_inverse=True)         # (c, 3), (n,)
    table = len(cells) * (int(ids.max()) + 1 if ids.size else 0) * 8      # the (c, W) table below, before it is made:
    if out.cap is not None and out.used + table > out.cap:               # no room, the exact reader counts the
        raise NotFast                                                    # records one by one, or refuses them
    sums = _cell_counts(ids, per_record, inverse.reshape(-1), len(cells))  # (c, W)
    for (s, mtp, lay), row in zip(cells.tolist(), sums):
        out.add(s, layer_label("mtp" if mtp >= 0 else "decoder", lay, mtp), row)


def _cell_counts(ids: np.ndarray, per_record: np.ndarray, cell: np.ndarray, n_cells: int) -> np.ndarray:
    """(c, W) tokens per cell and expert id, W = largest id + 1: records of thousands of tokens one bincount
    each (no (N,) temporaries), many small records (decode steps) one bincount over cell·W + id."""
    W = int(ids.max()) + 1 if ids.size else 0
    if ids.size >= 1024 * len(per_record):
        sums = np.zeros((n_cells, W), np.int64)
        ends = np.cumsum(per_record)                                     # (n,)
        for c, lo, hi in zip(cell.tolist(), (ends - per_record).tolist(), ends.tolist()):
            sums[c] += np.bincount(ids[lo:hi], minlength=W)              # (W,)
        return sums
    flat = np.repeat(cell.astype(np.int64) * W, per_record) + ids        # (N,) cell·W + id
    return np.bincount(flat, minlength=n_cells * W).reshape(n_cells, W)


def _layer_keys(batch: pa.RecordBatch) -> np.ndarray:
    """(n,) the MTP head of each record (-1 for decoder layers); NotFast when an MTP record lacks a valid one."""
    mtp = pc.equal(batch.column("block"), "mtp").to_numpy(zero_copy_only=False)  # (n,) bool
    if not mtp.any():
        return np.full(batch.num_rows, -1, np.int64)
    head = batch.column("mtp_idx").fill_null(-1).to_numpy()               # (n,)
    if (head[mtp] < 0).any():
        raise NotFast
    return np.where(mtp, head, -1)


def _ids(column: pa.ListArray, T: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat ids (N,) of (num_tokens, topk) lists per record, and T·K per record; NotFast on another shape."""
    rows = column.flatten()                                              # one list per token
    if rows.null_count or not np.array_equal(pc.list_value_length(column).to_numpy(), T):
        raise NotFast
    ids = rows.flatten()                                                 # (N,)
    if ids.null_count or not np.array_equal(pc.list_value_length(rows).to_numpy(), np.repeat(K, T)):
        raise NotFast
    ids = ids.to_numpy()                                                 # (N,) int32, no copy
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= MAX_EXPERTS):
        raise NotFast
    if ids.size and (K.min() != K.max() or repeated_expert(ids.reshape(-1, int(K[0]))) is not None):
        raise NotFast  # topk varying within a batch, or a token naming an expert twice: the exact reader says so
    return ids, T * K


def _logit_experts(batch: pa.RecordBatch, T: np.ndarray, limits: TraceLimits, ids: np.ndarray,
                   per_record: np.ndarray) -> np.ndarray:
    """(n,) E from each record's logit_shape [T, E] (-1 without logits), checked as the exact reader checks it.
    The logits themselves are not read: counting needs only the ids (moe.traces.summary reads the sidecar)."""
    present = np.stack([batch.column(n).is_valid().to_numpy(zero_copy_only=False) for n in LOGITS])  # (3, n)
    has = present.any(0)                                                 # (n,)
    if not has.any():
        return np.full(batch.num_rows, -1, np.int64)
    if not present[:, has].all():
        raise NotFast
    shape = batch.column("logit_shape").fill_null([0, 0])
    if not (pc.list_value_length(shape).to_numpy() == 2).all() or shape.flatten().null_count:
        raise NotFast
    rows, E = shape.flatten().to_numpy().reshape(-1, 2).T                 # (n,), (n,)
    offset, size = (batch.column(n).fill_null(0).to_numpy() for n in ("logit_offset", "logit_bytes"))
    bad = (offset < 0) | (rows != T) | (E < 1) | (E > MAX_EXPERTS) | (size != 2 * T * E)
    if bad[has].any() or (T * E)[has].max() > limits.entries:
        raise NotFast
    E = np.where(has, E, -1)                                             # (n,)
    if ids.size and (ids >= np.repeat(np.where(has, E, MAX_EXPERTS), per_record)).any():
        raise NotFast  # an id beyond the record's own expert count
    return E
