"""`python -m moe train-lm [--arch mixtral|deepseek_v3] --out DIR`: train a bundled MoE language model (seeded, CPU)."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from moe.cli.args import int_in
from moe.hf.lm_config import check_lm_training_budget, check_out_dir
from moe.hf.lm_config import ARCHES, ARCH_FIELDS, LMTrainConfig
from moe.hf.lm_train import format_report, train_lm

# Largest values the integer flags take: far above any useful run, small enough that a typo is caught at once.
MAX_STEPS = 1_000_000
MAX_BATCH = 1_000_000_000  # the memory budget is the real limit (it names the largest batch that fits)
MAX_SEED = 2 ** 32 - 1
MAX_THREADS = 1024


def add_command(commands) -> None:
    p = commands.add_parser("train-lm", help="train a bundled MoE language model (seeded, CPU)")
    p.add_argument("--arch", choices=ARCHES, default="mixtral",
                   help="mixtral: softmax router + aux loss (pydoc-mixtral); deepseek_v3: sigmoid router with a "
                        "bias balanced without aux loss, group-limited top-k, a shared expert (pydoc-deepseek)")
    p.add_argument("--out", required=True, help="a new or empty directory (or one train-lm wrote before) for "
                                                "config.json, model.safetensors, tokenizer and training.json")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None)
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=None)
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=None)
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None,
                   help="torch CPU threads for this process (default: torch's); 1 is faster on a busy machine")
    p.set_defaults(run=run)


def arch_defaults(arch: str) -> dict:
    """What --arch changes besides the architecture: DeepSeek-V3 trains without the aux loss."""
    return {"aux_coef": 0.0} if "aux_coef" not in ARCH_FIELDS[arch] else {}


def run(args: argparse.Namespace) -> str:
    changes = {k: getattr(args, k) for k in ("steps", "batch", "seed") if getattr(args, k) is not None}
    cfg = dataclasses.replace(LMTrainConfig(arch=args.arch, **arch_defaults(args.arch)), **changes)
    # Both checks before anything is built or imported: a refusal costs a second, not a training run.
    check_out_dir(args.out)
    check_lm_training_budget(cfg)
    import torch
    from tqdm import tqdm

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # this CLI process only
    bar = tqdm(total=cfg.steps, file=sys.stderr, desc="train-lm", unit="step", mininterval=1.0)

    def progress(step: int, loss: float, balance: dict[str, float | int]) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{v:.3f}" if isinstance(v, float) else v
                                                  for k, v in balance.items()}, refresh=False)

    try:
        report = train_lm(cfg, args.out, progress)
    finally:
        bar.close()
    return format_report(report) + f"\nsaved to {args.out}"
