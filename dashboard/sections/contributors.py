"""Contributors: tokens × experts heatmap of ‖gate·y_e(x_t)‖, tokens grouped, binned above the row limit."""
from __future__ import annotations

import streamlit as st

from ..definitions import caption
from ..figures import HEIGHT, token_heatmap_figure
from ..result import RunResult
from ..tables import heatmap_rows, sorted_token_matrix


def render(result: RunResult, height: int = HEIGHT + 80) -> None:
    st.subheader("Contributors")
    trace = result.trace
    matrix, labels, note, row_groups, sort_text = sorted_token_matrix(
        trace, "contributions", result.labels, result.label_names, heatmap_rows(result.config.n_experts))
    title = "Contribution per token and expert" + (" (binned means)" if note else "")
    fig = token_heatmap_figure(matrix, labels, title=title, value_name="contribution", zmin=0.0,
                               uirevision="contributions", row_groups=row_groups, yaxis_title=sort_text,
                               height=height)
    st.plotly_chart(fig, width="stretch", key="contributors_heatmap")
    text = caption("contributions", "token_order", "token_heatmap_aggregation")
    st.caption(f"**{note}**  \n{text}" if note else text)
