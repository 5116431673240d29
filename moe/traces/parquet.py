"""moe-scope Parquet routing traces: `trace_frame` (one forward, tidy), `TraceWriter` (one row group per
(step, layer)) and `iter_parquet`, which streams a file back as `RoutingRecord`s.

Before a row is materialised the footer, every row group's row count and uncompressed size, and the column
types are checked against the caps of `TraceLimits` (a row is at most ENTRY_BYTES while read: every column is a
number, and layer names are read as a dictionary, each once); a record is refused as soon as its rows pass them.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from moe.memory import BUDGET_ENV, describe_over
from moe.traces.records import (INT64_MAX, LAYER_NAME, Progress, RoutingRecord, TraceLimits, check_experts,
                                open_regular)
from moe.traces.safeload import chunk_bytes, is_label, label_codes, parquet_file

PARQUET_COLUMNS = ["step", "layer", "token", "expert", "router_logit", "prob", "routed", "served", "gate",
                   "contribution"]

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


def iter_parquet(path: str, progress: Progress | None = None, limits: TraceLimits | None = None
                 ) -> Iterator[RoutingRecord]:
    """Rows streamed in batches; consecutive rows with the same (step, layer) make one record."""
    limits = limits or TraceLimits.from_env()
    with open_regular(path) as f:
        pf = _checked_file(f, path, limits)
        stamped = {"step", "layer"} <= set(pf.schema_arrow.names)
        columns = ["token", "expert", "router_logit", "routed"] + (["step", "layer"] if stamped else [])
        total, done, key, parts, held = max(pf.metadata.num_rows, 1), 0, None, [], 0
        for batch in _batches(pf, columns, path):
            cols = _batch_columns(batch, stamped, path)
            done += batch.num_rows
            steps, layers = cols.pop("step"), cols.pop("layer")
            cut = np.flatnonzero((steps[1:] != steps[:-1]) | (layers[1:] != layers[:-1])) + 1  # run starts
            for lo, hi in zip(np.r_[0, cut], np.r_[cut, batch.num_rows]):
                here = (int(steps[lo]), str(layers[lo]))
                if key is not None and here != key:
                    yield _parquet_record(key, parts)
                    parts, held = [], 0
                key, held = here, held + (hi - lo)
                limits.check_entries(held, f"step {key[0]}, layer {key[1]}", f"{held:,} rows (tokens × experts)")
                parts.append({name: values[lo:hi] for name, values in cols.items()})
            if progress is not None:
                progress(done / total)
    if key is None:
        raise ValueError(f"{path!r} holds no rows; give a trace with at least one token")
    yield _parquet_record(key, parts)


def _checked_file(f, path: str, limits: TraceLimits):
    """The ParquetFile (layer names read as a dictionary), once its footer size, column types and row groups fit the
    caps (nothing decoded yet)."""
    pf = parquet_file(f, repr(path), limits)
    _check_types(pf.schema_arrow, path)
    names = ["token", "expert", "router_logit", "routed", "step", "layer"]
    for i, decoded in enumerate(chunk_bytes(f, pf, names, repr(path))):  # pages from their headers: the footer may lie
        rg = pf.metadata.row_group(i)
        limits.check_entries(rg.num_rows, f"{path!r} row group {i}", f"{rg.num_rows:,} rows")
        if decoded > limits.budget // 4:
            decoded_text, _, budget_text = describe_over(decoded, limits.budget // 4, limits.budget)
            raise ValueError(f"{path!r} row group {i} decodes to {decoded_text}, over a quarter of the "
                             f"memory budget of {budget_text}; write smaller row groups or raise "
                             f"{BUDGET_ENV}")
    return pf


def _damaged(path: str, err: Exception) -> ValueError:
    return ValueError(f"{path!r} is not a readable Parquet file ({type(err).__name__}); download the trace again")


def _batches(pf, columns: list[str], path: str):
    """pf's batches of 65,536 rows; a page pyarrow cannot decode is the same one line as a damaged footer."""
    batches = pf.iter_batches(batch_size=1 << 16, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # pyarrow's own error types (OSError, ArrowInvalid, ...)
            raise _damaged(path, err) from None
        yield batch


def _check_types(schema, path: str) -> None:
    import pyarrow as pa
    kinds = {"token": pa.types.is_integer, "expert": pa.types.is_integer, "router_logit": pa.types.is_floating,
             "routed": pa.types.is_boolean, "step": pa.types.is_integer,
             "layer": is_label}
    needed = {"token", "expert", "router_logit", "routed"}
    if needed - set(schema.names):
        raise ValueError(f"{path!r} misses column(s) {sorted(needed - set(schema.names))}; give a moe-scope trace "
                         f"download (columns {PARQUET_COLUMNS})")
    wrong = [name for name, ok in kinds.items() if name in schema.names and not ok(schema.field(name).type)]
    if wrong:
        raise ValueError(f"{path!r}: column(s) {wrong} have the wrong type; a moe-scope trace has integer token, "
                         f"expert and step, float router_logit, boolean routed, and layer names or numbers")


def _batch_columns(batch, stamped: bool, path: str) -> dict[str, np.ndarray]:
    """The batch's columns as numpy; steps in 0..2^63-1, layer labels short names, no nulls."""
    names = batch.schema.names
    nulls = [name for name in names if batch.column(name).null_count]
    if nulls:
        raise ValueError(f"{path!r}: column(s) {nulls} have empty (null) values; give the trace as written")
    n = batch.num_rows
    cols = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in ("token", "expert", "router_logit",
                                                                                   "routed")}
    steps = batch.column("step").to_numpy() if stamped else np.zeros(n, np.int64)
    if n and (steps.min() < 0 or steps.max() > INT64_MAX):
        what = "a negative step" if steps.min() < 0 else "a step beyond 2^63"
        raise ValueError(f"{path!r}: column 'step' holds {what}; steps are integers from 0 to 2^63 - 1")
    cols["step"] = steps.astype(np.int64)
    labels, index = label_codes(batch.column("layer"), f"{path!r}: column 'layer'") if stamped else (["0"], None)
    if any(not LAYER_NAME.fullmatch(name) for name in labels):  # each label checked once, before any row has it
        raise ValueError(f"{path!r}: a layer label is not 1 to 32 letters, digits, '.', '_' or '-'; name layers "
                         f"like 3 or decoder.3")
    cols["layer"] = np.asarray(labels)[index] if stamped else np.full(n, "0")
    return cols


