"""The memory estimate counts the real weights and refuses oversized configs with advice."""
import numpy as np
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
    assert est["total"] == est["weights"] + est["activations"] + est["trace"] + est["runtime"]


def test_budget_refusal_says_how_to_fit():
    cfg = MoEConfig(d_model=4096, d_expert=8192, n_experts=256, top_k=8)
    with pytest.raises(ValueError, match=r"over the budget of 4\.0 GiB; to fit, set d_expert ≤ 2,048 \(now 8,192\), "
                                         r"d_model ≤ 1,024 \(now 4,096\), n_experts ≤ 128 \(now 256\)"):
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


def test_budget_comes_from_the_environment(monkeypatch):
    from moe.memory import budget_bytes
    monkeypatch.delenv("MOE_SCOPE_MEMORY_GB", raising=False)
    assert budget_bytes() == 4 * GiB
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.5")
    assert budget_bytes() == GiB // 2
    for bad in ("abc", "-1", "0", "nan", "inf"):
        monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", bad)
        with pytest.raises(ValueError, match=rf"MOE_SCOPE_MEMORY_GB='{bad}' is not a memory budget; set it to"):
            budget_bytes()


def _apply(cfg, tokens, changes):
    """Follow the advice mechanically: every named size set to the advised value."""
    changes = dict(changes)
    tokens = changes.pop("tokens", tokens)
    n_maps = changes.pop("n_clusters", None)
    return cfg.replace(**changes), tokens, n_maps


