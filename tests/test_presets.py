"""Every preset's "Look for" promise checked against the engine's numbers for the preset's own values.

The presets run at their real size (512 tokens, D = 64): the promises are about that page, not a toy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe import MoELayer
from moe.scenarios import make_batch
from dashboard.links import spec_from_controls
from dashboard.presets import PRESETS, preset_values


def run_preset(name: str, **overrides):
    """(config, trace, per_expert, summary, served experts per token) of a preset, as the page runs it."""
    spec = spec_from_controls({**preset_values(name), **overrides})
    cfg = spec.config
    batch = make_batch(spec.scenario, cfg.d_model, spec.tokens, seed=cfg.seed, **dict(spec.params))
    with torch.inference_mode():
        _, trace = MoELayer(cfg)(batch.x)
    trace = trace.cpu()
    per_token = trace.served.sum(dim=1).numpy()  # (T,) experts that served each token
    return cfg, trace, trace.per_expert(), trace.summary(), per_token


def balanced(name):
    cfg, _, pe, s, _ = run_preset(name)
    assert abs(s["aux_loss"] - 1) < 0.05 and s["cv"] < 0.2 and s["dead_fraction"] == 0


def switch(name):
    cfg, trace, pe, s, _ = run_preset(name)
    assert (pe["served"] <= trace.capacity).all() and (pe["demand"] > trace.capacity).any()
    assert s["dropped_fraction"] > 0.2


def deepseek(name):
    cfg, trace, pe, s, _ = run_preset(name)
    ideal = trace.tokens * cfg.top_k / cfg.n_experts
    _, _, unbiased, _, _ = run_preset(name, expert_bias_hot=0.0)
    assert unbiased["demand"][0] > 2.5 * ideal                   # the logit bias alone: ~3× its share
    assert abs(pe["demand"][0] - ideal) < 0.15 * ideal           # the expert_bias brings it back near ideal
    assert pe["mean_gate"][0] > pe["mean_gate"][1:].max()        # gates from the unbiased (hot) scores
    assert cfg.score == "sigmoid" and cfg.routed_scaling_factor == 2.5


def expert_choice(name):
    cfg, trace, pe, s, per_token = run_preset(name)
    assert (pe["served"] == trace.capacity).all() and abs(s["aux_loss"] - 1) < 1e-6
    assert per_token.mean() == pytest.approx(cfg.top_k)          # K on average
    assert (per_token < cfg.top_k).mean() > 0.1 and (per_token > cfg.top_k).mean() > 0.1  # fewer and more


def identical(name):
    cfg, trace, pe, s, _ = run_preset(name)
    E, K = cfg.n_experts, cfg.top_k
    assert (pe["demand"] > 0).sum() == K and s["dead_fraction"] == pytest.approx(1 - K / E)
    assert s["max_over_mean"] == pytest.approx(E / K)
    assert 1.5 < s["aux_loss"] < E / K
    # the reason: aux = E·Σ f·P with f = 1/K on the chosen experts, and their mean probabilities sum below 1
    probs = trace.probs.double().mean(dim=0).numpy()              # (E,) P_e
    chosen = np.flatnonzero(pe["demand"].to_numpy())
    assert s["aux_loss"] == pytest.approx(E * probs[chosen].sum() / K, rel=1e-4)


def hot(name):
    cfg, trace, pe, s, _ = run_preset(name)
    assert pe["demand"][0] > 0.95 * trace.tokens and s["aux_loss"] > 2


def high_temperature(name):
    cfg, trace, pe, s, _ = run_preset(name)
    probs = trace.probs.double().clamp_min(1e-30)
    entropy = float(-(probs * probs.log()).sum(dim=1).mean())
    assert s["mean_confidence"] < 1.25 and entropy > 0.95 * math.log(cfg.n_experts)


def noisy(name):
    _, trace, pe, s, _ = run_preset(name)
    _, other, _, _, _ = run_preset(name, seed=1)
    assert s["cv"] < 0.2                                          # loads stay balanced
    assert not torch.equal(trace.routed, other.routed)            # routing changes between seeds


def fine_grained(name):
    cfg, trace, pe, s, per_token = run_preset(name)
    assert cfg.n_experts == 64 and cfg.top_k == 6 and (per_token == 6).all()
    assert s["dead_fraction"] > 0                                 # "watch dead experts": there are some


def deepseek_v3(name):
    cfg, trace, pe, s, _ = run_preset(name)
    assert (cfg.n_group, cfg.topk_group, cfg.shared_experts, cfg.score) == (8, 4, 1, "sigmoid")
    groups = trace.routed.view(trace.tokens, 8, 4).any(dim=2).sum(dim=1)  # (T,) groups each token uses
    assert groups.max() <= 4 and (groups == 4).any()
    groups_only = run_preset(name, expert_bias_spread=0.0)[3]["bias_overlap"]
    bias_only = run_preset(name, n_group=1, topk_group=1)[3]["bias_overlap"]
    assert s["bias_overlap"] == pytest.approx(0.75, abs=0.03)
    assert groups_only == pytest.approx(0.88, abs=0.03) and bias_only == pytest.approx(0.79, abs=0.03)
    assert s["topk_margin"] == pytest.approx(0.04, abs=0.01)
    assert s["shared_fraction"] == pytest.approx(0.44, abs=0.03)


def qwen2(name):
    cfg, trace, pe, s, _ = run_preset(name)
    assert cfg.shared_gate and cfg.shared_hidden == 4 * cfg.d_expert and not cfg.normalize_topk
    ungated = run_preset(name, shared_gate=False)[3]
    assert s["shared_fraction"] == pytest.approx(0.59, abs=0.03) and s["shared_fraction"] > 0.5
    assert ungated["shared_fraction"] == pytest.approx(0.74, abs=0.03)
    assert s["shared_output_rms"] == pytest.approx(0.33, abs=0.03)
    assert ungated["shared_output_rms"] == pytest.approx(0.61, abs=0.03)
    assert pe["mean_gate"].mean() == pytest.approx(0.15, abs=0.02) and pe["mean_gate"].max() < 1 / cfg.top_k


def gpt_oss(name):
    cfg, trace, pe, s, _ = run_preset(name)
    silu = run_preset(name, activation="silu")[2]
    clamped = run_preset(name, swiglu_limit=1.0)[2]
    assert pe["output_rms"].mean() == pytest.approx(0.94, abs=0.05)
    assert silu["output_rms"].mean() == pytest.approx(0.62, abs=0.05)
    assert 1.4 < pe["output_rms"].mean() / silu["output_rms"].mean() < 1.6
    assert clamped["output_rms"].mean() == pytest.approx(0.53, abs=0.05)
    assert pe["activation_sparsity"].mean() == pytest.approx(0.05, abs=0.01)
    assert clamped["activation_sparsity"].mean() == pytest.approx(0.19, abs=0.02)


CHECKS = {
    "Balanced top-2 (Mixtral-like)": balanced,
    "Switch top-1 with capacity": switch,
    "DeepSeek-like sigmoid with aux-free bias": deepseek,
    "DeepSeek-V3-like (group-limited, shared expert, sigmoid + bias)": deepseek_v3,
    "Qwen2-MoE (gated shared expert)": qwen2,
    "GPT-OSS-like": gpt_oss,
    "Expert choice": expert_choice,
    "Router collapse: identical tokens": identical,
    "Router collapse: hot expert": hot,
    "High temperature": high_temperature,
    "Noisy gating": noisy,
    "Fine-grained (64 experts, top-6)": fine_grained,
}


def test_every_preset_has_a_check():
    assert set(CHECKS) == set(PRESETS) - {"Custom"}


@pytest.mark.parametrize("name", list(CHECKS))
def test_preset_keeps_its_promise(name):
    CHECKS[name](name)


def test_an_edit_says_modified_and_reset_restores_the_preset():
    import pathlib

    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(pathlib.Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    assert not any("modified" in c.value for c in at.caption)
    at.slider(key="temperature").set_value(3.0).run()
    note = next(c.value for c in at.caption if "**modified**" in c.value)
    assert "temperature" in note and "Balanced top-2" in note
    at.run()  # a full run: the sidebar (and its button) back in AppTest's tree
    at.button(key="reset_preset").click().run()
    assert at.session_state["temperature"] == preset_values("Balanced top-2 (Mixtral-like)")["temperature"]
    assert not any("modified" in c.value for c in at.caption) and not at.exception
