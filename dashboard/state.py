"""Control values → engine config, and the URL round-trip (query parameters ↔ control values)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from moe import MoEConfig

from .presets import CONTROL_DEFAULTS, DEFAULT_PRESET, PRESETS, preset_values

LABELLED_SCENARIOS = ("clusters", "drifting")


@dataclass(frozen=True)
class RunSpec:
    """Everything a forward needs: the engine config and the input batch description."""
    config: MoEConfig
    scenario: str
    scenario_params: tuple[tuple[str, object], ...]  # hashable; dict(params) for make_batch
    tokens: int

    @property
    def params(self) -> dict:
        return dict(self.scenario_params)


def _bias(n_experts: int, hot: int, hot_value: float, spread: float, seed: int, stream: int):
    """Per-expert bias: `hot_value` on the hot expert plus N(0, spread²) draws (seeded), or None."""
    if spread == 0 and not (0 <= hot < n_experts and hot_value != 0):
        return None
    g = torch.Generator().manual_seed(seed * 1009 + stream)
    values = spread * torch.randn(n_experts, generator=g, dtype=torch.float64)
    if 0 <= hot < n_experts:
        values[hot] += hot_value
    return tuple(round(float(v), 6) for v in values)


def spec_from_controls(v: dict) -> RunSpec:
    """Build the RunSpec from control values; raises ValueError with a message for the user."""
    n = int(v["n_experts"])
    hot = int(v["hot_expert"])
    cfg = MoEConfig(
        d_model=int(v["d_model"]), d_expert=int(v["d_expert"]), n_experts=n, top_k=int(v["top_k"]),
        router=v["router"], score=v["score"], temperature=float(v["temperature"]),
        normalize_topk=bool(v["normalize_topk"]), routed_scaling_factor=float(v["routed_scaling_factor"]),
        capacity_factor=None if v["dropless"] else float(v["capacity_factor"]), drop_policy=v["drop_policy"],
        noise_std=float(v["noise_std"]), jitter_eps=float(v["jitter_eps"]),
        logit_bias=_bias(n, hot, float(v["hot_bias"]), float(v["bias_spread"]), int(v["seed"]), 1),
        expert_bias=_bias(n, hot, float(v["expert_bias_hot"]), float(v["expert_bias_spread"]), int(v["seed"]), 2),
        router_dtype=v["router_dtype"], device=v["device"], dtype=v["dtype"], seed=int(v["seed"]))
    params: dict = {}
    if v["scenario"] in LABELLED_SCENARIOS:
        params = {"n_clusters": int(v["n_clusters"]), "spread": float(v["spread"])}
        if v["scenario"] == "clusters":
            params["skew"] = float(v["skew"])
        else:
            params["step"] = int(v["drift_step"])
    return RunSpec(cfg, v["scenario"], tuple(sorted(params.items())), int(v["batch"]) * int(v["seq_len"]))


# --- the URL: control values <-> query parameters (strings)
def to_query(values: dict, preset: str) -> dict[str, str]:
    """Only the values that differ from the preset's, plus the preset name: short, shareable links."""
    base = preset_values(preset)
    query = {"preset": preset}
    for key, default in base.items():
        if values.get(key, default) != default:
            query[key] = _encode(values[key])
    return query


def from_query(query: dict[str, str]) -> tuple[str, dict, list[str]]:
    """Parse query parameters into (preset, control values, problems); bad entries are skipped."""
    problems = []
    preset = query.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        problems.append(f"unknown preset {preset!r} in the link; using {DEFAULT_PRESET!r}")
        preset = DEFAULT_PRESET
    values = preset_values(preset)
    for key, text in query.items():
        if key == "preset":
            continue
        if key not in CONTROL_DEFAULTS:
            problems.append(f"ignored unknown link parameter {key!r}")
            continue
        try:
            values[key] = _decode(text, CONTROL_DEFAULTS[key])
        except ValueError:
            problems.append(f"ignored {key}={text!r}: expected {type(CONTROL_DEFAULTS[key]).__name__}")
    return preset, values, problems


def _encode(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _decode(text: str, default):
    if isinstance(default, bool):
        if text not in ("0", "1", "true", "false", "True", "False"):
            raise ValueError(text)
        return text in ("1", "true", "True")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return str(text)
