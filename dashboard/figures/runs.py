"""Pure figure builders for a run on the Runs page: layer × expert at one step, percentiles across layers, dead
experts over time, hot-expert persistence, slot usage and co-occurrence of per-token ids.

Arrays and tidy frames in (moe.traces.runstats computes them), `go.Figure` out: no Streamlit, no I/O, no forward.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.figures.core import IDEAL_COLOR, NEUTRAL_COLOR, axis, layout
from dashboard.figures.parallel import trace_step_axis

STAT_TITLES = {"tokens_per_expert": "Tokens per expert across layers", "max_over_mean": "max/mean across layers"}
QUANTILE_STYLE = {"p50": dict(color=NEUTRAL_COLOR, dash="solid"), "p95": dict(color="#ff7f0e", dash="dash"),
                  "max": dict(color="#d62728", dash="dot")}


def layer_expert_figure(counts: np.ndarray, layers: list[str], step: int) -> go.Figure:
    """Layer × expert heatmap of the tokens each expert received at one step (counts (L, E))."""
    counts = np.asarray(counts)
    L, E = counts.shape
    heat = go.Heatmap(z=counts, x=list(range(E)), y=[str(x) for x in layers], colorscale="Blues",
                      hovertemplate="layer %{y}, expert %{x}: %{z} tokens<extra></extra>",
                      colorbar=dict(title=dict(text="tokens")))
    return go.Figure([heat], layout(title=f"Tokens per layer and expert, step {step}", xaxis=axis("expert"),
                                    yaxis=axis("layer", type="category", autorange="reversed"),
                                    uirevision="run_layer_expert", colorbar=True))


def percentile_figure(table: pd.DataFrame, stat: str) -> go.Figure:
    """p50 / p95 / max over steps of one statistic (`stat` rows of runstats.layer_percentiles)."""
    rows = table[table["stat"] == stat]
    data = [go.Scatter(x=rows["step"], y=rows[q], mode="lines+markers" if len(rows) < 50 else "lines", name=q,
                       line=dict(width=2, **style), hovertemplate="step %{x}: %{y:.3f}<extra>" + q + "</extra>")
            for q, style in QUANTILE_STYLE.items()]
    return go.Figure(data, layout(title=STAT_TITLES[stat], xaxis=axis("step"),
                                  yaxis=axis("tokens" if stat == "tokens_per_expert" else "max/mean"),
                                  uirevision=f"run_pct_{stat}"))


def dead_figure(dead: pd.DataFrame, layer: str) -> go.Figure:
    """Dead experts per step: the chosen layer's count and the mean over layers (runstats.dead_experts rows)."""
    mine = dead[dead["layer"] == layer]
    mean = dead.groupby("step", sort=True)["dead"].mean()
    data = [go.Scatter(x=mine["step"], y=mine["dead"], mode="lines", name=f"layer {layer}", line_shape="hv",
                       line=dict(color=NEUTRAL_COLOR, width=2), hovertemplate="step %{x}: %{y} dead<extra></extra>"),
            go.Scatter(x=mean.index, y=mean.to_numpy(), mode="lines", name="mean over layers", line_shape="hv",
                       line=dict(color=IDEAL_COLOR, dash="dash", width=1.5),
                       hovertemplate="step %{x}: %{y:.2f} dead<extra>mean</extra>")]
    return go.Figure(data, layout(title="Dead experts (no token) per step", xaxis=axis("step"),
                                  yaxis=axis("experts", rangemode="tozero"), uirevision="run_dead"))


def hot_figure(mask: np.ndarray, steps: list[int], layer: str, top_n: int) -> go.Figure:
    """Step × expert map of when each expert is hot (runstats.hot_mask), so runs read as vertical bars."""
    mask = np.asarray(mask, dtype=np.int8)
    S, E = mask.shape
    heat = go.Heatmap(z=mask, x=list(range(E)), y=list(steps), zmin=0, zmax=1, showscale=False,
                      colorscale=[[0, "#f7f7f7"], [1, "#d62728"]],
                      hovertemplate="step %{y}, expert %{x}: hot %{z}<extra></extra>")
    return go.Figure([heat], layout(title=f"Hot experts (top {top_n} by tokens), layer {layer}", xaxis=axis("expert"),
                                    yaxis=trace_step_axis(steps), uirevision="run_hot", showlegend=False))


def persistence_figure(table: pd.DataFrame, colors: list[str]) -> go.Figure:
    """Longest run of consecutive hot steps per expert (bars in the expert's colour); hot share in the hover."""
    bar = go.Bar(x=table["expert"], y=table["longest_run"], marker_color=[colors[e] for e in table["expert"]],
                 customdata=np.stack([table["hot_share"], table["current_run"]], axis=1),
                 hovertemplate="expert %{x}: longest run %{y} steps, hot %{customdata[0]:.0%} of steps, current "
                               "run %{customdata[1]}<extra></extra>")
    return go.Figure([bar], layout(title="Hot experts per step (top ⌈E/10⌉): longest run of hot steps",
                                   xaxis=axis("expert"), yaxis=axis("steps", rangemode="tozero"),
                                   uirevision="run_persist", showlegend=False))


def slot_usage_figure(usage: np.ndarray) -> go.Figure:
    """Slot × expert heatmap: tokens whose k-th choice is expert e (runstats.slot_usage)."""
    usage = np.asarray(usage)
    K, E = usage.shape
    heat = go.Heatmap(z=usage, x=list(range(E)), y=[f"slot {k}" for k in range(K)], colorscale="Blues",
                      hovertemplate="%{y}, expert %{x}: %{z} tokens<extra></extra>",
                      colorbar=dict(title=dict(text="tokens")))
    return go.Figure([heat], layout(title="Slot usage: each token's k-th expert", xaxis=axis("expert"),
                                    yaxis=axis("slot", type="category", autorange="reversed"),
                                    uirevision="run_slots", colorbar=True,
                                    row_labels=True))


def co_occurrence_figure(co: np.ndarray) -> go.Figure:
    """Expert × expert heatmap of tokens that chose both (runstats.co_occurrence)."""
    co = np.asarray(co)
    E = co.shape[0]
    heat = go.Heatmap(z=co, x=list(range(E)), y=list(range(E)), colorscale="Purples",
                      hovertemplate="experts %{y} and %{x}: %{z} tokens<extra></extra>",
                      colorbar=dict(title=dict(text="tokens")))
    return go.Figure([heat], layout(title="Co-occurrence: tokens that chose both experts", xaxis=axis("expert"),
                                    yaxis=axis("expert", autorange="reversed"), uirevision="run_co", colorbar=True))
