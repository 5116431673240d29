"""The memory estimate counts the real weights and refuses oversized configs with advice."""
import pytest
import torch

from moe import MoEConfig, MoELayer
from moe.memory import GiB, check_budget, estimate_bytes


def test_weight_estimate_equals_the_state_dict_bytes():
    cfg = MoEConfig(d_model=48, d_expert=80, n_experts=5, top_k=2, dtype="bfloat16")
    layer = MoELayer(cfg)
    actual = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    assert estimate_bytes(cfg, 100)["weights"] == actual


@pytest.mark.parametrize("changes", [dict(gated=False), dict(expert_biases=True),
                                     dict(gated=False, expert_biases=True, activation="relu"),
                                     dict(shared_experts=2, shared_gate=True), dict(shared_experts=1, d_shared=40)],
                         ids=str)
def test_weight_estimate_counts_expert_variants(changes):
    cfg = MoEConfig(d_model=48, d_expert=80, n_experts=5, top_k=2, dtype="bfloat16", **changes)
    actual = sum(t.numel() * t.element_size() for t in MoELayer(cfg).state_dict().values())
    assert estimate_bytes(cfg, 100)["weights"] == actual


def test_activation_estimate_bounds_a_real_forward():
    cfg = MoEConfig(d_model=64, d_expert=512, n_experts=4, top_k=2)
    est = estimate_bytes(cfg, 2048)
    hidden_one_slice = 2048 * 2 // 4 * 512 * 4  # what one balanced expert's (n, H) hidden takes
    assert est["activations"] > hidden_one_slice
    assert est["total"] == est["weights"] + est["activations"] + est["trace"]


def test_budget_refusal_says_how_to_fit():
    cfg = MoEConfig(d_model=4096, d_expert=8192, n_experts=256, top_k=8)
    with pytest.raises(ValueError, match=r"over the budget of 4\.0 GiB: lower n_experts, d_expert or d_model"):
        check_budget(cfg, 4096, 4 * GiB)
    check_budget(MoEConfig(), 512, 4 * GiB)  # the default fits


def test_reconfigured_layer_shares_weights_and_changes_routing():
    base = MoELayer(MoEConfig(n_experts=6, top_k=1, seed=4))
    other = base.reconfigured(MoEConfig(n_experts=6, top_k=3, seed=4, expert_bias=(1, 0, 0, 0, 0, 0)))
    assert other.experts.w_up.data_ptr() == base.experts.w_up.data_ptr()
    assert other.router.weight is base.router.weight
    assert base.router.expert_bias.abs().sum() == 0  # the base is untouched
    x = torch.randn(32, 64)
    _, tr = other(x)
    assert tr.top_k_index.shape == (32, 3) and bool(tr.routed[:, 0].all())
    fresh = MoELayer(MoEConfig(n_experts=6, top_k=3, seed=4, expert_bias=(1, 0, 0, 0, 0, 0)))
    torch.testing.assert_close(other(x)[0], fresh(x)[0])
    with pytest.raises(ValueError, match="d_model: 64 -> 32"):
        base.reconfigured(MoEConfig(d_model=32, n_experts=6, top_k=1, seed=4))
