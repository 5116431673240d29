"""The layer and input options of `report` and `ep-report`, written once as a table.

The same table builds the parser (`add_config_arguments`, `add_scenario_arguments`), turns parsed options into
`moe.knobs` values and a MoEConfig (`resolve`), and turns a MoEConfig and a scenario back into the argument list
that rebuilds them (`config_argv`, `scenario_argv`): nothing is mapped by hand, so every field round-trips.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from moe.cli.args import UsageError, finite_float, finite_floats, integer, positive_int
from moe.config import (ACTIVATIONS, CAPACITY_SCOPES, DROP_POLICIES, DTYPES, ROUTER_DTYPES, ROUTERS, SCORES,
                        SPARSITY_MODES, MoEConfig)
from moe.knobs import SCENARIO_KNOBS, from_knobs, scenario_knobs
from moe.scenarios import SCENARIOS

_CFG = MoEConfig()


@dataclass(frozen=True)
class Option:
    """One option. `knob`: the moe.knobs value it sets; `field`: the MoEConfig field it sets directly (after
    from_knobs) or, for a knob, reads back in config_argv. kind: value | on (the flag sets the field True) | off
    (the flag sets it False) | floats (one number per expert)."""
    flag: str
    knob: str | None
    field: str | None
    kind: str = "value"
    type: object = None
    choices: tuple | None = None
    default: object = None
    help: str | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _knob(flag: str, type=None, choices=None, help=None, field: str | None = "", knob: str | None = None) -> Option:
    """An option named after its knob and config field (flag --d-model: knob and field d_model)."""
    name = flag[2:].replace("-", "_")
    field = name if field == "" else field
    default = getattr(_CFG, field) if field else None
    return Option(flag, knob or name, field, "value", type, tuple(choices) if choices else None, default, help)


CONFIG_OPTIONS: tuple[Option, ...] = (
    _knob("--d-model", positive_int), _knob("--d-expert", positive_int), _knob("--n-experts", positive_int),
    _knob("--top-k", positive_int), _knob("--router", choices=ROUTERS), _knob("--score", choices=SCORES),
    _knob("--temperature", finite_float),
    Option("--no-normalize-topk", "normalize_topk", "normalize_topk", "off",
           help="keep raw top-k scores (Qwen/OLMoE)"),
    _knob("--routed-scaling-factor", finite_float),
    _knob("--router-dtype", choices=ROUTER_DTYPES, help="model: the router runs in --dtype"),
    _knob("--n-group", positive_int, help="expert groups (DeepSeek-V3)"),
    _knob("--topk-group", positive_int, help="groups a token may use"),
    _knob("--capacity-factor", finite_float, help="omit for dropless"),
    _knob("--drop-policy", choices=DROP_POLICIES),
    _knob("--capacity-scope", choices=CAPACITY_SCOPES,
          help="sequence: capacity per sequence of a (B, S, D) input"),
    _knob("--jitter-eps", finite_float), _knob("--noise-std", finite_float),
    _knob("--activation", choices=ACTIVATIONS),
    Option("--no-gated", "gated", "gated", "off", help="experts are act(W_up x), no w_gate (Switch)"),
    Option("--expert-biases", "expert_biases", "expert_biases", "on", help="bias terms in every expert (GPT-OSS)"),
    _knob("--swiglu-limit", finite_float, help="gpt_oss clamp"),
    _knob("--shared-experts", integer, help="0 = no shared FFN"),
    _knob("--d-shared", integer, help="shared FFN width; 0 or omitted: --shared-experts × --d-expert"),
    Option("--shared-gate", "shared_gate", "shared_gate", "on", help="σ(x·w) scales the shared output (Qwen2-MoE)"),
    _knob("--sparsity-mode", choices=SPARSITY_MODES),
    Option("--sparsity-eps", None, "sparsity_eps", "value", finite_float, None, _CFG.sparsity_eps,
           "the sparsity test's threshold"),
    _knob("--hot-expert", integer, field=None, help="add --hot-bias to this expert's logit"),
    _knob("--hot-bias", finite_float, field=None, help="default 3"),
    Option("--logit-bias", None, "logit_bias", "floats", finite_floats,
           help="one number per expert added to its logit, e.g. 0,0,3,0 (instead of --hot-expert)"),
    Option("--expert-bias", None, "expert_bias", "floats", finite_floats,
           help="one number per expert: the router's selection bias (DeepSeek-V3), e.g. 0,0.5,0,0"),
    _knob("--device", None), _knob("--dtype", choices=list(DTYPES)), _knob("--seed", integer),
)
SCENARIO_OPTIONS: tuple[Option, ...] = (
    Option("--scenario", "scenario", None, choices=tuple(SCENARIOS), default="gaussian"),
    Option("--tokens", "tokens", None, type=positive_int, default=512),
    Option("--clusters", "n_clusters", None, type=positive_int, help="clusters/drifting: topics (default 4)"),
    Option("--skew", "skew", None, type=finite_float, help="clusters: topic size decay (default 0)"),
    Option("--spread", "spread", None, type=finite_float, help="clusters/drifting: noise (default 0.3)"),
    Option("--drift-step", "drift_step", None, type=integer, help="drifting: the step drawn (default 0)"),
    Option("--period", "period", None, type=positive_int, help="drifting: steps per rotation (default 200)"),
    Option("--scale", "scale", None, type=finite_float, help="gaussian: the tokens' standard deviation (default 1)"),
)
SCENARIO_PARAMETERS = tuple(o.dest for o in SCENARIO_OPTIONS[2:])  # the options a scenario may or may not read


def _add(p: argparse.ArgumentParser, option: Option) -> None:
    if option.kind in ("on", "off"):
        p.add_argument(option.flag, action="store_true", help=option.help)
    else:
        p.add_argument(option.flag, type=option.type, choices=option.choices, default=option.default,
                       help=option.help)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The MoEConfig fields as options, and --format (json | csv)."""
    for option in CONFIG_OPTIONS:
        _add(p, option)
    p.add_argument("--format", choices=("json", "csv"), default="json",
                   help="json: one strict JSON document (NaN and inf are null); csv: key,value sections and the table")


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """The input batch: a scenario and its parameters (each scenario takes the ones it knows)."""
    for option in SCENARIO_OPTIONS:
        _add(p, option)


