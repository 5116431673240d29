"""Parquet pages read from their own headers (moe.traces.parquet_pages): the walk agrees with an independent decoding
of every page pyarrow wrote, stops where pyarrow's reader stops, refuses a damaged header in one line, and every
reader refuses a file whose pages decompress past the budget before a page is decompressed, whatever its footer
says. Before the walk, a 180 KB counts file of three 2 GB pages took the reader to 4.4 GB under a 1 GB budget."""
from __future__ import annotations

import io
import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe.traces.formats import read_log
from moe.traces.parquet_pages import MAX_HEADER_BYTES, MAX_PAGES, PADDING, chunk_pages
from moe.traces.records import TraceLimits
from moe.traces.safeload import chunk_bytes, parquet_bytes, parquet_file
from moe.traces.store import LogWriter
from parquet_craft import chunks, encode, field, footer, page_bomb, pages
import test_parquet_guard
from test_parquet_guard import _peak_mb

baseline_mb = test_parquet_guard.baseline_mb  # the fixture: each reader's peak on a small valid file

PAGE = 300_000_000  # each column's one page: 300 MB of zeros, ~10 KB as zstd


def _table(rows: int) -> pa.Table:
    rng = np.random.default_rng(rows)
    step = pa.array(np.arange(rows) // 7)
    return pa.table({"step": step, "layer": pa.array([f"layer{i % 5}" for i in range(rows)]),
                     "expert": pa.array(rng.integers(0, 64, rows)),
                     "count": pa.array([None if i % 11 == 0 else i for i in range(rows)], pa.int64()),
                     "experts": pa.array([[i % 8, (i + 1) % 8] for i in range(rows)], pa.list_(pa.int32()))})


WRITES = [dict(), dict(compression="zstd"), dict(compression="snappy", use_dictionary=False),
          dict(data_page_version="2.0", compression="gzip"), dict(data_page_size=512, compression="none"),
          dict(data_page_version="2.0", data_page_size=256, row_group_size=1000, compression="zstd"),
          dict(column_encoding={"step": "DELTA_BINARY_PACKED"}, use_dictionary=["layer"])]


@pytest.mark.parametrize("options", WRITES, ids=[str(i) for i in range(len(WRITES))])
def test_the_walk_counts_every_page_pyarrow_wrote(tmp_path, options):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(3000), path, **options)
    data, pf = path.read_bytes(), pq.ParquetFile(path)
    metas = [pf.metadata.row_group(g).column(j) for g in range(pf.metadata.num_row_groups)
             for j in range(pf.metadata.num_columns)]
    with open(path, "rb") as f:
        for meta, chunk in zip(metas, chunks(footer(data))):
            every = pages(data, chunk)                                                 # the independent decoding
            sizes = [field(header, 2)[2] for _, header, _ in every]
            dictionary = sum(field(header, 2)[2] for _, header, _ in every if field(header, 1)[2] == 2)
            # pyarrow's footer counts each page's header and its decompressed bytes
            assert sum(sizes) + sum(n for *_, n in every) == meta.total_uncompressed_size
            walked = chunk_pages(f, meta)
            assert (walked.uncompressed, walked.largest, walked.dictionary) == (sum(sizes), max(sizes), dictionary)
            assert (dictionary > 0) == meta.has_dictionary_page, meta.path_in_schema
    several = 3 if "data_page_size" in options else 1
    assert max(len(pages(data, c)) for c in chunks(footer(data))) >= several


def _chunk(data: bytes, **changes) -> SimpleNamespace:
    """The first column chunk's metadata as chunk_pages reads it, with changes."""
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0).column(0)
    names = ("data_page_offset", "has_dictionary_page", "dictionary_page_offset", "total_compressed_size",
             "num_values")
    return SimpleNamespace(**{**{name: getattr(meta, name) for name in names}, **changes})


def test_the_walk_stops_at_the_footers_value_count_as_pyarrow_does(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": np.arange(4000)}), path, data_page_size=512, use_dictionary=False,
                   compression="none")
    data = path.read_bytes()
    every = pages(data, chunks(footer(data))[0])
    counts = [field(field(header, 5)[2], 1)[2] for _, header, _ in every]
    sizes = [field(header, 2)[2] for _, header, _ in every]
    assert len(every) > 3 and sum(counts) == 4000
    f = io.BytesIO(data)
    for wanted in (1, counts[0], counts[0] + 1, 4000):
        read = int(np.searchsorted(np.cumsum(counts), wanted)) + 1                     # pages until `wanted` values
        assert chunk_pages(f, _chunk(data, num_values=wanted)).uncompressed == sum(sizes[:read])
    # a chunk whose bytes end at page 3: pyarrow never reads it, but for files that claim an old writer it reads
    # PADDING bytes more (PARQUET-816), so a header there counts too (the walk always pads); a header cut by the
    # chunk's end is damaged, as pyarrow finds it
    for end, read in ((every[2][0], 3), (every[2][0] - PADDING, 2)):
        short = _chunk(data, total_compressed_size=end - every[0][0])
        assert chunk_pages(f, short).uncompressed == sum(sizes[:read]), (end, read)
    with pytest.raises(ValueError, match="a page header runs past its column chunk"):
        chunk_pages(f, _chunk(data, total_compressed_size=every[2][0] + 1 - PADDING - every[0][0]))


