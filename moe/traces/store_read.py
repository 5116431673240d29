"""Reading a routing log directory (moe.traces.store writes it): counts, tokens and ranks parts back into a RoutingLog,
every part opened as a regular file and checked (column types, ids within E, steps the counts have, sizes within
the memory budget) before its values are used."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from moe.memory import BUDGET_ENV
from moe.traces.log import (GIVEN, INFERRED, RECORDED, RoutingLog, TokenRouting, check_distinct, check_ids,
                            put_once)
from moe.traces.records import TraceLimits
from moe.traces.safeload import is_label, label_codes, parquet_bytes, parquet_file
from moe.traces.store import open_listed, parts, read_meta


def read_store(path: str, limits: TraceLimits | None = None) -> RoutingLog:
    """A routing log directory back as a RoutingLog (every finished part of every table)."""
    limits = limits or TraceLimits.from_env()
    doc = read_meta(path)
    acc = CountsAccumulator(doc["layers"], doc["n_experts"], limits)
    for part in parts(path, "counts"):
        acc.add(counts_batches(part, limits))
    if not acc.cells:
        raise ValueError(f"{path!r} holds no counts yet; give a routing log with at least one step")
    steps, counts = acc.arrays()
    tokens = _read_tokens(path, doc["layers"], doc["n_experts"], steps, limits)
    source = doc.get("n_experts_source")
    return RoutingLog(source=str(doc.get("source", "moe-scope")), layers=doc["layers"], steps=steps, counts=counts,
                      n_experts_source=source if source in (GIVEN, INFERRED) else RECORDED,
                      top_k=doc["top_k"], meta=doc.get("meta") if isinstance(doc.get("meta"), dict) else {},
                      tokens=tokens, physical_to_logical=doc.get("physical_to_logical_map"),
                      rank_counts=_read_ranks(path, doc["layers"], steps, limits, doc.get("physical_to_logical_map")))


def _is_int(kind) -> bool:
    import pyarrow as pa
    return pa.types.is_integer(kind)


def _is_label(kind) -> bool:
    """Layer names (safeload.is_label), or nothing: `_layer_index` then says no layer is listed."""
    import pyarrow as pa
    return is_label(kind) or pa.types.is_null(kind)


def _is_list_of(test):
    def ok(kind) -> bool:
        import pyarrow as pa
        return (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind)) and test(kind.value_type)
    return ok


INTEGER, LABEL = ("integer", _is_int), ("layer name", _is_label)
COUNTS = {"step": INTEGER, "layer": LABEL, "expert": INTEGER, "count": INTEGER}  # column -> (what, type test)
TOKENS = {"step": INTEGER, "layer": LABEL, "experts": ("list of integers", _is_list_of(_is_int))}
RANKS = {"step": INTEGER, "rank": INTEGER, "layer": LABEL, "physical": INTEGER, "count": INTEGER}
COUNTING_BYTES = 96  # a row while counted: its numpy columns, its layer's and step's codes, its cell and mark


def _open_part(f, part: str, table: str, limits: TraceLimits, columns: dict, optional: dict | None = None):
    """The part's ParquetFile and the columns to read, once the needed ones (and the optional ones it has) are there
    with their types (nothing decoded yet)."""
    name = f"{os.path.basename(part)!r} in {table}/"
    pf = parquet_file(f, name, limits)
    schema = pf.schema_arrow
    wanted = {**columns, **{k: ok for k, ok in (optional or {}).items() if k in schema.names}}
    for column, (what, ok) in wanted.items():
        if column not in schema.names or not ok(schema.field(column).type):
            raise ValueError(f"{name} has no {what} column {column!r}; copy the log again")
    return pf, name, list(wanted)


def _too_big(name: str) -> ValueError:
    return ValueError(f"{name} decodes to more than the memory budget leaves it (a quarter for a table's parts); "
                      f"write smaller parts (flush more often) or raise {BUDGET_ENV}")


def read_part(part: str, table: str, limits: TraceLimits, columns: dict, optional: dict | None = None,
              room: int | None = None):
    """The named `columns` (name -> (what, pyarrow type test), each checked; `optional` ones where the file has them)
    of one part file as a pyarrow Table. The bytes they decode to are bounded before decoding (`safeload.parquet_bytes`)
    by `room` (default: a quarter of the budget). A regular file only: opened once, so a link swapped in afterwards
    is never read."""
    with open_listed(part, table) as f:
        pf, name, names = _open_part(f, part, table, limits, columns, optional)
        if parquet_bytes(f, pf, names, name) > (limits.budget // 4 if room is None else room):
            raise _too_big(name)
        try:
            return pf.read(columns=names)
        except Exception as err:  # pyarrow's own error types
            raise _unreadable(name, err) from None


def counts_batches(part: str, limits: TraceLimits):
    """One counts part, row group by row group (pyarrow decodes one whole at a time), each group's cost (its
    columns, dictionaries and the counting's temporaries) checked against a quarter of the budget before the first
    is decoded."""
    with open_listed(part, "counts") as f:
        pf, name, names = _open_part(f, part, "counts", limits, COUNTS)
        meta = pf.metadata
        rows = max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)), default=0)
        if parquet_bytes(f, pf, names, name, largest_group=True) + rows * COUNTING_BYTES > limits.budget // 4:
            raise _too_big(name)
        for i in range(meta.num_row_groups):
            try:
                group = pf.read_row_group(i, columns=names)
            except Exception as err:  # pyarrow's own error types
                raise _unreadable(name, err) from None
            yield group


def _unreadable(name: str, err: Exception) -> ValueError:
    return ValueError(f"{name} is not a readable Parquet file ({type(err).__name__}); copy the log again")


def _int_column(table, name: str, where: str, copy: bool = True) -> np.ndarray:
    """An integer column as int64 (copy=False: read-only where arrow's buffer is int64 already)."""
    values = table.column(name)
    if values.null_count:
        raise ValueError(f"{where}: column {name!r} has empty values; copy the log again")
    return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=copy)