@pytest.mark.parametrize("cfg, tokens", [
    (MoEConfig(d_model=4096, d_expert=8192, n_experts=64), 512),
    (MoEConfig(), 10 ** 9),
    (MoEConfig(d_model=4096, d_expert=8192, n_experts=256, top_k=8, dtype="bfloat16"), 10 ** 6),
    (MoEConfig(d_model=1 << 20, d_expert=1024, n_experts=2, top_k=1), 64),
    (MoEConfig(router="expert_choice", capacity_factor=2.0, n_experts=64, d_expert=4096), 10 ** 6),
])
@pytest.mark.parametrize("budget", [GiB // 4, GiB, 4 * GiB])
def test_following_the_forward_advice_passes(cfg, tokens, budget):
    from moe.memory import BudgetError
    with pytest.raises(BudgetError) as err:
        check_budget(cfg, tokens, budget)
    assert err.value.changes, "the advice names what to shrink"
    for name, value in err.value.changes.items():
        assert f"{name} ≤ {value:,}" in str(err.value)
    fixed, fixed_tokens, _ = _apply(cfg, tokens, err.value.changes)
    check_budget(fixed, fixed_tokens, budget)  # no second refusal


@pytest.mark.parametrize("n_maps, tokens, d_expert", [(10 ** 6, 256, 32), (4, 10 ** 7, 32), (16, 4096, 1 << 16)])
def test_following_the_training_advice_passes(n_maps, tokens, d_expert):
    from moe.memory import BudgetError, check_training_budget
    cfg = MoEConfig(d_model=16, d_expert=d_expert, n_experts=8, top_k=2)
    sizes = dict(pool_batches=16, probe_tokens=256, history=500)
    with pytest.raises(BudgetError) as err:
        check_training_budget(cfg, tokens, GiB, n_maps=n_maps, **sizes)
    fixed, fixed_tokens, fixed_maps = _apply(cfg, tokens, err.value.changes)
    check_training_budget(fixed, fixed_tokens, GiB, n_maps=fixed_maps or n_maps, **sizes)


def test_training_estimate_counts_adam_state():
    from moe.memory import estimate_training_bytes
    cfg = MoEConfig(d_model=32, d_expert=64, n_experts=4, top_k=2)
    est = estimate_training_bytes(cfg, 128)
    params = sum(p.numel() * p.element_size() for p in MoELayer(cfg).parameters())
    assert est["optimizer"] >= 3 * params  # a gradient and two Adam moments per weight
    assert est["total"] >= estimate_bytes(cfg, 128)["total"] + 3 * params


def test_weights_are_drawn_in_chunks_with_the_numbers_of_one_draw():
    from moe.layer import DRAW_CHUNK, _draw_
    n = 2 * DRAW_CHUNK + 37  # three chunks' worth, not a multiple of 16
    param = torch.empty(n, dtype=torch.bfloat16)
    _draw_(param, 0.5, torch.Generator().manual_seed(7))
    whole = torch.randn(n, generator=torch.Generator().manual_seed(7)) * 0.5
    assert torch.equal(param, whole.to(torch.bfloat16))


def test_layer_is_built_in_its_dtype_without_a_float32_copy():
    cfg = MoEConfig(d_model=32, d_expert=48, n_experts=3, top_k=1, dtype="float16", seed=5)
    layer = MoELayer(cfg)
    assert layer.experts.w_up.dtype == torch.float16 and layer.router.weight.dtype == torch.float32
    g = torch.Generator().manual_seed(5)
    router = torch.randn(3, 32, generator=g) * 32 ** -0.5
    w_gate = torch.randn(3, 48, 32, generator=g) * 32 ** -0.5
    assert torch.equal(layer.router.weight, router)
    assert torch.equal(layer.experts.w_gate, w_gate.half())


def test_a_budget_nothing_fits_in_says_to_raise_it():
    from moe.memory import RUNTIME_BYTES, BudgetError
    with pytest.raises(BudgetError, match="the smallest sizes do not fit either; raise MOE_SCOPE_MEMORY_GB") as err:
        check_budget(MoEConfig(), 512, RUNTIME_BYTES // 2)
    assert err.value.changes == {}


def test_an_amount_over_a_limit_never_reads_as_the_limit():
    """describe_over: n > limit read with as many decimals (the same for both) as tell them apart; the values they
    write keep the order (parsed back in bytes) and are each within half a last digit of the truth."""
    from moe.memory import describe_bytes, describe_over
    units = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}

    def parse(text: str) -> float:
        number, unit = text.replace(",", "").split()
        return float(number) * units[unit]

    mib = 1024 ** 2
    assert describe_bytes(1.1 * mib) == describe_bytes(1.1 * mib + 1) == "1.1 MiB"  # what a refusal read before
    assert describe_over(1.1 * mib + 1000, 1.1 * mib) == ("1.101 MiB", "1.100 MiB")
    assert describe_over(3 * mib, 1 * mib) == ("3.0 MiB", "1.0 MiB")  # far apart: as describe_bytes writes them
    assert describe_over(5 * 1024 ** 3 + 1, 5 * 1024 ** 3) == ("5.000000001 GiB", "5.000000000 GiB")
    one_apart = {describe_over(limit + 1, limit) for limit in range(5 * 1024 ** 3, 5 * 1024 ** 3 + 4096)}
    assert ("5,368,709,128 B", "5,368,709,127 B") in one_apart  # no 9 decimals tell them apart: exact bytes
    assert all(over != under for over, under in one_apart)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        limit = int(rng.integers(1, 1 << 40))
        n = limit + int(rng.integers(1, max(2, limit // int(rng.choice([10, 1000, 10 ** 6])))))
        over, under = describe_over(n, limit)
        assert over != under and parse(over) >= parse(under), (n, limit, over, under)


def test_a_share_of_the_budget_and_the_budget_read_with_the_same_decimals(monkeypatch):
    """"1.0 GiB, over a quarter of the memory budget of 4.0 GiB" read as no reason: the amount, the share and the
    budget are written with the decimals that tell the amount from the share."""
    from moe.memory import describe_over
    from dashboard.views.traces import upload_limits
    gib = 1024 ** 3
    assert describe_over(gib + 4096, gib, 4 * gib) == ("1.000004 GiB", "1.000000 GiB", "4.000000 GiB")
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "4")
    from moe.memory import budget_bytes
    budget = budget_bytes()
    with pytest.raises(ValueError) as err:
        upload_limits(budget // 2 + 1)
    size_text, half_text, budget_text = describe_over(budget // 2 + 1, budget // 2, budget)
    assert size_text != half_text
    assert f"the upload takes {size_text}, over half the memory budget of {budget_text}" in str(err.value)
