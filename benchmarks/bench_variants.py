"""Expert variants and shared experts: what they cost, against baselines measured in the same run.

    python benchmarks/bench_variants.py            # teaching + medium cases
    python benchmarks/bench_variants.py --quick    # fewer repeats
    python benchmarks/bench_variants.py --clock cpu --threads 1   # on a machine shared with busy processes

1. Default path: today's SiLU dispatch (+ statistics) against the dispatch of a baseline revision
   (default: the commit before expert variants), loaded from git, on the same weights and routing.
2. Shared expert: (forward with a shared FFN of width Hs) − (forward without) against one dense
   SwiGLU FFN of width Hs over the same T tokens (three matmuls, nothing else); without statistics
   (the target) and with them (shared_output_rms / shared_fraction add two row norms).
3. Variants: forward+stats of each activation / gating / bias / sparsity mode against SiLU.
Shape letters: T tokens, D d_model, H d_expert, Hs shared width, E n_experts, K top_k.
fp32, torch.inference_mode, default threads; medians of interleaved rounds.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_forward import Case, _busy_seconds, _own_seconds  # noqa: E402  (benchmarks/ is the script's directory)
from moe import MoEConfig, MoELayer  # noqa: E402
from moe.experts import dispatch  # noqa: E402
from moe.scenarios import gaussian  # noqa: E402

BASELINE_REV = "7c822ab"  # main before expert variants: SwiGLU only, dispatch(x, served, gates, experts, eps)
SHARED_TARGET = 1.10      # shared FFN overhead / dense FFN of its width (1.0 + timing noise)
DEFAULT_TARGET = 1.05     # new default dispatch / baseline dispatch
WARMUP_SECONDS = 2.0


# bench_forward's cases (the same teaching layer); this script sets no targets of its own on them
CASES = {"teaching": Case("teaching", D=64, H=256, E=8, K=2, T=256, ratio_target=None, ms_target=None),
         "medium": Case("medium", D=512, H=1024, E=8, K=2, T=2048, ratio_target=None, ms_target=None)}
VARIANTS = {"gelu": dict(activation="gelu"), "relu (ungated)": dict(activation="relu", gated=False),
            "gpt_oss + biases": dict(activation="gpt_oss", expert_biases=True),
            "silu + biases": dict(expert_biases=True), "relative sparsity": dict(sparsity_mode="relative")}


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int, clock: str,
                     min_seconds: float = 0.0, max_rounds: int = 2000) -> dict[str, float]:
    """Median ms of each fn over interleaved rounds (every fn once per round), after `warmup` rounds
    and at least WARMUP_SECONDS.

    clock "wall": perf_counter. "cpu": this thread's CPU time (run with --threads 1): on a machine shared
    with other busy processes, time spent waiting for a core is not counted, so ratios stay fair.
    """
    now = time.perf_counter if clock == "wall" else time.thread_time
    start, rounds = time.perf_counter(), 0
    while rounds < warmup or time.perf_counter() - start < WARMUP_SECONDS:  # caches, allocator, clocks settle
        for fn in fns.values():
            fn()
        rounds += 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < repeats or (time.perf_counter() - start < min_seconds and rounds < max_rounds):
        for name, fn in fns.items():
            t0 = now()
            fn()
            times[name].append((now() - t0) * 1e3)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def load_baseline(rev: str):
    """moe/experts.py as it was at `rev`, imported as a stand-alone module."""
    src = subprocess.run(["git", "show", f"{rev}:moe/experts.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    path = Path(tempfile.mkdtemp()) / "experts_baseline.py"
    path.write_text(src.replace("from .config import", "from moe.config import"))
    spec = importlib.util.spec_from_file_location("experts_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def config(case: Case, **changes) -> MoEConfig:
    return MoEConfig(d_model=case.D, d_expert=case.H, n_experts=case.E, top_k=case.K, **changes)


def default_vs_baseline(case: Case, baseline, args) -> list[tuple]:
    cfg = config(case)
    layer = MoELayer(cfg)
    x = gaussian(case.D, case.T, seed=0).x  # (T, D)
    routing = layer.router(x, cfg, layer.new_generator())
    served, gates, ex = routing.served, routing.gates, layer.experts
    times = time_interleaved({
        "baseline": lambda: baseline.dispatch(x, served, gates, ex, cfg.sparsity_eps),
        "new": lambda: dispatch(x, served, gates, ex, cfg)}, repeats=args.repeats, warmup=args.warmup,
        clock=args.clock, min_seconds=args.min_seconds)
    return [(case.name, "default dispatch+stats", f"baseline {args.baseline_rev}", times["new"],
             times["baseline"], DEFAULT_TARGET)]


def shared_vs_dense(case: Case, args) -> list[tuple]:
    Hs = 2 * case.H
    plain = MoELayer(config(case))
    shared = MoELayer(config(case, shared_experts=2))  # same routed weights, plus a (Hs, D) FFN
    sh = shared.shared
    x = gaussian(case.D, case.T, seed=0).x  # (T, D)

    def dense() -> torch.Tensor:  # one SwiGLU FFN of width Hs on every token
        return F.linear(F.silu(F.linear(x, sh.w_gate)) * F.linear(x, sh.w_up), sh.w_down)  # (T, D)

    times = time_interleaved({"plain": lambda: plain(x, stats=False), "shared": lambda: shared(x, stats=False),
                              "plain+stats": lambda: plain(x), "shared+stats": lambda: shared(x), "dense": dense},
                             repeats=args.repeats, warmup=args.warmup, clock=args.clock,
                             min_seconds=args.min_seconds)
    base = f"dense FFN Hs={Hs}"
    return [(case.name, "shared overhead, forward", base, times["shared"] - times["plain"], times["dense"],
             SHARED_TARGET),
            (case.name, "shared overhead, forward+stats", base, times["shared+stats"] - times["plain+stats"],
             times["dense"], None),
            (case.name, "forward+stats, no shared", "-", times["plain+stats"], float("nan"), None)]


def variants_vs_silu(case: Case, args) -> list[tuple]:
    x = gaussian(case.D, case.T, seed=0).x  # (T, D)
    layers = {"silu": MoELayer(config(case))}
    layers.update({name: MoELayer(config(case, **changes)) for name, changes in VARIANTS.items()})
    fns = {name: (lambda layer=layer: layer(x)) for name, layer in layers.items()}
    times = time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, clock=args.clock,
                             min_seconds=args.min_seconds)
    return [(case.name, f"forward+stats {name}", "silu", times[name], times["silu"], None) for name in VARIANTS]


def print_table(rows: list[tuple]) -> list[str]:
    print(f"{'case':<9} {'path':<34} {'baseline':<22} {'ms':>8} {'base ms':>8} {'ratio':>6}  target")
    failures = []
    for case, path, base, ms, base_ms, target in rows:
        ratio = ms / base_ms if base_ms == base_ms else float("nan")
        verdict = "" if target is None else (f"≤ {target:.2f} " + ("ok" if ratio <= target else "MISSED"))
        if target is not None and ratio > target:
            failures.append(f"{case}: {path} ratio {ratio:.2f} > {target:.2f}")
        print(f"{case:<9} {path:<34} {base:<22} {ms:8.3f} {base_ms:8.3f} {ratio:6.2f}  {verdict}")
    return failures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this thread's CPU time, for a machine shared with other busy processes")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; use 1 with --clock cpu)")
    p.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the baseline moe/experts.py")
    args = p.parse_args(argv)
    args.repeats, args.warmup, args.min_seconds = (7, 2, 2.0) if args.quick else (21, 3, 10.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # this benchmark's own process only
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        print("--clock cpu counts the calling thread only: add --threads 1", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, cpu, threads {torch.get_num_threads()}, fp32, clock {args.clock}, "
          f"repeats >= {args.repeats}")
    baseline = load_baseline(args.baseline_rev)
    busy0, own0, wall0 = _busy_seconds(), _own_seconds(), time.perf_counter()
    rows = []
    with torch.inference_mode():
        for name in args.cases:
            case = CASES[name]
            rows += default_vs_baseline(case, baseline, args)
            rows += shared_vs_dense(case, args)
            rows += variants_vs_silu(case, args)
            print(f"case {name} done", flush=True)
    print()
    failures = print_table(rows)
    print()
    print("\n".join(failures) if failures else "every target met")
    busy1, wall = _busy_seconds(), time.perf_counter() - wall0
    if busy0 is not None and busy1 is not None:
        share = max(0.0, (busy1 - busy0) - (_own_seconds() - own0)) / (wall * (os.cpu_count() or 1))
        print(f"other processes used {share:.0%} of the CPU during the {wall:.0f} s run"
              + ("" if share < 0.05 else ": timings skewed, rerun on an idle machine"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
