"""Parquet files that decode far past their size: a label repeated on every row, or millions of equal numbers,
take a few kilobytes of dictionary-encoded pages. Every reader must refuse them (or read them) within the memory
budget: each runs in a fresh process here, and its peak memory is compared with the same process reading a small
valid file. Before the labels were read as dictionaries, these files took 4 to 9 GB under a 1 GB budget."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe.traces.records import TraceLimits
from moe.traces.safeload import label_codes, parquet_bytes, parquet_file
from moe.traces.store import LogWriter
from moe.traces.store_read import read_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL = "x" * 100_000  # one 100 KB layer label
ROWS = 5_000           # on every row: 500 MB once decoded as plain text


def _label_column(n: int, label: str = LABEL):
    """n rows of one label, written as a dictionary (one copy of the label in the file)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([label]))


def _write(path, columns: dict, **kwargs) -> None:
    # store_schema=False: the file keeps no Arrow schema, so a reader sees a plain text column, as any writer's
    pq.write_table(pa.table(columns), path, store_schema=False, compression="zstd", **kwargs)


def _peak_mb(path: str) -> tuple[float, str]:
    """(peak RSS in MB, the error line) of read_log(path) in a fresh process, budget 1 GB. The peak is the process's
    own VmHWM: ru_maxrss would carry the test runner's peak over (a child started with vfork + exec inherits it).
    The child leaves with os._exit once it has printed: what it measured does not depend on its teardown."""
    code = ("import os, re, sys\n"
            "from moe.traces.formats import read_log\n"
            "try:\n    read_log(sys.argv[1]); line = 'read'\n"
            "except ValueError as err:\n    line = str(err)\n"
            "status = open('/proc/self/status').read()\n"
            "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) / 1024)\nprint(line, flush=True)\n"
            "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "MOE_SCOPE_MEMORY_GB": "1", "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    peak, line = out.stdout.splitlines()[-2:]
    return float(peak), line


def _small_counts(path) -> None:
    _write(path, {"layer": ["0", "1"], "expert": [0, 1], "count": [3, 4]})


def _small_trace(path) -> None:
    """Two tokens × 4 experts, top-1: a valid per-(token, expert) trace."""
    _write(path, {"step": np.zeros(8, np.int64), "layer": ["0"] * 8, "token": np.arange(8) // 4,
                  "expert": np.arange(8) % 4, "router_logit": np.zeros(8, np.float32), "routed": np.arange(8) % 4 == 0})


@pytest.fixture(scope="module")
def baseline_mb(tmp_path_factory) -> dict[str, float]:
    """Per reader, the peak of the same process reading a small valid file of its format: the readers import
    different modules (the trace's summary more than the counts), so each bomb is compared with its own."""
    folder = tmp_path_factory.mktemp("small")
    _small_counts(str(folder / "counts.parquet"))
    _small_trace(str(folder / "trace.parquet"))
    with LogWriter(str(folder / "log"), ["0"], 4, top_k=1) as w:
        w.write_step(0, [[1, 2, 3, 4]])
    peaks = {}
    for kind, name in (("counts", "counts.parquet"), ("trace", "trace.parquet"), ("store", "log")):
        peaks[kind], line = _peak_mb(str(folder / name))
        assert line == "read", (kind, line)
    return peaks


def _store(path, rows: int, layer, step=None, group: int | None = None) -> str:
    """A routing log directory (one layer "0", 4 experts) whose one counts part holds `rows` rows (row groups of
    `group` rows; default: one)."""
    LogWriter(path, ["0"], 4, top_k=1).close()
    os.makedirs(os.path.join(path, "counts"), exist_ok=True)
    _write(os.path.join(path, "counts", "part-000000000000-bomb.parquet"),
           {"step": np.zeros(rows, np.int64) if step is None else step, "layer": layer,
            "expert": np.zeros(rows, np.int32), "count": np.ones(rows, np.int64)}, row_group_size=group or rows)
    return path


def test_a_label_repeated_on_every_row_is_refused_within_the_budget(tmp_path, baseline_mb):
    counts = str(tmp_path / "counts.parquet")
    _write(counts, {"layer": _label_column(ROWS), "expert": np.zeros(ROWS, np.int64), "count": np.ones(ROWS, np.int64)})
    trace = str(tmp_path / "trace.parquet")
    _write(trace, {"step": np.zeros(ROWS, np.int64), "layer": _label_column(ROWS), "token": np.arange(ROWS) // 4,
                   "expert": np.arange(ROWS) % 4, "router_logit": np.zeros(ROWS, np.float32),
                   "routed": np.arange(ROWS) % 4 == 0})
    store = _store(str(tmp_path / "log"), ROWS, _label_column(ROWS))
    assert max(os.path.getsize(counts), os.path.getsize(trace)) < 100_000  # 500 MB of labels in under 100 KB
    expected = {counts: "a layer label is not 1 to 32 letters", trace: "a layer label is not 1 to 32 letters",
                store: "names a layer that meta.json does not list"}
    refused_within(expected, baseline_mb, 150)  # the labels decoded: 500 MB or more


def refused_within(expected: dict, baseline_mb: dict, growth_mb: float) -> None:
    """Each of the counts, trace and store files (in that order: path -> the words its refusal holds) is refused in a
    fresh process whose peak stays within growth_mb of its reader's baseline."""
    for (path, refusal), kind in zip(expected.items(), ("counts", "trace", "store")):
        peak, line = _peak_mb(path)
        assert refusal in line, (path, line)
        assert peak - baseline_mb[kind] < growth_mb, (path, peak, baseline_mb)


def test_millions_of_equal_rows_in_a_log_part_are_read_one_row_group_at_a_time(tmp_path, baseline_mb):
    rows = 8_000_000  # 192 MB as columns, ~1 MB on disk: the old reader decoded it whole, then copied it 4 times
    one = _store(str(tmp_path / "one"), rows, _label_column(rows, "0"))
    assert os.path.getsize(os.path.join(one, "counts", "part-000000000000-bomb.parquet")) < 2_000_000
    peak, line = _peak_mb(one)  # one row group of 8 M rows: over a quarter of the budget, refused before decoding
    assert "decodes to more than the memory budget leaves it" in line, line
    assert peak - baseline_mb["store"] < 50, (peak, baseline_mb)
    groups = _store(str(tmp_path / "groups"), rows, _label_column(rows, "0"), group=1 << 20)  # as a writer's parts
    peak, line = _peak_mb(groups)  # one row group at a time: the first one repeats a cell
    assert "gives one (step, layer, expert) twice" in line, line
    assert peak - baseline_mb["store"] < 200, (peak, baseline_mb)


def test_a_part_whose_row_group_would_not_fit_the_budget_is_refused_before_decoding(tmp_path):
    store = _store(str(tmp_path / "log"), 1_000, _label_column(1_000, "0"), step=np.arange(1_000))
    with pytest.raises(ValueError, match="decodes to more than the memory budget leaves it"):
        read_store(store, TraceLimits(budget=400_000))  # a quarter: 100 KB; the 1,000 rows need ~130 KB
    assert read_store(store, TraceLimits(budget=1 << 30)).counts.shape == (1_000, 1, 4)


def test_a_step_split_across_row_groups_is_counted_and_a_cell_given_twice_across_them_is_refused(tmp_path):
    path = str(tmp_path / "log")
    with LogWriter(path, ["a", "b"], 3, top_k=1) as w:
        w.write_step(0, [[1, 2, 3], [4, 5, 6]])   # one part of one row group, as LogWriter writes it
        w.write_step(7, [[0, 9, 0], [8, 0, 7]])
    log = read_store(path)
    assert log.steps.tolist() == [0, 7]
    assert log.counts.tolist() == [[[1, 2, 3], [4, 5, 6]], [[0, 9, 0], [8, 0, 7]]]
    counts = os.path.join(path, "counts")
    # step 9 over two row groups (rows 0-2 and 3-4), one cell (layer b, expert 1) in each: refused
    _write(os.path.join(counts, "part-zzz.parquet"), {"step": [9] * 5, "layer": ["a", "a", "b", "b", "b"],
                                                      "expert": [0, 1, 1, 2, 1], "count": [1, 1, 1, 1, 1]},
           row_group_size=3)
    with pytest.raises(ValueError, match=r"gives one \(step, layer, expert\) twice"):
        read_store(path)
    _write(os.path.join(counts, "part-zzz.parquet"), {"step": [9, 9, 8, 9, 8], "layer": ["a", "b", "a", "b", "b"],
                                                      "expert": [0, 1, 2, 2, 0], "count": [1, 2, 3, 4, 5]},
           row_group_size=3)
    assert pq.ParquetFile(os.path.join(counts, "part-zzz.parquet")).metadata.num_row_groups == 2
    log = read_store(path)
    assert log.steps.tolist() == [0, 7, 8, 9]
    assert log.counts[2].tolist() == [[0, 0, 3], [5, 0, 0]] and log.counts[3].tolist() == [[1, 0, 0], [0, 2, 4]]


def _bound_and_read(path, columns, largest_group=False):
    with open(path, "rb") as f:
        pf = parquet_file(f, "t", TraceLimits.from_env())
        bound = parquet_bytes(f, pf, columns, "t", largest_group)
        if not largest_group:
            return bound, pf.read(columns=columns).nbytes
        return bound, max(pf.read_row_group(i, columns=columns).nbytes for i in range(pf.metadata.num_row_groups))


@pytest.mark.parametrize("rows, group", [(10_000, 3_000), (100, 7), (1, 1), (50_000, 50_000)])
def test_the_footer_bound_holds_what_pyarrow_builds(tmp_path, rows, group):
    path = tmp_path / "t.parquet"
    table = {"step": np.arange(rows, dtype=np.int64), "layer": [f"layer{i % 3}" for i in range(rows)],
             "experts": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(rows * 4, np.int32)), 4),
             "weights": pa.array([[1.0, 2.0]] * rows, type=pa.list_(pa.float32())), "b": np.ones(rows, bool),
             "small": np.ones(rows, np.int8)}
    pq.write_table(pa.table(table), path, row_group_size=group)
    names = list(table)
    for columns in [[name] for name in names] + [names]:
        bound, built = _bound_and_read(path, columns)
        assert built <= bound, (columns, built, bound)
    flat = ["step", "layer", "b", "small"]
    bound, built = _bound_and_read(path, flat, largest_group=True)
    assert built <= bound <= _bound_and_read(path, flat)[0]


