"""The #9 numbers the page shows (shared share, shared RMS, top-k margin, bias overlap), each recomputed here
independently from the layer's own outputs, and the figures that draw them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from moe import MoELayer
from moe.scenarios import make_batch
from dashboard import loaders
from dashboard.figures.colors import expert_colors
from dashboard.figures.core import ROUTING_METRICS, expert_metrics_figure, shared_share_figure
from dashboard.links import spec_from_controls
from dashboard.presets import preset_values
from dashboard.views.kpis import fmt, kpi_values

SMALL = {"d_model": 16, "d_expert": 32, "batch": 2, "seq_len": 32}
DEEPSEEK = "DeepSeek-V3-like (group-limited, shared expert, sigmoid + bias)"


def _layer_and_input(values: dict):
    spec = spec_from_controls(values)
    cfg = spec.config
    x = make_batch(spec.scenario, cfg.d_model, spec.tokens, seed=cfg.seed, **spec.params).x  # (T, D)
    return MoELayer(cfg), x


@pytest.mark.parametrize("preset", [DEEPSEEK, "Qwen2-MoE (gated shared expert)"])
def test_shared_share_and_rms_from_the_layers_outputs(preset):
    values = {**preset_values(preset), **SMALL}
    layer, x = _layer_and_input(values)
    with torch.inference_mode():
        y, _ = layer(x)
        s = layer.shared(x, layer.cfg).double()      # (T, D) the shared part, gate included
    r = y.double() - s                                # (T, D) the routed part
    s_norm, r_norm = s.norm(dim=1).sum(), r.norm(dim=1).sum()
    fraction = float(s_norm / (s_norm + r_norm))
    rms = float(s.square().mean().sqrt())
    shown = loaders.run(spec_from_controls(values))
    assert shown.summary["shared_fraction"] == pytest.approx(fraction, rel=1e-4)
    assert shown.summary["shared_output_rms"] == pytest.approx(rms, rel=1e-4)
    kpis = {label: text for label, text, _ in kpi_values(shown)}
    assert kpis["shared share"] == f"{fmt(100 * fraction)} %" and kpis["shared RMS"] == fmt(rms)
    fig = shared_share_figure(shown.summary["shared_fraction"])
    assert [b.name for b in fig.data] == ["routed experts", "shared experts"]
    assert fig.data[0].x[0] == pytest.approx(1 - fraction, rel=1e-4) and fig.data[1].x[0] == pytest.approx(fraction, rel=1e-4)


def _margins_and_overlap(probs: np.ndarray, routed: np.ndarray, K: int):
    """Per token m_t = (p_(K) − p_(K+1)) / p_(K), and the unbiased top-K set U (lower index on ties)."""
    T, E = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")              # (T, E) largest first, lower index on ties
    ranked = np.take_along_axis(probs, order, axis=1)
    margin = (ranked[:, K - 1] - ranked[:, K]) / ranked[:, K - 1]  # (T,)
    unbiased = np.zeros((T, E), dtype=bool)
    np.put_along_axis(unbiased, order[:, :K], True, axis=1)
    return margin, unbiased


def test_topk_margin_and_bias_overlap_recomputed_from_probs():
    values = {**preset_values(DEEPSEEK), **SMALL}
    shown = loaders.run(spec_from_controls(values))
    trace, K = shown.trace, shown.config.top_k
    probs, routed = trace.probs.double().numpy(), trace.routed.numpy().astype(bool)
    margin, unbiased = _margins_and_overlap(probs, routed, K)
    kept = unbiased & routed
    assert shown.summary["topk_margin"] == pytest.approx(margin.mean(), rel=1e-5)
    assert shown.summary["bias_overlap"] == pytest.approx(kept.sum() / unbiased.sum(), rel=1e-6)
    assert shown.summary["bias_overlap"] < 1                                  # groups and bias moved choices
    per_margin = np.array([margin[routed[:, e]].mean() if routed[:, e].any() else np.nan for e in range(probs.shape[1])])
    per_overlap = np.array([kept[:, e].sum() / unbiased[:, e].sum() if unbiased[:, e].any() else np.nan
                            for e in range(probs.shape[1])])
    pe = shown.per_expert
    np.testing.assert_allclose(pe["topk_margin"].to_numpy(), per_margin, rtol=1e-5)
    np.testing.assert_allclose(pe["bias_overlap"].to_numpy(), per_overlap, rtol=1e-6)
    kpis = {label: text for label, text, _ in kpi_values(shown)}
    assert kpis["top-k margin"] == fmt(margin.mean()) and kpis["bias overlap"] == fmt(kept.sum() / unbiased.sum())
    fig = expert_metrics_figure(pe, expert_colors(shown.config.n_experts), ROUTING_METRICS)
    assert [t.name for t in fig.data] == list(ROUTING_METRICS)
    np.testing.assert_allclose(np.asarray(fig.data[0].y, dtype=float), per_margin, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fig.data[1].y, dtype=float), per_overlap, rtol=1e-6)


def test_without_bias_or_groups_no_overlap_kpi_and_no_shared_kpis():
    shown = loaders.run(spec_from_controls({**preset_values("Balanced top-2 (Mixtral-like)"), **SMALL}))
    labels = [label for label, _, _ in kpi_values(shown)]
    conditional = ["top-k margin", "bias overlap", "shared share", "shared RMS"]
    full = [label for label, _, _ in kpi_values(loaders.run(spec_from_controls({**preset_values(DEEPSEEK), **SMALL})))]
    assert set(conditional) <= set(full)  # bias, groups and a shared expert: all four are shown
    assert labels == [label for label in full if label not in conditional]  # only those four are left out
    assert shown.summary["bias_overlap"] == 1.0  # why it is left out: the router chose the unbiased top-k


def test_router_view_states_both_numbers_with_their_definitions():
    from streamlit.testing.v1 import AppTest

    from dashboard.definitions import caption

    def script():
        from dashboard import loaders
        from dashboard.presets import preset_values
        from dashboard.views import router
        from dashboard.links import spec_from_controls
        router.render(loaders.run(spec_from_controls({**preset_values("Balanced top-2 (Mixtral-like)"),
                                                     "d_model": 16, "d_expert": 32, "batch": 2, "seq_len": 32})))

    at = AppTest.from_function(script, default_timeout=60).run()
    assert not at.exception
    s = loaders.run(spec_from_controls({**preset_values("Balanced top-2 (Mixtral-like)"), **SMALL})).summary
    text = " ".join(m.value for m in at.markdown)
    assert f"top-k margin = {fmt(s['topk_margin'])}" in text and f"bias overlap = {fmt(s['bias_overlap'])}" in text
    assert caption("topk_margin", "bias_overlap") in " ".join(c.value for c in at.caption)


def test_per_sequence_capacity_draws_b_times_c_and_each_sequence_keeps_at_most_c():
    from dashboard.views import load
    values = {**preset_values("Switch top-1 with capacity"), "capacity_scope": "sequence"}
    shown = loaders.run(spec_from_controls(values))
    B, S, C = values["batch"], values["seq_len"], shown.trace.capacity
    assert C == 16                                                          # ceil(1.0 · 128 · 1 / 8)
    served = shown.trace.served.view(B, S, -1).sum(dim=1)                   # (B, E) per sequence
    assert served.max() <= C and (served == C).any()
    assert load.capacity_line(shown) == (B * C, f"capacity B·C ({B} × {C})")
    fig = load.figure(shown, sort=False)
    line = next(t for t in fig.data if t.name and t.name.startswith("capacity"))
    assert list(line.y) == [B * C, B * C] and line.name == f"capacity B·C ({B} × {C}) = {B * C}"
    batch = loaders.run(spec_from_controls(preset_values("Switch top-1 with capacity")))
    assert load.capacity_line(batch) == (64, "capacity C")                  # one C over all T tokens
