"""Our planner (moe.parallel.judge.plan_layout) against DeepSeek's EPLB (moe.parallel.eplb, global mode) on the
balancedness of the window each plans from: random loads (uniform and Pareto), W in {2, 3, 4, 8}, E and R multiples
of W. Prints how often ours is lighter, equal or heavier on its busiest rank, split by whether DeepSeek's layout puts
two replicas of one expert on one GPU (an uneven split of that expert); then the same for the plan ours makes for the
SGLang and vLLM files (distinct=True: a distinct expert per slot of a rank, which cannot express that split).
Usage: .venv/bin/python benchmarks/bench_planner_vs_eplb.py [--cases 600] [--seed 1]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from moe.parallel.eplb import eplb_layout  # noqa: E402
from moe.parallel.judge import current_layout, plan_layout  # noqa: E402
from moe.parallel.replay import distinct_per_rank, rank_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    tally = {(plan, kind): {"lighter": 0, "equal": 0, "heavier": []} for plan in ("ours", "serving")
             for kind in ("distinct", "duplicate")}
    for _ in range(args.cases):
        W = int(rng.choice([2, 3, 4, 8]))
        E, R = W * int(rng.integers(1, 5)), W * int(rng.integers(0, 3))
        if R > E * (W - 1):
            continue
        load = (rng.integers(0, 200, size=E) if rng.random() < 0.5
                else np.round(rng.pareto(1.5, size=E) * 50).astype(np.int64))
        theirs = eplb_layout(load, R, W)
        b = int(rank_load(load[None], theirs).max())
        kind = "distinct" if distinct_per_rank(theirs) else "duplicate"
        for plan, distinct in (("ours", False), ("serving", True)):
            a = int(rank_load(load[None], plan_layout(load, W, R, current_layout(E, W), distinct=distinct)[0]).max())
            row = tally[plan, kind]
            if a < b:
                row["lighter"] += 1
            elif a == b:
                row["equal"] += 1
            else:
                row["heavier"].append(a / b - 1)
    for (plan, kind), row in tally.items():
        heavier = row["heavier"]
        worst = (f"; busiest rank heavier by median {100 * np.median(heavier):.2f}%, max {100 * max(heavier):.2f}%"
                 if heavier else "")
        what = "a distinct expert per slot of a GPU" if kind == "distinct" else "an expert twice on a GPU"
        who = "our planner" if plan == "ours" else "our serving plan (distinct per rank)"
        print(f"{who} vs DeepSeek's layout with {what}: ours lighter {row['lighter']}, equal {row['equal']}, "
              f"heavier {len(heavier)}{worst}")


if __name__ == "__main__":
    main()
