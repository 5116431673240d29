"""Contributors: tokens × experts heatmap of ‖gate·y_e(x_t)‖, tokens grouped, binned above the row limit."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard.definitions import caption
from dashboard.figures.core import HEIGHT, token_heatmap_figure
from dashboard.figures.row_groups import unlabelled_note
from dashboard.result import RunResult
from dashboard.tables import heatmap_rows, sorted_token_matrix


def figure(result: RunResult, height: int = HEIGHT + 80) -> tuple[go.Figure, str]:
    """The heatmap, and its notes: the aggregation, and row groups too many to name ("" when neither)."""
    matrix, labels, note, row_groups, sort_text = sorted_token_matrix(
        result.trace, "contributions", result.labels, result.label_names, heatmap_rows(result.config.n_experts))
    title = "Contribution per token and expert" + (" (binned means)" if note else "")
    fig = token_heatmap_figure(matrix, labels, title=title, value_name="contribution", zmin=0.0,
                               uirevision="contributions", row_groups=row_groups, yaxis_title=sort_text,
                               height=height)
    return fig, " ".join(filter(None, (note, unlabelled_note(row_groups, height))))


def captions(note: str) -> None:
    text = caption("contributions", "token_order", "token_heatmap_aggregation")
    st.caption(f"**{note}**  \n{text}" if note else text)


def render(result: RunResult) -> None:
    st.subheader("Contributors")
    fig, note = figure(result)
    st.plotly_chart(fig, width="stretch", key="contributors_heatmap")
    captions(note)
