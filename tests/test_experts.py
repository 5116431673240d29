"""Expert variants: config errors, the activation registry, in-place vs autograd paths, the eager reference."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from moe import MoEConfig, MoELayer
from moe.config import ACTIVATIONS
from moe.experts import ACTIVATION_FNS, count_dtype, dispatch, dispatch_eager, near_zero_count, near_zero_mask

BASE = dict(d_model=12, d_expert=24, n_experts=5, top_k=2)
VARIANTS = [dict(), dict(activation="gelu"), dict(activation="relu", gated=False),
            dict(activation="gpt_oss", swiglu_limit=0.5, expert_biases=True),
            dict(gated=False, expert_biases=True, shared_experts=1, shared_gate=True),
            dict(shared_experts=2, d_shared=7)]


def test_registry_implements_every_activation():
    assert set(ACTIVATION_FNS) == set(ACTIVATIONS)


@pytest.mark.parametrize("changes,match", [
    (dict(activation="swish"), r"unknown activation 'swish'; choose one of 'silu', 'gelu', 'relu', 'gpt_oss'"),
    (dict(activation="gpt_oss", gated=False), r"activation='gpt_oss' .* needs gated=True; set gated=True"),
    (dict(gated=1), r"gated must be True or False"),
    (dict(expert_biases="yes"), r"expert_biases must be True or False"),
    (dict(swiglu_limit=0.0), r"swiglu_limit must be a finite number > 0"),
    (dict(swiglu_limit=float("inf")), r"swiglu_limit must be a finite number > 0"),
    (dict(shared_experts=-1), r"shared_experts must be a non-negative integer"),
    (dict(shared_experts=1.5), r"shared_experts must be a non-negative integer"),
    (dict(d_shared=64), r"d_shared=64 sizes the shared FFN but shared_experts=0; set shared_experts >= 1"),
    (dict(shared_experts=1, d_shared=0), r"d_shared must be a positive integer"),
    (dict(shared_gate=True), r"shared_gate=True .* shared_experts=0; set shared_experts >= 1 or shared_gate=False"),
    (dict(sparsity_mode="rel"), r"unknown sparsity_mode 'rel'; choose one of 'absolute', 'relative'"),
])
def test_bad_combinations(changes, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**changes)


def test_shared_hidden():
    assert MoEConfig().shared_hidden == 0
    assert MoEConfig(d_expert=32, shared_experts=3).shared_hidden == 96
    assert MoEConfig(shared_experts=3, d_shared=40).shared_hidden == 40


def test_state_dict_layout():
    cfg = MoEConfig(**BASE, expert_biases=True, shared_experts=2, shared_gate=True)
    shapes = {k: tuple(v.shape) for k, v in MoELayer(cfg).state_dict().items()}
    assert shapes == {"router.weight": (5, 12), "router.expert_bias": (5,), "experts.w_gate": (5, 24, 12),
                      "experts.w_up": (5, 24, 12), "experts.w_down": (5, 12, 24), "experts.b_gate": (5, 24),
                      "experts.b_up": (5, 24), "experts.b_down": (5, 12), "shared.w_gate": (48, 12),
                      "shared.w_up": (48, 12), "shared.w_down": (12, 48), "shared.gate.weight": (1, 12)}
    ungated = MoELayer(cfg.replace(gated=False, shared_gate=False)).state_dict()
    assert not any(k.endswith(("w_gate", "b_gate", "gate.weight")) for k in ungated)


def test_new_weights_leave_the_default_draws_alone():
    """Biases and the shared FFN are drawn after the routed experts: those stay bit-identical."""
    plain = MoELayer(MoEConfig(**BASE)).state_dict()
    rich = MoELayer(MoEConfig(**BASE, expert_biases=True, shared_experts=1, shared_gate=True)).state_dict()
    for name, value in plain.items():
        assert torch.equal(value, rich[name]), name


def test_near_zero_mask_by_hand():
    h = torch.tensor([[0.0, 0.001, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])  # row 0 rms = sqrt(2.000001/4)
    assert near_zero_mask(h, 0.01, "absolute").tolist() == [[True, True, False, False], [True] * 4]
    assert near_zero_mask(h, 0.01, "relative").tolist() == [[True, True, False, False], [True] * 4]
    assert near_zero_mask(h, 0.0015, "relative").tolist()[0] == [True, True, False, False]  # 0.001 ≤ 0.00106
    assert near_zero_mask(h, 0.0014, "relative").tolist()[0] == [True, False, False, False]
    assert near_zero_mask(h * 100, 0.01, "absolute").tolist()[0] == [True, False, False, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_near_zero_count_is_the_mask_count(dtype, mode):
    """The fast count (comparison written in place as 1.0 / 0.0) equals counting the bool mask, NaN and inf
    included, with and without reusing the buffer; the buffer is only written when asked."""
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(40, 300, generator=g) * 0.02).to(dtype)  # (n, H) with many entries near 0.01
    h[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.01, -0.01])
    h[1] = 0.0
    want = int(near_zero_mask(h, 0.01, mode).sum())
    kept = h.clone()
    assert float(near_zero_count(h, 0.01, mode)) == want
    assert torch.equal(h.isnan(), kept.isnan()) and torch.equal(h.nan_to_num(), kept.nan_to_num())  # untouched
    assert float(near_zero_count(h.clone(), 0.01, mode, inplace=True)) == want
    assert float(near_zero_count(h[1:2], 0.01, mode)) == 300  # an all-zero row is all near zero
    assert int(near_zero_count(h, 0.01, mode, acc=torch.int64)) == want


def test_near_zero_count_stays_exact_past_float32_integers():
    h = torch.zeros(4099, 4097)  # 16,793,603 units, odd and above 2**24: float32 cannot hold the count
    assert count_dtype(h.numel()) == torch.int64 and count_dtype(1 << 24) == torch.float32
    assert int(near_zero_count(h, 0.01, "absolute", inplace=True)) == 4099 * 4097


@pytest.mark.parametrize("changes", VARIANTS, ids=str)
def test_inplace_path_equals_autograd_path(changes):
    """Inference reuses buffers in place; with autograd on it must not: both give the same y and stats."""
    cfg = MoEConfig(**BASE, **changes, capacity_factor=1.25)
    layer = MoELayer(cfg)
    x = torch.randn(40, cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        y0, t0 = layer(x)
    y1, t1 = layer(x)
    y1.square().sum().backward()  # the autograd path runs backward without in-place errors
    assert all(p.grad is not None for p in layer.experts.parameters())
    torch.testing.assert_close(y1.detach(), y0)
    pd.testing.assert_frame_equal(t1.per_expert(), t0.per_expert(), rtol=1e-6)
    s0, s1 = t0.summary(), t1.summary()
    for key in ("shared_output_rms", "shared_fraction", "aux_loss"):
        assert s1[key] == pytest.approx(s0[key], rel=1e-6, nan_ok=True), key


@pytest.mark.parametrize("changes", VARIANTS, ids=str)
@pytest.mark.parametrize("T", (40, 3000))  # the small (batched) and large (per slice) statistics paths
def test_vectorised_dispatch_equals_eager(changes, T):
    cfg = MoEConfig(**BASE, **changes)
    layer = MoELayer(cfg)
    x = torch.randn(T, cfg.d_model, generator=torch.Generator().manual_seed(1))
    routing = layer.router(x, cfg, layer.new_generator())
    with torch.no_grad():
        fast = dispatch(x, routing.served, routing.gates, layer.experts, cfg).out
        eager = dispatch_eager(x, routing.served, routing.gates, layer.experts, cfg)
    torch.testing.assert_close(fast, eager)


def test_one_ungated_expert_is_a_dense_relu_ffn():
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=1, top_k=1, activation="relu", gated=False,
                    expert_biases=True)
    layer = MoELayer(cfg)
    x = torch.randn(9, 8)
    w = layer.experts
    dense = F.linear(F.relu(F.linear(x, w.w_up[0], w.b_up[0])), w.w_down[0], w.b_down[0])
    torch.testing.assert_close(layer(x)[0], dense)


def test_bfloat16_variants_run():
    cfg = MoEConfig(**BASE, activation="gpt_oss", expert_biases=True, shared_experts=1, shared_gate=True,
                    dtype="bfloat16")
    y, trace = MoELayer(cfg)(torch.randn(30, 12))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert 0 < trace.summary()["shared_fraction"] < 1


def test_reconfigured_refuses_weight_changes():
    layer = MoELayer(MoEConfig(**BASE))
    with pytest.raises(ValueError, match=r"shared_experts: 0 -> 1"):
        layer.reconfigured(MoEConfig(**BASE, shared_experts=1))
    relu = layer.reconfigured(MoEConfig(**BASE, activation="relu"))  # same weights, another activation
    assert relu.experts is layer.experts and relu.shared is None


def test_cli_report_runs_the_variant(capsys):
    from moe.cli.main import main
    from moe.scenarios import make_batch
    argv = ["report", "--tokens", "48", "--activation", "gpt_oss", "--expert-biases", "--swiglu-limit", "2",
            "--shared-experts", "1", "--d-shared", "32", "--shared-gate", "--sparsity-mode", "relative"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    cfg = MoEConfig(activation="gpt_oss", expert_biases=True, swiglu_limit=2.0, shared_experts=1, d_shared=32,
                    shared_gate=True, sparsity_mode="relative")
    assert {k: report["config"][k] for k in ("activation", "gated", "d_shared", "sparsity_mode")} == {
        "activation": "gpt_oss", "gated": True, "d_shared": 32, "sparsity_mode": "relative"}
    _, trace = MoELayer(cfg)(make_batch("gaussian", cfg.d_model, 48, seed=0).x)
    for key in ("shared_fraction", "shared_output_rms"):
        assert report["summary"][key] == pytest.approx(trace.summary()[key], rel=1e-5)


@pytest.mark.parametrize("argv, named", [
    (["--activation", "gpt_oss", "--no-gated"], "gated=True"),
    (["--activation", "swish"], "'swish'"),
    (["--d-shared", "64"], "shared_experts >= 1"),
    (["--shared-gate"], "shared_gate=False"),
    (["--shared-experts", "-1"], "shared_experts"),
    (["--swiglu-limit", "0"], "swiglu_limit"),
    (["--sparsity-mode", "rel"], "'rel'"),
])
def test_cli_bad_combinations_exit_2_with_one_line(capsys, argv, named):
    from moe.cli.main import main
    assert main(["report", "--tokens", "8", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and named in err


def test_sparsity_rule_names_the_mode():
    from moe.experts import sparsity_rule
    assert sparsity_rule(MoEConfig()) == "absolute: `|h| < 0.01`"
    assert sparsity_rule(MoEConfig(sparsity_mode="relative", sparsity_eps=0.05)).startswith(
        "relative: `|h| ≤ 0.05·rms(h_t)`")


def test_experts_section_says_which_sparsity_it_shows():
    from test_sections_smoke import captions, run_section
    at = run_section("experts")
    assert not at.exception
    assert "activation_sparsity shown: absolute: `|h| < 0.01`." in captions(at)


def test_partly_frozen_layer_trains_only_what_is_free():
    """Only the biases and the shared gate train: the in-place shortcuts must stay off."""
    cfg = MoEConfig(**BASE, activation="gpt_oss", expert_biases=True, shared_experts=1, shared_gate=True)
    layer = MoELayer(cfg)
    for name, p in layer.named_parameters():
        p.requires_grad_(name.startswith("experts.b_") or name == "shared.gate.weight")
    y, _ = layer(torch.randn(30, cfg.d_model))
    y.square().sum().backward()
    assert layer.experts.b_up.grad.abs().sum() > 0 and layer.shared.gate.weight.grad.abs().sum() > 0
    assert layer.experts.w_up.grad is None