def test_a_type_the_footer_cannot_bound_is_refused_before_reading(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"nested": pa.array([[["a"]]]), "text_list": pa.array([["a", "b"]])}), path)
    for column in ("nested", "text_list", "missing"):
        with open(path, "rb") as f, pytest.raises(ValueError, match=f"no column '{column}' of numbers, labels"):
            parquet_bytes(f, parquet_file(f, "t", TraceLimits.from_env()), [column], "t")


def test_label_codes_keeps_the_order_of_first_appearance_over_every_chunk():
    chunked = pa.chunked_array([pa.array(["b", "a", "b"]).dictionary_encode(),
                                pa.array(["c", "a", "z"]).dictionary_encode().slice(0, 2)])
    labels, codes = label_codes(chunked, "t")
    assert labels == ["b", "a", "c"] and codes.tolist() == [0, 1, 0, 2, 1]
    assert [labels[k] for k in codes] == chunked.to_pylist()                       # each row's own label
    labels, codes = label_codes(pa.array([3, 1, 3, 2]), "t")
    assert labels == ["3", "1", "2"] and codes.tolist() == [0, 1, 0, 2]
    with pytest.raises(ValueError, match="empty \\(null\\) labels"):
        label_codes(pa.array(["a", None]), "t")


def test_a_footer_over_the_budget_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"layer": ["0"], "expert": [0], "count": [1]}), path)
    size = int.from_bytes(open(path, "rb").read()[-8:-4], "little")
    with open(path, "rb") as f, pytest.raises(ValueError, match="Parquet footer of"):
        parquet_file(f, "t", TraceLimits(budget=size * 128 - 1))                    # line_bytes: budget / 128
    with open(path, "rb") as f:
        assert parquet_file(f, "t", TraceLimits(budget=size * 128)).metadata.num_rows == 1


