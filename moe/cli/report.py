"""`python -m moe report`: one forward of the synthetic layer; prints the config, the summary and the per-expert
table (moe.document)."""
from __future__ import annotations

import argparse

import torch

from moe.cli.args import UsageError, positive_int
from moe.cli.options import add_config_arguments, add_scenario_arguments, check_scenario_options, flag_names, resolve
from moe.document import render
from moe.layer import MoELayer
from moe.memory import budget_bytes, check_budget
from moe.scenarios import make_batch


def add_command(commands) -> None:
    p = commands.add_parser("report", help="one forward: config, summary and per-expert table")
    add_config_arguments(p)
    add_scenario_arguments(p)
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="split the tokens into sequences of this length (capacity_scope=sequence counts "
                        "capacity per sequence; needed then)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> str:
    check_scenario_options(args, args.scenario)
    cfg, scenario, params, tokens = resolve(args)
    check_budget(cfg, tokens, budget_bytes(), names=flag_names())  # before anything is built
    cfg.check_seq_len(args.seq_len)  # as ep-report does: its summary is this command's for the same flags
    if args.seq_len is not None and tokens % args.seq_len:
        raise UsageError(f"--tokens {tokens} is not a whole number of sequences of --seq-len {args.seq_len}; "
                         f"give --tokens a multiple of {args.seq_len}")
    x = make_batch(scenario, cfg.d_model, tokens, seed=cfg.seed, **params).x  # (T, D)
    if args.seq_len is not None:
        x = x.reshape(-1, args.seq_len, cfg.d_model)  # (B, S, D): capacity_scope="sequence" counts per sequence
    layer = MoELayer(cfg)
    with torch.inference_mode():
        layer(x, stats=False)  # warm-up, so forward_ms is the steady-state time
        _, trace = layer(x)
    return render(cfg.to_dict(), trace.summary(), trace.per_expert(), args.format,
                  extra={"scenario": scenario, "tokens": tokens, "seq_len": args.seq_len, **params})