def test_a_damaged_or_endless_page_header_is_one_line(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"layer": [0, 1], "expert": [0, 1], "count": [3, 4]}), path, use_dictionary=False)
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    huge = bytes([0x80] * 5 + [0x10])                                                 # 2**39 as a varint
    cases = {b"\x1f": "a field of unknown type 15", b"\x15" + b"\xff" * 12: "a varint longer than 10 bytes",
             b"\x19" * 40: "nested too deep", b"\x19\xf1" + huge: "runs past its column chunk"}  # 2**39 bools
    for garbage, reason in cases.items():
        bad = bytearray(data)
        bad[start:start + len(garbage)] = garbage
        (tmp_path / "bad.parquet").write_bytes(bad)
        with pytest.raises(ValueError, match=rf"^'.*bad.parquet' is not a readable Parquet file \(column 'layer': "
                                             rf".*{reason}.*\); copy it again$"):
            read_log(str(tmp_path / "bad.parquet"))
    statistics = [[1, 8, b"x" * MAX_HEADER_BYTES]]                                   # a 1 MiB max value
    header = encode([[1, 5, 0], [2, 5, 10], [3, 5, 10], [5, 12, [[1, 5, 1], [5, 12, statistics]]]])
    long = b"PAR1" + header + bytes(10)
    with pytest.raises(ValueError, match="a page header longer than 1 MiB"):
        chunk_pages(io.BytesIO(long), SimpleNamespace(data_page_offset=4, has_dictionary_page=False,
                                                      dictionary_page_offset=None, total_compressed_size=len(long),
                                                      num_values=1))


def _store_with_part(path: str, write) -> str:
    """A routing log (one layer "0", 4 experts) whose one counts part `write(part path)` writes."""
    LogWriter(path, ["0"], 4, top_k=1).close()
    os.makedirs(os.path.join(path, "counts"), exist_ok=True)
    write(os.path.join(path, "counts", "part-000000000000-bomb.parquet"))
    return path