def flag_names() -> dict[str, str]:
    """Knob -> the option that sets it, for advice in CLI terms ("--d-expert ≤ 2,048")."""
    return {o.knob: o.flag for o in CONFIG_OPTIONS + SCENARIO_OPTIONS if o.knob is not None}


def knobs_from_args(args: argparse.Namespace) -> dict:
    """The given options as moe.knobs values (None = the knob's default)."""
    values = {}
    for o in CONFIG_OPTIONS + SCENARIO_OPTIONS:
        if o.knob is None:
            continue
        given = getattr(args, o.dest)
        values[o.knob] = (not given) if o.kind == "off" else given
    values["dropless"] = args.capacity_factor is None
    return values


def resolve(args: argparse.Namespace) -> tuple[MoEConfig, str, dict, int]:
    """(MoEConfig, scenario, params, tokens) the options describe; the per-expert bias vectors are set last."""
    direct = {o.field: getattr(args, o.dest) for o in CONFIG_OPTIONS
              if o.knob is None and getattr(args, o.dest) != o.default}
    if args.logit_bias is not None and (args.hot_expert is not None or args.hot_bias is not None):
        raise UsageError("--logit-bias sets every expert's logit bias; give it or --hot-expert/--hot-bias, not both")
    cfg, scenario, params, tokens = from_knobs(knobs_from_args(args))
    return (cfg.replace(**direct) if direct else cfg), scenario, params, tokens


def check_scenario_options(args: argparse.Namespace, scenario: str) -> None:
    """An option the scenario does not read is an error, not silently ignored."""
    takes = scenario_knobs(scenario)
    flags = {o.dest: o for o in SCENARIO_OPTIONS}
    given = [flags[d] for d in SCENARIO_PARAMETERS
             if getattr(args, d, None) is not None and flags[d].knob not in takes]
    if given:
        raise UsageError(f"{', '.join(o.flag for o in given)} does not apply to scenario {scenario!r}; it takes: "
                         f"{', '.join(takes) or 'no parameters'}")


def config_argv(cfg: MoEConfig) -> list[str]:
    """The options that rebuild `cfg` through `resolve` (only the fields that differ from MoEConfig's defaults)."""
    argv: list[str] = []
    for o in CONFIG_OPTIONS:
        if o.field is None:
            continue
        value = getattr(cfg, o.field)
        if value == getattr(_CFG, o.field):
            continue
        if o.kind in ("on", "off"):
            argv.append(o.flag)  # a bool differs from its default exactly when the flag is given
        elif o.kind == "floats":
            argv += _pair(o.flag, ",".join(repr(float(v)) for v in value))
        else:
            argv += _pair(o.flag, _text(value))
    return argv


def _text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # repr: the float comes back exactly


def _pair(flag: str, text: str) -> list[str]:
    """[flag, value], or [flag=value] when the value starts with '-' (argparse would read "-0.5,1" as an option)."""
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def scenario_argv(scenario: str, params: dict, tokens: int) -> list[str]:
    """The options that draw the same input: --scenario, --tokens and the scenario's parameters."""
    by_param = {SCENARIO_KNOBS.get(o.knob, o.knob): o for o in SCENARIO_OPTIONS[2:]}
    unknown = sorted(set(params) - set(by_param))
    if unknown:
        raise ValueError(f"scenario parameter {', '.join(unknown)} has no command-line option")
    argv = ["--scenario", scenario, "--tokens", str(tokens)]
    for name, value in params.items():
        argv += _pair(by_param[name].flag, _text(value))
    return argv
