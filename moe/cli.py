"""Headless use: `python -m moe report ...` prints the config, summary and per-expert table;
`python -m moe train ...` runs the live-training loop and prints one row per step."""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys

import pandas as pd
import torch

from .config import CAPACITY_SCOPES, DROP_POLICIES, DTYPES, ROUTERS, SCORES, MoEConfig
from .layer import MoELayer
from .scenarios import SCENARIOS, make_batch
from .train import BALANCES, PRESETS, TrainConfig, Trainer


class UsageError(Exception):
    """A bad command-line value; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The MoEConfig fields as options (shared by `report` and `train`)."""
    d = MoEConfig()
    p.add_argument("--d-model", type=_positive_int, default=d.d_model)
    p.add_argument("--d-expert", type=_positive_int, default=d.d_expert)
    p.add_argument("--n-experts", type=_positive_int, default=d.n_experts)
    p.add_argument("--top-k", type=_positive_int, default=d.top_k)
    p.add_argument("--router", choices=ROUTERS, default=d.router)
    p.add_argument("--score", choices=SCORES, default=d.score)
    p.add_argument("--temperature", type=_float, default=d.temperature)
    p.add_argument("--no-normalize-topk", action="store_true", help="keep raw top-k scores (Qwen/OLMoE)")
    p.add_argument("--routed-scaling-factor", type=_float, default=d.routed_scaling_factor)
    p.add_argument("--n-group", type=_positive_int, default=d.n_group, help="expert groups (DeepSeek-V3)")
    p.add_argument("--topk-group", type=_positive_int, default=d.topk_group, help="groups a token may use")
    p.add_argument("--capacity-factor", type=_float, default=None, help="omit for dropless")
    p.add_argument("--drop-policy", choices=DROP_POLICIES, default=d.drop_policy)
    p.add_argument("--capacity-scope", choices=CAPACITY_SCOPES, default=d.capacity_scope,
                   help="sequence: capacity per sequence of a (B, S, D) input")
    p.add_argument("--jitter-eps", type=_float, default=d.jitter_eps)
    p.add_argument("--noise-std", type=_float, default=d.noise_std)
    p.add_argument("--hot-expert", type=int, default=None, help="add --hot-bias to this expert's logit")
    p.add_argument("--hot-bias", type=_float, default=3.0)
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", choices=list(DTYPES), default=d.dtype)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--format", choices=("json", "csv"), default="json")


def config_from_args(args: argparse.Namespace) -> MoEConfig:
    logit_bias = None
    if args.hot_expert is not None:
        if not 0 <= args.hot_expert < args.n_experts:
            raise UsageError(f"--hot-expert {args.hot_expert} is not an expert index in 0..{args.n_experts - 1}")
        logit_bias = tuple(args.hot_bias if e == args.hot_expert else 0.0 for e in range(args.n_experts))
    return MoEConfig(
        d_model=args.d_model, d_expert=args.d_expert, n_experts=args.n_experts, top_k=args.top_k,
        router=args.router, score=args.score, temperature=args.temperature,
        normalize_topk=not args.no_normalize_topk, routed_scaling_factor=args.routed_scaling_factor,
        n_group=args.n_group, topk_group=args.topk_group, capacity_scope=args.capacity_scope,
        capacity_factor=args.capacity_factor, drop_policy=args.drop_policy, jitter_eps=args.jitter_eps,
        noise_std=args.noise_std, logit_bias=logit_bias, device=args.device, dtype=args.dtype, seed=args.seed)


def _report(args: argparse.Namespace) -> str:
    cfg = config_from_args(args)
    params = {"n_clusters": args.clusters, "skew": args.skew} if args.scenario in ("clusters", "drifting") else {}
    if args.scenario == "drifting":
        params["step"] = 0
    batch = make_batch(args.scenario, cfg.d_model, args.tokens, seed=args.seed, **params)
    layer = MoELayer(cfg)
    with torch.inference_mode():
        layer(batch.x, stats=False)  # warm-up, so forward_ms is the steady-state time
        _, trace = layer(batch.x)
    return render(cfg.to_dict(), trace.summary(), trace.per_expert(), args.format,
                  extra={"scenario": args.scenario, "tokens": args.tokens})


def render(config: dict, summary: dict, table: pd.DataFrame, fmt: str, extra: dict | None = None) -> str:
    """The report as JSON (one object) or CSV (key,value sections then the per-expert table)."""
    config = {**config, **(extra or {})}
    if fmt == "json":
        return json.dumps({"config": config, "summary": summary,
                           "per_expert": json.loads(table.to_json(orient="records"))}, indent=2)
    out = io.StringIO()
    out.write("# config\n")
    pd.Series(config, dtype=object).rename("value").to_csv(out, header=["value"], index_label="key")
    out.write("# summary\n")
    pd.Series(summary).rename("value").to_csv(out, header=["value"], index_label="key")
    out.write("# per_expert\n")
    table.to_csv(out, index=False)
    return out.getvalue()


