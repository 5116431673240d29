"""Counterfactual routing on a real model: own settings reproduce it, changes change what they should."""
import pytest
import torch

from moe.hf.instrument import instrument, run_model
from moe.hf.counterfactual import BIAS_HOT, Counterfactual, counterfactual_config, run_counterfactual
from tests.model_support import VOCAB, tiny_model

IDS = torch.randint(0, VOCAB, (48,), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def model():
    m = tiny_model("mixtral", layers=3)
    instrument(m)
    return m


def test_the_models_own_settings_reproduce_the_loss_exactly(model):
    own = run_model(model, IDS)
    same = run_counterfactual(model, IDS, Counterfactual())
    assert torch.equal(same.logits, own.logits)
    assert all(torch.equal(a.top_k_index, b.top_k_index) for a, b in zip(own.traces, same.traces))


def test_top_1_at_every_layer_changes_the_loss_and_halves_the_assignments(model):
    own = run_model(model, IDS)
    cf = run_counterfactual(model, IDS, Counterfactual(top_k=1))
    assert not torch.allclose(cf.token_loss(), own.token_loss())
    assert all(t.served.sum().item() == IDS.numel() for t in cf.traces)  # T·1 assignments
    again = run_model(model, IDS)  # the model itself is untouched
    assert torch.equal(again.logits, own.logits)


def test_one_layer_only_leaves_the_layers_before_it_alone(model):
    own = run_model(model, IDS)
    cf = run_counterfactual(model, IDS, Counterfactual(layers=(2,), top_k=1))
    assert torch.equal(cf.traces[0].router_logits, own.traces[0].router_logits)
    assert torch.equal(cf.traces[1].top_k_index, own.traces[1].top_k_index)
    assert cf.traces[2].config.top_k == 1 and own.traces[2].config.top_k == 2


def test_capacity_drops_are_counted_against_a_naive_count(model):
    cf = run_counterfactual(model, IDS, Counterfactual(capacity_factor=0.5, drop_policy="position"))
    for t in cf.traces:
        C = t.capacity
        assert C == -(-int(0.5 * 48 * 2) // 8)
        routed = t.routed.sum(dim=0)  # (E,) demand
        naive = int((routed - C).clamp(min=0).sum())
        assert t.summary()["dropped"] == naive > 0
        assert int(t.served.sum(dim=0).max()) <= C


def test_a_hot_expert_takes_every_token_and_a_bad_value_names_the_field(model):
    cf = run_counterfactual(model, IDS, Counterfactual(layers=(0,), bias_expert=5, bias=BIAS_HOT))
    assert bool(cf.traces[0].routed[:, 5].all())
    with pytest.raises(ValueError, match="top_k"):
        run_counterfactual(model, IDS, Counterfactual(top_k=9))
    with pytest.raises(ValueError, match="not MoE layers"):
        run_counterfactual(model, IDS, Counterfactual(layers=(7,)))
    with pytest.raises(ValueError, match="bias_expert"):
        counterfactual_config(cf.traces[0].config, Counterfactual(bias_expert=8, bias=1.0))


def test_the_sweep_row_of_a_layer_is_that_layer_changed_alone(model):
    from moe.hf.counterfactual import sweep_layers

    cf = Counterfactual(layers=(0,), top_k=1, capacity_factor=0.5)  # layers is ignored: every layer in turn
    table = sweep_layers(model, IDS, cf)
    assert list(table.columns) == ["layer", "delta_loss_bits", "dropped_fraction"]
    assert table["layer"].tolist() == [0, 1, 2]
    own_bits = run_model(model, IDS).token_loss().mean().item() / torch.log(torch.tensor(2.0)).item()
    for k, row in table.iterrows():
        alone = run_counterfactual(model, IDS, Counterfactual(layers=(k,), top_k=1, capacity_factor=0.5))
        new_bits = alone.token_loss().mean().item() / torch.log(torch.tensor(2.0)).item()
        assert row["delta_loss_bits"] == pytest.approx(new_bits - own_bits, abs=1e-9)
        C = -(-int(0.5 * 48 * 1) // 8)  # top-1 at capacity factor 0.5: ⌈0.5·T·1/E⌉ slots per expert
        demand = alone.traces[k].routed.sum(dim=0)  # (E,)
        assert row["dropped_fraction"] == pytest.approx(float((demand - C).clamp(min=0).sum() / demand.sum()))
        assert row["dropped_fraction"] > 0
    same = sweep_layers(model, IDS, Counterfactual(top_k=2))  # the model's own top_k: nothing changes anywhere
    assert same["delta_loss_bits"].tolist() == [0.0, 0.0, 0.0] and same["dropped_fraction"].tolist() == [0.0] * 3


def test_a_top_k_above_what_the_group_limit_leaves_names_the_limit_not_a_setting_the_user_lacks():
    """DeepSeek-V3's tiny model: 8 experts in 4 groups, the 2 best kept, so 4 to choose from. top_k=5 was refused
    with MoEConfig's "raise topk_group", which neither the page nor model-report can set."""
    m = tiny_model("deepseek_v3", layers=3)
    instrument(m)
    with pytest.raises(ValueError, match=r"^top_k=5: this layer's group-limited routing \(the 2 best of 4 expert "
                                         r"groups\) leaves 4 experts to choose from; choose top_k ≤ 4$"):
        run_counterfactual(m, IDS, Counterfactual(top_k=5))
    assert run_counterfactual(m, IDS, Counterfactual(top_k=4)).traces[0].top_k_index.shape[1] == 4
