"""moe.trace_from_routing: the routing numbers of an engine forward, from its logits and choices alone."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe import MoEConfig, MoELayer, StatsAccumulator, trace_from_routing
from moe.stats import OUTPUT_SIDE_COLUMNS

BASE = MoEConfig(d_model=12, d_expert=24, n_experts=8, top_k=2)
ROUTING_COLUMNS = ("expert", "demand", "served", "dropped", "load_share", "utilization", "mean_gate",
                   "topk_margin", "bias_overlap")
OUTPUT_SIDE_KEYS = {"forward_ms", "nonfinite_output"}


def _x(T: int = 40, seed: int = 3) -> torch.Tensor:
    return torch.randn(T, BASE.d_model, generator=torch.Generator().manual_seed(seed))  # (T, D)


def assert_same_routing_numbers(ours, engine) -> None:
    a, b = ours.per_expert(), engine.per_expert()
    for name in ROUTING_COLUMNS:
        np.testing.assert_allclose(a[name].to_numpy(float), b[name].to_numpy(float), rtol=1e-6, err_msg=name)
    for name in OUTPUT_SIDE_COLUMNS:
        assert a[name].isna().all(), name
    sa, sb = ours.summary(), engine.summary()
    for key in set(sb) - OUTPUT_SIDE_KEYS:
        np.testing.assert_allclose(sa[key], sb[key], rtol=1e-6, err_msg=key)
    assert math.isnan(sa["nonfinite_output"])
    torch.testing.assert_close(ours.gates, engine.gates)
    assert torch.equal(ours.coactivation, engine.coactivation)


@pytest.mark.parametrize("cfg", [
    BASE,
    BASE.replace(score="sigmoid", normalize_topk=False, routed_scaling_factor=2.5),
    BASE.replace(score="sigmoid", expert_bias=(0.1, -0.1, 0.05, 0, 0, 0.02, -0.03, 0), n_group=4, topk_group=2),
    BASE.replace(top_k=1, logit_bias=(1.0, 0, 0, 0, 0, 0, 0, 0), temperature=0.7),
    BASE.replace(top_k=8),
])
def test_equals_the_engine_forward(cfg):
    layer = MoELayer(cfg)
    _, engine = layer(_x())
    ours = trace_from_routing(cfg, engine.router_logits, engine.top_k_index)
    assert_same_routing_numbers(ours, engine)
    given = trace_from_routing(cfg, engine.router_logits, engine.top_k_index, engine.top_k_weights)
    torch.testing.assert_close(given.gates, engine.gates)


def test_batched_inputs_flatten_like_a_forward():
    layer = MoELayer(BASE)
    x = _x(30).reshape(3, 10, BASE.d_model)  # (B, S, D)
    _, engine = layer(x)
    logits = engine.router_logits.reshape(3, 10, -1)  # (B, S, E)
    ours = trace_from_routing(BASE, logits, engine.top_k_index.reshape(3, 10, -1).int())
    assert_same_routing_numbers(ours, engine)


def test_merges_with_forwards_in_an_accumulator():
    layer = MoELayer(BASE)
    forwards = [layer(_x(T, seed))[1] for T, seed in ((20, 1), (25, 2))]
    engine = StatsAccumulator().update(forwards[0]).update(forwards[1])
    mixed = StatsAccumulator().update(forwards[0]).update(
        trace_from_routing(BASE, forwards[1].router_logits, forwards[1].top_k_index))
    for key in ("aux_loss", "z_loss", "cv", "load_entropy", "mean_confidence", "topk_margin", "tokens"):
        assert mixed.summary()[key] == pytest.approx(engine.summary()[key], rel=1e-6), key
    assert mixed.per_expert()["demand"].tolist() == engine.per_expert()["demand"].tolist()
    assert mixed.per_expert()["output_rms"].isna().all()  # one half of the tokens has no outputs


def test_choices_of_another_router_count_as_given():
    """Choices that are not the top-k of the logits: demand follows the index, bias_overlap sees it."""
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]] * 4)  # (T=4, E=4): unbiased top-1 is expert 0
    idx = torch.tensor([[0], [1], [2], [0]])
    cfg = MoEConfig(d_model=4, d_expert=4, n_experts=4, top_k=1)
    trace = trace_from_routing(cfg, logits, idx)
    assert trace.per_expert()["demand"].tolist() == [2, 1, 1, 0]
    assert trace.summary()["bias_overlap"] == pytest.approx(0.5)
    assert trace.summary()["dead_fraction"] == pytest.approx(0.25)


BAD = [
    (lambda l, i, w: (l[:, :7], i, w), "router_logits must be"),
    (lambda l, i, w: (l.reshape(-1), i, w), "router_logits must be"),
    (lambda l, i, w: (l.long(), i, w), "floating point"),
    (lambda l, i, w: (l, i[:, :1], w), "top_k_index must have shape"),
    (lambda l, i, w: (l, i[:5], w), "top_k_index must have shape"),
    (lambda l, i, w: (l, i.float(), w), "integer expert indices"),
    (lambda l, i, w: (l, i + 8, w), "outside 0..7"),
    (lambda l, i, w: (l, i - 9, w), "outside 0..7"),
    (lambda l, i, w: (l, i[:, :1].repeat(1, 2), w), "twice"),
    (lambda l, i, w: (l, i, w[:, :1]), "top_k_weights must be"),
    (lambda l, i, w: (l, i, w.long()), "top_k_weights must be"),
    (lambda l, i, w: (l.tolist(), i, w), "must be a torch.Tensor"),
    (lambda l, i, w: (l[:0], i[:0], w), "no tokens"),
]


@pytest.mark.parametrize("mutate,message", BAD)
def test_bad_inputs_are_refused(mutate, message):
    _, engine = MoELayer(BASE)(_x(6))
    logits, idx, w = mutate(engine.router_logits, engine.top_k_index, engine.top_k_weights)
    with pytest.raises(ValueError, match=message):
        trace_from_routing(BASE, logits, idx, w)


def test_expert_choice_config_is_refused():
    _, engine = MoELayer(BASE)(_x(6))
    with pytest.raises(ValueError, match="router='topk'"):
        trace_from_routing(BASE.replace(router="expert_choice"), engine.router_logits, engine.top_k_index)
