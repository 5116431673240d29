"""Controls → config, the URL round-trip, presets and sanitising of link values."""
import pytest

from dashboard.controls import sanitize
from dashboard.presets import CONTROL_DEFAULTS, PRESETS, preset_values
from dashboard.state import from_query, spec_from_controls, to_query
from moe import MoEConfig


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
    assert len(notes) == 3
