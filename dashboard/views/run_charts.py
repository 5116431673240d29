"""The Runs page's views of one run (issue #17 §5), below the worst (step, layer) and the per-layer heatmap:
layer × expert at one step, percentiles across layers, dead experts over time, hot-expert persistence, and the
per-token views when the log holds tokens. Thin: moe.traces.runstats → a pure figure → the engine's definition.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from moe.traces.log import RoutingLog
from moe.traces.runstats import (co_occurrence, dead_experts, hot_mask, hot_persistence, hot_top_n, layer_percentiles,
                                 slot_usage)

from dashboard.definitions import caption
from dashboard.tables import HEATMAP_MAX_CELLS
from dashboard.figures.colors import expert_colors
from dashboard.figures.runs import (co_occurrence_figure, dead_figure, hot_figure, layer_expert_figure,
                                    percentile_figure, persistence_figure, slot_usage_figure)

TOKENS_SHOWN = 200  # rows of the per-token table


def render_run(log: RoutingLog, layer: str) -> None:
    """Every view of the run; `layer` is the page's chosen layer (the per-layer views follow it)."""
    _layer_expert(log)
    _percentiles(log)
    _dead(log, layer)
    _hot(log, layer)
    if log.tokens is not None:
        _tokens(log, layer)


def _layer_expert(log: RoutingLog) -> None:
    st.markdown("**Layer × expert at one step**")
    steps = [int(v) for v in log.steps]
    step = steps[0] if len(steps) == 1 else st.select_slider("Step", steps, value=steps[-1], key="trace_step")
    if step not in steps:  # a kept value from another run
        step = steps[-1]
    st.plotly_chart(layer_expert_figure(log.counts[steps.index(step)], log.layers, step), width="stretch",
                    key="run_layer_expert_chart")
    st.caption(caption("run_layer_expert"))


def _percentiles(log: RoutingLog) -> None:
    table = layer_percentiles(log.steps, log.counts)
    left, right = st.columns(2)
    left.plotly_chart(percentile_figure(table, "tokens_per_expert"), width="stretch", key="run_pct_tokens_chart")
    right.plotly_chart(percentile_figure(table, "max_over_mean"), width="stretch", key="run_pct_ratio_chart")
    st.caption(caption("run_percentiles"))


def _dead(log: RoutingLog, layer: str) -> None:
    table = dead_experts(log.steps, log.layers, log.counts)
    st.plotly_chart(dead_figure(table, layer), width="stretch", key="run_dead_chart")
    st.caption(caption("run_dead_experts"))


def _hot(log: RoutingLog, layer: str) -> None:
    load, steps, n = log.layer_load(layer), [int(v) for v in log.steps], hot_top_n(log.n_experts)
    table = hot_persistence(load, n)
    left, right = st.columns(2)
    left.plotly_chart(hot_figure(hot_mask(load, n), steps, layer, n), width="stretch", key="run_hot_chart")
    right.plotly_chart(persistence_figure(table, expert_colors(log.n_experts)), width="stretch",
                       key="run_persist_chart")
    longest = table.sort_values(["longest_run", "hot_steps"], ascending=False, kind="stable").head(10)
    st.dataframe(longest, hide_index=True, height=200,
                 column_config={"hot_share": st.column_config.NumberColumn(format="percent")})
    st.caption(caption("run_hot_persistence"))


def _tokens(log: RoutingLog, layer: str) -> None:
    """Slot usage, co-occurrence and the top-k ids of the tokens of one step at the chosen layer."""
    tokens, li = log.tokens, log.layers.index(layer)
    here = tokens.layer == li
    steps = [int(v) for v in np.unique(tokens.step[here])]
    st.markdown(f"**Per-token routing, layer {layer}**")
    if not steps:
        st.caption("The log holds no per-token rows for this layer.")
        return
    step = st.selectbox("Step of the tokens", steps, index=len(steps) - 1, key="trace_token_step")
    if step not in steps:
        step = steps[-1]
    rows = here & (tokens.step == step)
    ids = tokens.ids[rows]                                                    # (N, K)
    left, right = st.columns(2)
    left.plotly_chart(slot_usage_figure(slot_usage(ids, log.n_experts)), width="stretch", key="run_slots_chart")
    if log.n_experts ** 2 <= HEATMAP_MAX_CELLS:
        right.plotly_chart(co_occurrence_figure(co_occurrence(ids, log.n_experts)), width="stretch", key="run_co_chart")
    else:  # its E × E table alone is 2 GB at E = 16,384, and no browser draws it
        right.caption(f"Co-occurrence is not drawn for {log.n_experts} experts: its {log.n_experts ** 2:,} cells are "
                      f"over the {HEATMAP_MAX_CELLS:,} a heatmap here draws.")
    st.caption(caption("run_slot_usage", "run_co_occurrence"))
    table = pd.DataFrame(ids[:TOKENS_SHOWN], columns=[f"slot {k}" for k in range(ids.shape[1])])
    if tokens.weights is not None:
        weights = tokens.weights[rows][:TOKENS_SHOWN]
        for k in range(ids.shape[1]):
            table[f"weight {k}"] = weights[:, k]
    table.insert(0, "token", np.arange(len(table)))
    st.caption(f"Top-k expert ids of the first {len(table)} of {len(ids)} tokens at step {step} (-1: empty slot).")
    st.dataframe(table, hide_index=True, height=200)
