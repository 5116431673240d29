"""Replaying a routing log under placements: 1,000 windows × 64 layers × 256 experts, for W ∈ {8, 16, 32, 64} and
R ∈ {0, 8, 32}: the per-rank load of every window under contiguous blocks, one plan of ours and one of DeepSeek's
EPLB per layer (made from the whole log). Target (issue #18): the replay of all configs ≤ 10 s on 2 cores.
Planning time is printed apart (one plan per layer and planner; it is not replay). Last, the per-window protocol of
the page and `plan` (moe.parallel.judge.replay_log: both planners re-plan on every window, each plan measured on the
next window, the intervals and the rest of the run) is timed on all 1,000 windows of --protocol-layers layers per
config, on one thread and on one per CPU, and scaled to 64 layers (it is linear in layers), with the gain of
planning all windows at once over one window per call (--baseline-windows windows).

    OMP_NUM_THREADS=1 python benchmarks/bench_replay.py [--repeats 3] [--protocol-layers 8] [--baseline-windows 50]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from moe.parallel.eplb import check_eplb_args, eplb_layout
from moe.parallel.judge import ReplaySettings, current_layout, plan_layout, plan_rows, replay_log
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
    parser.add_argument("--protocol-layers", type=int, default=8)
    parser.add_argument("--baseline-windows", type=int, default=50)
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
    _protocol(counts, args.protocol_layers, args.baseline_windows)


def _protocol(counts: np.ndarray, n_layers: int, n_windows: int) -> None:
    """judge.replay_log, as `plan` runs it (both planners plan every window; each plan is measured on the next window,
    the intervals and the rest of the run), on all N windows of n_layers layers per config, scaled to L layers (it is
    linear in layers): on one thread and on one per CPU. And, on n_windows windows of layer 0, planning all windows
    at once (judge.plan_rows) against one window per call (judge.plan_layout), the same plans."""
    log = np.ascontiguousarray(counts[:n_layers].transpose(1, 0, 2))                  # (N, layers, E) as a log reads
    names = [str(l) for l in range(n_layers)]
    replay_log(log[:20], names[:2], ReplaySettings(8, (8,), window=1), workers=2)  # compiled code loaded, not timed
    totals, ratios = {1: 0.0, os.cpu_count() or 1: 0.0}, []
    for W in WORLD_SIZES:
        for R in REDUNDANT:
            took = {}
            for workers in totals:
                t = time.perf_counter()
                replay_log(log, names, ReplaySettings(W, (R,), window=1), workers=workers)
                took[workers] = time.perf_counter() - t
                totals[workers] += took[workers]
            cur = current_layout(E, W)
            t = time.perf_counter()
            plan_rows(counts[0, :n_windows], W, R, cur)
            rows = time.perf_counter() - t
            t = time.perf_counter()
            for load in counts[0, :n_windows]:
                plan_layout(load, W, R, cur)
            one = time.perf_counter() - t
            ratios.append(one / rows)
            print(f"W={W:>2} R={R:>2}: per-window protocol, {N} windows × {n_layers} layers: "
                  + ", ".join(f"{t:.2f} s on {k} thread{'s' if k > 1 else ''}" for k, t in took.items())
                  + f"; planning {n_windows} windows at once {rows * 1e3:.1f} ms, one per call {one * 1e3:.1f} ms "
                  f"({one / rows:.1f}× faster in one call)")
    for workers, total in totals.items():
        print(f"per-window protocol, all configs, {workers} thread{'s' if workers > 1 else ''}: {total:.1f} s for {N} "
              f"windows × {n_layers} layers; scaled to {L} layers: {total * L / n_layers:.0f} s (the issue's ≤ 10 s, "
              f"if it counts planning)")
    print(f"planning every window in one call vs one call per window (the same planner, judge.plan_layout): median "
          f"{np.median(ratios):.1f}× faster")


if __name__ == "__main__":
    main()
