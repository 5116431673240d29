"""`python -m moe train`: the live-training loop, headless; one row per step, streamed as JSON, JSON Lines or CSV.
Every option defaults to the preset's (or TrainConfig's) value, so only what is given changes."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys

from moe.cli.args import UsageError, finite_float, positive_int
from moe.cli.options import CONFIG_OPTIONS, SCENARIO_OPTIONS, check_scenario_options, flag_names
from moe.jsonio import dumps, dumps_lines
from moe.knobs import scenario_params
from moe.memory import BudgetError, budget_bytes
from moe.train.presets import PRESETS, preset
from moe.train.trainer import BALANCES, TrainConfig, Trainer

FORMATS = ("--format json: one strict JSON document {\"config\": ..., \"rows\": [one object per step]}, "
           "written as the steps run; jsonl: JSON Lines, one strict JSON object per step; csv: a header, "
           "then one row per step. NaN and inf are written as null in JSON.")
_COEF_FIELD = {"aux": "aux_coef", "zloss": "z_coef", "bias": "bias_rate", "capacity": "capacity_factor"}
_MODEL_OPTIONS = ("d_model", "d_expert", "n_experts", "top_k", "temperature", "noise_std", "device")
_TRAIN_OPTIONS = ("tokens", "steps", "balance", "aux_coef", "z_coef", "bias_rate", "capacity_factor", "lr",
                  "task_shared", "input_offset", "seed")
# The scenario and layer options train shares with report (moe.cli.options): same flags, types and knobs; here each
# defaults to None (= the preset's or TrainConfig's value). drifting's step is the trainer's own.
_SHARED = {o.dest: o for o in (*SCENARIO_OPTIONS, *CONFIG_OPTIONS)
           if o.dest in ("scenario", "clusters", "skew", "spread", "period", "temperature", "noise_std", "d_model",
                         "d_expert", "n_experts", "top_k", "device", "seed")}
_SCENARIO_OPTIONS = {dest: _SHARED[dest].knob for dest in ("clusters", "skew", "spread", "period")}


def add_command(commands) -> None:
    p = commands.add_parser("train", help="the live-training loop, headless: one row per step")
    p.add_argument("--preset", choices=list(PRESETS), default=None, help="start from a named setup")
    for option in _SHARED.values():
        p.add_argument(option.flag, type=option.type, choices=option.choices, default=None, help=option.help)
    p.add_argument("--tokens", type=positive_int, default=None, help="tokens per step")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--balance", choices=BALANCES, default=None)
    p.add_argument("--coef", type=finite_float, default=None,
                   help="the chosen balance's coefficient: aux_coef, z_coef, bias_rate or capacity_factor")
    for name in ("aux_coef", "z_coef", "bias_rate", "capacity_factor", "lr", "task_shared", "input_offset"):
        p.add_argument("--" + name.replace("_", "-"), type=finite_float, default=None)
    p.add_argument("--format", choices=("json", "jsonl", "csv"), default="json", help=FORMATS)
    p.set_defaults(run=run)


def knobs_from_train_args(args: argparse.Namespace) -> dict:
    """The scenario options given to `train`, as moe.knobs values (drifting's step is the trainer's)."""
    return {key: getattr(args, opt) for opt, key in _SCENARIO_OPTIONS.items() if getattr(args, opt) is not None}


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = preset(args.preset) if args.preset else TrainConfig()
    changes = {f: getattr(args, f) for f in _TRAIN_OPTIONS if getattr(args, f) is not None}
    if args.coef is not None:
        balance = changes.get("balance", base.balance)
        if balance not in _COEF_FIELD:
            raise UsageError(f"--coef sets the balancing method's coefficient, but --balance {balance} has "
                             f"none; choose --balance {'|'.join(_COEF_FIELD)}")
        changes[_COEF_FIELD[balance]] = args.coef
    scenario = args.scenario or base.scenario
    check_scenario_options(args, scenario)
    params = base.params if scenario == base.scenario else {}  # a new scenario starts from its defaults
    given = scenario_params(scenario, knobs_from_train_args(args))
    given.pop("step", None)  # the trainer passes each step's number itself
    params.update(given)
    model = {f: getattr(args, f) for f in _MODEL_OPTIONS if getattr(args, f) is not None}
    return base.replace(model=base.model.replace(**model), scenario=scenario, scenario_params=params, **changes)


def train_config_dict(cfg: TrainConfig) -> dict:
    """The TrainConfig as plain values: its model as MoEConfig.to_dict(), scenario_params as a dict, and "layer",
    the MoEConfig the layer ran (TrainConfig.layer_config: the model seeded by `seed`, with the capacity of
    balance="capacity"), so that the weights can be rebuilt from it (the model's own seed and capacity are not
    those)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return {**fields, "model": cfg.model.to_dict(), "layer": cfg.layer_config().to_dict(),
            "scenario_params": cfg.params}


def run(args: argparse.Namespace) -> str:
    try:
        cfg = train_config_from_args(args)  # checks the memory budget before its validation draw
        cfg.check_memory(budget_bytes())    # before anything is built
    except BudgetError as err:
        raise err.renamed(flag_names()) from None
    trainer = Trainer(cfg)  # bad scenario parameters fail here, before any row is printed
    try:
        _stream(trainer, args.steps or cfg.steps, args.format, sys.stdout)
    except BrokenPipeError:  # `| head`: the reader left; stop quietly
        sys.stdout = open(os.devnull, "w")
    return ""


def _stream(trainer: Trainer, steps: int, fmt: str, out) -> None:
    """Every format streams: memory stays flat however many steps."""
    columns = trainer.columns()
    writer = csv.writer(out, lineterminator="\n")
    rows = 0

    def emit(row: dict) -> None:
        nonlocal rows
        if fmt == "json":  # one document, its rows written as they come
            out.write((",\n" if rows else "") + "    " + dumps(row))
        elif fmt == "jsonl":
            out.write(dumps_lines([row]))
        else:
            writer.writerow([row[c] for c in columns])
        rows += 1

    if fmt == "csv":
        writer.writerow(columns)
    elif fmt == "json":
        out.write('{"config": ' + dumps(train_config_dict(trainer.config)) + ',\n "rows": [\n')
    trainer.run(steps, callback=emit)
    if fmt == "json":
        out.write("\n]}\n")
    out.flush()
