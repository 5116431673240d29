"""Headless model commands: `python -m moe train-lm --out DIR` and `python -m moe model-report ...`."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .cli import UsageError, _positive_int
from .lm_train import LMTrainConfig, format_report, train_lm


def add_model_commands(commands) -> None:
    """Register `train-lm` and `model-report` on the `python -m moe` subparsers."""
    p = commands.add_parser("train-lm", help="train the bundled MoE language model (seeded, CPU)")
    p.add_argument("--out", required=True, help="directory for config.json, model.safetensors, tokenizer")
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--batch", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads for this process (default: torch's); 1 is faster on a busy machine")
    p.set_defaults(run=_train_lm)
    from .model_report import add_report_command
    add_report_command(commands)


def _train_lm(args: argparse.Namespace) -> str:
    import torch
    from tqdm import tqdm

    changes = {k: getattr(args, k) for k in ("steps", "batch", "seed") if getattr(args, k) is not None}
    cfg = dataclasses.replace(LMTrainConfig(), **changes)
    if cfg.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {cfg.seed}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # this CLI process only
    bar = tqdm(total=cfg.steps, file=sys.stderr, desc="train-lm", unit="step", mininterval=1.0)

    def progress(step: int, loss: float, aux: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}", aux=f"{aux:.3f}", refresh=False)

    try:
        report = train_lm(cfg, args.out, progress)
    finally:
        bar.close()
    return format_report(report) + f"\nsaved to {args.out}"
