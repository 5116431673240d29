"""The page says why a number can mislead: hash router probabilities, sigmoid aux loss, routing NMI."""
from __future__ import annotations

import math

from streamlit.testing.v1 import AppTest

from dashboard.definitions import DEFINITIONS


def _section_app(section: str, config: dict, scenario: str) -> None:
    import importlib

    from dashboard.result import RunResult
    from moe import MoEConfig, MoELayer
    from moe.scenarios import make_batch

    cfg = MoEConfig(d_model=12, d_expert=24, **config)
    batch = make_batch(scenario, cfg.d_model, 64, seed=0)
    trace = MoELayer(cfg)(batch.x)[1].cpu()
    result = RunResult(config=cfg, scenario=scenario, scenario_params={}, trace=trace,
                       per_expert=trace.per_expert(), summary=trace.summary(), labels=batch.labels,
                       label_names=batch.label_names)
    importlib.import_module(f"dashboard.views.{section}").render(result)


def run(section: str, scenario: str = "gaussian", **config) -> AppTest:
    at = AppTest.from_function(_section_app, args=(section, config, scenario), default_timeout=30).run()
    assert not at.exception, at.exception
    return at


def text(at: AppTest) -> str:
    return "\n".join([c.value for c in at.caption] + [i.value for i in at.info] + [m.value for m in at.markdown])


def test_hash_router_view_says_its_probabilities_are_ignored():
    assert DEFINITIONS["hash_router_probs"] in text(run("router", router="hash", n_experts=4, top_k=1))
    assert DEFINITIONS["hash_router_probs"] not in text(run("router", n_experts=4, top_k=1))


def test_sigmoid_aux_loss_is_explained_next_to_the_kpis():
    assert DEFINITIONS["aux_loss_sigmoid"] in text(run("kpis", score="sigmoid", n_experts=4, top_k=2))
    assert DEFINITIONS["aux_loss_sigmoid"] not in text(run("kpis", n_experts=4, top_k=2))


def test_sigmoid_aux_stays_near_one_under_a_heavy_skew():
    """The note's claim, checked on the engine: one expert takes most tokens, aux barely moves."""
    import torch

    from moe import MoEConfig, MoELayer
    cfg = MoEConfig(d_model=16, d_expert=16, n_experts=16, top_k=4, score="sigmoid",
                    logit_bias=(2.0,) + (0.0,) * 15)
    s = MoELayer(cfg)(torch.randn(512, 16, generator=torch.Generator().manual_seed(0)))[1].summary()
    assert s["max_over_mean"] > 2.5 and s["aux_loss"] < 1.3


def test_scenario_and_experts_views_show_the_routing_nmi():
    for section in ("scenario", "experts"):
        shown = text(run(section, scenario="clusters", n_experts=4, top_k=1))
        assert "NMI(topic; expert) = " in shown and DEFINITIONS["routing_nmi"] in shown
    assert "NMI" not in text(run("experts", n_experts=4, top_k=1))  # no labels: nothing to measure
    value = [m.value for m in run("scenario", scenario="clusters", n_experts=4, top_k=1).markdown if "NMI" in m.value]
    number = float(value[0].split("= ")[1].strip("*"))
    assert 0.0 <= number <= 1.0 and not math.isnan(number)
