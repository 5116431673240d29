"""Invariants of the MoE layer that hold whatever the routing details."""
from __future__ import annotations

import math

import pytest
import torch
import numpy as np
import pandas as pd
import torch.nn.functional as F

from moe import MoEConfig, MoELayer

SMALL = dict(d_model=12, d_expert=24, n_experts=5, top_k=2)


def tokens(T: int, D: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, D, generator=torch.Generator().manual_seed(seed))  # (T, D)


@pytest.mark.parametrize("score", ("softmax", "sigmoid"))
@pytest.mark.parametrize("router", ("topk", "expert_choice", "hash", "random"))
def test_one_expert_is_dense_swiglu(router, score):
    cfg = MoEConfig(d_model=16, d_expert=32, n_experts=1, top_k=1, router=router, score=score)
    layer = MoELayer(cfg)
    x = tokens(20, 16)
    y, trace = layer(x)
    w = layer.state_dict()
    gate, up, down = w["experts.w_gate"][0], w["experts.w_up"][0], w["experts.w_down"][0]
    dense = F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)  # (T, D)
    torch.testing.assert_close(y, dense, rtol=1e-5, atol=1e-5)
    assert trace.served.all()
    assert trace.summary()["aux_loss"] == pytest.approx(1.0)


@pytest.mark.parametrize("policy", ("position", "probs"))
@pytest.mark.parametrize("capacity", (None, 0.4, 1.0, 1.25))
@pytest.mark.parametrize("router", ("topk", "hash", "random"))
def test_served_equals_assignments_minus_drops(router, capacity, policy):
    cfg = MoEConfig(**SMALL, router=router, capacity_factor=capacity, drop_policy=policy)
    T = 40
    _, trace = MoELayer(cfg)(tokens(T, cfg.d_model))
    table, summary = trace.per_expert(), trace.summary()
    dropped = int(table["dropped"].sum())
    assert int(trace.served.sum()) == T * cfg.top_k - dropped
    assert int(trace.routed.sum()) == T * cfg.top_k
    assert (trace.routed.sum(dim=1) == cfg.top_k).all()
    assert not (trace.served & ~trace.routed).any()
    assert summary["served"] == T * cfg.top_k - dropped and summary["dropped"] == dropped
    assert summary["demand"] == T * cfg.top_k
    if capacity is None:
        assert dropped == 0 and math.isnan(summary["capacity"])
    else:
        assert (trace.served.sum(dim=0) <= trace.capacity).all()
        assert summary["capacity"] == trace.capacity == min(T, math.ceil(capacity * T * 2 / 5))
    torch.testing.assert_close(trace.coactivation.diagonal().float().cpu(),
                               trace.served.sum(dim=0).float().cpu())


