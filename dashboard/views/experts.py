"""Experts: what each expert does with the tokens it serves, and who contributes most."""
from __future__ import annotations

import streamlit as st

from moe.experts import sparsity_rule

from dashboard.definitions import caption
from dashboard.figures.colors import expert_colors
from dashboard.figures.core import EXPERT_METRICS, ROUTING_METRICS, expert_bar_figure, expert_metrics_figure
from dashboard.result import RunResult
from dashboard.tables import routing_nmi
from dashboard.views.kpis import fmt


def render(result: RunResult) -> None:
    """Every per-expert metric side by side, and the top contributors."""
    st.subheader("Experts")
    colors = expert_colors(result.config.n_experts)
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(expert_metrics_figure(result.per_expert, colors), width="stretch", key="experts_metrics")
        st.caption(caption(*EXPERT_METRICS))
        if result.labels is not None:
            nmi = routing_nmi(result.trace, result.labels)
            st.markdown(f"Routing specialisation **NMI(topic; expert) = {fmt(nmi)}**")
            st.caption(caption("routing_nmi"))
        st.caption(f"activation_sparsity shown: {sparsity_rule(result.config)}.")
        fig = expert_metrics_figure(result.per_expert, colors, ROUTING_METRICS)
        st.plotly_chart(fig, width="stretch", key="experts_routing")
        st.caption(caption(*ROUTING_METRICS))
    with right:
        fig = expert_bar_figure(result.per_expert, "contribution", colors, ranked=True)
        st.plotly_chart(fig, width="stretch", key="experts_contribution")
        st.caption(caption("contribution", "contributions"))
