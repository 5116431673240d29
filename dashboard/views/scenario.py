"""Scenario: where each topic's tokens go, when the input scenario has labels."""
from __future__ import annotations

import streamlit as st

from dashboard.definitions import caption
from dashboard.figures.router import cluster_share_figure
from dashboard.result import RunResult
from dashboard.tables import cluster_share, routing_nmi
from dashboard.views.kpis import fmt


def render(result: RunResult) -> None:
    st.subheader("Scenario")
    if result.labels is None:
        st.info(f"The '{result.scenario}' scenario has no topic labels, so there is no cluster × expert view. "
                "Pick the 'clusters' or 'drifting' scenario to see how each topic is routed.")
        return
    share = cluster_share(result.trace, result.labels, result.label_names)
    st.plotly_chart(cluster_share_figure(share), width="stretch", key="scenario_clusters")
    st.caption(caption("cluster_share"))
    st.markdown(f"Routing specialisation **NMI(topic; expert) = {fmt(routing_nmi(result.trace, result.labels))}**")
    st.caption(caption("routing_nmi"))