def test_many_different_labels_are_refused_before_each_becomes_a_python_string(tmp_path, baseline_mb):
    n = 4_000_000  # 4 M layers in a 60 KB file: ~300 bytes each as Python strings, 1.2 GB
    counts = str(tmp_path / "counts.parquet")
    pq.write_table(pa.table({"layer": np.arange(n), "expert": np.zeros(n, np.int64), "count": np.ones(n, np.int64)}),
                   counts, use_dictionary=False, column_encoding="DELTA_BINARY_PACKED", compression="zstd")
    store = _store(str(tmp_path / "log"), n, np.arange(n), group=1 << 20)
    for path, kind in ((counts, "counts"), (store, "store")):
        peak, line = _peak_mb(path)
        assert "names more than 16,384 different labels" in line, line
        assert peak - baseline_mb[kind] < 300, (path, peak, baseline_mb)  # measured 171, 107 MB; before: 1.35 GB, 481


def test_labels_written_as_bytes_or_views_read_as_their_text(tmp_path):
    from moe.traces.formats import read_log
    for kind in (pa.binary(), pa.string_view(), pa.large_string()):
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.table({"layer": pa.array([b"1", b"0", b"1"] if kind == pa.binary() else ["1", "0", "1"],
                                                   kind), "expert": [0, 1, 1], "count": [3, 4, 5]}), path)
        log = read_log(str(path))
        assert log.layers == ["0", "1"] and log.counts[0].tolist() == [[0, 4], [3, 5]], kind
    undecodable = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"layer": pa.array([b"\xff"]), "expert": [0], "count": [1]}), undecodable)
    with pytest.raises(ValueError, match="a layer label is not 1 to 32 letters"):
        read_log(str(undecodable))


