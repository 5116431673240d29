"""Routing where float32 scores tie although the scores as numbers do not (an auditor's findings): a sigmoid score
rounds to exactly 1 above a logit of about 16.6 and to 0 below about −88.7. The router chooses the top K of the
scores as numbers, its gates stay finite, bias_overlap agrees with it, and capacity is exact. Each is checked against
a float64 computation from the definitions."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from moe import MoEConfig, MoELayer
from moe.config import expert_capacity

CFG = dict(d_model=16, d_expert=8, n_experts=8, top_k=2, score="sigmoid")


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _top_k(key: np.ndarray, k: int) -> list[set[int]]:
    """Per row, the k largest keys (lower index on ties), from Python's sort."""
    return [set(sorted(range(len(row)), key=lambda e: (-row[e], e))[:k]) for row in key]


def test_saturated_sigmoid_scores_are_chosen_by_their_value_as_numbers():
    """Temperature 0.05 (the page's lowest): 76 of 512 tokens went to other experts than their top 2 by score,
    because float32 sigmoid scores of 1.0 tied and the lower expert won."""
    cfg = MoEConfig(**CFG, temperature=0.05)
    x = torch.randn(512, cfg.d_model, generator=torch.Generator().manual_seed(0))
    _, trace = MoELayer(cfg)(x)
    logits = trace.router_logits.detach().double().numpy()                                    # (T, E)
    assert (_sigmoid64(logits) == 1.0).sum(axis=1).max() >= 2                       # ties, even in float64
    chosen = [set(row) for row in trace.top_k_index.tolist()]
    assert chosen == _top_k(logits, 2)                                               # sigmoid is increasing in x
    assert trace.summary()["bias_overlap"] == 1.0                                    # no bias: nothing moved
    from moe.stats import SMALL_SORT
    many = torch.randn(SMALL_SORT // cfg.n_experts + 100, cfg.d_model, generator=torch.Generator().manual_seed(3))
    _, trace = MoELayer(cfg)(many)                                                   # router_health's topk path
    assert trace.summary()["bias_overlap"] == 1.0


def test_a_bias_still_steers_saturated_scores():
    """With expert_bias the selection is score + bias: where scores saturate, the bias decides."""
    bias = (0.0, 0.3, 0.0, 0.2, 0.0, 0.1, 0.0, 0.0)
    cfg = MoEConfig(**CFG, temperature=0.05, expert_bias=bias)
    x = torch.randn(256, cfg.d_model, generator=torch.Generator().manual_seed(1))
    _, trace = MoELayer(cfg)(x)
    logits = trace.router_logits.detach().double().numpy()
    key = [[(float(_sigmoid64(v)) + b, v) for v, b in zip(row, bias)] for row in logits]  # ties: the larger logit
    expected = [set(sorted(range(8), key=lambda e: (-k[e][0], -k[e][1], e))[:2]) for k in key]
    assert [set(row) for row in trace.top_k_index.tolist()] == expected


def test_sigmoid_gates_of_very_negative_logits_are_finite_and_exact():
    """logit_bias −150 on every expert: sigmoid is 0 in float32, and the normalised gates were 0 / 0 = NaN, the
    output NaN, and every token went to experts 0 and 1."""
    cfg = MoEConfig(**{**CFG, "n_experts": 4}, logit_bias=(-150.0,) * 4)
    x = torch.randn(16, cfg.d_model, generator=torch.Generator().manual_seed(2))
    y, trace = MoELayer(cfg)(x)
    logits = trace.router_logits.detach().double().numpy()
    assert torch.isfinite(y.detach()).all() and torch.isfinite(trace.gates).all()
    assert [set(row) for row in trace.top_k_index.tolist()] == _top_k(logits, 2)
    for t, row in enumerate(trace.top_k_index.tolist()):
        s = _sigmoid64(logits[t, row])                                                # ~1e-65, finite in float64
        np.testing.assert_allclose(trace.gates[t, row].detach().double().numpy(), s / s.sum(), rtol=1e-5)
    assert trace.summary()["nonfinite_output"] == 0


@pytest.mark.parametrize("factor", [0.55, 0.1, 0.3, 0.7, 1.15, 1.25, 2.05, 3.35])
def test_capacity_is_exact_for_the_factor_as_written(factor):
    """C = ceil(factor·T·K/E): 0.55·100 is 55.00000000000001 in floats, and C was 12 at T = 100, E = 5 (it is 11)."""
    for T in range(1, 301):
        for K, E in ((1, 5), (2, 8), (1, 3), (3, 7)):
            exact = Fraction(str(factor)) * T * K / E
            assert expert_capacity(T, K, E, factor) == min(T, math.ceil(exact)), (T, K, E)
