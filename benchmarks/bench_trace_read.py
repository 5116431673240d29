"""How fast moe.traces.megatron.read_megatron reads Megatron-LM routing traces, next to a plain json.loads loop.

    python benchmarks/bench_trace_read.py [--mb 100] [--repeats 3] [--ranks 8] [--gb 1] [--line-reader]

Writes (in a temporary directory) a trace as Megatron-LM's RouterTracer writes it: router_trace_rank{r}.jsonl,
one json.dumps line per (step, layer) router call of --tokens tokens × top --top-k of --experts experts, no logits.
Each measurement is a fresh process, timed whole by this script; its start-up (interpreter, imports) is removed by
subtracting the same command on a one-line file (each child also times its read alone: the second, less noisy
line of each row). Rates are MB of trace per second, medians over --repeats, the runs
of the two commands interleaved (the machine's load changes both alike). Rows:
- one file of --mb MB: (a) `for line in f: json.loads(line)`, (b) read_megatron([file]); their ratio b/a (target
  ≥ 0.5) and each one's peak RSS growth (ru_maxrss of the process minus that of the one-line process);
- --ranks files of --mb/ranks MB each, read together (b) and by the loop one after another (a);
- --gb G: one file of G GB, read once by read_megatron: peak RSS growth (target ≤ 200 MB for 1 GB);
- --line-reader: today's line reader (readers.iter_megatron) on the one file, once, for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Each child prints its peak RSS (KiB) and the seconds of its read alone (the in-process cross-check).
LOOP = """
import json, resource, sys, time
start = time.perf_counter()
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start)
"""
READER = """
import resource, sys, time
from moe.traces.megatron import read_megatron
start = time.perf_counter()
log = read_megatron(sys.argv[2:], int(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start)
"""
LINE_READER = """
import resource, sys, time
from moe.traces.readers import iter_megatron
start = time.perf_counter()
for rec in iter_megatron(sys.argv[2]):
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start)
"""


def write_rank(path: Path, size: int, args, rank: int) -> int:
    """One rank's file of about `size` bytes (whole steps of --layers layers); returns its size."""
    rng = np.random.default_rng(rank)
    pool = [np.argpartition(rng.random((args.tokens, args.experts)), args.top_k, axis=1)[:, :args.top_k]
            for _ in range(8)]  # (T, K) distinct experts per token; records relabel them by a permutation
    with open(path, "w") as f:
        step = 0
        while f.tell() < size:
            for layer in range(args.layers):
                idx = rng.permutation(args.experts)[pool[int(rng.integers(len(pool)))]]  # (T, K)
                rec = {"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer, "rank": rank,
                       "num_tokens": args.tokens, "topk": args.top_k, "top_indices": idx.tolist()}
                f.write(json.dumps(rec) + "\n")
            step += 1
    return path.stat().st_size


def one_line(path: Path, out: Path) -> Path:
    with open(path, "rb") as f:
        out.write_bytes(f.readline())
    return out


def run(code: str, *argv) -> tuple[float, int, float]:
    """Wall seconds of a fresh process, its peak RSS in bytes (ru_maxrss, KiB on Linux), its read's own seconds."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    peak, inside = out.stdout.split()[-2:]
    return time.perf_counter() - start, int(peak) * 1024, float(inside)


def compare(files: list[Path], ones: list[Path], mb: float, repeats: int, experts: int) -> dict:
    """Medians of (a) the loop and (b) the reader, net of the same command on one-line files."""
    times = {k: [] for k in ("a", "a1", "b", "b1")}
    rss, inside = {k: [] for k in times}, {k: [] for k in times}
    for _ in range(repeats):
        for key, code, paths in (("a1", LOOP, ones), ("a", LOOP, files), ("b1", READER, ones),
                                 ("b", READER, files)):
            extra = [] if code is LOOP else [experts]
            t, peak, own = run(code, *extra, *paths)
            times[key].append(t)
            rss[key].append(peak)
            inside[key].append(own)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: statistics.median(v) for k, v in rss.items()}
    own = {k: statistics.median(v) for k, v in inside.items()}
    rate_a, rate_b = mb / (med["a"] - med["a1"]), mb / (med["b"] - med["b1"])
    own_a, own_b = mb / own["a"], mb / own["b"]
    return {"loop": rate_a, "reader": rate_b, "ratio": rate_b / rate_a, "startup_a": med["a1"],
            "startup_b": med["b1"], "rss_a": (peak["a"] - peak["a1"]) / 2 ** 20,
            "rss_b": (peak["b"] - peak["b1"]) / 2 ** 20, "own_a": own_a, "own_b": own_b, "own_ratio": own_b / own_a}


def report(title: str, r: dict, repeats: int) -> None:
    print(f"{title}: json.loads loop {r['loop']:.1f} MB/s, read_megatron {r['reader']:.1f} MB/s, ratio "
          f"{r['ratio']:.2f} (medians of {repeats}; start-up {r['startup_a']:.2f} s / {r['startup_b']:.2f} s "
          f"removed); peak RSS growth: loop {r['rss_a']:+.0f} MiB, read_megatron {r['rss_b']:+.0f} MiB")
    print(f"{title}, timed inside the process: json.loads loop {r['own_a']:.1f} MB/s, read_megatron "
          f"{r['own_b']:.1f} MB/s, ratio {r['own_ratio']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=100.0, help="size of the one-file trace, MB")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=int, default=8, help="rank files read together (0: skip)")
    p.add_argument("--gb", type=float, default=0.0, help="also read one file of this many GB once (memory)")
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096, help="tokens per record (one router call)")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--line-reader", action="store_true", help="also time today's line reader once")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        single = tmp / "one" / "router_trace_rank0.jsonl"
        single.parent.mkdir()
        mb = write_rank(single, int(args.mb * 1e6), args, 0) / 1e6
        one = one_line(single, tmp / "one_line.jsonl")
        print(f"# {sys.executable}; {os.cpu_count()} CPUs; records of {args.tokens} tokens × top-{args.top_k} of "
              f"{args.experts} experts, {args.layers} layers, no logits")
        report(f"1 file, {mb:.1f} MB", compare([single], [one], mb, args.repeats, args.experts), args.repeats)
        if args.line_reader:
            t, _, _ = run(LINE_READER, args.experts, single)
            t1, _, _ = run(LINE_READER, args.experts, one)
            print(f"1 file, {mb:.1f} MB: today's line reader (iter_megatron) {mb / (t - t1):.1f} MB/s (one run)")
        if args.ranks:
            folder = tmp / "run"
            folder.mkdir()
            files = [folder / f"router_trace_rank{r}.jsonl" for r in range(args.ranks)]
            total = sum(write_rank(f, int(args.mb * 1e6 / args.ranks), args, r) for r, f in enumerate(files)) / 1e6
            ones = [one_line(f, tmp / f"one_rank{r}.jsonl") for r, f in enumerate(files)]
            report(f"{args.ranks} rank files together, {total:.1f} MB", compare(files, ones, total, args.repeats,
                                                                                 args.experts), args.repeats)
        if args.gb:
            os.remove(single)
            big = tmp / "one" / "router_trace_rank0.jsonl"
            size = write_rank(big, int(args.gb * 1e9), args, 0) / 1e6
            t, peak, _ = run(READER, args.experts, big)
            t1, peak1, _ = run(READER, args.experts, one)
            print(f"1 file, {size:.0f} MB: read_megatron {size / (t - t1):.1f} MB/s (one run), peak RSS growth "
                  f"{(peak - peak1) / 2 ** 20:+.0f} MiB")


if __name__ == "__main__":
    main()
