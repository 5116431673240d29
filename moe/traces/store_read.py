"""Reading a routing log directory (moe.traces.store writes it): counts, tokens and ranks parts back into a RoutingLog,
every part opened as a regular file and checked (column types, ids within E, steps the counts have, sizes within
the memory budget) before its values are used."""
from __future__ import annotations

import os

import numpy as np

from moe.traces.log import GIVEN, INFERRED, RECORDED, RoutingLog, TokenRouting, check_ids
from moe.traces.records import TraceLimits, open_regular
from moe.traces.store import parts, read_meta


def read_store(path: str, limits: TraceLimits | None = None) -> RoutingLog:
    """A routing log directory back as a RoutingLog (every finished part of every table)."""
    limits = limits or TraceLimits.from_env()
    doc = read_meta(path)
    acc = CountsAccumulator(doc["layers"], doc["n_experts"], limits)
    for part in parts(path, "counts"):
        acc.add(read_part(part, "counts", limits))
    if not acc.cells:
        raise ValueError(f"{path!r} holds no counts yet; give a routing log with at least one step")
    steps, counts = acc.arrays()
    tokens = _read_tokens(path, doc["layers"], doc["n_experts"], steps, limits)
    source = doc.get("n_experts_source")
    return RoutingLog(source=str(doc.get("source", "moe-scope")), layers=doc["layers"], steps=steps, counts=counts,
                      n_experts_source=source if source in (GIVEN, INFERRED) else RECORDED,
                      top_k=doc["top_k"], meta=doc.get("meta") if isinstance(doc.get("meta"), dict) else {},
                      tokens=tokens, physical_to_logical=doc.get("physical_to_logical_map"),
                      rank_counts=_read_ranks(path, doc["layers"], steps, limits))


def read_part(part: str, table: str, limits: TraceLimits, columns: dict | None = None):
    """One part file as a pyarrow Table, its size checked against the budget before decoding (a regular file only:
    opened once, so a link swapped in afterwards is never read). `columns`: name -> pyarrow type test, each checked."""
    import pyarrow.parquet as pq
    name = f"{os.path.basename(part)!r} in {table}/"
    with open_regular(part) as f:
        try:
            pf = pq.ParquetFile(f)
            decoded = sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.metadata.num_row_groups))
            schema = pf.schema_arrow
        except Exception as err:  # pyarrow's own error types
            raise _unreadable(name, err) from None
        if decoded > limits.budget // 4:
            raise ValueError(f"{name} decodes to more than a quarter of the memory budget; write smaller parts "
                             f"(flush more often)")
        for column, ok in (columns or {}).items():
            if column not in schema.names or not ok(schema.field(column).type):
                raise ValueError(f"{name} has no column {column!r} of the routing log's type; copy the log again")
        try:
            return pf.read()
        except Exception as err:  # pyarrow's own error types
            raise _unreadable(name, err) from None


def _unreadable(name: str, err: Exception) -> ValueError:
    return ValueError(f"{name} is not a readable Parquet file ({type(err).__name__}); copy the log again")


def _int_column(table, name: str, where: str, copy: bool = True) -> np.ndarray:
    """An integer column as int64 (copy=False: read-only where arrow's buffer is int64 already)."""
    values = table.column(name)
    if values.null_count:
        raise ValueError(f"{where}: column {name!r} has empty values; copy the log again")
    return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=copy)


def _layer_index(column, layers: list[str]) -> np.ndarray:
    """(N,) index in `layers` of each row's layer name (the column read as text), -1 where meta.json does not list it
    (or the value is empty or not text)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    try:
        names = column if pa.types.is_string(column.type) else column.cast(pa.string())
    except pa.ArrowException:  # bytes that are not UTF-8, nested values: no layer name
        return np.full(len(column), -1, dtype=np.int64)
    index = pc.index_in(names, value_set=pa.array(layers, type=pa.string()))
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)


class CountsAccumulator:
    """Counts rows (step, layer, expert, count) from part files into (S, L, E); a missing row is 0, a (step, layer,
    expert) given twice is refused (a writer writes each step once), and every count stays an exact integer."""

    def __init__(self, layers: list[str], n_experts: int, limits: TraceLimits) -> None:
        self.layers, self.E, self.limits = layers, n_experts, limits
        self.index = {name: i for i, name in enumerate(layers)}
        self.cells: dict[int, np.ndarray] = {}  # step -> (L, E)

    def add(self, table) -> list[int]:
        """Add one part's rows; returns the steps it holds, ascending."""
        import pyarrow as pa
        import pyarrow.compute as pc
        for column in ("step", "expert", "count"):
            if column not in table.column_names or not pa.types.is_integer(table.schema.field(column).type):
                raise ValueError(f"a counts part has no integer column {column!r}; copy the log again")
        if "layer" not in table.column_names:
            raise ValueError("a counts part has no column 'layer'; copy the log again")
        step, expert, count = (_int_column(table, name, "a counts part", copy=False)  # used here, then dropped
                               for name in ("step", "expert", "count"))
        layer = _layer_index(table.column("layer"), self.layers)
        if (layer < 0).any():
            raise ValueError("a counts part names a layer that meta.json does not list; copy the log again")
        if len(count) and (count.min() < 0 or step.min() < 0 or expert.min() < 0 or expert.max() >= self.E):
            raise ValueError(f"a counts part holds a negative count or step, or an expert outside 0..{self.E - 1}")
        new = np.sort(pc.unique(pa.array(step)).to_numpy())                          # arrow's hash: one pass
        if any(int(s) in self.cells for s in new):
            raise ValueError("two counts parts hold the same step; copy the log again (a writer writes a step once)")
        self.limits.check_summary(len(self.cells) + len(new), len(self.layers), self.E)
        L, E = len(self.layers), self.E
        cell = (np.searchsorted(new, step) * L + layer) * E + expert                  # (N,)
        if len(cell) and np.bincount(cell, minlength=len(new) * L * E).max() > 1:
            raise ValueError("a counts part gives one (step, layer, expert) twice; copy the log again")
        block = np.zeros(len(new) * L * E, dtype=np.int64)
        block[cell] = count  # unique cells: plain integer assignment, exact at any size
        block = block.reshape(len(new), L, E)
        for i, s in enumerate(new):
            self.cells[int(s)] = block[i]
        return [int(s) for s in new]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        steps = np.array(sorted(self.cells), dtype=np.int64)
        return steps, np.stack([self.cells[int(s)] for s in steps])  # (S,), (S, L, E)


