"""Pathways: which experts fire together, and the most frequent expert combinations."""
from __future__ import annotations

import streamlit as st

from dashboard.definitions import caption
from dashboard.figures.router import coactivation_figure, combinations_figure, experts_per_token_figure
from dashboard.result import RunResult
from dashboard.tables import conditional_coactivation, experts_per_token, topk_combinations


def render(result: RunResult) -> None:
    st.subheader("Pathways")
    left, right = st.columns(2)
    with left:
        fig = coactivation_figure(conditional_coactivation(result.trace))
        st.plotly_chart(fig, width="stretch", key="pathways_coactivation")
        st.caption(caption("conditional_coactivation"))
    with right:
        fig = combinations_figure(topk_combinations(result.trace, n=15))
        st.plotly_chart(fig, width="stretch", key="pathways_combinations")
        st.caption(caption("topk_combinations"))
    fig = experts_per_token_figure(experts_per_token(result.trace), result.config.top_k)
    st.plotly_chart(fig, width="stretch", key="pathways_experts_per_token")
    st.caption(caption("experts_per_token"))
