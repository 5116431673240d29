"""Experts: what each expert does with the tokens it serves, and who contributes most."""
from __future__ import annotations

import streamlit as st

from moe.experts import sparsity_rule

from ..colors import expert_colors
from ..definitions import caption
from ..figures import EXPERT_METRICS, METRIC_TITLES, expert_bar_figure, expert_metrics_figure
from ..result import RunResult

# The one-chart view of the overview: a metric at a time keeps the default page light to redraw.
OVERVIEW_METRICS = ("contribution", *EXPERT_METRICS)


def render_one(result: RunResult) -> None:
    """One per-expert metric, chosen with a segmented control (contribution is ranked)."""
    st.subheader("Experts")
    metric = st.segmented_control("Metric", OVERVIEW_METRICS, key="overview_metric", default="contribution",
                                  format_func=lambda m: METRIC_TITLES.get(m, m), label_visibility="collapsed")
    metric = metric or "contribution"  # a second click deselects: fall back to the default
    fig = expert_bar_figure(result.per_expert, metric, expert_colors(result.config.n_experts),
                            ranked=metric == "contribution")
    st.plotly_chart(fig, width="stretch", key="overview_expert_metric")
    st.caption(caption(metric, *(("contributions",) if metric == "contribution" else ())))
    if metric == "activation_sparsity":
        st.caption(f"Shown: {sparsity_rule(result.config)}.")


def render(result: RunResult) -> None:
    """Every per-expert metric side by side, and the top contributors."""
    st.subheader("Experts")
    colors = expert_colors(result.config.n_experts)
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(expert_metrics_figure(result.per_expert, colors), width="stretch", key="experts_metrics")
        st.caption(caption(*EXPERT_METRICS))
        st.caption(f"activation_sparsity shown: {sparsity_rule(result.config)}.")
    with right:
        fig = expert_bar_figure(result.per_expert, "contribution", colors, ranked=True)
        st.plotly_chart(fig, width="stretch", key="experts_contribution")
        st.caption(caption("contribution", "contributions"))