@pytest.mark.parametrize("lie", [False, True], ids=["footer-true", "footer-understates"])
def test_pages_that_decompress_past_the_budget_are_refused_before_one_is_decompressed(tmp_path, baseline_mb, lie):
    rows = np.arange(10)
    counts = str(tmp_path / "counts.parquet")
    size = page_bomb(counts, {"layer": rows % 2, "expert": rows, "count": rows + 1}, PAGE, lie)
    trace = str(tmp_path / "trace.parquet")
    page_bomb(trace, {"step": rows * 0, "layer": rows * 0, "token": rows // 4, "expert": rows % 4,
                      "router_logit": np.zeros(10, np.float32), "routed": rows % 4 == 0}, PAGE, lie)
    store = _store_with_part(str(tmp_path / "log"), lambda part: page_bomb(
        part, {"step": rows // 4, "layer": rows * 0, "expert": rows % 4, "count": rows + 1}, PAGE, lie))
    assert size < 100_000                                                            # 900 MB of pages in 100 KB
    expected = {counts: "takes about", trace: "row group 0 decodes to",
                store: "decodes to more than the memory budget leaves it"}
    test_parquet_guard.refused_within(expected, baseline_mb, 100)  # one page decompressed: 300 MB or more


def test_the_same_files_with_small_pages_are_read(tmp_path):
    rows = np.arange(10)
    counts = str(tmp_path / "counts.parquet")
    page_bomb(counts, {"layer": rows % 2, "expert": rows, "count": rows + 1}, 4096)
    log = read_log(counts)
    expected = np.zeros((2, 10), np.int64)
    expected[rows % 2, rows] = rows + 1
    assert log.layers == ["0", "1"] and log.counts[0].tolist() == expected.tolist()


def test_a_dictionary_page_announcing_billions_of_entries_is_one_line_within_the_budget(tmp_path, baseline_mb):
    """The walk does not count a dictionary page's entries: pyarrow refuses a count its bytes cannot hold before it
    builds the dictionary. This keeps that true (an upgrade that sized the dictionary first would fail here)."""
    from parquet_craft import dictionary_claim
    good, bad = str(tmp_path / "good.parquet"), str(tmp_path / "bad.parquet")
    dictionary_claim(good, ["layer", "expert", "count"], 1)
    assert pq.read_table(good).to_pydict() == {name: [0] * 10 for name in ("layer", "expert", "count")}
    dictionary_claim(bad, ["layer", "expert", "count"], 2_000_000_000)              # 16 GB of int64 entries
    peak, line = _peak_mb(bad)
    assert "is not a readable Parquet file" in line, line
    assert peak - baseline_mb["counts"] < 100, (peak, baseline_mb)


@pytest.mark.parametrize("trick", ["wrap", "typed", "values"])
def test_headers_are_read_as_pyarrow_reads_them(tmp_path, trick):
    """A header that gives a page's size (or value count) twice, once under a 16-bit-wrapped field id or with the
    wrong type: pyarrow reads the file, so it decompressed the 4 MB page, and the walk counts that page."""
    page, rows = 4_000_000, np.arange(10)
    path = tmp_path / f"{trick}.parquet"
    page_bomb(path, {"layer": rows % 2, "expert": rows, "count": rows + 1}, page, lie=True, trick=trick)
    assert pq.read_table(path).to_pydict() == {"layer": (rows % 2).tolist(), "expert": rows.tolist(),
                                               "count": (rows + 1).tolist()}
    pf = pq.ParquetFile(path)
    with open(path, "rb") as f:
        for j in range(3):
            walked = chunk_pages(f, pf.metadata.row_group(0).column(j))
            assert walked.largest == page and walked.pages == (2 if trick == "values" else 1), (j, walked)
    peak, line = _peak_mb(str(path))                                                   # and the reader agrees
    assert line == "read", line


def test_a_file_that_makes_the_walk_read_too_many_headers_is_one_line(tmp_path):
    """Tiny pages would make the walk read headers for minutes from a file of a few megabytes: past MAX_PAGES
    headers in one file it stops, in one line. Row groups whose chunks all point at the same bytes are refused at the
    second chunk: an auditor's 1 MB file of chunks sharing one 1 MB page header took 1.2-1.6 s of CPU a chunk."""
    from parquet_craft import many_pages
    for n, groups, shared in ((MAX_PAGES + 1, 1, True), (MAX_PAGES // 8, 9, False), (MAX_PAGES // 8, 9, True)):
        path = tmp_path / f"{n}-{groups}-{shared}.parquet"
        many_pages(path, n, groups, shared=shared)
        what = "two column chunks share their pages" if shared and groups > 1 else f"more than {MAX_PAGES:,} pages"
        with open(path, "rb") as f:
            pf = parquet_file(f, "t", TraceLimits.from_env())
            with pytest.raises(ValueError, match=rf"^t is not a readable Parquet file \(column 'x': {what}"):
                parquet_bytes(f, pf, ["x"], "t")
            f.seek(0)
            with pytest.raises(ValueError, match=rf"^t is not a readable Parquet file \(column 'x': {what}"):
                chunk_bytes(f, pf, ["x"], "t")
    fine = tmp_path / "fine.parquet"
    many_pages(fine, MAX_PAGES // 8, 7, shared=False)                                  # 7/8 of the headers
    assert pq.read_table(fine).num_rows == 70                                          # pyarrow skips index pages
    with open(fine, "rb") as f:
        assert parquet_bytes(f, parquet_file(f, "t", TraceLimits.from_env()), ["x"], "t") > 0


def test_a_damaged_file_of_many_row_groups_exits_2_every_time(tmp_path):
    """pyarrow read the file through the Python file object: after a failed read, a worker still holding it (or a
    buffer of it) took the GIL while the process exited, and the process aborted with exit 134 (a reviewer's file:
    30 row groups whose chunks share 1,428 index pages and a data page without its bytes; 1 run in 10 aborted on a
    loaded machine, 4 in 8 at times). pyarrow now gets the file reopened natively, so no worker calls into Python."""
    import subprocess
    import sys
    from parquet_craft import many_pages

    from moe.traces.safeload import _native
    path = tmp_path / "damaged.parquet"
    many_pages(path, 1428, 30, ("layer", "expert", "count"), damaged=True, rows=1, shared=False)
    with open(path, "rb") as f:
        assert isinstance(_native(f), pa.NativeFile) and not isinstance(_native(f), pa.PythonFile)
    assert _native(io.BytesIO(b"PAR1")).read() == b"PAR1"                             # no descriptor: the object
    env = {**os.environ, "MOE_SCOPE_MEMORY_GB": "1"}
    for _ in range(6):
        out = subprocess.run([sys.executable, "-m", "moe", "trace-report", str(path)], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env, timeout=120)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (out.returncode, out.stderr[-500:])
        assert "is not a readable Parquet file" in out.stderr


def test_a_file_with_an_empty_row_group_is_read(tmp_path):
    """pyarrow writes the chunks of a row group of no rows at offset 0 (a logger flushing an empty batch last): they
    share no pages with anything, and the file reads as before (a reviewer's file was refused as "two column chunks
    share their pages")."""
    table = pa.table({"layer": ["0", "0", "1"], "expert": [0, 1, 2], "count": [5, 3, 4]})
    path = tmp_path / "counts.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table)
        writer.write_table(table.slice(0, 0))
    assert [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(2)] == [3, 0]
    log = read_log(str(path))
    assert log.counts.sum() == 12 and log.counts[0, 1, 2] == 4
    with open(path, "rb") as f:
        pf = parquet_file(f, "t", TraceLimits.from_env())
        assert parquet_bytes(f, pf, ["layer", "expert", "count"], "t") > 0
        assert chunk_bytes(f, pf, ["layer", "expert", "count"], "t")[1] == 0
