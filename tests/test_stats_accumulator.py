"""StatsAccumulator: N forwards merged equal one forward over the concatenated tokens; reset; refusals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from moe import MoEConfig, MoELayer, StatsAccumulator

CFG = MoEConfig(d_model=12, d_expert=24, n_experts=6, top_k=2, expert_bias=(0.02, -0.03, 0, 0.01, 0, 0))
# Not sums over tokens: wall time, and the capacity C (a per-forward setting, averaged over forwards).
NOT_ADDITIVE = {"forward_ms", "capacity"}


def _x(T: int, seed: int) -> torch.Tensor:
    return torch.randn(T, CFG.d_model, generator=torch.Generator().manual_seed(seed))  # (T, D)


@pytest.mark.parametrize("cfg", [CFG, CFG.replace(score="sigmoid", normalize_topk=False),
                                 CFG.replace(n_group=3, topk_group=2), CFG.replace(router="hash")])
def test_merge_of_forwards_equals_one_forward_over_all_tokens(cfg):
    layer = MoELayer(cfg)
    parts = [_x(T, seed) for T, seed in ((7, 1), (13, 2), (20, 3))]
    acc = StatsAccumulator()
    for x in parts:
        acc.update(layer(x)[1])
    assert acc.forwards == 3
    _, whole = layer(torch.cat(parts))
    if cfg.router == "hash":
        # hash routes by the token's position within its forward, so the concatenation routes
        # differently: the merged demand is the sum of the parts' own demands
        demand = sum(layer(x)[1].per_expert()["demand"].to_numpy() for x in parts)
        assert acc.per_expert()["demand"].tolist() == demand.tolist()
        return
    pd.testing.assert_frame_equal(acc.per_expert(), whole.per_expert(), rtol=1e-6, atol=1e-9)
    merged, single = acc.summary(), whole.summary()
    assert set(merged) == set(single)
    for key in set(merged) - NOT_ADDITIVE:
        np.testing.assert_allclose(merged[key], single[key], rtol=1e-6, atol=1e-9, err_msg=key)
    np.testing.assert_allclose(acc.sums.coactivation, whole.coactivation.double().numpy())


def test_merge_adds_the_forward_times_and_averages_capacity():
    layer = MoELayer(CFG.replace(capacity_factor=1.0))
    t1, t2 = layer(_x(10, 1))[1], layer(_x(30, 2))[1]
    acc = StatsAccumulator().update(t1).update(t2)
    assert acc.summary()["forward_ms"] == pytest.approx(t1.forward_ms + t2.forward_ms)
    assert acc.summary()["capacity"] == pytest.approx((t1.capacity + t2.capacity) / 2)


def test_reset_forgets_everything():
    layer = MoELayer(CFG)
    acc = StatsAccumulator().update(layer(_x(8, 1))[1])
    acc.reset()
    assert acc.forwards == 0 and acc.sums is None
    with pytest.raises(ValueError, match="no forward recorded"):
        acc.summary()
    with pytest.raises(ValueError, match="no forward recorded"):
        acc.per_expert()
    _, trace = layer(_x(9, 2))
    acc.update(trace)
    assert acc.summary() == pytest.approx(trace.summary(), nan_ok=True)


def test_update_does_not_change_the_trace_sums():
    layer = MoELayer(CFG)
    t1, t2 = layer(_x(8, 1))[1], layer(_x(8, 2))[1]
    before = t1.summary()
    StatsAccumulator().update(t1).update(t2)
    assert t1.summary() == pytest.approx(before, nan_ok=True)


@pytest.mark.parametrize("change,field", [({"top_k": 3}, "top_k"), ({"d_expert": 16}, "d_expert"),
                                          ({"n_experts": 8, "expert_bias": None}, "n_experts"),
                                          ({"d_model": 8}, "d_model")])
def test_merging_another_layer_shape_is_refused(change, field):
    """A different top_k or d_expert used to be accepted and gave a wrong aux_loss / sparsity."""
    other = CFG.replace(**change)
    acc = StatsAccumulator().update(MoELayer(CFG)(_x(8, 1))[1])
    with pytest.raises(ValueError, match=rf"{field}=.*reset the accumulator"):
        acc.update(MoELayer(other)(torch.randn(8, other.d_model))[1])
    assert acc.forwards == 1  # the refused trace left the accumulator as it was
