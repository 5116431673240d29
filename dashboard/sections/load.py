"""Load: demand vs served per expert, against the ideal T·K/E and the capacity C."""
from __future__ import annotations

import streamlit as st

from ..colors import expert_colors
from ..definitions import caption
from ..figures import load_figure
from ..result import RunResult


def render(result: RunResult) -> None:
    st.subheader("Load")
    cfg, trace = result.config, result.trace
    ideal = trace.tokens * cfg.top_k / cfg.n_experts
    fig = load_figure(result.per_expert, expert_colors(cfg.n_experts), ideal, trace.capacity)
    st.plotly_chart(fig, width="stretch", key="load_chart")
    keys = ["demand", "served", "dropped", "ideal_load"] + (["capacity"] if trace.capacity is not None else [])
    st.caption(caption(*keys))
    if cfg.router == "expert_choice":
        st.caption("expert_choice: every expert takes exactly C tokens, so demand = served = C and the load "
                   "is balanced by construction; look at how many experts each token got instead (Pathways).")
