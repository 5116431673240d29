"""The whole app under streamlit.testing.v1.AppTest: presets, clamping, errors, numbers, links, sessions."""

import pytest
import torch
from dashboard.links import spec_from_controls
from dashboard.presets import PRESETS, preset_values
from dashboard.views.kpis import fmt
from moe import MoELayer
from moe.scenarios import make_batch
from streamlit.testing.v1 import AppTest

from app_support import open_app


def _app(**query) -> AppTest:
    return open_app(query, timeout=120)


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _engine(values: dict):
    """A fresh layer on the page's batch as (B, S, D): sequences matter for capacity_scope="sequence"."""
    spec = spec_from_controls(values)
    x = make_batch(spec.scenario, spec.config.d_model, spec.tokens, seed=spec.config.seed, **spec.params).x
    with torch.inference_mode():
        return MoELayer(spec.config)(x.reshape(values["batch"], values["seq_len"], -1))[1]


def test_default_page_runs_and_shows_the_engine_numbers():
    at = _app()
    assert not at.exception and not at.error
    trace = _engine(preset_values("Balanced top-2 (Mixtral-like)"))
    s = trace.summary()
    assert _metric(at, "tokens") == f"{s['tokens']:,.0f}"
    assert _metric(at, "active experts") == f"{s['active_experts']:.0f} / 8"
    assert _metric(at, "aux loss") == fmt(s['aux_loss'])
    assert _metric(at, "CV") == fmt(s['cv'])
    shown = at.session_state["result"]
    assert shown.per_expert["served"].tolist() == trace.per_expert()["served"].tolist()
    assert _metric(at, "device") == "cpu"


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "Custom"])
def test_every_preset_runs_without_exception(preset):
    at = _app()
    at.selectbox(key="preset").set_value(preset).run()
    assert not at.exception and not at.error
    expected = preset_values(preset)
    assert at.session_state["n_experts"] == expected["n_experts"]
    trace = _engine(expected)
    assert _metric(at, "dropped") == f"{fmt(100 * trace.summary()['dropped_fraction'])} %"


def test_a_routing_knob_reruns_only_the_results_and_shows_the_new_numbers():
    at = _app()
    at.slider(key="temperature").set_value(3.0).run()
    assert not at.exception and not at.error
    assert len(at.sidebar) == 0  # only the results fragment ran: the sidebar was not sent again
    values = {**preset_values("Balanced top-2 (Mixtral-like)"), "temperature": 3.0}
    s = _engine(values).summary()
    assert _metric(at, "aux loss") == fmt(s['aux_loss']) and _metric(at, "CV") == fmt(s['cv'])
    assert at.query_params["temperature"] == "3.0"  # the link follows fragment reruns too
    at.run()  # AppTest keeps only the last run's elements: a full run brings the sidebar back into its tree
    at.slider(key="n_experts").set_value(4).run()
    assert len(at.sidebar) > 0  # n_experts bounds top_k: a full rerun redraws the sidebar
    assert _metric(at, "active experts").endswith("/ 4")


def test_fewer_experts_clamps_top_k_and_one_expert_works():
    at = _app()
    at.slider(key="top_k").set_value(6).run()
    at.run()  # top_k reran only the results; AppTest keeps the last run's elements, so bring the sidebar back
    at.slider(key="n_experts").set_value(4).run()
    assert at.session_state["top_k"] == 4 and at.slider(key="top_k").value == 4
    at.slider(key="n_experts").set_value(1).run()
    assert not at.exception and not at.error
    assert at.session_state["top_k"] == 1
    assert _metric(at, "active experts") == "1 / 1"


def test_a_config_over_the_memory_budget_shows_an_error_and_keeps_the_last_result():
    at = _app()
    before = at.session_state["result"]
    at.select_slider(key="d_model").set_value(4096)
    at.select_slider(key="d_expert").set_value(8192)
    at.slider(key="n_experts").set_value(256).run()
    assert not at.exception
    assert any("over the budget" in e.value for e in at.error)
    assert at.session_state["result"] is before
    assert any("last good result" in i.value for i in at.info)


