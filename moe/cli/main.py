"""Headless use: `python -m moe report ...` prints the config, summary and per-expert table;
`python -m moe train ...` runs the live-training loop and prints one row per step; `train-lm`, `model-report`
(moe/cli/train_lm.py), `ep-report` (moe/parallel/report.py, under torchrun) and `trace-report` (moe/traces/report.py)
live in their own modules."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import sys

import pandas as pd
import torch

from moe.config import ACTIVATIONS, CAPACITY_SCOPES, DROP_POLICIES, DTYPES, ROUTERS, SCORES, SPARSITY_MODES, MoEConfig
from moe.jsonio import dumps, dumps_lines
from moe.knobs import from_knobs, scenario_knobs, scenario_params
from moe.layer import MoELayer
from moe.memory import BudgetError, budget_bytes, check_budget, out_of_memory
from moe.scenarios import SCENARIOS, make_batch
from moe.train.presets import PRESETS
from moe.train.trainer import BALANCES, TrainConfig, Trainer


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
    p.add_argument("--activation", choices=ACTIVATIONS, default=d.activation)
    p.add_argument("--no-gated", action="store_true", help="experts are act(W_up x), no w_gate (Switch)")
    p.add_argument("--expert-biases", action="store_true", help="bias terms in every expert (GPT-OSS)")
    p.add_argument("--swiglu-limit", type=_float, default=d.swiglu_limit, help="gpt_oss clamp")
    p.add_argument("--shared-experts", type=int, default=d.shared_experts, help="0 = no shared FFN")
    p.add_argument("--d-shared", type=int, default=None, help="shared FFN width; default shared × d_expert")
    p.add_argument("--shared-gate", action="store_true", help="σ(x·w) scales the shared output (Qwen2-MoE)")
    p.add_argument("--sparsity-mode", choices=SPARSITY_MODES, default=d.sparsity_mode)
    p.add_argument("--hot-expert", type=int, default=None, help="add --hot-bias to this expert's logit")
    p.add_argument("--hot-bias", type=_float, default=None, help="default 3")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", choices=list(DTYPES), default=d.dtype)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--format", choices=("json", "csv"), default="json",
                   help="json: one strict JSON document (NaN and inf are null); csv: key,value sections and the table")


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """The input batch: a scenario and its parameters (each scenario takes the ones it knows)."""
    p.add_argument("--scenario", choices=list(SCENARIOS), default="gaussian")
    p.add_argument("--tokens", type=_positive_int, default=512)
    p.add_argument("--clusters", type=_positive_int, default=None, help="clusters/drifting: topics (default 4)")
    p.add_argument("--skew", type=_float, default=None, help="clusters: topic size decay (default 0)")
    p.add_argument("--spread", type=_float, default=None, help="clusters/drifting: noise (default 0.3)")
    p.add_argument("--drift-step", type=int, default=None, help="drifting: the step drawn (default 0)")
    p.add_argument("--period", type=_positive_int, default=None, help="drifting: steps per rotation (default 200)")


# CLI option -> knob (moe.knobs), for the options whose names differ from the knob's.
_KNOB_OF = {"clusters": "n_clusters"}
_REPORT_KNOBS = ("d_model", "d_expert", "n_experts", "top_k", "router", "score", "temperature",
                 "routed_scaling_factor", "capacity_factor", "drop_policy", "jitter_eps", "noise_std", "hot_expert",
                 "hot_bias", "device", "dtype", "seed", "scenario", "tokens", "clusters", "skew", "spread",
                 "drift_step", "period", "activation", "expert_biases", "swiglu_limit", "shared_experts",
                 "d_shared", "shared_gate", "sparsity_mode", "n_group", "topk_group", "capacity_scope")


def flag_names() -> dict[str, str]:
    """Knob -> the option that sets it, for advice in CLI terms ("--d-expert ≤ 2,048")."""
    names = {k: "--" + k.replace("_", "-") for k in _REPORT_KNOBS}
    return {**names, "n_clusters": "--clusters"}


def knobs_from_args(args: argparse.Namespace) -> dict:
    """The given options as moe.knobs values (None = the knob's default)."""
    values = {_KNOB_OF.get(k, k): getattr(args, k) for k in _REPORT_KNOBS}
    values["normalize_topk"] = not args.no_normalize_topk
    values["dropless"] = args.capacity_factor is None
    values["gated"] = not args.no_gated
    return values


def config_from_args(args: argparse.Namespace) -> MoEConfig:
    return from_knobs(knobs_from_args(args))[0]


def check_scenario_options(args: argparse.Namespace, scenario: str, options: tuple[str, ...]) -> None:
    """An option the scenario does not read is an error, not silently ignored."""
    takes = scenario_knobs(scenario)
    given = [o for o in options if getattr(args, o, None) is not None and _KNOB_OF.get(o, o) not in takes]
    if given:
        flags = ", ".join("--" + o.replace("_", "-") for o in given)
        raise UsageError(f"{flags} does not apply to scenario {scenario!r}; it takes: "
                         f"{', '.join(takes) or 'no parameters'}")


def _report(args: argparse.Namespace) -> str:
    check_scenario_options(args, args.scenario, ("clusters", "skew", "spread", "drift_step", "period"))
    cfg, scenario, params, tokens = from_knobs(knobs_from_args(args))
    check_budget(cfg, tokens, budget_bytes(), names=flag_names())  # before anything is built
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


def render(config: dict, summary: dict, table: pd.DataFrame, fmt: str, extra: dict | None = None) -> str:
    """The report as strict JSON (one object; NaN → null) or CSV (key,value sections then the per-expert table)."""
    config = {**config, **(extra or {})}
    if fmt == "json":
        return dumps({"config": config, "summary": summary, "per_expert": table.to_dict(orient="records")}, indent=2)
    out = io.StringIO()
    out.write("# config\n")
    pd.Series(config, dtype=object).rename("value").to_csv(out, header=["value"], index_label="key")
    out.write("# summary\n")
    pd.Series(summary).rename("value").to_csv(out, header=["value"], index_label="key")
    out.write("# per_expert\n")
    table.to_csv(out, index=False)
    return out.getvalue()


TRAIN_FORMATS = ("--format json: one strict JSON document {\"config\": ..., \"rows\": [one object per step]}, "
                 "written as the steps run; jsonl: JSON Lines, one strict JSON object per step; csv: a header, "
                 "then one row per step. NaN and inf are written as null in JSON.")
_COEF_FIELD = {"aux": "aux_coef", "zloss": "z_coef", "bias": "bias_rate", "capacity": "capacity_factor"}
_TRAIN_MODEL_OPTIONS = ("d_model", "d_expert", "n_experts", "top_k", "temperature", "noise_std", "device")
_TRAIN_OPTIONS = ("tokens", "steps", "balance", "aux_coef", "z_coef", "bias_rate", "capacity_factor", "lr",
                  "task_shared", "input_offset", "seed")
_SCENARIO_OPTIONS = {"clusters": "n_clusters", "skew": "skew", "spread": "spread", "period": "period"}


def knobs_from_train_args(args: argparse.Namespace) -> dict:
    """The scenario options given to `train`, as moe.knobs values (drifting's step is the trainer's)."""
    return {key: getattr(args, opt) for opt, key in _SCENARIO_OPTIONS.items() if getattr(args, opt) is not None}


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
    p.add_argument("--format", choices=("json", "jsonl", "csv"), default="json", help=TRAIN_FORMATS)
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
    check_scenario_options(args, scenario, tuple(_SCENARIO_OPTIONS))
    params = base.params if scenario == base.scenario else {}  # a new scenario starts from its defaults
    given = scenario_params(scenario, knobs_from_train_args(args))
    given.pop("step", None)  # the trainer passes each step's number itself
    params.update(given)
    model = {f: getattr(args, f) for f in _TRAIN_MODEL_OPTIONS if getattr(args, f) is not None}
    return base.replace(model=base.model.replace(**model), scenario=scenario, scenario_params=params, **changes)


def train_config_dict(cfg: TrainConfig) -> dict:
    """The TrainConfig as plain values: the layer's config as MoEConfig.to_dict(), scenario_params as a dict."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return {**fields, "model": cfg.model.to_dict(), "scenario_params": cfg.params}


def _train(args: argparse.Namespace) -> str:
    try:
        cfg = train_config_from_args(args)  # checks the memory budget before its validation draw
        cfg.check_memory(budget_bytes())    # before anything is built
    except BudgetError as err:
        raise err.renamed(flag_names()) from None
    trainer = Trainer(cfg)  # bad scenario parameters fail here, before any row is printed
    columns = trainer.columns()
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    rows = 0

    def emit(row: dict) -> None:  # every format streams: memory stays flat however many steps
        nonlocal rows
        if args.format == "json":  # one document, its rows written as they come
            out.write((",\n" if rows else "") + "    " + dumps(row))
        elif args.format == "jsonl":
            out.write(dumps_lines([row]))
        else:
            writer.writerow([row[c] for c in columns])
        rows += 1

    try:
        if args.format == "csv":
            writer.writerow(columns)
        elif args.format == "json":
            out.write('{"config": ' + dumps(train_config_dict(trainer.config)) + ',\n "rows": [\n')
        trainer.run(args.steps or cfg.steps, callback=emit)
        if args.format == "json":
            out.write("\n]}\n")
        out.flush()
    except BrokenPipeError:  # `| head`: the reader left; stop quietly
        sys.stdout = open(os.devnull, "w")
    return ""


def build_parser() -> _Parser:
    from moe.parallel import report as ep_report
    from moe.cli import train_lm as lm_cli
    from moe.traces import report as trace_report  # subcommands in their own modules (they import helpers from here)
    parser = _Parser(prog="python -m moe", description="Headless moe-scope.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    report = commands.add_parser("report", help="one forward: config, summary and per-expert table")
    add_config_arguments(report)
    add_scenario_arguments(report)
    report.add_argument("--seq-len", type=_positive_int, default=None,
                        help="split the tokens into sequences of this length (capacity_scope=sequence counts "
                             "capacity per sequence); default: one sequence")
    report.set_defaults(run=_report)
    add_train_command(commands)
    lm_cli.add_model_commands(commands)  # train-lm, model-report
    ep_report.add_ep_command(commands)
    trace_report.add_trace_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        text = args.run(args)
    except (UsageError, ValueError, RuntimeError, MemoryError) as err:  # every failure: one line, exit 2
        message = " ".join(str(err).split()) or type(err).__name__  # one line
        if isinstance(err, MemoryError):  # its own message is empty: say what ran out and the budget to set
            message = out_of_memory("running this command")
        print(f"python -m moe: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if text:  # `train` streams its rows itself and returns ""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