def _layer_index(column, layers: list[str], where: str) -> np.ndarray:
    """(N,) index in `layers` of each row's layer name (text, or a number read as its digits), -1 where meta.json
    does not list it (or the row has no name)."""
    if column.null_count:
        return np.full(len(column), -1, dtype=np.int64)
    labels, codes = label_codes(column, f"{where}: column 'layer'")
    index = {name: i for i, name in enumerate(layers)}
    return np.array([index.get(name, -1) for name in labels] or [-1], dtype=np.int64)[codes]


class CountsAccumulator:
    """Counts rows (step, layer, expert, count) from part files into (S, L, E); a missing row is 0, a (step, layer,
    expert) given twice is refused (a writer writes each step once), and every count stays an exact integer."""

    def __init__(self, layers: list[str], n_experts: int, limits: TraceLimits) -> None:
        self.layers, self.E, self.limits = layers, n_experts, limits
        self.cells: dict[int, np.ndarray] = {}  # step -> (L, E)

    def add(self, batches) -> list[int]:
        """Add one part's rows (tables or record batches, e.g. `counts_batches`, closed when done); returns the
        steps it holds, ascending. A step's cells start at -1 (no row yet) while the part is read, so a cell given
        twice is caught across row groups too."""
        try:
            return self._add(batches)
        finally:
            if hasattr(batches, "close"):
                batches.close()

    def _add(self, batches) -> list[int]:
        fresh: dict[int, np.ndarray] = {}  # step -> (L · E,) of this part: a row of the block of its first batch
        blocks, L, E = [], len(self.layers), self.E
        for batch in batches:
            where = "a counts part"
            step, expert, count = (_int_column(batch, name, where, copy=False) for name in ("step", "expert", "count"))
            layer = _layer_index(batch.column("layer"), self.layers, where)
            if (layer < 0).any():
                raise ValueError("a counts part names a layer that meta.json does not list; copy the log again")
            if len(count) and (count.min() < 0 or step.min() < 0 or expert.min() < 0 or expert.max() >= E):
                raise ValueError(f"a counts part holds a negative count or step, or an expert outside 0..{E - 1}")
            group, steps = pd.factorize(step)                                         # (N,), in order of appearance
            listed = [int(s) for s in steps]
            begun = np.array([s in fresh for s in listed], dtype=bool)                # steps of an earlier batch
            new = [s for s, old in zip(listed, begun) if not old]
            if any(s in self.cells for s in new):
                raise ValueError("two counts parts hold the same step; copy the log again (a writer writes a step "
                                 "once)")
            self.limits.check_summary(len(self.cells) + len(fresh) + len(new), L, E)
            cell = layer * E + expert                                                 # (N,) within a step
            if begun.any():  # into their own cells: their rows sorted once, a slice each
                mine = np.flatnonzero(begun[group])
                mine = mine[np.argsort(group[mine], kind="stable")]
                sizes = np.bincount(group[mine], minlength=len(listed))
                ends = np.cumsum(sizes)
                for i in np.flatnonzero(begun):
                    rows = mine[ends[i] - sizes[i]: ends[i]]
                    if put_once(fresh[listed[i]], cell[rows], count[rows]) is not None:
                        raise ValueError("a counts part gives one (step, layer, expert) twice; copy the log again")
            if new:  # every row of the new steps at once: a part of 1 M one-row steps took 16 s a step at a time
                row_of = np.cumsum(~begun) - 1                                        # step index -> its block row
                block = np.full((len(new), L * E), -1, dtype=np.int64)
                rows = ~begun[group]
                if put_once(block.reshape(-1), row_of[group[rows]] * (L * E) + cell[rows], count[rows]) is not None:
                    raise ValueError("a counts part gives one (step, layer, expert) twice; copy the log again")
                fresh.update(zip(new, block))
                blocks.append(block)
        for block in blocks:
            block[block < 0] = 0  # no row: no tokens
        self.cells.update((s, cells.reshape(L, E)) for s, cells in fresh.items())
        return sorted(fresh)

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
    weights = {"weights": ("list of numbers", _is_list_of(pa.types.is_floating))}
    for part in files:  # every part within what the ones before leave of a quarter of the budget
        tables.append(read_part(part, "tokens", limits, TOKENS, weights, room=limits.budget // 4 - held))
        held += tables[-1].nbytes
    where = f"{path!r}: the tokens table"
    table = _concat(tables, where)
    experts = table.column("experts").combine_chunks()
    lengths = pc_lengths(experts)
    if len(lengths) and (lengths.min() != lengths.max()):
        raise ValueError(f"{where} gives tokens different numbers of expert slots; copy the log again")
    K = int(lengths[0]) if len(lengths) else 1
    ids = experts.flatten().to_numpy(zero_copy_only=False)
    max_id = check_ids(ids, where, allow_padding=True)
    check_distinct(ids.reshape(-1, K), where)
    if max_id >= n_experts:
        raise ValueError(f"{where} names expert {max_id}, outside 0..{n_experts - 1}; copy the log again")
    weights = None
    if "weights" in table.column_names:
        weights = table.column("weights").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        weights = weights.astype(np.float32).reshape(-1, K)
    layer = _layer_index(table.column("layer"), layers, where)
    step = _int_column(table, "step", where)
    if (layer < 0).any() or not np.isin(step, steps).all():
        raise ValueError(f"{where} names a layer or step the counts do not have; copy the log again")
    return TokenRouting(step=step, layer=layer.astype(np.int32), ids=ids.astype(np.int64).reshape(-1, K),
                        weights=weights)


def pc_lengths(array) -> np.ndarray:
    """Each list's length of a (fixed-size) list array."""
    import pyarrow.compute as pc
    return pc.list_value_length(array).to_numpy(zero_copy_only=False)


def _read_ranks(path: str, layers: list[str], steps: np.ndarray, limits: TraceLimits, p2l=None) -> np.ndarray | None:
    """The ranks table back as (S, W, L, P) (rank = position 0..W-1 in the source's rank order; P the largest slot
    named + 1, at least the map's slots when the log has a map: a writer may leave out rows of 0 tokens)."""
    files = parts(path, "ranks")
    if not files:
        return None
    tables, held = [], 0
    for part in files:
        tables.append(read_part(part, "ranks", limits, RANKS, room=limits.budget // 4 - held))
        held += tables[-1].nbytes
    where = f"{path!r}: the ranks table"
    table = _concat(tables, where)
    if table.num_rows == 0:
        raise ValueError(f"{where} has no rows; copy the log again (or move ranks/ aside)")
    step, rank, physical, count = (_int_column(table, name, where) for name in ("step", "rank", "physical", "count"))
    layer = _layer_index(table.column("layer"), layers, where)
    if (layer < 0).any() or not np.isin(step, steps).all() or min(rank.min(), physical.min(), count.min()) < 0:
        raise ValueError(f"{where} names a layer or step the counts do not have, or a negative value; copy the log "
                         f"again")
    W, P = int(rank.max()) + 1, max(int(physical.max()) + 1, 0 if p2l is None else len(p2l[0]))
    if len(steps) * W * len(layers) * P * 8 > limits.budget // 4:
        raise ValueError(f"{where} needs more than a quarter of the memory budget; read the counts alone (move "
                         f"ranks/ aside) or raise the budget")
    out = np.zeros((len(steps), W, len(layers), P), dtype=np.int64)
    out[np.searchsorted(steps, step), rank, layer, physical] = count
    return out


def _concat(tables: list, where: str):
    """The parts of one table as one; parts whose columns disagree in type are one line."""
    import pyarrow as pa
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, ValueError, TypeError):
        raise ValueError(f"{where}'s parts disagree on a column's type; copy the log again") from None
