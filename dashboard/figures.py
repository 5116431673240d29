"""Pure figure builders for load, expert metrics, token heatmaps and histograms.

Tables in, `go.Figure` out: no Streamlit, no I/O, no forward, inputs never mutated. Every
per-expert chart takes `colors` (from `dashboard.colors.expert_colors`) so expert e has one colour
on the whole page; `uirevision` keeps the user's zoom across reruns.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

HEIGHT = 340
DEMAND_OPACITY = 0.35
IDEAL_COLOR = "#444444"
CAPACITY_COLOR = "#d62728"
EXPERT_METRICS = ("activation_sparsity", "output_rms", "mean_gate", "specialization")
METRIC_TITLES = {
    "demand": "demand (assignments)", "served": "served (assignments)", "dropped": "dropped (assignments)",
    "load_share": "load share", "utilization": "utilization", "activation_sparsity": "activation sparsity",
    "output_rms": "output RMS", "mean_gate": "mean gate", "contribution": "contribution (Σ‖gate·y‖)",
    "specialization": "specialization (1 − cos)",
}


def style(fig: go.Figure, *, title: str, xaxis_title: str, yaxis_title: str, uirevision: str,
          height: int = HEIGHT) -> go.Figure:
    """The layout every chart shares: white template, compact margins, horizontal legend, kept zoom."""
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left"), template="plotly_white", height=height,
        margin=dict(l=60, r=20, t=50, b=50), uirevision=uirevision, bargap=0.15,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        xaxis_title=xaxis_title, yaxis_title=yaxis_title)
    return fig


def expert_axis(fig: go.Figure, n_experts: int, **selector) -> None:
    """Integer ticks at every expert when they fit, automatic ticks otherwise."""
    if n_experts <= 32:
        fig.update_xaxes(tickmode="linear", tick0=0, dtick=1, **selector)
    fig.update_xaxes(range=[-0.5, n_experts - 0.5], **selector)


def _hline(x0: float, x1: float, y: float, name: str, color: str, dash: str) -> go.Scatter:
    """A horizontal reference line as a trace, so it shows in the legend and on hover."""
    return go.Scatter(x=[x0, x1], y=[y, y], mode="lines", name=name, line=dict(color=color, dash=dash, width=2),
                      hovertemplate=f"{name}<extra></extra>")


def load_figure(per_expert: pd.DataFrame, colors: list[str], ideal: float,
                capacity: int | None = None) -> go.Figure:
    """Demand (faded) and served (solid) per expert, the ideal line T·K/E and the capacity line C."""
    E = len(per_expert)
    experts = per_expert["expert"].to_numpy()
    extra = per_expert[["demand", "served", "dropped"]].to_numpy()  # (E, 3) for hover
    hover = ("expert %{x}<br>demand %{customdata[0]}<br>served %{customdata[1]}"
             "<br>dropped %{customdata[2]}<extra></extra>")
    fig = go.Figure([
        go.Bar(x=experts, y=per_expert["demand"].to_numpy(), name="demand (routed)", customdata=extra,
               marker=dict(color=colors, opacity=DEMAND_OPACITY, line=dict(color=colors, width=1.5)),
               hovertemplate=hover),
        go.Bar(x=experts, y=per_expert["served"].to_numpy(), name="served", customdata=extra,
               marker=dict(color=colors), hovertemplate=hover),
        _hline(-0.5, E - 0.5, ideal, f"ideal T·K/E = {ideal:.6g}", IDEAL_COLOR, "dash"),
    ])
    if capacity is not None:
        fig.add_trace(_hline(-0.5, E - 0.5, float(capacity), f"capacity C = {capacity}", CAPACITY_COLOR, "dot"))
    fig.update_layout(barmode="group")
    style(fig, title="Demand vs served per expert", xaxis_title="expert", yaxis_title="assignments",
          uirevision="load")
    expert_axis(fig, E)
    return fig


def expert_bar_figure(per_expert: pd.DataFrame, column: str, colors: list[str], *, ranked: bool = False,
                      title: str | None = None) -> go.Figure:
    """One per_expert column as bars in expert colours; ranked=True sorts experts by value, largest first."""
    label = METRIC_TITLES.get(column, column)
    frame = per_expert[["expert", column]]
    if ranked:
        frame = frame.sort_values(column, ascending=False, kind="stable", na_position="last")
    experts = frame["expert"].to_numpy()
    fig = go.Figure(go.Bar(
        x=[str(e) for e in experts] if ranked else experts, y=frame[column].to_numpy(dtype=float), name=label,
        marker=dict(color=[colors[int(e)] for e in experts]),
        hovertemplate=f"expert %{{x}}<br>{column} %{{y:.6g}}<extra></extra>"))
    style(fig, title=title or (f"Top contributors: {label}" if ranked else label),
          xaxis_title="expert (ranked)" if ranked else "expert", yaxis_title=label, uirevision=f"expert-{column}")
    if ranked:
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=[str(e) for e in experts])
    else:
        expert_axis(fig, len(per_expert))
    return fig


def expert_metrics_figure(per_expert: pd.DataFrame, colors: list[str],
                          metrics: tuple[str, ...] = EXPERT_METRICS) -> go.Figure:
    """A grid of per-expert bar charts (two columns), one subplot per metric, in one light figure."""
    rows = math.ceil(len(metrics) / 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[METRIC_TITLES.get(m, m) for m in metrics],
                        horizontal_spacing=0.1, vertical_spacing=0.18)
    experts = per_expert["expert"].to_numpy()
    for i, metric in enumerate(metrics):
        row, col = i // 2 + 1, i % 2 + 1
        fig.add_trace(go.Bar(x=experts, y=per_expert[metric].to_numpy(dtype=float), name=metric,
                             showlegend=False, marker=dict(color=colors),
                             hovertemplate=f"expert %{{x}}<br>{metric} %{{y:.6g}}<extra></extra>"),
                      row=row, col=col)
        fig.update_xaxes(title_text="expert", row=row, col=col)
        fig.update_yaxes(title_text=metric, row=row, col=col)
        expert_axis(fig, len(per_expert), row=row, col=col)
    fig.update_layout(template="plotly_white", height=250 * rows + 60, uirevision="expert-metrics",
                      margin=dict(l=60, r=20, t=40, b=40), bargap=0.15)
    return fig


def token_heatmap_figure(matrix: np.ndarray, row_labels: list[str], *, title: str, value_name: str,
                         colorscale: str = "Viridis", zmin: float | None = None,
                         zmax: float | None = None, uirevision: str = "heatmap") -> go.Figure:
    """Tokens (or token bins) × experts; row labels name the token or the bin's token range."""
    fig = go.Figure(go.Heatmap(
        z=np.asarray(matrix, dtype=np.float32),  # float32: half the bytes to send, same hover digits
        x=np.arange(matrix.shape[1]), y=row_labels, colorscale=colorscale, zmin=zmin, zmax=zmax,
        colorbar=dict(title=dict(text=value_name)),
        hovertemplate=f"token %{{y}}<br>expert %{{x}}<br>{value_name} %{{z:.6g}}<extra></extra>"))
    style(fig, title=title, xaxis_title="expert", yaxis_title="token", uirevision=uirevision,
          height=HEIGHT + 80)
    fig.update_yaxes(autorange="reversed", type="category", showticklabels=len(row_labels) <= 40)
    expert_axis(fig, matrix.shape[1])
    return fig


