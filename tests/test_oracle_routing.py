"""Group-limited routing, per-sequence capacity and the router-health numbers against the naive oracle."""
from __future__ import annotations

import math

import pytest
import torch

from moe import MoEConfig, MoELayer
from test_oracle import BASE, assert_matches, run_both, tokens

GROUPED = dict(d_model=12, d_expert=16, n_experts=8)


def _bias(layer: MoELayer, seed: int = 7) -> None:
    """A random selection bias, small enough to reorder close scores without swamping them."""
    g = torch.Generator().manual_seed(seed)
    layer.router.expert_bias.copy_(0.05 * torch.randn(layer.cfg.n_experts, generator=g))


def group_grid():
    for n_group, topk_group, top_k in ((2, 1, 2), (2, 1, 4), (4, 2, 3), (4, 3, 1), (8, 4, 2), (4, 4, 2)):
        for score in ("softmax", "sigmoid"):
            for capacity in (None, 0.75):
                yield n_group, topk_group, top_k, score, capacity


@pytest.mark.parametrize("n_group,topk_group,top_k,score,capacity", list(group_grid()))
@pytest.mark.parametrize("biased", [False, True])
def test_group_limited_matches_oracle(n_group, topk_group, top_k, score, capacity, biased):
    cfg = MoEConfig(**GROUPED, top_k=top_k, n_group=n_group, topk_group=topk_group, score=score,
                    capacity_factor=capacity)
    x = tokens(40, cfg.d_model)
    y, trace, ref = run_both(cfg, x, _bias if biased else None)
    assert_matches(cfg, x, y, trace, ref)
    # every chosen expert lies in one of the topk_group kept groups
    groups = trace.top_k_index // (cfg.n_experts // n_group)  # (T, K)
    assert all(len(set(row)) <= topk_group for row in groups.tolist())


def test_group_limit_changes_the_choice_hand_worked():
    """E=4 in 2 groups, keep 1, K=1: expert 3 has the best score, but group 0's top-2 sum is higher."""
    cfg = MoEConfig(d_model=4, d_expert=4, n_experts=4, top_k=1, n_group=2, topk_group=1, score="sigmoid",
                    normalize_topk=False)
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4))
    x = torch.tensor([[1.0, 0.9, -3.0, 2.0]])  # sigmoid: 0.73, 0.71 | 0.05, 0.88 → group sums 1.44 vs 0.93
    _, trace = layer(x)
    assert trace.top_k_index.tolist() == [[0]]
    _, ungrouped = layer.reconfigured(cfg.replace(n_group=1))(x)
    assert ungrouped.top_k_index.tolist() == [[3]]
    # the unbiased top-1 (expert 3) was overridden by the group limit: bias_overlap 0
    assert trace.summary()["bias_overlap"] == 0.0 and ungrouped.summary()["bias_overlap"] == 1.0


@pytest.mark.parametrize("router", ["topk", "expert_choice", "hash", "random"])
@pytest.mark.parametrize("capacity,policy", [(0.5, "position"), (0.5, "probs"), (1.25, "position"),
                                             (1.25, "probs"), (None, "position")])
def test_sequence_capacity_matches_oracle(router, capacity, policy):
    cfg = MoEConfig(**BASE, router=router, capacity_factor=capacity, drop_policy=policy,
                    capacity_scope="sequence")
    x = tokens(30, cfg.d_model).reshape(3, 10, cfg.d_model)  # (B, S, D)
    y, trace, ref = run_both(cfg, x)
    assert_matches(cfg, x, y, trace, ref)
    if trace.capacity is not None:
        assert trace.capacity == cfg.capacity(10)  # C from S tokens, not T
        per_sequence = trace.served.reshape(3, 10, -1).sum(dim=1)  # (B, E)
        assert int(per_sequence.max()) <= trace.capacity


