"""Control values → engine config, and the URL round-trip (query parameters ↔ control values)."""
from __future__ import annotations

from dataclasses import dataclass

from moe import MoEConfig
from moe.knobs import DEFAULTS as KNOBS, from_knobs

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


def spec_from_controls(v: dict) -> RunSpec:
    """Build the RunSpec from control values (moe.knobs, shared with the CLI); ValueError for the user."""
    cfg, scenario, params, tokens = from_knobs({k: v[k] for k in KNOBS if k in v})
    return RunSpec(cfg, scenario, tuple(sorted(params.items())), tokens)


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