@pytest.mark.parametrize("capacity", (None, 0.5, 2.0, 5.0))  # 5.0: C = T
def test_expert_choice_serves_capacity(capacity):
    cfg = MoEConfig(**SMALL, router="expert_choice", capacity_factor=capacity)
    T = 30
    _, trace = MoELayer(cfg)(tokens(T, cfg.d_model))
    C = min(T, math.ceil((capacity or 1.0) * T * cfg.top_k / cfg.n_experts))
    assert trace.capacity == C
    assert (trace.served.sum(dim=0) == C).all() and torch.equal(trace.served, trace.routed)
    table, summary = trace.per_expert(), trace.summary()
    assert (table["demand"] == C).all() and (table["dropped"] == 0).all()
    assert trace.top_k_index is None and trace.top_k_weights is None
    P = trace.probs.double().mean(dim=0)  # (E,)
    expected = cfg.n_experts * sum(C / (T * cfg.top_k) * p for p in P.tolist())
    assert summary["aux_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("score", ("softmax", "sigmoid"))
@pytest.mark.parametrize("router", ("topk", "hash", "random"))
@pytest.mark.parametrize("scale", (1.0, 2.5))
def test_topk_weights_sum_to_one(router, score, scale):
    cfg = MoEConfig(**SMALL, router=router, score=score, routed_scaling_factor=scale,
                    capacity_factor=0.5)
    _, trace = MoELayer(cfg)(tokens(30, cfg.d_model))
    sums = trace.top_k_weights.sum(dim=1)  # (T,)
    torch.testing.assert_close(sums, torch.full_like(sums, scale))
    # gates are the weights of served assignments, never renormalised after drops
    assert (trace.gates.sum(dim=1) <= scale + 1e-5).all()
    assert (trace.gates[~trace.served] == 0).all()


def test_probs_rows_sum_to_one():
    for score in ("softmax", "sigmoid"):
        _, trace = MoELayer(MoEConfig(**SMALL, score=score))(tokens(30, 12))
        sums = trace.probs.sum(dim=1)
        torch.testing.assert_close(sums, torch.ones_like(sums))


def test_random_router_is_balanced():
    cfg = MoEConfig(d_model=8, d_expert=8, n_experts=8, top_k=2, router="random")
    _, trace = MoELayer(cfg)(tokens(20000, 8))
    assert trace.summary()["aux_loss"] == pytest.approx(1.0, rel=0.05)


def test_collapsed_router_by_logit_bias():
    cfg = MoEConfig(d_model=8, d_expert=8, n_experts=8, top_k=2,
                    logit_bias=(8.0, 0, 0, 0, 0, 0, 0, 0))
    _, trace = MoELayer(cfg)(tokens(400, 8))
    summary = trace.summary()
    assert summary["aux_loss"] > 2
    assert trace.routed[:, 0].all()


def test_collapsed_router_by_identical_tokens():
    cfg = MoEConfig(d_model=8, d_expert=8, n_experts=8, top_k=2, temperature=0.05)
    x = tokens(1, 8).expand(400, 8).contiguous()  # (T, D): one token repeated
    _, trace = MoELayer(cfg)(x)
    summary = trace.summary()
    assert summary["aux_loss"] > 2
    assert int((trace.per_expert()["served"] > 0).sum()) == 2
    assert summary["dead_fraction"] == pytest.approx(6 / 8)


@pytest.mark.parametrize("router", ("topk", "expert_choice", "hash", "random"))
def test_output_shape_follows_input(router):
    cfg = MoEConfig(**SMALL, router=router, capacity_factor=1.25)
    layer = MoELayer(cfg)
    flat = tokens(24, cfg.d_model)
    y_flat, trace_flat = layer(flat)
    assert y_flat.shape == (24, cfg.d_model)
    y_bsd, trace_bsd = layer(flat.reshape(4, 6, cfg.d_model))  # (B, S, D)
    assert y_bsd.shape == (4, 6, cfg.d_model)
    assert trace_bsd.tokens == 24 and trace_bsd.router_logits.shape == (24, cfg.n_experts)
    torch.testing.assert_close(y_bsd.reshape(24, cfg.d_model), y_flat)
    assert torch.equal(trace_bsd.served, trace_flat.served)


@pytest.mark.parametrize("config", [dict(router="random"), dict(jitter_eps=0.2, noise_std=0.3),
                                    dict(router="expert_choice", noise_std=0.5)], ids=str)
def test_same_config_same_trace(config):
    cfg = MoEConfig(**SMALL, capacity_factor=1.0, seed=11, **config)
    x = tokens(30, cfg.d_model)
    (y1, t1), (y2, t2) = MoELayer(cfg)(x), MoELayer(cfg)(x)
    y3, t3 = MoELayer(cfg)(x)
    for a, b in ((t1, t2), (t1, t3)):
        for name in ("router_logits", "probs", "routed", "served", "gates", "contributions",
                     "coactivation"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(y1, y2)
    other = MoELayer(cfg.replace(seed=12))(x)[1]
    assert not torch.equal(t1.router_logits, other.router_logits)


def test_same_layer_called_twice_is_deterministic():
    """The default generator is re-seeded from cfg.seed on every call: no hidden state."""
    layer = MoELayer(MoEConfig(**SMALL, router="random", noise_std=0.2))
    x = tokens(30, 12)
    assert torch.equal(layer(x)[1].router_logits, layer(x)[1].router_logits)
    g = torch.Generator().manual_seed(5)
    assert not torch.equal(layer(x, generator=g)[1].router_logits, layer(x)[1].router_logits)


def test_nan_input_is_reported():
    cfg = MoEConfig(**SMALL)
    x = tokens(20, cfg.d_model)
    x[3, 5] = float("nan")
    y, trace = MoELayer(cfg)(x)
    summary = trace.summary()
    assert summary["nonfinite"] == cfg.n_experts   # the whole row of token 3
    assert summary["nonfinite_output"] == int((~torch.isfinite(y)).sum()) > 0
    assert summary["tokens"] == 20
    trace.per_expert()   # must not raise either


def test_nan_input_is_reported_when_the_router_never_sees_it():
    """The random router's logits ignore x: the output count still shows the NaN."""
    cfg = MoEConfig(**SMALL, router="random")
    x = tokens(10, cfg.d_model)
    x[2, 1] = float("nan")
    y, trace = MoELayer(cfg)(x)
    assert trace.summary()["nonfinite"] == 0
    assert trace.summary()["nonfinite_output"] == int(torch.isnan(y).sum()) == cfg.d_model


def test_state_dict_layout():
    cfg = MoEConfig(d_model=12, d_expert=24, n_experts=5, top_k=2)
    state = MoELayer(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "router.weight": (5, 12), "router.expert_bias": (5,),
        "experts.w_gate": (5, 24, 12), "experts.w_up": (5, 24, 12), "experts.w_down": (5, 12, 24)}
    assert (state["router.expert_bias"] == 0).all()
    assert set(dict(MoELayer(cfg).named_buffers())) == {"router.expert_bias"}
    biased = MoELayer(cfg.replace(expert_bias=(0.5, 0, 0, 0, -1.0))).state_dict()
    assert biased["router.expert_bias"].tolist() == [0.5, 0, 0, 0, -1.0]


def test_state_dict_round_trip():
    cfg = MoEConfig(**SMALL)
    a, b = MoELayer(cfg), MoELayer(cfg.replace(seed=99))
    x = tokens(16, cfg.d_model)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x)[0], b(x)[0])