_COEF_FIELD = {"aux": "aux_coef", "zloss": "z_coef", "bias": "bias_rate", "capacity": "capacity_factor"}
_TRAIN_MODEL_OPTIONS = ("d_model", "d_expert", "n_experts", "top_k", "temperature", "noise_std", "device")
_TRAIN_OPTIONS = ("tokens", "steps", "balance", "aux_coef", "z_coef", "bias_rate", "capacity_factor", "lr",
                  "task_shared", "input_offset", "seed")
_SCENARIO_OPTIONS = {"clusters": "n_clusters", "skew": "skew", "spread": "spread", "period": "period"}


def add_train_command(commands) -> None:
    """`train`: every option defaults to the preset's (or TrainConfig's) value, so only what is given changes."""
    p = commands.add_parser("train", help="the live-training loop, headless: one row per step")
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="start from a named setup")
    p.add_argument("--scenario", choices=list(SCENARIOS), default=None)
    p.add_argument("--clusters", type=_positive_int, default=None, help="scenario n_clusters")
    p.add_argument("--skew", type=_float, default=None)
    p.add_argument("--spread", type=_float, default=None)
    p.add_argument("--period", type=_positive_int, default=None, help="drifting: steps per rotation")
    p.add_argument("--tokens", type=_positive_int, default=None, help="tokens per step")
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--balance", choices=BALANCES, default=None)
    p.add_argument("--coef", type=_float, default=None,
                   help="the chosen balance's coefficient: aux_coef, z_coef, bias_rate or capacity_factor")
    for name in ("aux_coef", "z_coef", "bias_rate", "capacity_factor", "lr", "task_shared", "input_offset",
                 "temperature", "noise_std"):
        p.add_argument("--" + name.replace("_", "-"), type=_float, default=None)
    for name in ("d_model", "d_expert", "n_experts", "top_k"):
        p.add_argument("--" + name.replace("_", "-"), type=_positive_int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.set_defaults(run=_train)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = PRESETS[args.preset] if args.preset else TrainConfig()
    changes = {f: getattr(args, f) for f in _TRAIN_OPTIONS if getattr(args, f) is not None}
    if args.coef is not None:
        balance = changes.get("balance", base.balance)
        if balance not in _COEF_FIELD:
            raise UsageError(f"--coef sets the balancing method's coefficient, but --balance {balance} has "
                             f"none; choose --balance {'|'.join(_COEF_FIELD)}")
        changes[_COEF_FIELD[balance]] = args.coef
    scenario = args.scenario or base.scenario
    params = base.params if scenario == base.scenario else {}  # a new scenario starts from its defaults
    params.update({key: getattr(args, opt) for opt, key in _SCENARIO_OPTIONS.items()
                   if getattr(args, opt) is not None})
    model = {f: getattr(args, f) for f in _TRAIN_MODEL_OPTIONS if getattr(args, f) is not None}
    return base.replace(model=base.model.replace(**model), scenario=scenario, scenario_params=params, **changes)


def _json_row(row: dict) -> str:
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(clean, allow_nan=False)  # NaN becomes null: every line is valid JSON


def _train(args: argparse.Namespace) -> str:
    cfg = train_config_from_args(args)
    trainer = Trainer(cfg)  # bad scenario parameters fail here, before any row is printed
    columns = trainer.columns()
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    if args.format == "csv":
        writer.writerow(columns)

    def emit(row: dict) -> None:
        if args.format == "json":
            out.write(_json_row(row) + "\n")
        else:
            writer.writerow([row[c] for c in columns])

    try:
        trainer.run(args.steps or cfg.steps, callback=emit)
        out.flush()
    except BrokenPipeError:  # `| head`: the reader left; stop quietly
        sys.stdout = open(os.devnull, "w")
    return ""


def build_parser() -> _Parser:
    parser = _Parser(prog="python -m moe", description="Headless moe-scope.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    report = commands.add_parser("report", help="one forward: config, summary and per-expert table")
    add_config_arguments(report)
    report.add_argument("--scenario", choices=list(SCENARIOS), default="gaussian")
    report.add_argument("--tokens", type=_positive_int, default=512)
    report.add_argument("--clusters", type=_positive_int, default=4)
    report.add_argument("--skew", type=_float, default=0.0)
    report.set_defaults(run=_report)
    add_train_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        text = args.run(args)
    except (UsageError, ValueError) as err:
        message = " ".join(str(err).split())  # one line
        print(f"python -m moe: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if text:  # `train` streams its rows itself and returns ""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