def test_a_column_named_twice_or_parts_that_disagree_are_one_line(tmp_path):
    from moe.traces.formats import read_log
    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["0"]), pa.array(["0"]), pa.array([0]), pa.array([1])],
                                        names=["layer", "layer", "expert", "count"]), twice)
    with pytest.raises(ValueError, match="names a column twice"):
        read_log(str(twice))
    path = str(tmp_path / "log")
    log = LogWriter(path, ["0"], 4, top_k=1)
    log.write_step(0, [[1, 0, 0, 0]], tokens={"layer": [0], "ids": [[0]]})
    log.close()
    tokens = os.path.join(path, "tokens")
    pq.write_table(pa.table({"step": [0], "layer": [0], "token": [1], "experts": [[1]]}),
                   os.path.join(tokens, "part-zzz.parquet"))  # layer as a number here, as text in the first part
    with pytest.raises(ValueError, match="the tokens table's parts disagree on a column's type"):
        read_store(path)


def test_one_label_of_many_megabytes_is_refused_from_the_footer(tmp_path, baseline_mb):
    label = "a" * 100_000_000  # 15 KB on disk: the old reader, and a bound that trusted the pages, took 1.5-2.5 GB
    counts = str(tmp_path / "counts.parquet")
    pq.write_table(pa.table({"layer": [label], "expert": [0], "count": [1]}), counts, compression="zstd")
    trace = str(tmp_path / "trace.parquet")
    pq.write_table(pa.table({"step": np.zeros(4, np.int64), "layer": [label] * 4, "token": np.zeros(4, np.int64),
                             "expert": np.arange(4), "router_logit": np.zeros(4, np.float32),
                             "routed": np.array([1, 0, 0, 0], bool)}), trace, compression="zstd")
    store = str(tmp_path / "log")
    LogWriter(store, ["0"], 4, top_k=1).close()
    os.makedirs(os.path.join(store, "counts"))
    pq.write_table(pa.table({"step": [0], "layer": [label], "expert": np.zeros(1, np.int32), "count": [1]}),
                   os.path.join(store, "counts", "part-000000000000-x.parquet"), compression="zstd")
    del label
    for path, kind in ((counts, "counts"), (trace, "trace"), (store, "store")):
        peak, line = _peak_mb(path)
        assert "holds text far longer than layer names" in line, line
        assert peak - baseline_mb[kind] < 100, (path, peak, baseline_mb)
