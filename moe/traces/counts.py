"""Plain token counts as a `RoutingLog`: a CSV or Parquet table with columns `layer, expert, count` and an
optional `step` — the common denominator of torchtitan's `tokens_per_expert`, DeepSpeed's `exp_counts` or any
script that counts routed tokens.

Rules (every violation is one ValueError line):
- Rows are sparse: a (step, layer, expert) without a row counted 0 tokens. A step is one that has a row: steps are
  not filled in between (a log of every 10th step reads as consecutive steps, cut into windows as such), so an idle step
  must be written as rows of zeros to count as a step. A (step, layer, expert) given twice
  is refused rather than summed (a file written twice by accident would otherwise double silently).
- `count` is a non-negative integer; floats are accepted only when integral (torchtitan keeps float32 counts).
  `expert` and `step` are non-negative integers; without `step` every row is step 0.
- `layer` labels are kept as written (1 to 32 letters, digits, '.', '_' or '-', like Parquet traces); they are
  ordered numerically when every label is a number, else by first appearance. Steps are sorted ascending.
- The file does not record the expert count: E is --n-experts when given (an expert above it is refused), else
  the largest expert + 1 (a top expert that never got a token is then missing: give --n-experts).
- The file is read with pyarrow after its size is checked against half the memory budget (the other half is the
  statistics', which are built after the file's rows are freed): a CSV's size is multiplied by CSV_EXPANSION first;
  a Parquet file is what its footer says its columns decode to (layer labels read as a dictionary:
  `moe.traces.safeload.parquet_bytes`) plus COUNTING_BYTES a row.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from moe.memory import BUDGET_ENV, describe_over
from moe.traces.log import INFERRED, RoutingLog, check_ids, put_once, resolve_experts
from moe.traces.records import INT64_MAX, LAYER_NAME, TraceLimits, check_experts, open_regular
from moe.traces.safeload import is_label, label_codes, parquet_bytes, parquet_file

CSV_SOURCE, PARQUET_SOURCE = "counts-csv", "counts-parquet"
NEEDED = ("layer", "expert", "count")
PARQUET_MAGIC = b"PAR1"
# Bytes one CSV byte may take while read: a 6-byte row "0,0,0\n" becomes four 8-byte columns (32 bytes, ~5x),
# plus pyarrow's parse buffers and the sorts and copies of the counting below.
CSV_EXPANSION = 16
# Bytes a row takes while counted, besides its columns: its expert as int64, its layer's and step's codes (the step's
# become its cell), its mark and the gathers that check it (measured: 85 bytes a row with the 32 of its columns).
COUNTING_BYTES = 64
NUMBER = re.compile(r"[0-9]{1,18}")


def _header(head: bytes) -> list[str]:
    """The column names of a CSV's first line, lower-cased, quotes and spaces stripped ([] if not text)."""
    try:
        line = head.split(b"\n", 1)[0].decode("utf-8-sig")
    except UnicodeDecodeError:
        return []
    return [name.strip().strip('"').strip().lower() for name in line.rstrip("\r").split(",")]


def looks_like_counts_csv(head: bytes) -> bool:
    """Whether the first line of a file is a CSV header naming layer, expert and count."""
    return set(NEEDED) <= set(_header(head))


def is_counts_parquet(schema_names) -> bool:
    """Whether a Parquet schema has the layer, expert and count columns."""
    return set(NEEDED) <= set(schema_names)


def _too_big(path: str, size: int, cap: int) -> ValueError:
    size_text, cap_text = describe_over(size, cap)
    return ValueError(f"{path!r} takes about {size_text} in memory, over the {cap_text} a "
                      f"counts file may take under the memory budget; give a shorter file or raise {BUDGET_ENV}")


