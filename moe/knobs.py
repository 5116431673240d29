"""Knobs → engine config: the one mapping from user-facing settings to (MoEConfig, scenario, params, tokens).

The dashboard's controls, `python -m moe report` and `python -m moe train` all call `from_knobs`, so a
knob means the same everywhere. Knob names are the dashboard's control keys (DEFAULTS below); a
caller passes only the knobs it has, the rest take their defaults. Scenario parameters are taken
from the knobs the chosen scenario accepts (its keyword arguments), so every scenario runs.
"""
from __future__ import annotations

import inspect

import torch

from moe.config import MoEConfig
from moe.scenarios import SCENARIOS
from moe.seeds import EXPERT_BIAS, LOGIT_BIAS, generator
from moe.validate import finite_number, int_at_least

_CFG = MoEConfig()
DEFAULTS: dict[str, object] = {
    "d_model": _CFG.d_model, "d_expert": _CFG.d_expert, "n_experts": _CFG.n_experts, "top_k": _CFG.top_k,
    "batch": 4, "seq_len": 128,
    "router": _CFG.router, "score": _CFG.score, "temperature": _CFG.temperature,
    "normalize_topk": _CFG.normalize_topk, "routed_scaling_factor": _CFG.routed_scaling_factor,
    "dropless": True, "capacity_factor": 1.25, "drop_policy": _CFG.drop_policy,
    "noise_std": _CFG.noise_std, "jitter_eps": _CFG.jitter_eps,
    "hot_expert": -1, "hot_bias": 3.0, "bias_spread": 0.0, "expert_bias_hot": 0.0, "expert_bias_spread": 0.0,
    "scenario": "gaussian", "n_clusters": 4, "skew": 0.0, "spread": 0.3, "drift_step": 0,
    "seed": _CFG.seed, "device": _CFG.device, "dtype": _CFG.dtype, "router_dtype": _CFG.router_dtype,
    # experts (Hugging Face families): activation, gating, biases, shared experts, the sparsity test
    "activation": _CFG.activation, "gated": _CFG.gated, "expert_biases": _CFG.expert_biases,
    "swiglu_limit": _CFG.swiglu_limit, "shared_experts": _CFG.shared_experts, "d_shared": 0,
    "shared_gate": _CFG.shared_gate, "sparsity_mode": _CFG.sparsity_mode,
    # production routing: DeepSeek-V3 group-limited top-k, Switch's per-sequence capacity
    "n_group": _CFG.n_group, "topk_group": _CFG.topk_group, "capacity_scope": _CFG.capacity_scope,
}
# d_shared 0 (a knob is an int, like its widget and its link value) = MoEConfig's None: shared_experts × d_expert.
# Knob name → scenario keyword, for the knobs whose names differ from the scenario's parameter.
SCENARIO_KNOBS = {"drift_step": "step"}
_CONFIG_KNOBS = ("d_model", "d_expert", "n_experts", "top_k", "router", "score", "temperature", "normalize_topk",
                 "routed_scaling_factor", "drop_policy", "noise_std", "jitter_eps", "router_dtype", "device",
                 "dtype", "seed", "activation", "gated", "expert_biases", "swiglu_limit", "shared_experts",
                 "d_shared", "shared_gate", "sparsity_mode", "n_group", "topk_group", "capacity_scope")


def bias_values(n_experts: int, hot: int, hot_value: float, spread: float, seed: int, stream: int):
    """Per-expert bias: `hot_value` on the hot expert plus N(0, spread²) draws (moe.seeds stream tag `stream`),
    or None."""
    if spread == 0 and not (0 <= hot < n_experts and hot_value != 0):
        return None
    g = generator(stream, seed)
    values = spread * torch.randn(n_experts, generator=g, dtype=torch.float64)
    if 0 <= hot < n_experts:
        values[hot] += hot_value
    return tuple(round(float(v), 6) for v in values)


def tokens_from_knobs(values: dict) -> int:
    """T: the `tokens` knob when given, else batch × seq_len."""
    if values.get("tokens") is not None:
        return int_at_least("tokens", values["tokens"], 1)
    return int_at_least("batch", values.get("batch", DEFAULTS["batch"]), 1) * int_at_least(
        "seq_len", values.get("seq_len", DEFAULTS["seq_len"]), 1)


def scenario_knobs(scenario: str) -> list[str]:
    """The knobs that scenario `scenario` reads (its keyword arguments, under their knob names)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(map(repr, SCENARIOS))}")
    knob_of = {v: k for k, v in SCENARIO_KNOBS.items()}
    return [knob_of.get(p, p) for p, spec in inspect.signature(SCENARIOS[scenario]).parameters.items()
            if spec.kind is inspect.Parameter.KEYWORD_ONLY and p != "seed"]


def scenario_params(scenario: str, values: dict) -> dict:
    """The knobs that `scenario` takes as keyword arguments, under the scenario's own names."""
    accepted = scenario_knobs(scenario)
    params = {SCENARIO_KNOBS.get(k, k): values[k] for k in accepted if values.get(k) is not None}
    if "drift_step" in accepted:
        params.setdefault("step", DEFAULTS["drift_step"])
    return params


def from_knobs(values: dict) -> tuple[MoEConfig, str, dict, int]:
    """(MoEConfig, scenario, scenario params, tokens) from knob values; ValueError names the bad knob."""
    unknown = sorted(set(values) - set(DEFAULTS) - {"tokens", "period", "scale"})
    if unknown:
        raise ValueError(f"unknown knob {', '.join(map(repr, unknown))}; knobs are: {', '.join(DEFAULTS)}")
    v = {**DEFAULTS, **{k: x for k, x in values.items() if x is not None}}
    n = int_at_least("n_experts", v["n_experts"], 1)
    hot = int_at_least("hot_expert", v["hot_expert"], -1)
    if hot >= n:
        raise ValueError(f"hot_expert {hot} is not an expert index in 0..{n - 1}; pick one of those or -1 for none")
    seed = int_at_least("seed", v["seed"], 0)
    logit_bias = bias_values(n, hot, finite_number("hot_bias", v["hot_bias"]), finite_number("bias_spread", v["bias_spread"]),
                             seed, LOGIT_BIAS)
    expert_bias = bias_values(n, hot, finite_number("expert_bias_hot", v["expert_bias_hot"]),
                              finite_number("expert_bias_spread", v["expert_bias_spread"]), seed, EXPERT_BIAS)
    dropless = v["dropless"]
    if not isinstance(dropless, bool):
        raise ValueError(f"dropless must be True or False, got {dropless!r}")
    fields = {k: v[k] for k in _CONFIG_KNOBS}
    if fields["d_shared"] == 0 and not isinstance(fields["d_shared"], bool):
        fields["d_shared"] = None  # the knob's "default width"
    cfg = MoEConfig(**fields, logit_bias=logit_bias, expert_bias=expert_bias,
                    capacity_factor=None if dropless else v["capacity_factor"])
    scenario = v["scenario"]
    return cfg, scenario, scenario_params(scenario, v), tokens_from_knobs(values)