def test_init_scale():
    cfg = MoEConfig(d_model=64, d_expert=256, n_experts=8, top_k=2)
    state = MoELayer(cfg).state_dict()
    assert state["router.weight"].std() == pytest.approx(1 / 8, rel=0.1)
    assert state["experts.w_gate"].std() == pytest.approx(1 / 8, rel=0.1)
    assert state["experts.w_down"].std() == pytest.approx(1 / 16, rel=0.1)


@pytest.mark.parametrize("score", ("softmax", "sigmoid"))
def test_expert_bias_steers_selection_not_probs(score):
    cfg = MoEConfig(**SMALL, score=score)
    layer = MoELayer(cfg)
    x = tokens(30, cfg.d_model)
    _, before = layer(x)
    with torch.no_grad():
        layer.router.expert_bias[3] = 10.0   # everyone now selects expert 3
    _, after = layer(x)
    assert after.routed[:, 3].all() and not before.routed[:, 3].all()
    assert torch.equal(after.probs, before.probs)
    assert torch.equal(after.router_logits, before.router_logits)
    # the weight of expert 3 is still its unbiased score (normalised with the other choice)
    scores = after.probs if score == "softmax" else torch.sigmoid(after.router_logits)
    chosen = scores.gather(1, after.top_k_index)                           # (T, K)
    torch.testing.assert_close(after.top_k_weights, chosen / chosen.sum(dim=1, keepdim=True))
    assert (after.top_k_index[:, 0] == 3).all()
    assert after.summary()["aux_loss"] != before.summary()["aux_loss"]


@pytest.mark.parametrize("kwargs", [
    dict(router="topk"), dict(router="topk", capacity_factor=0.5, drop_policy="probs"),
    dict(router="expert_choice"), dict(router="topk", logit_bias=(6.0, 0, 0, 0, 0)),
])
def test_batched_and_per_slice_statistics_agree(monkeypatch, kwargs):
    """Small layers finish statistics in batched ops, large ones per expert slice: same numbers."""
    import moe.experts
    cfg = MoEConfig(d_model=12, d_expert=24, n_experts=5, top_k=2, **kwargs)
    layer, x = MoELayer(cfg), tokens(40, 12)
    y_small, small = layer(x)
    monkeypatch.setattr(moe.experts, "SMALL_NUMEL", 0)  # force the per-slice path
    y_large, large = layer(x)
    torch.testing.assert_close(y_small, y_large)
    torch.testing.assert_close(small.contributions, large.contributions)
    pd.testing.assert_frame_equal(small.per_expert(), large.per_expert(), rtol=1e-5)
    for name in ("near_zero", "sum_sq", "sum_y", "gate_sum", "contribution"):
        np.testing.assert_allclose(getattr(small.sums, name), getattr(large.sums, name), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and the in-place variant of the per-slice path
        y_nograd, nograd = layer(x)
    torch.testing.assert_close(y_nograd, y_large)
    pd.testing.assert_frame_equal(nograd.per_expert(), large.per_expert(), rtol=1e-5)
