"""Load: demand vs served per expert, against the ideal T·K/E and the capacity C."""
from __future__ import annotations

import streamlit as st

from ..colors import expert_colors
from ..definitions import caption
from ..figures import HEIGHT, load_figure
from ..result import RunResult

ORDERS = ("expert id", "sorted by demand")
AUTO_SORT_ABOVE = 32  # experts: above this, one bar colour per expert is unreadable and the sorted view is the default


def render(result: RunResult, height: int = HEIGHT) -> None:
    st.subheader("Load")
    cfg, trace = result.config, result.trace
    order = st.segmented_control("Expert order", ORDERS, key="load_order", label_visibility="collapsed",
                                 help=f"Unselected: sorted when E > {AUTO_SORT_ABOVE}.")
    sort = order == ORDERS[1] if order else cfg.n_experts > AUTO_SORT_ABOVE
    ideal = trace.tokens * cfg.top_k / cfg.n_experts
    fig = load_figure(result.per_expert, expert_colors(cfg.n_experts), ideal, trace.capacity, sort=sort)
    fig.update_layout(height=height)
    st.plotly_chart(fig, width="stretch", key="load_chart")
    keys = ["demand", "served", "dropped", "ideal_load"] + (["capacity"] if trace.capacity is not None else [])
    st.caption(caption(*keys, *(("load_sorted",) if sort else ())))
    if cfg.router == "expert_choice":
        st.caption("expert_choice: every expert takes exactly C tokens, so demand = served = C and the load "
                   "is balanced by construction; look at how many experts each token got instead (Pathways).")
