"""Overview: the mission's four views at once, as small multiples: load, activation sparsity, output
magnitude and the contributor heatmap (every other chart is one view away)."""
from __future__ import annotations

import streamlit as st

from ..colors import expert_colors
from ..definitions import caption
from ..figures import expert_bar_figure
from ..result import RunResult
from . import contributors, load

SMALL = 300  # pixels: two rows of small multiples fit the first screen under the KPI row


def _expert_metric(result: RunResult, column: str, key: str) -> None:
    fig = expert_bar_figure(result.per_expert, column, expert_colors(result.config.n_experts), height=SMALL)
    st.plotly_chart(fig, width="stretch", key=key)
    st.caption(caption(column))


def render(result: RunResult) -> None:
    top = st.columns(2, gap="medium")
    with top[0]:
        load.render(result, height=SMALL)
    with top[1]:
        contributors.render(result, height=SMALL + 34)  # the load view's order control sits above its chart
    bottom = st.columns(2, gap="medium")
    with bottom[0]:
        _expert_metric(result, "activation_sparsity", "overview_sparsity")
    with bottom[1]:
        _expert_metric(result, "output_rms", "overview_output_rms")