def _read_tokens(path: str, layers: list[str], n_experts: int, steps: np.ndarray,
                 limits: TraceLimits) -> TokenRouting | None:
    """The tokens table: ids in -1..E-1 (-1 = an empty slot), K per row constant, steps among the counts' steps,
    every part together within a quarter of the memory budget."""
    files = parts(path, "tokens")
    if not files:
        return None
    import pyarrow as pa
    tables, held = [], 0
    for part in files:
        tables.append(read_part(part, "tokens", limits, {"experts": lambda t: pa.types.is_list(t)
                                                         or pa.types.is_fixed_size_list(t)}))
        held += tables[-1].nbytes
        if held > limits.budget // 4:
            raise ValueError(f"{path!r}: the tokens parts decode to more than a quarter of the memory budget; read "
                             f"the counts alone (move tokens/ aside) or raise the budget")
    table = pa.concat_tables(tables, promote_options="permissive")
    where = f"{path!r}: the tokens table"
    experts = table.column("experts").combine_chunks()
    lengths = pc_lengths(experts)
    if len(lengths) and (lengths.min() != lengths.max()):
        raise ValueError(f"{where} gives tokens different numbers of expert slots; copy the log again")
    K = int(lengths[0]) if len(lengths) else 1
    ids = experts.flatten().to_numpy(zero_copy_only=False)
    max_id = check_ids(ids, where, allow_padding=True)
    if max_id >= n_experts:
        raise ValueError(f"{where} names expert {max_id}, outside 0..{n_experts - 1}; copy the log again")
    weights = None
    if "weights" in table.column_names:
        weights = table.column("weights").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        weights = weights.astype(np.float32).reshape(-1, K)
    layer = _layer_index(table.column("layer"), layers)
    step = _int_column(table, "step", where)
    if (layer < 0).any() or not np.isin(step, steps).all():
        raise ValueError(f"{where} names a layer or step the counts do not have; copy the log again")
    return TokenRouting(step=step, layer=layer.astype(np.int32), ids=ids.astype(np.int64).reshape(-1, K),
                        weights=weights)


def pc_lengths(array) -> np.ndarray:
    """Each list's length of a (fixed-size) list array."""
    import pyarrow.compute as pc
    return pc.list_value_length(array).to_numpy(zero_copy_only=False)


def _read_ranks(path: str, layers: list[str], steps: np.ndarray, limits: TraceLimits) -> np.ndarray | None:
    """The ranks table back as (S, W, L, P) (rank = position 0..W-1 in the source's rank order)."""
    files = parts(path, "ranks")
    if not files:
        return None
    import pyarrow as pa
    table = pa.concat_tables([read_part(p, "ranks", limits) for p in files])
    where = f"{path!r}: the ranks table"
    step, rank, physical, count = (_int_column(table, name, where) for name in ("step", "rank", "physical", "count"))
    layer = _layer_index(table.column("layer"), layers)
    if (layer < 0).any() or not np.isin(step, steps).all() or min(rank.min(), physical.min(), count.min()) < 0:
        raise ValueError(f"{where} names a layer or step the counts do not have, or a negative value; copy the log "
                         f"again")
    W, P = int(rank.max()) + 1, int(physical.max()) + 1
    if len(steps) * W * len(layers) * P * 8 > limits.budget // 4:
        raise ValueError(f"{where} needs more than a quarter of the memory budget; read the counts alone (move "
                         f"ranks/ aside) or raise the budget")
    out = np.zeros((len(steps), W, len(layers), P), dtype=np.int64)
    out[np.searchsorted(steps, step), rank, layer, physical] = count
    return out
