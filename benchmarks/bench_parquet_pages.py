"""What walking a Parquet file's page headers (moe.traces.parquet_pages, inside safeload.parquet_bytes) adds to
reading a counts table: the bound's time (the walk included) against the whole read_log of the same file, medians
over --repeats runs in one process, for pyarrow's default pages and for small (8 KB) pages, which make many more
headers to walk.

    python benchmarks/bench_parquet_pages.py [--rows 4194304] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from moe.traces.formats import read_log
from moe.traces.records import TraceLimits
from moe.traces.safeload import parquet_bytes, parquet_file

COLUMNS = ["step", "layer", "expert", "count"]


def _table(rows: int) -> pa.Table:
    """Steps of 16 layers × 256 experts, random counts."""
    cell = np.arange(rows)
    return pa.table({"step": cell // 4096, "layer": (cell // 256) % 16, "expert": cell % 256,
                     "count": np.random.default_rng(0).integers(0, 100, rows)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096 * 1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    table = _table(args.rows)
    with tempfile.TemporaryDirectory() as folder:
        for name, options in (("pyarrow's default pages", {}), ("8 KB pages", {"data_page_size": 8192})):
            path = os.path.join(folder, "counts.parquet")
            pq.write_table(table, path, **options)
            bound, whole = [], []
            for _ in range(args.repeats):
                with open(path, "rb") as f:
                    pf = parquet_file(f, "bench", TraceLimits.from_env())
                    start = time.perf_counter()
                    parquet_bytes(f, pf, COLUMNS, "bench")
                    bound.append(time.perf_counter() - start)
                start = time.perf_counter()
                read_log(path)
                whole.append(time.perf_counter() - start)
            b, w = statistics.median(bound), statistics.median(whole)
            print(f"{name}: {os.path.getsize(path) / 1e6:.1f} MB, {args.rows:,} rows: the bound with its page walk "
                  f"{b * 1e3:.1f} ms, the whole read_log {w * 1e3:.0f} ms (medians of {args.repeats}): the walk's "
                  f"share {b / w:.3f}")


if __name__ == "__main__":
    main()
