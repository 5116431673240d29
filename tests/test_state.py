"""Controls → config, the URL round-trip, presets and sanitising of link values."""
import typing

import pytest

from moe import MoEConfig
from dashboard.limits import sanitize
from dashboard.links import MAX_VALUE_CHARS, from_query, spec_from_controls, to_query
from dashboard.presets import CONTROL_DEFAULTS, PRESETS, preset_values
from dashboard.quoting import SHOWN_CHARS, quote


def test_default_controls_build_the_default_engine_config():
    spec = spec_from_controls(CONTROL_DEFAULTS)
    assert spec.config == MoEConfig(d_model=64, d_expert=256, n_experts=8, top_k=2)
    assert spec.tokens == 4 * 128
    assert spec.scenario == "gaussian" and spec.params == {}
    clustered = spec_from_controls({**CONTROL_DEFAULTS, "scenario": "clusters"})
    assert clustered.params == {"n_clusters": 4, "skew": 0.0, "spread": 0.3}


def test_hot_expert_becomes_a_logit_bias_on_that_expert_only():
    spec = spec_from_controls({**CONTROL_DEFAULTS, "hot_expert": 3, "hot_bias": 2.5})
    assert spec.config.logit_bias == (0.0, 0.0, 0.0, 2.5, 0.0, 0.0, 0.0, 0.0)
    assert spec.config.expert_bias is None


def test_bias_spread_is_seeded_and_independent_for_logit_and_expert_bias():
    values = {**CONTROL_DEFAULTS, "bias_spread": 1.0, "expert_bias_spread": 1.0}
    a, b = spec_from_controls(values).config, spec_from_controls(values).config
    assert a.logit_bias == b.logit_bias and a.logit_bias is not None
    assert a.logit_bias != a.expert_bias
    c = spec_from_controls({**values, "seed": 1}).config
    assert c.logit_bias != a.logit_bias


def test_capacity_follows_the_dropless_switch():
    assert spec_from_controls({**CONTROL_DEFAULTS, "dropless": True}).config.capacity_factor is None
    assert spec_from_controls({**CONTROL_DEFAULTS, "dropless": False, "capacity_factor": 0.5}).config.capacity_factor == 0.5


def test_invalid_controls_raise_the_engine_message():
    with pytest.raises(ValueError, match="top_k=9 exceeds n_experts=8"):
        spec_from_controls({**CONTROL_DEFAULTS, "top_k": 9})


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_a_valid_config(preset):
    spec = spec_from_controls(preset_values(preset))
    assert spec.config.top_k <= spec.config.n_experts


def test_query_round_trip_restores_every_changed_value():
    values = {**preset_values("Switch top-1 with capacity"), "n_experts": 12, "temperature": 2.5,
              "normalize_topk": True, "scenario": "drifting", "drift_step": 40, "router": "hash"}
    query = to_query(values, "Switch top-1 with capacity")
    assert query["preset"] == "Switch top-1 with capacity" and query["n_experts"] == "12"
    assert "top_k" not in query  # equal to the preset's value: not in the link
    preset, restored, problems = from_query(query)
    assert (preset, restored, problems) == ("Switch top-1 with capacity", values, [])


def test_bad_query_values_are_reported_and_skipped():
    preset, values, problems = from_query({"preset": "Nope", "n_experts": "many", "bogus": "1", "top_k": "3"})
    assert preset == "Balanced top-2 (Mixtral-like)"
    assert values["n_experts"] == CONTROL_DEFAULTS["n_experts"] and values["top_k"] == 3
    assert any("Nope" in p for p in problems) and any("n_experts" in p for p in problems)
    assert any("bogus" in p for p in problems)


def test_sanitize_clamps_to_what_the_widgets_accept():
    values = {**CONTROL_DEFAULTS, "n_experts": 4, "top_k": 7, "device": "cuda:3", "d_model": 100,
              "temperature": 50.0, "hot_expert": 6}
    fixed, notes = sanitize(values, ["cpu"])
    assert fixed["top_k"] == 4 and fixed["device"] == "cpu" and fixed["d_model"] == 64
    assert fixed["temperature"] == 10.0 and fixed["hot_expert"] == -1
    assert len(notes) == 5  # device, d_model, temperature, top_k and hot_expert: every change is said
    assert any(n.startswith("top_k=`7`") and n.endswith("using 4") for n in notes)
    assert any(n.startswith("hot_expert=`6`") and "using none" in n for n in notes)


FLOAT_KEYS = [k for k, v in CONTROL_DEFAULTS.items() if isinstance(v, float) and not isinstance(v, bool)]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_floats_are_refused_for_every_float_key(key, text):
    _, values, problems = from_query({key: text})
    assert values[key] == CONTROL_DEFAULTS[key]
    assert problems == [f"ignored {key}=`{text}`: expected a finite number"]


def test_every_float_field_of_the_engine_config_is_refused_when_not_finite():
    """What the old count (12, swiglu_limit the twelfth) stood for: a control that sets a float of MoEConfig is a
    float control, so the tests above refuse its nan / inf. Derived from the type hints, not a pinned number."""
    hints = typing.get_type_hints(MoEConfig)
    engine_floats = [k for k in CONTROL_DEFAULTS if k in hints
                     and (hints[k] is float or float in typing.get_args(hints[k]))]
    assert "swiglu_limit" in engine_floats and "capacity_factor" in engine_floats  # float and float | None
    assert [k for k in engine_floats if k not in FLOAT_KEYS] == []
    for key in engine_floats:
        assert from_query({key: "nan"})[2] == [f"ignored {key}=`nan`: expected a finite number"]


