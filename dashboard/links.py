"""Control values → engine config, and the URL round-trip (query parameters ↔ control values)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from moe import MoEConfig
from moe.knobs import DEFAULTS as KNOBS, from_knobs

from dashboard.model_link import MODEL_LINK_KEYS
from dashboard.limits import RANGES
from dashboard.presets import CONTROL_DEFAULTS, DEFAULT_PRESET, PRESETS, preset_values
from dashboard.quoting import quote

LABELLED_SCENARIOS = ("clusters", "drifting")
# The Expert parallel page's own settings: query key -> (session-state key, smallest, largest value)
EP_WORLD = (2, 8)        # processes W: the page's slider and the link accept these
SLOTS_PER_EXPERT = 7     # redundant slots R ≤ 7·E (the largest layer: n_experts 256)
EP_LINK: dict[str, tuple[str, int, int]] = {"epw": ("ep_world", *EP_WORLD),
                                            "epr": ("ep_slots", 0, SLOTS_PER_EXPERT * RANGES["n_experts"][1])}
# not controls (the view: the Playground's sub-view; the Model page's: model_link; the Expert parallel page's)
LINK_KEYS = ("preset", "view", *MODEL_LINK_KEYS, *EP_LINK)
MAX_LINK_PARAMS = 64             # a link carries at most ~35 keys; more are ignored unread
MAX_VALUE_CHARS = 64             # longer values are refused before parsing (a number or a name is short)


@dataclass(frozen=True)
class RunSpec:
    """Everything a forward needs: the engine config and the input batch description."""
    config: MoEConfig
    scenario: str
    scenario_params: tuple[tuple[str, object], ...]  # hashable; dict(params) for make_batch
    tokens: int
    seq_len: int | None = None  # S: the forward gets (T/S, S, D), so capacity_scope="sequence" counts per sequence

    @property
    def params(self) -> dict:
        return dict(self.scenario_params)


def spec_from_controls(v: dict) -> RunSpec:
    """Build the RunSpec from control values (moe.knobs, shared with the CLI); ValueError for the user."""
    cfg, scenario, params, tokens = from_knobs({k: v[k] for k in KNOBS if k in v})
    seq_len = v.get("seq_len")
    return RunSpec(cfg, scenario, tuple(sorted(params.items())), tokens,
                   seq_len if isinstance(seq_len, int) and seq_len > 0 and tokens % seq_len == 0 else None)


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


def ep_from_query(query: dict[str, str]) -> tuple[dict, list[str]]:
    """(session-state values, problems) for the Expert parallel page's keys; bad entries are named, not used."""
    values, problems = {}, []
    for key, (state_key, low, high) in EP_LINK.items():
        text = query.get(key)
        if text is None:
            continue
        try:
            if len(text) > MAX_VALUE_CHARS or not low <= (value := int(text)) <= high:
                raise ValueError(text)
        except ValueError:
            problems.append(f"ignored {key}={quote(text)}: expected an integer in {low}..{high}")
            continue
        values[state_key] = value
    return values, problems


def ep_to_query(state, defaults: dict) -> dict[str, str]:
    """The Expert parallel page's keys whose values differ from the defaults."""
    return {key: str(state[name]) for key, (name, _, _) in EP_LINK.items()
            if state.get(name, defaults[name]) != defaults[name]}


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
