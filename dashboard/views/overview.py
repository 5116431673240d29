"""Overview: the mission's four views at once, as small multiples: load, activation sparsity, output
magnitude and the contributor heatmap; their definitions follow the grid, so the four charts share the
first screen (every other chart is one view away)."""
from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.definitions import caption
from dashboard.figures.colors import expert_colors
from dashboard.figures.core import expert_bar_figure, shared_share_figure
from dashboard.result import RunResult
from dashboard.views import contributors, load

TOP, BOTTOM = 235, 200  # pixels: both rows fit a 1400 × 1000 window under the KPI row, a note line included


def render(result: RunResult) -> None:
    colors = expert_colors(result.config.n_experts)
    sort = st.session_state.get(state.LOAD_ORDER)  # the control is drawn below the grid; read its last value
    sort = sort == load.ORDERS[1] if sort else result.config.n_experts > load.AUTO_SORT_ABOVE
    top, bottom = st.columns(2, gap="small"), st.columns(2, gap="small")
    top[0].plotly_chart(load.figure(result, sort, TOP), width="stretch", key="load_chart")
    heatmap, note = contributors.figure(result, TOP)
    top[1].plotly_chart(heatmap, width="stretch", key="contributors_heatmap")
    for col, column in zip(bottom, ("activation_sparsity", "output_rms")):
        fig = expert_bar_figure(result.per_expert, column, colors, height=BOTTOM)
        col.plotly_chart(fig, width="stretch", key=f"overview_{column}")
    left, right = st.columns(2, gap="small")
    with left:
        if result.config.shared_experts > 0:  # the shared experts' part of the output, next to the routed load
            st.plotly_chart(shared_share_figure(result.summary["shared_fraction"]), width="stretch",
                            key="shared_share")
            st.caption(caption("shared_fraction"))
        load.order_control(result)
        load.captions(result, sort)
        st.caption(caption("activation_sparsity"))
    with right:
        contributors.captions(note)
        st.caption(caption("output_rms"))