def test_sanitize_replaces_a_nan_that_reaches_it():
    fixed, notes = sanitize({**CONTROL_DEFAULTS, "temperature": float("nan")}, ["cpu"])
    assert fixed["temperature"] == CONTROL_DEFAULTS["temperature"]
    assert notes == [f"temperature=`nan` is not a finite number; using `{CONTROL_DEFAULTS['temperature']}`"]


@pytest.mark.parametrize("value", ["![p](http://host/pixel.png)", "[Click here](http://host/phish)",
                                   "<img src=http://host/x.png>", "a`b``c", "line\nbreak\r\x00"])
def test_quote_puts_a_value_in_one_code_span(value):
    shown = quote(value)
    assert shown.startswith("`") and shown.endswith("`") and shown.count("`") == 2
    assert "\n" not in shown and "\r" not in shown and "\x00" not in shown
    assert shown[1:-1].replace("ˋ", "`").replace(" ", "") == "".join(value.split()).replace("\x00", "")


def test_quote_shortens_long_values():
    shown = quote("x" * 100_000)
    assert shown == "`" + "x" * (SHOWN_CHARS - 1) + "…`"


def test_hostile_names_are_echoed_quoted():
    _, values, problems = from_query({"router": "![p](http://host/pixel.png)",
                                      "preset": "[Click here](http://host/phish)", "](http://h)": "1"})
    assert problems[0] == ("unknown preset `[Click here](http://host/phish)` in the link; "
                           "using `Balanced top-2 (Mixtral-like)`")
    assert problems[1] == "ignored unknown link parameter `](http://h)`"
    fixed, notes = sanitize(values, ["cpu"])
    assert fixed["router"] == "topk"
    assert notes == ["router=`![p](http://host/pixel.png)` is not available here; using `topk`"]


def test_long_values_are_refused_unread():
    for key in ("seed", "temperature", "router"):
        _, values, problems = from_query({key: "9" * 100_000})
        assert values[key] == CONTROL_DEFAULTS[key]
        assert len(problems) == 1 and "100,000 characters" in problems[0]
    _, values, problems = from_query({"seed": "7" * MAX_VALUE_CHARS})  # at the cap: parsed (sanitize clamps it)
    assert values["seed"] == int("7" * MAX_VALUE_CHARS) and problems == []


def test_view_is_a_link_key_not_an_unknown_parameter():
    assert from_query({"view": "Router"})[2] == []


# --- the #9 knobs: engine names, URL round-trip, sanitising
NEW_KNOBS = {"n_group": 4, "topk_group": 2, "capacity_scope": "sequence", "activation": "gpt_oss", "gated": True,
             "expert_biases": True, "swiglu_limit": 3.5, "shared_experts": 2, "d_shared": 96, "shared_gate": True,
             "sparsity_mode": "relative"}


def test_new_knobs_reach_the_engine_config_under_their_names():
    cfg = spec_from_controls({**CONTROL_DEFAULTS, **NEW_KNOBS}).config
    assert {k: getattr(cfg, k) for k in NEW_KNOBS} == NEW_KNOBS
    default = spec_from_controls({**CONTROL_DEFAULTS, "shared_experts": 2}).config
    assert default.d_shared is None and default.shared_hidden == 2 * 256  # d_shared 0 = shared_experts × d_expert


def test_new_knobs_round_trip_through_the_link():
    values = {**preset_values("Balanced top-2 (Mixtral-like)"), **NEW_KNOBS, "gated": False, "activation": "relu"}
    query = to_query(values, "Balanced top-2 (Mixtral-like)")
    assert query["shared_experts"] == "2" and query["gated"] == "0" and query["capacity_scope"] == "sequence"
    assert from_query(query) == ("Balanced top-2 (Mixtral-like)", values, [])


def test_invalid_group_combination_raises_the_engine_message():
    with pytest.raises(ValueError, match="topk_group=3 exceeds n_group=2"):
        spec_from_controls({**CONTROL_DEFAULTS, "n_group": 2, "topk_group": 3})
    with pytest.raises(ValueError, match="needs gated=True"):
        spec_from_controls({**CONTROL_DEFAULTS, "activation": "gpt_oss", "gated": False})


def test_sanitize_fixes_groups_and_shared_knobs_and_says_so():
    values = {**CONTROL_DEFAULTS, "n_experts": 12, "n_group": 5, "topk_group": 9, "d_shared": 64,
              "shared_gate": True, "activation": "tanh", "capacity_scope": "row", "shared_experts": 0,
              "swiglu_limit": 100.0}
    fixed, notes = sanitize(values, ["cpu"])
    assert (fixed["n_group"], fixed["topk_group"]) == (4, 4)   # largest divisor of 12 below 5; then at most n_group
    assert fixed["d_shared"] == 0 and fixed["shared_gate"] is False
    assert fixed["activation"] == "silu" and fixed["capacity_scope"] == "batch" and fixed["swiglu_limit"] == 20.0
    assert len(notes) == 7
    assert any(n.startswith("n_group=`5` does not divide n_experts=12; using 4") for n in notes)
    assert any(n.startswith("topk_group=`9` exceeds n_group=4") for n in notes)
    assert any(n.startswith("d_shared=`64` needs shared_experts") for n in notes)
    spec_from_controls(fixed)  # what sanitize leaves is a valid config