def test_query_parameters_restore_a_config():
    at = _app(preset="Switch top-1 with capacity", n_experts="12", temperature="2.5", scenario="gaussian")
    assert not at.exception
    assert at.slider(key="n_experts").value == 12
    assert at.session_state["temperature"] == 2.5 and at.session_state["top_k"] == 1
    cfg = at.session_state["result"].config
    assert (cfg.n_experts, cfg.top_k, cfg.capacity_factor) == (12, 1, 1.0)


def test_the_url_follows_the_controls():
    at = _app()
    at.slider(key="n_experts").set_value(5).run()
    assert at.query_params["n_experts"] == ["5"] or at.query_params["n_experts"] == "5"


def test_bad_link_values_are_explained_not_raised():
    at = _app(n_experts="lots", device="cuda:7")
    assert not at.exception
    texts = " ".join(w.value for w in at.warning)
    assert "n_experts" in texts and "cuda:7" in texts


def test_two_sessions_keep_their_own_numbers():
    a, b = _app(), _app(preset="Router collapse: hot expert")
    a.slider(key="n_experts").set_value(6).run()
    b.run()
    assert a.session_state["result"].config.n_experts == 6
    assert b.session_state["result"].config.logit_bias[0] == 4.0
    assert _metric(a, "active experts").endswith("/ 6") and _metric(b, "active experts").endswith("/ 8")


# --- the #9 knobs: each set in the page gives the engine's numbers for that config
DEFAULT = "Balanced top-2 (Mixtral-like)"
KNOB_STEPS = {  # name -> widget settings in order: (widget kind, key, value)
    "n_group": [("selectbox", "n_group", 4)],
    "topk_group": [("selectbox", "n_group", 4), ("number_input", "topk_group", 2)],
    "capacity_scope": [("checkbox", "dropless", False), ("radio", "capacity_scope", "sequence")],
    "activation": [("selectbox", "activation", "gelu")],
    "gated": [("checkbox", "gated", False)],
    "expert_biases": [("checkbox", "expert_biases", True)],
    "swiglu_limit": [("selectbox", "activation", "gpt_oss"), ("slider", "swiglu_limit", 1.5)],
    "shared_experts": [("number_input", "shared_experts", 1)],
    "d_shared": [("number_input", "shared_experts", 2), ("number_input", "d_shared", 96)],
    "shared_gate": [("number_input", "shared_experts", 1), ("checkbox", "shared_gate", True)],
    "sparsity_mode": [("radio", "sparsity_mode", "relative")],
}


@pytest.mark.parametrize("knob", list(KNOB_STEPS))
def test_each_new_knob_shows_the_engines_numbers(knob):
    at = _app()
    values = dict(preset_values(DEFAULT))
    for kind, key, value in KNOB_STEPS[knob]:
        at.run()  # a full run: the sidebar back in AppTest's tree after a results-only rerun
        getattr(at, kind)(key=key).set_value(value).run()
        values[key] = value
    assert not at.exception and not at.error
    trace = _engine(values)
    s, pe = trace.summary(), trace.per_expert()
    shown = at.session_state["result"]
    assert getattr(shown.config, knob) == spec_from_controls(values).config.__getattribute__(knob)
    assert _metric(at, "aux loss") == fmt(s["aux_loss"])
    assert _metric(at, "dropped") == f"{fmt(100 * s['dropped_fraction'])} %"
    for column in ("served", "output_rms", "activation_sparsity"):
        assert shown.per_expert[column].to_numpy() == pytest.approx(pe[column].to_numpy(), rel=1e-5), column
    if values["n_group"] > 1:
        assert _metric(at, "bias overlap") == fmt(s["bias_overlap"])
        assert _metric(at, "top-k margin") == fmt(s["topk_margin"])
    else:
        assert not any(m.label in ("bias overlap", "top-k margin") for m in at.metric)
    if values["shared_experts"] > 0:
        assert _metric(at, "shared share") == f"{fmt(100 * s['shared_fraction'])} %"
        assert _metric(at, "shared RMS") == fmt(s["shared_output_rms"])
    else:
        assert not any(m.label == "shared share" for m in at.metric)
    assert at.query_params[knob] == str(int(value) if isinstance(value, bool) else value)  # in the link


