"""Every page section renders from a small RunResult under AppTest: no exception, title and captions shown."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.definitions import DEFINITIONS, caption

SECTIONS = {  # module: (subheader(s), plotly charts drawn, definition keys its captions must contain)
    "overview": ((), 4,
                 ("demand", "ideal_load", "contributions", "token_order", "activation_sparsity", "output_rms")),
    "load": ("Load", 1, ("demand", "served", "ideal_load")),
    "experts": ("Experts", 3, ("activation_sparsity", "contribution", "topk_margin", "bias_overlap")),
    "contributors": ("Contributors", 1, ("contributions", "token_order", "token_heatmap_aggregation")),
    "router": ("Router", 4, ("probs", "token_confidence", "token_entropy", "router_logits", "topk_margin")),
    "pathways": ("Pathways", 3, ("conditional_coactivation", "topk_combinations", "experts_per_token")),
    "scenario": ("Scenario", 1, ("cluster_share", "routing_nmi")),
    "inspector": ("Token inspector", 1, ("token_detail",)),
    "about": ("About", 0, ()),
}
VARIANTS = {  # the smoke test runs each section on each; "shared" is checked on its own below
    "clusters_capacity": dict(n_experts=6, top_k=2, capacity_factor=0.8),
    "expert_choice": dict(n_experts=4, top_k=2, router="expert_choice"),
    "one_expert": dict(n_experts=1, top_k=1),
}
SHARED = dict(n_experts=4, top_k=2, n_group=2, topk_group=1, shared_experts=1, shared_gate=True)


def section_app(section: str, variant: dict, scenario: str, tokens: int) -> None:
    """The AppTest script: one forward, a RunResult, one section."""
    import importlib

    import streamlit as st

    from dashboard.result import RunResult
    from moe import MoEConfig, MoELayer
    from moe.scenarios import make_batch

    tokens = st.session_state.get("test_tokens", tokens)  # lets a test change T between reruns
    cfg = MoEConfig(d_model=12, d_expert=24, **variant)
    batch = make_batch(scenario, cfg.d_model, tokens, seed=0)
    _, trace = MoELayer(cfg)(batch.x)
    trace = trace.cpu()
    result = RunResult(config=cfg, scenario=scenario, scenario_params={}, trace=trace,
                       per_expert=trace.per_expert(), summary=trace.summary(), labels=batch.labels,
                       label_names=batch.label_names)
    importlib.import_module(f"dashboard.views.{section}").render(result)


def run_section(section: str, variant: str = "clusters_capacity", scenario: str = "clusters",
                tokens: int = 40) -> AppTest:
    config = SHARED if variant == "shared" else VARIANTS[variant]
    at = AppTest.from_function(section_app, args=(section, config, scenario, tokens),
                               default_timeout=30)
    return at.run()


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("section", list(SECTIONS))
def test_section_renders(section, variant):
    at = run_section(section, variant)
    assert not at.exception, at.exception
    title, n_charts, keys = SECTIONS[section]
    assert [h.value for h in at.subheader] == (list(title) if isinstance(title, tuple) else [title])
    assert len(charts(at)) == n_charts
    text = captions(at)
    for key in keys:
        assert caption(key) in text, key
    assert not at.error


def test_scenario_without_labels_says_so():
    at = run_section("scenario", scenario="gaussian")
    assert not at.exception
    assert len(at.info) == 1 and "no topic labels" in at.info[0].value
    assert not charts(at)


def test_contributors_says_when_aggregated():
    at = run_section("contributors", tokens=2100)  # above the 2000-row limit
    assert not at.exception
    text = captions(at)
    rows = int(text.split("Aggregated: 2100 tokens shown as ")[1].split(" rows")[0])
    assert 1990 <= rows <= 2000 and "A bin never mixes two groups." in text  # bins stay inside the top-1 groups


def test_about_shows_every_definition():
    at = run_section("about")
    text = "\n".join(m.value for m in at.markdown)
    for key, definition in DEFINITIONS.items():
        assert definition in text, key


def test_inspector_picks_and_clamps_the_token():
    at = run_section("inspector")
    assert at.number_input(key="inspector_token").value == 0
    assert "Token **0**" in at.markdown[0].value
    at.number_input(key="inspector_token").set_value(7).run()
    assert not at.exception and "Token **7**" in at.markdown[0].value
    at.number_input(key="inspector_token").set_value(35).run()
    at.session_state["test_tokens"] = 20  # the next run has fewer tokens than the chosen index
    at.run()
    assert not at.exception and "Token **19**" in at.markdown[0].value
    assert at.number_input(key="inspector_token").max == 19


def test_load_notes_expert_choice():
    at = run_section("load", variant="expert_choice")
    assert "balanced by construction" in captions(at)


def test_overview_with_shared_experts_draws_their_share():
    at = run_section("overview", "shared")
    assert not at.exception and not at.error
    keys = [c.key for c in charts(at)]
    assert len(keys) == 5 and "shared_share" in keys
    assert caption("shared_fraction") in captions(at)
    assert len(charts(run_section("overview"))) == 4  # no shared experts: no share chart