def histogram_figure(hist: pd.DataFrame, *, title: str, xaxis_title: str, color: str = "#4c78a8",
                     log_x: bool = False, reference: float | None = None,
                     reference_name: str = "") -> go.Figure:
    """Pre-binned counts (left, right, count) as bars; log_x draws the bins on a log10 axis."""
    left, right = hist["left"].to_numpy(), hist["right"].to_numpy()
    fx = np.log10 if log_x else (lambda v: v)
    x0, x1 = fx(left), fx(right)
    fig = go.Figure(go.Bar(
        x=(x0 + x1) / 2, y=hist["count"].to_numpy(), width=x1 - x0, name="tokens", marker=dict(color=color),
        customdata=np.stack([left, right], axis=1),
        hovertemplate="[%{customdata[0]:.4g}, %{customdata[1]:.4g})<br>%{y} tokens<extra></extra>"))
    if reference is not None:
        top = float(hist["count"].max()) if len(hist) else 1.0
        fig.add_trace(go.Scatter(x=[fx(reference)] * 2, y=[0, max(top, 1.0)], mode="lines", name=reference_name,
                                 line=dict(color=IDEAL_COLOR, dash="dash"),
                                 hovertemplate=f"{reference_name}<extra></extra>"))
    style(fig, title=title, xaxis_title=xaxis_title, yaxis_title="tokens", uirevision=title)
    fig.update_layout(bargap=0)
    if log_x:
        ticks = [v for v in (1, 2, 5, 10, 20, 50, 100) if left.min() <= v <= right.max()] if len(hist) else []
        fig.update_xaxes(tickmode="array", tickvals=[math.log10(v) for v in ticks], ticktext=[str(v) for v in ticks])
    return fig