def _read_csv(f, path: str, cap: int):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    f.seek(0, 2)
    size = f.tell()
    if size * CSV_EXPANSION > cap:
        raise _too_big(path, size * CSV_EXPANSION, cap)
    f.seek(0)
    names = _header(f.read(min(size, 1 << 16)))
    if not set(NEEDED) <= set(names):
        raise ValueError(f"{path!r} has no header naming columns {list(NEEDED)}; write the counts as a CSV whose "
                         f"first line is layer,expert,count (and step, optionally)")
    named = [n for n in names if n]
    if len(set(named)) < len(named):  # pyarrow would read one of the two silently (as a Parquet file is, refused)
        raise ValueError(f"{path!r} names a column twice in its header (names are read without case); give each "
                         f"column once")
    f.seek(0)
    wanted = [n for n in ("step", *NEEDED) if n in names]
    try:  # one thread, as megatron_arrow reads JSON: threads left alive at exit aborted 2 of 40 runs (SIGABRT)
        table = pacsv.read_csv(f, read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False),
                               convert_options=pacsv.ConvertOptions(include_columns=wanted,
                                                                    column_types={"layer": pa.string()}))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a readable counts CSV ({type(err).__name__}: a row with the wrong number "
                         f"of fields, or a value that is not a number); write one layer,expert,count row per "
                         f"line") from None
    return table


def _read_parquet(f, path: str, limits: TraceLimits, cap: int):
    """The counts columns of a Parquet file, once their types and the bytes they take (the columns as pyarrow reads
    them, `safeload.parquet_bytes`, and COUNTING_BYTES a row) fit `cap`: nothing decoded before."""
    pf = parquet_file(f, repr(path), limits)
    schema = pf.schema_arrow
    if not is_counts_parquet(schema.names):
        raise ValueError(f"{path!r} has no columns {list(NEEDED)}; give a counts table (layer, expert, count and "
                         f"step, optionally)")
    columns = [n for n in ("step", *NEEDED) if n in schema.names]
    for name in columns:
        _check_type(schema.field(name).type, name, path)
    need = parquet_bytes(f, pf, columns, repr(path)) + pf.metadata.num_rows * COUNTING_BYTES
    if need > cap:
        raise _too_big(path, need, cap)
    try:
        return pf.read(columns=columns)
    except Exception as err:
        raise ValueError(f"{path!r} is not a readable Parquet file ({type(err).__name__}); write it again") from None


def _check_type(kind, name: str, path: str) -> None:
    """Before reading: layer names are text or integers, counts integers or floats, experts and steps integers."""
    import pyarrow as pa
    if name == "layer":
        if not is_label(kind):
            raise ValueError(f"{path!r}: column 'layer' must hold layer names or numbers; name layers like 3 or "
                             f"decoder.3")
    elif not (pa.types.is_integer(kind) or (name == "count" and pa.types.is_floating(kind))):
        raise ValueError(f"{path!r}: column {name!r} must hold integers; write whole numbers")


def _integers(table, name: str, path: str, allow_integral_floats: bool = False) -> np.ndarray:
    """A column of non-negative integers (integral floats where allowed) as int64; else one line."""
    import pyarrow as pa
    column = table.column(name)
    if column.null_count:
        raise ValueError(f"{path!r}: column {name!r} has empty values; give a number on every row")
    kind = column.type
    values = column.to_numpy()
    if pa.types.is_floating(kind) and allow_integral_floats:
        values = values.astype(np.float64)  # float16 cannot hold the 2**63 bound (numpy warned of an overflow)
        if not np.isfinite(values).all() or (values != np.floor(values)).any() or (values >= 2.0 ** 63).any():
            raise ValueError(f"{path!r}: column {name!r} holds a value that is not a whole number; counts are "
                             f"token counts")
    elif not pa.types.is_integer(kind):
        raise ValueError(f"{path!r}: column {name!r} must hold integers; write whole numbers")
    elif pa.types.is_unsigned_integer(kind) and len(values) and int(values.max()) > INT64_MAX:
        raise ValueError(f"{path!r}: column {name!r} holds a value beyond 2^63 - 1")
    values = values.astype(np.int64, copy=False)
    if len(values) and int(values.min()) < 0:
        raise ValueError(f"{path!r}: column {name!r} holds a negative value; counts, experts and steps are >= 0")
    return values