def test_sequence_capacity_differs_from_batch_capacity():
    """Per sequence, a late token of sequence 2 can be served where the batch count had dropped it."""
    cfg = MoEConfig(**BASE, capacity_factor=0.5)
    x = tokens(60, cfg.d_model).reshape(4, 15, cfg.d_model)  # (B, S, D)
    layer = MoELayer(cfg)
    _, batch = layer(x)
    _, sequence = layer.reconfigured(cfg.replace(capacity_scope="sequence"))(x)
    assert torch.equal(batch.routed, sequence.routed)
    assert not torch.equal(batch.served, sequence.served)
    # a 2-D input is one sequence: the same as capacity over the batch
    _, flat = layer.reconfigured(cfg.replace(capacity_scope="sequence"))(x.reshape(60, -1))
    assert torch.equal(flat.served, batch.served)


def test_topk_margin_hand_worked():
    """probs (0.5, 0.3, 0.2) and K=1: margin (0.5 − 0.3)/0.5 = 0.4; K=2: (0.3 − 0.2)/0.3; K=E: NaN."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]))  # (T=2, E=3)
    for K, expected in ((1, 0.4), (2, 1 / 3)):
        cfg = MoEConfig(d_model=3, d_expert=4, n_experts=3, top_k=K)
        layer = MoELayer(cfg)
        with torch.no_grad():
            layer.router.weight.copy_(torch.eye(3))
        _, trace = layer(logits)
        assert math.isclose(trace.summary()["topk_margin"], expected, rel_tol=1e-5)
        table = trace.per_expert()
        # expert 0 is routed by token 0 only (K=1), expert 1 by token 1: both margins are `expected`
        assert math.isclose(table["topk_margin"][1], expected, rel_tol=1e-5)
    cfg = MoEConfig(d_model=3, d_expert=4, n_experts=3, top_k=3)
    _, trace = MoELayer(cfg)(logits)
    assert math.isnan(trace.summary()["topk_margin"])


def test_bias_overlap_counts_the_assignments_the_bias_moved():
    """A large negative expert_bias on expert 0 moves every token whose unbiased top-1 was expert 0."""
    cfg = MoEConfig(**{**BASE, "top_k": 1}, expert_bias=(-10.0, 0, 0, 0, 0))
    x = tokens(50, cfg.d_model)
    layer = MoELayer(cfg)
    _, trace = layer(x)
    moved = (trace.probs.argmax(dim=-1) == 0).sum().item() / 50
    assert moved > 0
    assert math.isclose(trace.summary()["bias_overlap"], 1.0 - moved, rel_tol=1e-9)
    table = trace.per_expert()
    assert table["bias_overlap"][0] == 0.0 and (table["bias_overlap"][1:].dropna() == 1.0).all()
    _, unbiased = layer.reconfigured(cfg.replace(expert_bias=None))(x)
    assert unbiased.summary()["bias_overlap"] == 1.0
    _, hashed = layer.reconfigured(cfg.replace(router="hash"))(x)
    assert math.isnan(hashed.summary()["bias_overlap"])


def test_router_health_large_inputs_break_ties_like_the_small_path():
    """Above SMALL_SORT the unbiased top-K comes from topk(K+1) and a tie-aware mask instead of a
    stable sort: same members (lower index wins ties), same margins."""
    from moe.stats import SMALL_SORT, router_health
    E, K = 8, 3
    T = SMALL_SORT // E + 50
    g = torch.Generator().manual_seed(0)
    probs = torch.randint(1, 5, (T, E), generator=g).float()  # many exact ties
    probs = probs / probs.sum(dim=-1, keepdim=True)  # (T, E)
    confidence, margin, unbiased = router_health(probs, K)
    order = torch.sort(probs, dim=-1, descending=True, stable=True)  # the small path's rule
    expected = torch.zeros(T, E).scatter_(1, order.indices[:, :K], 1.0)
    assert torch.equal(unbiased, expected)
    values = order.values
    torch.testing.assert_close(margin, 1 - values[:, K] / values[:, K - 1])
    torch.testing.assert_close(confidence, values[:, 0] / values[:, 1])
