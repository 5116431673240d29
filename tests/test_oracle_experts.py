"""Expert variants and shared experts against the naive float64 oracle (tests/naive.py)."""
from __future__ import annotations

import math

import pytest
import torch

from moe import MoEConfig, MoELayer, StatsAccumulator
from naive import naive_forward
from test_oracle import BASE, T_BASE, assert_matches, close, run_both, tokens

VARIANTS = {
    "silu": dict(),
    "gelu": dict(activation="gelu"),
    "relu": dict(activation="relu"),
    "gpt_oss": dict(activation="gpt_oss", swiglu_limit=0.4),  # a low limit: both clamps bite
    "silu-ungated": dict(gated=False),
    "gelu-ungated": dict(activation="gelu", gated=False),
    "relu-ungated": dict(activation="relu", gated=False),
}
SHARED = {
    "none": dict(),
    "shared": dict(shared_experts=2),                            # Hs = 2·H
    "shared-gated": dict(shared_experts=1, d_shared=10, shared_gate=True),
}


@pytest.mark.parametrize("shared", list(SHARED))
@pytest.mark.parametrize("biases", (False, True), ids=("nobias", "bias"))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_expert_variants(variant, biases, shared):
    cfg = MoEConfig(**BASE, **VARIANTS[variant], expert_biases=biases, **SHARED[shared],
                    capacity_factor=1.25, sparsity_eps=0.05)
    x = tokens(T_BASE, cfg.d_model, seed=11)
    y, trace, ref = run_both(cfg, x)
    assert_matches(cfg, x, y, trace, ref)
    summary = trace.summary()
    if shared == "none":
        assert math.isnan(summary["shared_output_rms"]) and math.isnan(summary["shared_fraction"])
    else:
        assert 0 < summary["shared_fraction"] < 1 and summary["shared_output_rms"] > 0


@pytest.mark.parametrize("mode", ("absolute", "relative"))
@pytest.mark.parametrize("variant", ("silu", "relu-ungated", "gpt_oss"))
def test_sparsity_modes(variant, mode):
    cfg = MoEConfig(**BASE, **VARIANTS[variant], sparsity_mode=mode, sparsity_eps=0.2)
    x = tokens(T_BASE, cfg.d_model, seed=5)
    assert_matches(cfg, x, *run_both(cfg, x))


def test_relative_sparsity_ignores_the_scale():
    """Scaling every weight that feeds h by 0.02 (Hugging Face's init) moves absolute sparsity, not relative."""
    cfg = MoEConfig(**BASE)  # h = silu(gate)·up is linear in w_up
    x = tokens(T_BASE, cfg.d_model)
    shares = {}
    for mode in ("absolute", "relative"):
        for scale in (1.0, 0.02):
            layer = MoELayer(cfg.replace(sparsity_mode=mode))
            with torch.no_grad():
                layer.experts.w_up.mul_(scale)
            shares[mode, scale] = layer(x)[1].per_expert()["activation_sparsity"].to_numpy()
    assert (shares["absolute", 0.02] > shares["absolute", 1.0] + 0.3).all()  # tiny h looks sparse
    close(shares["relative", 0.02], shares["relative", 1.0], "relative sparsity", rtol=0, atol=1e-9)


def test_gpt_oss_clamps_are_active():
    """The oracle equality above means something only if gate > limit and |up| > limit occur."""
    cfg = MoEConfig(**BASE, **VARIANTS["gpt_oss"])
    layer, x = MoELayer(cfg), tokens(T_BASE, cfg.d_model, seed=11)
    gate = torch.einsum("td,ehd->teh", x, layer.experts.w_gate.detach())  # (T, E, H)
    up = torch.einsum("td,ehd->teh", x, layer.experts.w_up.detach())
    assert (gate > cfg.swiglu_limit).float().mean() > 0.1
    assert (up.abs() > cfg.swiglu_limit).float().mean() > 0.1


def test_shared_fraction_extremes():
    """Zero routed output: the shared part carries everything (1); zero shared output: nothing (0)."""
    cfg = MoEConfig(**BASE, shared_experts=1, shared_gate=True)
    x = tokens(T_BASE, cfg.d_model)
    for module, expected in (("experts", 1.0), ("shared", 0.0)):
        layer = MoELayer(cfg)
        with torch.no_grad():
            getattr(layer, module).w_down.zero_()
        trace = layer(x)[1]
        assert trace.summary()["shared_fraction"] == pytest.approx(expected)
    # (the oracle's specialization is undefined when every routed output is zero: check it on the second)
    assert naive_forward(layer.state_dict(), cfg, x).summary["shared_fraction"] == 0.0
    assert trace.summary()["shared_output_rms"] == 0.0


def test_shared_statistics_accumulate():
    """Two forwards merged equal one oracle pass over both batches (the sums are additive)."""
    cfg = MoEConfig(**BASE, shared_experts=1, d_shared=16)
    layer = MoELayer(cfg)
    x1, x2 = tokens(13, cfg.d_model, seed=1), tokens(17, cfg.d_model, seed=2)
    acc = StatsAccumulator().update(layer(x1)[1]).update(layer(x2)[1])
    ref = naive_forward(layer.state_dict(), cfg, torch.cat([x1, x2]))
    for key in ("shared_output_rms", "shared_fraction"):
        close(acc.summary()[key], ref.summary[key], key)


def test_shared_output_is_added():
    """y = routed + shared, where routed is the same layer without its shared FFN."""
    cfg = MoEConfig(**BASE, shared_experts=2, shared_gate=True)
    layer = MoELayer(cfg)
    x = tokens(T_BASE, cfg.d_model)
    routed = MoELayer(cfg.replace(shared_experts=0, shared_gate=False))(x)[0]  # same routed draws
    sh = layer.shared
    s = torch.sigmoid(x @ sh.gate.weight.t()) * (
        (torch.nn.functional.silu(x @ sh.w_gate.t()) * (x @ sh.w_up.t())) @ sh.w_down.t())  # (T, D)
    close(layer(x)[0].detach(), (routed + s).detach(), "y")
