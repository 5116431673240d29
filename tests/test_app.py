"""The whole app under streamlit.testing.v1.AppTest: presets, clamping, errors, numbers, links, sessions."""
import pathlib

import pytest
import torch
from streamlit.testing.v1 import AppTest

from dashboard.presets import PRESETS, preset_values
from dashboard.sections.kpis import fmt
from dashboard.state import spec_from_controls
from moe import MoELayer
from moe.scenarios import make_batch

APP = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")


def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _engine(values: dict):
    spec = spec_from_controls(values)
    x = make_batch(spec.scenario, spec.config.d_model, spec.tokens, seed=spec.config.seed, **spec.params).x
    with torch.inference_mode():
        return MoELayer(spec.config)(x)[1]


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
