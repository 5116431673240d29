"""Memory of a long headless training run: the history is a ring buffer, so RSS must plateau.

    python benchmarks/bench_train_memory.py              # 10,000 steps (about a minute on 2 CPU cores)
    python benchmarks/bench_train_memory.py --steps 2000

Prints the resident set size (VmRSS from /proc/self/status, Linux) and the history length at
fixed checkpoints. The model is the collapse preset's (D=16, E=8, K=2) with 64 tokens per step.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from moe.train.presets import preset  # noqa: E402
from moe.train.trainer import Trainer  # noqa: E402

CHECKPOINTS = (1_000, 5_000, 10_000)


def rss_mib() -> float:
    """Resident set size of this process in MiB, read from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError("no VmRSS line in /proc/self/status (this script needs Linux)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--history", type=int, default=500)
    args = parser.parse_args()

    trainer = Trainer(preset("collapse", tokens=args.tokens, probe_tokens=args.tokens, history=args.history))
    checkpoints = sorted({c for c in CHECKPOINTS if c <= args.steps} | {args.steps})
    print(f"config: D={trainer.config.model.d_model} E={trainer.config.model.n_experts} "
          f"K={trainer.config.model.top_k} T={args.tokens} history={args.history} steps={args.steps}")
    print(f"{'step':>6} {'rss_MiB':>8} {'history_rows':>12} {'elapsed_s':>9}")
    print(f"{0:>6} {rss_mib():>8.1f} {len(trainer.history_frame()):>12} {0.0:>9.1f}")
    start = time.perf_counter()
    done = 0
    for checkpoint in checkpoints:
        trainer.run(checkpoint - done)
        done = checkpoint
        rows = len(trainer.history_frame())
        print(f"{done:>6} {rss_mib():>8.1f} {rows:>12} {time.perf_counter() - start:>9.1f}", flush=True)
    print(f"oldest kept step {int(trainer.history_frame()['step'].iloc[0])}, newest {trainer.step_count}")


if __name__ == "__main__":
    main()
