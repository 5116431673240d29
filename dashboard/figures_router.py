"""Pure figure builders for the router, pathways, scenario and token inspector views.

Same contract as `dashboard.figures`: tables in, `go.Figure` out, inputs never mutated.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import HEIGHT, IDEAL_COLOR, expert_axis, style

FADED = 0.3


def logits_figure(quantiles: pd.DataFrame, colors: list[str], z_loss: float) -> go.Figure:
    """Each expert's router-logit spread: box q1..q3 in its colour, median dot, whiskers min..max."""
    q = {c: quantiles[c].to_numpy(dtype=float) for c in ("min", "q1", "median", "q3", "max")}
    experts = quantiles["expert"].to_numpy()
    stats = quantiles[["min", "q1", "median", "q3", "max", "mean", "std"]].to_numpy()  # (E, 7) for hover
    hover = ("expert %{x}<br>min %{customdata[0]:.6g}<br>q1 %{customdata[1]:.6g}<br>median %{customdata[2]:.6g}"
             "<br>q3 %{customdata[3]:.6g}<br>max %{customdata[4]:.6g}<br>mean %{customdata[5]:.6g}"
             "<br>std %{customdata[6]:.6g}<extra></extra>")
    fig = go.Figure([
        go.Bar(x=experts, y=q["q3"] - q["q1"], base=q["q1"], name="q1–q3", customdata=stats,
               marker=dict(color=colors, opacity=0.75), hovertemplate=hover),
        go.Scatter(x=experts, y=q["median"], mode="markers", name="median (whiskers: min–max)",
                   customdata=stats, marker=dict(color=IDEAL_COLOR, size=6, symbol="line-ew-open"),
                   error_y=dict(type="data", symmetric=False, array=q["max"] - q["median"],
                                arrayminus=q["median"] - q["min"], color=IDEAL_COLOR, thickness=1, width=3),
                   hovertemplate=hover),
    ])
    style(fig, title=f"Router logits per expert (z-loss = {z_loss:.4g})", xaxis_title="expert",
          yaxis_title="router logit", uirevision="logits")
    expert_axis(fig, len(experts))
    return fig


def coactivation_figure(conditional: pd.DataFrame) -> go.Figure:
    """P(j | i) as an E × E heatmap: row i = the expert given, column j = the expert also serving."""
    E = conditional.shape[0]
    fig = go.Figure(go.Heatmap(
        z=conditional.to_numpy(), x=np.arange(E), y=np.arange(E), zmin=0.0, zmax=1.0, colorscale="Blues",
        colorbar=dict(title=dict(text="P(j | i)")),
        hovertemplate="P(j = %{x} | i = %{y}) = %{z:.4f}<extra></extra>"))
    style(fig, title="Co-activation P(j | i)", xaxis_title="expert j (also served)",
          yaxis_title="expert i (given)", uirevision="coactivation", height=HEIGHT + 80)
    fig.update_yaxes(autorange="reversed")
    expert_axis(fig, E)
    return fig


def combinations_figure(combos: pd.DataFrame) -> go.Figure:
    """The most frequent served expert sets as horizontal bars, the most frequent on top."""
    fig = go.Figure(go.Bar(
        x=combos["count"].to_numpy(), y=combos["label"].tolist(), orientation="h", name="tokens",
        marker=dict(color="#4c78a8"),
        customdata=combos[["share"]].to_numpy(),
        hovertemplate="experts %{y}<br>%{x} tokens (share %{customdata[0]:.4f})<extra></extra>"))
    style(fig, title="Most frequent expert combinations", xaxis_title="tokens", yaxis_title="served experts",
          uirevision="combinations", height=max(HEIGHT, 22 * len(combos) + 100))
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def cluster_share_figure(share: pd.DataFrame) -> go.Figure:
    """Cluster × expert share of each cluster's served assignments (rows sum to 1)."""
    E = share.shape[1]
    fig = go.Figure(go.Heatmap(
        z=share.to_numpy(), x=np.arange(E), y=[str(c) for c in share.index], zmin=0.0, zmax=1.0,
        colorscale="Blues", colorbar=dict(title=dict(text="share")),
        hovertemplate="cluster %{y}<br>expert %{x}<br>share %{z:.4f}<extra></extra>"))
    style(fig, title="Where each cluster's tokens go", xaxis_title="expert", yaxis_title="cluster",
          uirevision="clusters", height=max(HEIGHT - 60, 40 * len(share) + 140))
    fig.update_yaxes(type="category", autorange="reversed")
    expert_axis(fig, E)
    return fig


def token_inspector_figure(detail: pd.DataFrame, colors: list[str], token: int) -> go.Figure:
    """Token t: router probability per expert (top; solid = served, hatched = dropped, faded = not chosen,
    diamond = gate) and each expert's contribution ‖gate·y_e(x_t)‖ (bottom)."""
    experts = detail["expert"].to_numpy()
    routed, served = detail["routed"].to_numpy(), detail["served"].to_numpy()
    state = np.where(served, "served", np.where(routed, "dropped", "not chosen"))
    custom = np.empty((len(detail), 3), dtype=object)  # (E, 3): numbers stay numbers for the hover format
    custom[:, 0], custom[:, 1], custom[:, 2] = detail["logit"].to_numpy(), detail["gate"].to_numpy(), state
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    fig.add_trace(go.Bar(
        x=experts, y=detail["prob"].to_numpy(), name="router probability", customdata=custom,
        marker=dict(color=colors, opacity=np.where(routed, 1.0, FADED).tolist(),
                    pattern=dict(shape=np.where(routed & ~served, "x", "").tolist())),
        hovertemplate=("expert %{x}: %{customdata[2]}<br>prob %{y:.6g}<br>logit %{customdata[0]:.6g}"
                       "<br>gate %{customdata[1]:.6g}<extra></extra>")), row=1, col=1)
    on = served.nonzero()[0]
    fig.add_trace(go.Scatter(
        x=experts[on], y=detail["gate"].to_numpy()[on], mode="markers", name="gate (served)",
        marker=dict(symbol="diamond", size=9, color=IDEAL_COLOR),
        hovertemplate="expert %{x}<br>gate %{y:.6g}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(
        x=experts, y=detail["contribution"].to_numpy(), name="contribution", showlegend=False,
        marker=dict(color=colors), hovertemplate="expert %{x}<br>contribution %{y:.6g}<extra></extra>"),
        row=2, col=1)
    style(fig, title=f"Token {token}", xaxis_title="", yaxis_title="probability / gate",
          uirevision="inspector", height=HEIGHT + 100)
    fig.update_xaxes(title_text="expert", row=2, col=1)
    fig.update_yaxes(title_text="contribution", row=2, col=1)
    expert_axis(fig, len(detail), row=1, col=1)
    expert_axis(fig, len(detail), row=2, col=1)
    return fig
