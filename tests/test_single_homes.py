"""The engine's single homes of shared concepts: the seed mixer, the weight-fixing fields, the capacity formula,
the statistics bundle; each checked against an independent computation or its every user."""
import math

import numpy as np
import pytest
import torch

from moe import MoEConfig, MoELayer
from moe.config import WEIGHT_FIELDS, expert_capacity
from moe.knobs import from_knobs
from moe.memory import _assignments, _sizes
import moe.seeds as seeds
from moe.stats import StatsInputs, gather_sums, nonfinite_rows
import dashboard.loaders


def _splitmix_naive(parts):
    """splitmix64 written from its published constants, one part at a time, with Python integers."""
    m = 2 ** 64
    state = 0x9E3779B97F4A7C15
    for p in parts:
        state = ((state ^ (p % m)) + 0x9E3779B97F4A7C15) % m
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) % m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
        state = z ^ (z >> 31)
    return state // 2


def test_seed_mixer_matches_splitmix_and_separates_streams():
    for parts in [(0, 0), (seeds.CLUSTERS, 7), (seeds.DRIFT, 3, 11), (seeds.TASK_MAPS, 2 ** 40), (5, -1)]:
        assert seeds.mix(*parts) == _splitmix_naive(parts) and 0 <= seeds.mix(*parts) < 2 ** 63
    tags = [seeds.CENTRES, seeds.CLUSTERS, seeds.DRIFT, seeds.GAUSS, seeds.IDENTICAL, seeds.TASK_MAPS,
            seeds.TASK_OFFSET, seeds.LOGIT_BIAS, seeds.EXPERT_BIAS]
    assert len(set(tags)) == len(tags)  # one tag per use: no two uses share a stream
    firsts = {float(torch.randn(1, generator=seeds.generator(tag, 1))) for tag in tags}
    assert len(firsts) == len(tags)
    assert torch.equal(torch.randn(4, generator=seeds.generator(3, 9)), torch.randn(4, generator=seeds.generator(3, 9)))


def test_knob_biases_come_from_their_own_seeded_streams():
    a = from_knobs({"n_experts": 4, "bias_spread": 0.5, "expert_bias_spread": 0.5, "seed": 3})[0]
    b = from_knobs({"n_experts": 4, "bias_spread": 0.5, "expert_bias_spread": 0.5, "seed": 3})[0]
    c = from_knobs({"n_experts": 4, "bias_spread": 0.5, "expert_bias_spread": 0.5, "seed": 4})[0]
    assert a.logit_bias == b.logit_bias and a.expert_bias == b.expert_bias  # reproducible
    assert a.logit_bias != a.expert_bias and a.logit_bias != c.logit_bias  # separate streams, seed-dependent
    want = 0.5 * torch.randn(4, generator=seeds.generator(seeds.LOGIT_BIAS, 3), dtype=torch.float64)
    assert a.logit_bias == tuple(round(float(v), 6) for v in want)


def test_weight_fields_are_one_tuple_the_layer_and_the_cache_share():
    assert dashboard.loaders.WEIGHT_FIELDS is WEIGHT_FIELDS
    layer = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2, shared_experts=1))
    changes = {"d_model": 16, "d_expert": 8, "n_experts": 8, "seed": 1, "dtype": "bfloat16", "gated": False,
               "expert_biases": True, "shared_experts": 2, "d_shared": 8, "shared_gate": True}
    for name in WEIGHT_FIELDS:
        if name in changes:
            with pytest.raises(ValueError, match=f"keeps the weights, so these must not change: {name}:"):
                layer.reconfigured(layer.cfg.replace(**{name: changes[name]}))
    assert set(WEIGHT_FIELDS) - set(changes) == {"device"}  # the one field a CPU-only machine cannot change
    layer.reconfigured(layer.cfg.replace(top_k=1, activation="gelu"))  # routing fields may change


@pytest.mark.parametrize("T, K, E, f", [(10, 2, 4, 1.0), (7, 1, 3, 1.25), (4, 2, 2, 3.0), (1000, 6, 64, 1.1)])
def test_one_capacity_formula_for_the_layer_and_the_memory_estimate(T, K, E, f):
    want = min(T, math.ceil(f * T * K / E))
    assert expert_capacity(T, K, E, f) == want
    cfg = MoEConfig(d_model=8, d_expert=8, n_experts=E, top_k=K, capacity_factor=f)
    assert cfg.capacity(T) == want
    ec = cfg.replace(router="expert_choice", capacity_factor=None)
    assert _assignments(_sizes(ec, T)) == E * ec.capacity(T) == E * min(T, math.ceil(T * K / E))


def test_nonfinite_rows_by_hand():
    t = torch.tensor([[1.0, float("inf"), -float("inf")], [float("nan"), 0.0, -2.5]])
    assert nonfinite_rows(t).tolist() == [[2], [1]] and nonfinite_rows(t.to(torch.bfloat16)).tolist() == [[2], [1]]
    assert nonfinite_rows(torch.full((1, 4), 3.4e38)).tolist() == [[0]]  # large finite values stay finite


def test_the_statistics_bundle_leaves_what_was_not_given_nan():
    """Routing-only inputs give the same routing sums as a full forward, NaN output sums and no co-activation."""
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2)
    layer = MoELayer(cfg)
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    _, trace = layer(x)
    routing_only = gather_sums(StatsInputs(probs=trace.probs, router_logits=trace.router_logits, routed=trace.routed,
                                           served=trace.served, gates=trace.gates, top_k=2, d_model=8, d_expert=16,
                                           capacity=None))
    full = trace.sums
    for name in ("demand", "served", "gate_sum", "prob_sum", "margin_expert", "unbiased", "overlap"):
        np.testing.assert_array_equal(getattr(routing_only, name), getattr(full, name), err_msg=name)
    assert routing_only.lse_sq == full.lse_sq and routing_only.margin == full.margin
    for name in ("near_zero", "sum_sq", "contribution"):
        assert np.isnan(getattr(routing_only, name)).all() and not np.isnan(getattr(full, name)).any()
    assert routing_only.sum_y.shape == (4, 8) and np.isnan(routing_only.sum_y).all()
    assert routing_only.coactivation is None and math.isnan(routing_only.nonfinite_output)
    assert full.nonfinite_output == 0 and routing_only.shared_tokens == 0