def test_an_invalid_group_combination_shows_the_engine_message_and_keeps_the_last_result():
    at = _app()
    at.selectbox(key="n_group").set_value(2).run()
    before = at.session_state["result"]
    at.run()
    at.number_input(key="topk_group").set_value(3).run()
    assert not at.exception
    assert any("topk_group=3 exceeds n_group=2" in e.value for e in at.error)
    assert at.session_state["result"] is before and any("last good result" in i.value for i in at.info)


def test_new_knobs_from_a_link_restore_the_config():
    at = _app(preset=DEFAULT, n_group="4", topk_group="2", shared_experts="1", shared_gate="1", activation="relu",
              gated="0", capacity_scope="sequence", sparsity_mode="relative")
    assert not at.exception and not at.error
    cfg = at.session_state["result"].config
    assert (cfg.n_group, cfg.topk_group, cfg.shared_experts, cfg.shared_gate, cfg.activation, cfg.gated,
            cfg.capacity_scope, cfg.sparsity_mode) == (4, 2, 1, True, "relu", False, "sequence", "relative")


def test_shared_experts_back_to_zero_clears_the_shared_knobs():
    at = _app(shared_experts="1", shared_gate="1", d_shared="64")
    at.number_input(key="shared_experts").set_value(0).run()
    assert not at.exception and not at.error
    assert at.session_state["shared_gate"] is False and at.session_state["d_shared"] == 0
    assert at.session_state["result"].config.shared_experts == 0


@pytest.mark.parametrize("kind, key, value, whole_app", [
    ("selectbox", "n_group", 2, False), ("number_input", "topk_group", 2, False),
    ("selectbox", "activation", "relu", False), ("radio", "sparsity_mode", "relative", False),
    ("slider", "swiglu_limit", 3.0, False), ("radio", "capacity_scope", "sequence", False),
    ("checkbox", "gated", False, True), ("checkbox", "expert_biases", True, True),
    ("number_input", "shared_experts", 1, True)])
def test_value_knobs_rerun_the_results_and_weight_knobs_the_whole_app(kind, key, value, whole_app):
    at = _app(dropless="0", n_group="4")  # capacity_scope is enabled with a capacity; topk_group 2 of 4 groups
    getattr(at, kind)(key=key).set_value(value).run()
    assert not at.exception and not at.error
    assert (len(at.sidebar) > 0) == whole_app  # weight knobs may change other widgets (d_shared, shared_gate)


def test_the_sidebar_says_the_shared_width():
    at = _app(shared_experts="2")
    assert any(c.value == "shared FFN width Hs = 512 (shared_experts × d_expert = 2 × 256)" for c in at.sidebar.caption)
    at.number_input(key="d_shared").set_value(96).run()
    assert any(c.value == "shared FFN width Hs = 96" for c in at.sidebar.caption)
    assert at.session_state["result"].config.shared_hidden == 96


def test_fewer_groups_lower_topk_group_and_redraw_the_sidebar():
    at = _app(preset="DeepSeek-V3-like (group-limited, shared expert, sigmoid + bias)")
    at.selectbox(key="n_group").set_value(1).run()
    assert not at.exception and not at.error
    assert at.session_state["topk_group"] == 1 and at.number_input(key="topk_group").value == 1
    cfg = at.session_state["result"].config
    assert (cfg.n_group, cfg.topk_group) == (1, 1)
    assert _metric(at, "bias overlap") == fmt(_engine({**preset_values(
        "DeepSeek-V3-like (group-limited, shared expert, sigmoid + bias)"), "n_group": 1, "topk_group": 1}
        ).summary()["bias_overlap"])


def test_gpt_oss_without_gating_shows_the_engine_message():
    at = _app()
    at.checkbox(key="gated").uncheck().run()
    before = at.session_state["result"]
    at.selectbox(key="activation").set_value("gpt_oss").run()
    assert not at.exception
    assert any("activation='gpt_oss' multiplies the gate by (up + 1), so it needs gated=True" in e.value
               for e in at.error)
    assert at.session_state["result"] is before
