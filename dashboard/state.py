"""Control values → engine config, and the URL round-trip (query parameters ↔ control values)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe import MoEConfig

from .presets import CONTROL_DEFAULTS, DEFAULT_PRESET, PRESETS, preset_values

LABELLED_SCENARIOS = ("clusters", "drifting")
LINK_KEYS = ("preset", "view")   # link parameters that are not controls (the view is checked by the page)
MAX_LINK_PARAMS = 64             # a link carries at most ~35 keys; more are ignored unread
MAX_VALUE_CHARS = 64             # longer values are refused before parsing (a number or a name is short)
SHOWN_CHARS = 40                 # a value echoed in a note is cut to this many characters


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
    """Parse query parameters into (preset, control values, problems); bad entries are skipped and named.

    Problems are Markdown-safe: every value from the link is shown shortened inside a code span.
    """
    problems = []
    items = list(query.items())
    if len(items) > MAX_LINK_PARAMS:
        problems.append(f"the link has {len(items)} parameters; read the first {MAX_LINK_PARAMS}")
        items = items[:MAX_LINK_PARAMS]
    query = dict(items)
    preset = query.get("preset", DEFAULT_PRESET)
    if preset not in PRESETS:
        problems.append(f"unknown preset {quote(preset)} in the link; using {quote(DEFAULT_PRESET)}")
        preset = DEFAULT_PRESET
    values = preset_values(preset)
    for key, text in query.items():
        if key in LINK_KEYS:
            continue
        if key not in CONTROL_DEFAULTS:
            problems.append(f"ignored unknown link parameter {quote(key)}")
            continue
        expected = _expected(CONTROL_DEFAULTS[key])
        if len(text) > MAX_VALUE_CHARS:
            problems.append(f"ignored {key}: its value has {len(text):,} characters; expected {expected}")
            continue
        try:
            values[key] = _decode(text, CONTROL_DEFAULTS[key])
        except ValueError:
            problems.append(f"ignored {key}={quote(text)}: expected {expected}")
    return preset, values, problems


def quote(value) -> str:
    """A value from a link, safe to show in Markdown: shortened, in a code span, no backticks or line breaks."""
    text = str(value)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS - 1] + "…"
    text = "".join(" " if ch.isspace() or not ch.isprintable() else ch for ch in text)
    return "`" + text.replace("`", "ˋ") + "`"  # ˋ (U+02CB) looks like a backtick but cannot close the span


def _expected(default) -> str:
    if isinstance(default, bool):
        return "0 or 1"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    return "a name"


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
        value = float(text)
        if not math.isfinite(value):  # nan passes min/max clamps and breaks the slider; inf is no setting
            raise ValueError(text)
        return value
    return str(text)
