"""Contributors: tokens × experts heatmap of ‖gate·y_e(x_t)‖, binned above the row limit."""
from __future__ import annotations

import streamlit as st

from ..definitions import caption
from ..figures import token_heatmap_figure
from ..result import RunResult
from ..tables import contribution_matrix, heatmap_rows


def render(result: RunResult) -> None:
    st.subheader("Contributors")
    matrix, labels, note = contribution_matrix(result.trace, heatmap_rows(result.config.n_experts))
    title = "Contribution per token and expert" + (" (binned means)" if note else "")
    fig = token_heatmap_figure(matrix, labels, title=title, value_name="contribution", zmin=0.0,
                               uirevision="contributions")
    st.plotly_chart(fig, width="stretch", key="contributors_heatmap")
    text = caption("contributions", "token_heatmap_aggregation")
    st.caption(f"**{note}**  \n{text}" if note else text)