def _layer_labels(table, path: str) -> tuple[list[str], np.ndarray]:
    """The layer labels in order (numeric when all are numbers, else first appearance) and each row's index."""
    column = table.column("layer")
    if column.null_count:
        raise ValueError(f"{path!r}: column 'layer' has empty values; give a layer on every row")
    labels, index = label_codes(column, f"{path!r}: column 'layer'")
    if any(not LAYER_NAME.fullmatch(name) for name in labels):
        raise ValueError(f"{path!r}: a layer label is not 1 to 32 letters, digits, '.', '_' or '-'; name layers "
                         f"like 3 or decoder.3")
    if all(NUMBER.fullmatch(name) for name in labels):
        order = sorted(range(len(labels)), key=lambda k: (int(labels[k]), labels[k]))
        rank = np.empty(len(labels), dtype=np.int64)
        rank[order] = np.arange(len(labels))
        labels, index = [labels[k] for k in order], rank[index]
    return labels, index


def _table(path: str, limits: TraceLimits):
    cap = limits.budget // 2  # freed before the statistics, which take the other half (TraceLimits.check_summary)
    with open_regular(path) as f:
        parquet = f.read(4) == PARQUET_MAGIC
        f.seek(0)
        table = _read_parquet(f, path, limits, cap) if parquet else _read_csv(f, path, cap)
    if table.num_rows == 0:
        raise ValueError(f"{path!r} holds no rows; give at least one layer,expert,count row")
    return table, PARQUET_SOURCE if parquet else CSV_SOURCE


def read_counts(path: str, n_experts: int | None, limits: TraceLimits | None = None) -> RoutingLog:
    """A counts table as a routing log: (step, layer, expert) rows → counts (S, L, E), missing rows 0."""
    limits = limits or TraceLimits.from_env()
    table, source = _table(path, limits)
    expert = _integers(table, "expert", path)                                        # (N,)
    count = _integers(table, "count", path, allow_integral_floats=True)              # (N,)
    step = (_integers(table, "step", path) if "step" in table.column_names
            else np.zeros(table.num_rows, dtype=np.int64))                           # (N,)
    layers, layer = _layer_labels(table, path)                                       # (N,)
    max_id = check_ids(expert, f"{path!r}: column 'expert'")
    if n_experts is not None:
        E, source_of_e = resolve_experts(n_experts, None, max_id, f"the counts file {path!r}")
    else:  # a counts table does not record E: its largest id + 1, and the page and JSON say it was inferred
        E, source_of_e = check_experts(max_id + 1, f"the counts file {path!r}'s largest expert + 1"), INFERRED
    cell, steps = pd.factorize(step, sort=True)                                      # (N,), (S,) ascending
    S, L = len(steps), len(layers)
    limits.check_summary(S, L, E)
    cell *= L                                                                        # in place: (N,) flat
    cell += layer                                                                    # (step, layer, expert)
    cell *= E
    cell += expert
    counts = np.full(S * L * E, -1, dtype=np.int64)
    row = put_once(counts, cell, count)
    if row is not None:
        raise ValueError(f"{path!r}: step {int(step[row])}, expert {int(expert[row])} appears twice in one layer; "
                         f"give one row per step, layer and expert (sum the repeats)")
    counts[counts < 0] = 0                                                           # no row: no tokens
    steps = np.asarray(steps, dtype=np.int64)
    meta = {"rows": int(table.num_rows), "layer_order": "numeric" if all(NUMBER.fullmatch(x) for x in layers)
            else "first appearance"}
    return RoutingLog(source=source, layers=layers, steps=steps, counts=counts.reshape(S, L, E),
                      n_experts_source=source_of_e, meta=meta)