def _parquet_record(key: tuple[int, str], parts: list[dict]) -> RoutingRecord:
    """(token, expert) rows of one run of (step, layer) -> logits (T, E) and the chosen experts (T, K). When a
    (token, expert) pair comes again (TraceWriter.write called more than once for a (step, layer), as with gradient
    accumulation), the n-th row of each pair, in file order, belongs to micro-batch n, and the micro-batches follow
    one another as the record's tokens (`parts` of them, each a record of the file): their statistics add up, as
    interleaved runs of one (step, layer) do. One stable sort and one record, however many micro-batches (a record
    each cost ~1 ms to summarise)."""
    rows = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    where = f"step {key[0]}, layer {key[1]}"
    token, expert = rows["token"].astype(np.int64), rows["expert"].astype(np.int64)
    if int(expert.min()) < 0:
        raise ValueError(f"{where}: column 'expert' holds {int(expert.min())}; expert indices are >= 0")
    E = check_experts(int(expert.max()) + 1, f"{where}: the largest expert index + 1")
    order = np.lexsort((expert, token))  # token-major, expert-minor; a pair's rows keep their file order (stable)
    t, e = token[order], expert[order]
    starts = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (e[1:] != e[:-1])])      # the first row of each pair
    nth = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))  # occurrence of its pair
    if nth.max() > 0:
        order = order[np.argsort(nth, kind="stable")]                                 # micro-batch by micro-batch
    token, expert = token[order], expert[order]
    if len(expert) % E:
        raise ValueError(f"{where}: {len(expert)} rows are not tokens × n_experts={E}; every token needs one row "
                         f"per expert")
    T = len(expert) // E
    tok = token.reshape(T, E)  # (T, E)
    if not (np.array_equal(expert, np.tile(np.arange(E), T)) and (tok == tok[:, :1]).all()):
        raise ValueError(f"{where}: tokens do not each have one row per expert 0..{E - 1}; give the trace as "
                         f"downloaded")
    logits = rows["router_logit"][order].astype(np.float32).reshape(T, E)  # (T, E)
    routed = rows["routed"][order].astype(bool).reshape(T, E)  # (T, E)
    k = routed.sum(1)  # (T,)
    if k.min() != k.max() or k[0] == 0:
        raise ValueError(f"{where}: tokens route to {int(k.min())}..{int(k.max())} experts; a token-choice "
                         f"(router='topk') trace routes every token to the same top_k")
    idx = np.nonzero(routed)[1].reshape(T, int(k[0]))  # (T, K), ascending expert order
    return RoutingRecord(key[0], key[1], idx, logits, where, n_experts=E, parts=int(nth.max()) + 1)
