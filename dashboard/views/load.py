"""Load: demand vs served per expert, against the ideal T·K/E and the capacity C."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import state
from dashboard.definitions import caption
from dashboard.figures.colors import expert_colors
from dashboard.figures.core import HEIGHT, load_figure
from dashboard.result import RunResult

ORDERS = ("expert id", "sorted by demand")
AUTO_SORT_ABOVE = 32  # experts: above this one colour per expert is unreadable, so the sorted view is the default
EXPERT_CHOICE_NOTE = ("expert_choice: every expert takes exactly C tokens (with capacity per sequence, C from each "
                      "of the B sequences: B·C), so demand = served = the capacity line and the load is balanced by "
                      "construction; look at how many experts each token got instead (Pathways).")


def order_control(result: RunResult) -> bool:
    """The expert-order control; True when the load chart is sorted by demand (unselected: sorted above 32)."""
    order = st.segmented_control("Load chart order", ORDERS, key=state.LOAD_ORDER,
                                 help=f"Unselected: sorted by demand when E > {AUTO_SORT_ABOVE}.")
    return order == ORDERS[1] if order else result.config.n_experts > AUTO_SORT_ABOVE


def capacity_line(result: RunResult) -> tuple[int | None, str]:
    """(height, label) of the capacity line: C, or B·C when capacity counts per sequence (B sequences of C each)."""
    C, S = result.trace.capacity, result.seq_len
    if C is None or result.config.capacity_scope != "sequence" or not S:
        return C, "capacity C"
    B = result.trace.tokens // S
    return B * C, f"capacity B·C ({B} × {C})"


def ideal_load(result: RunResult) -> float:
    """T·K/E: every expert's share of the assignments when the load is even (the chart's ideal line)."""
    return result.trace.tokens * result.config.top_k / result.config.n_experts


def figure(result: RunResult, sort: bool, height: int = HEIGHT) -> go.Figure:
    capacity, name = capacity_line(result)
    fig = load_figure(result.per_expert, expert_colors(result.config.n_experts), ideal_load(result), capacity,
                      sort=sort, capacity_name=name)
    return fig.update_layout(height=height)


def caption_keys(result: RunResult) -> list[str]:
    """The definitions the load chart needs: its bars and the lines it draws for this result."""
    keys = ["demand", "served", "dropped", "ideal_load"] + (["capacity"] if result.trace.capacity is not None else [])
    if capacity_line(result)[1] != "capacity C":
        keys.append("capacity_per_sequence")
    return keys


def captions(result: RunResult, sort: bool) -> None:
    st.caption(caption(*caption_keys(result), *(("load_sorted",) if sort else ())))
    if result.config.router == "expert_choice":
        st.caption(EXPERT_CHOICE_NOTE)


def render(result: RunResult) -> None:
    st.subheader("Load")
    sort = order_control(result)
    st.plotly_chart(figure(result, sort), width="stretch", key="load_chart")
    captions(result, sort)
