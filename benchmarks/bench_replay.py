"""Replaying a routing log under placements: 1,000 windows × 64 layers × 256 experts, for W ∈ {8, 16, 32, 64} and
R ∈ {0, 8, 32}: the per-rank load of every window under contiguous blocks, one plan of ours and one of DeepSeek's
EPLB per layer (made from the whole log). Target (issue #18): the replay of all configs ≤ 10 s on 2 cores.
Planning time is printed apart (one plan per layer and planner; it is not replay). Last, the per-window protocol of
the page and `plan` (moe.parallel.judge.replay_layer: both planners re-plan on every window, each plan measured on the
next window, the intervals and the rest of the run) is timed on --protocol-windows windows of one layer per config
and scaled to 1,000 windows × 64 layers (it is linear in windows × layers: one plan per window and layer).

    OMP_NUM_THREADS=1 python benchmarks/bench_replay.py [--repeats 3] [--protocol-windows 20]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from moe.parallel.eplb import check_eplb_args, eplb_layout
from moe.parallel.judge import ReplaySettings, current_layout, plan_layout, replay_layer
from moe.parallel.replay import rank_load

N, L, E = 1000, 64, 256
WORLD_SIZES, REDUNDANT = (8, 16, 32, 64), (0, 8, 32)


def _log(seed: int = 0) -> np.ndarray:
    """(L, N, E) window counts, layer-major (each layer's (N, E) contiguous, as replay_layer reads it): per layer a
    skewed expert popularity, 8,192 assignments per window."""
    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.full(E, 0.3), size=L)                               # (L, E)
    return np.stack([rng.multinomial(8192, popularity[l], size=N) for l in range(L)])  # (L, N, E)


def _layouts(counts: np.ndarray, W: int, R: int) -> list[list]:
    """Per layer: contiguous, ours and DeepSeek's (when E + R is a multiple of W) from the whole log's load."""
    out = []
    for l in range(L):
        load = counts[l].sum(0)
        cur = current_layout(E, W)
        per = [cur, plan_layout(load, W, R, cur)[0]]
        try:
            check_eplb_args(E, E + R, 1, 1, W)
            per.append(eplb_layout(load, R, W))
        except ValueError:
            pass
        out.append(per)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--protocol-windows", type=int, default=20)
    args = parser.parse_args()
    counts = _log()
    plan_s = 0.0
    rows = []
    for W in WORLD_SIZES:
        for R in REDUNDANT:
            t0 = time.perf_counter()
            layouts = _layouts(counts, W, R)
            plan_s += time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for l in range(L):
                    for lay in layouts[l]:
                        rank_load(counts[l], lay)                                      # (N, W)
                times.append(time.perf_counter() - t)
            rows.append((W, R, len(layouts[0]), float(np.median(times))))
    for W, R, k, t in rows:
        print(f"W={W:>2} R={R:>2}: {k} placements × {L} layers × {N} windows replayed in {t:.3f} s (median of "
              f"{args.repeats})")
    total = sum(t for *_, t in rows)
    print(f"replay, all {len(rows)} configs: {total:.2f} s (target ≤ 10 s); planning (not replay): {plan_s:.1f} s")
    _protocol(counts, args.protocol_windows)


def _protocol(counts: np.ndarray, n: int) -> None:
    """replay_layer on n windows (one step each) of layer 0 per config, scaled to N windows × L layers."""
    total = 0.0
    for W in WORLD_SIZES:
        for R in REDUNDANT:
            t = time.perf_counter()
            replay_layer("0", counts[0, :n], current_layout(E, W), ReplaySettings(W, (R,), window=1))
            took = time.perf_counter() - t
            total += took
            print(f"W={W:>2} R={R:>2}: per-window protocol, {n} windows of one layer: {took:.2f} s "
                  f"({1e3 * took / n:.1f} ms per window)")
    print(f"per-window protocol, all configs: {total:.1f} s for {n} windows of one layer; scaled to {N} windows × "
          f"{L} layers: {total * N * L / n / 3600:.1f} h")


if __name__ == "__main__":
    main()
