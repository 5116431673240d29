"""Pure figure builders for the router, pathways, scenario and token inspector views.

Same contract as `dashboard.figures.core`: tables in, `go.Figure` out, inputs never mutated.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.figures.core import HEIGHT, IDEAL_COLOR, NEUTRAL_COLOR, axis, expert_xaxis, layout

FADED = 0.3


def logits_figure(quantiles: pd.DataFrame, colors: list[str], z_loss: float) -> go.Figure:
    """Each expert's router-logit spread: box q1..q3 in its colour, median tick, whiskers min..max."""
    q = {c: quantiles[c].to_numpy(dtype=float) for c in ("min", "q1", "median", "q3", "max")}
    experts = quantiles["expert"].to_numpy()
    stats = quantiles[["min", "q1", "median", "q3", "max", "mean", "std"]].to_numpy()  # (E, 7) for hover
    hover = ("expert %{x}<br>min %{customdata[0]:.6g}<br>q1 %{customdata[1]:.6g}<br>median %{customdata[2]:.6g}"
             "<br>q3 %{customdata[3]:.6g}<br>max %{customdata[4]:.6g}<br>mean %{customdata[5]:.6g}"
             "<br>std %{customdata[6]:.6g}<extra></extra>")
    data = [
        go.Bar(x=experts, y=q["q3"] - q["q1"], base=q["q1"], name="q1–q3", customdata=stats,
               marker=dict(color=colors, opacity=0.75), hovertemplate=hover),
        go.Scatter(x=experts, y=q["median"], mode="markers", name="median (whiskers: min–max)",
                   customdata=stats, marker=dict(color=IDEAL_COLOR, size=10, symbol="line-ew-open"),
                   error_y=dict(type="data", symmetric=False, array=q["max"] - q["median"],
                                arrayminus=q["median"] - q["min"], color=IDEAL_COLOR, thickness=1, width=3),
                   hovertemplate=hover),
    ]
    return go.Figure(data, layout(title=f"Router logits per expert (z-loss = {z_loss:.4g})",
                                  xaxis=expert_xaxis(len(experts)), yaxis=axis("router logit"),
                                  uirevision="logits"))


def coactivation_figure(conditional: pd.DataFrame) -> go.Figure:
    """P(j | i) as an E × E heatmap: row i = the expert given, column j = the expert also serving.
    The diagonal (P(i | i) = 1 by definition) is left blank and the colour scale spans the off-diagonal
    values, so the diagonal does not flatten everything else."""
    E = conditional.shape[0]
    z = conditional.to_numpy(dtype=float, copy=True)  # (E, E)
    np.fill_diagonal(z, np.nan)
    off = z[np.isfinite(z)]
    zmax = float(off.max()) if off.size and off.max() > 0 else 1.0
    heat = go.Heatmap(
        z=z, x=np.arange(E), y=np.arange(E), zmin=0.0, zmax=zmax, colorscale="Blues",
        colorbar=dict(title=dict(text="P(j | i)")),
        hovertemplate="P(j = %{x} | i = %{y}) = %{z:.4f}<extra></extra>")
    yaxis = expert_xaxis(E, "expert i (given)", autorange="reversed")
    yaxis.pop("range")  # autorange reversed puts expert 0 on top
    return go.Figure([heat], layout(title="Co-activation P(j | i), diagonal blank",
                                    xaxis=expert_xaxis(E, "expert j (also served)"), yaxis=yaxis,
                                    uirevision="coactivation", height=HEIGHT + 80, showlegend=False, colorbar=True))


def experts_per_token_figure(table: pd.DataFrame, top_k: int) -> go.Figure:
    """Tokens by the number of experts that served them, with a dashed line at K."""
    top = float(table["tokens"].max()) if len(table) else 1.0
    data = [go.Bar(x=table["n"].to_numpy(), y=table["tokens"].to_numpy(), name="tokens",
                   marker=dict(color=NEUTRAL_COLOR), customdata=table[["share"]].to_numpy(),
                   hovertemplate="%{x} experts: %{y} tokens (share %{customdata[0]:.4f})<extra></extra>"),
            go.Scatter(x=[top_k, top_k], y=[0, max(top, 1.0)], mode="lines", name=f"K = {top_k}",
                       line=dict(color=IDEAL_COLOR, dash="dash"), hovertemplate=f"K = {top_k}<extra></extra>")]
    xaxis = axis("experts that served the token", tickmode="linear", tick0=0, dtick=1,
                 range=[-0.5, len(table) - 0.5])
    return go.Figure(data, layout(title="Experts per token", xaxis=xaxis, yaxis=axis("tokens"),
                                  uirevision="experts-per-token"))


def combinations_figure(combos: pd.DataFrame) -> go.Figure:
    """The most frequent served expert sets as horizontal bars, the most frequent on top."""
    bar = go.Bar(
        x=combos["count"].to_numpy(), y=combos["label"].tolist(), orientation="h", name="tokens",
        marker=dict(color=NEUTRAL_COLOR), customdata=combos[["share"]].to_numpy(),
        hovertemplate="experts %{y}<br>%{x} tokens (share %{customdata[0]:.4f})<extra></extra>")
    return go.Figure([bar], layout(title="Most frequent expert combinations", xaxis=axis("tokens"),
                                   yaxis=axis("served experts", type="category", autorange="reversed"),
                                   uirevision="combinations", height=max(HEIGHT, 22 * len(combos) + 100),
                                   showlegend=False, row_labels=True))


def cluster_share_figure(share: pd.DataFrame) -> go.Figure:
    """Cluster × expert share of each cluster's served assignments (rows sum to 1); colours span 0..max."""
    E = share.shape[1]
    z = share.to_numpy(dtype=float)  # (C, E)
    finite = z[np.isfinite(z)]
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0  # scaled to the data: top-6 reads too
    heat = go.Heatmap(
        z=z, x=np.arange(E), y=[str(c) for c in share.index], zmin=0.0, zmax=zmax,
        colorscale="Blues", colorbar=dict(title=dict(text="share")),
        hovertemplate="cluster %{y}<br>expert %{x}<br>share %{z:.4f}<extra></extra>")
    return go.Figure([heat], layout(title="Where each cluster's tokens go", xaxis=expert_xaxis(E),
                                    yaxis=axis("cluster", type="category", autorange="reversed"),
                                    uirevision="clusters", height=max(HEIGHT - 60, 40 * len(share) + 140),
                                    showlegend=False, colorbar=True))


def token_inspector_figure(detail: pd.DataFrame, colors: list[str], token: int) -> go.Figure:
    """Token t: router probability per expert (top; solid = served, hatched = dropped, faded = not chosen,
    diamond = gate) and each expert's contribution ‖gate·y_e(x_t)‖ (bottom, same x axis)."""
    E, experts = len(detail), detail["expert"].to_numpy()
    routed, served = detail["routed"].to_numpy(), detail["served"].to_numpy()
    state = np.where(served, "served", np.where(routed, "dropped", "not chosen"))
    custom = np.empty((E, 3), dtype=object)  # (E, 3): numbers stay numbers for the hover format
    custom[:, 0], custom[:, 1], custom[:, 2] = detail["logit"].to_numpy(), detail["gate"].to_numpy(), state
    on = served.nonzero()[0]
    data = [
        go.Bar(x=experts, y=detail["prob"].to_numpy(), name="router probability", customdata=custom,
               marker=dict(color=colors, opacity=np.where(routed, 1.0, FADED).tolist(),
                           pattern=dict(shape=np.where(routed & ~served, "x", "").tolist())),
               hovertemplate=("expert %{x}: %{customdata[2]}<br>prob %{y:.6g}<br>logit %{customdata[0]:.6g}"
                              "<br>gate %{customdata[1]:.6g}<extra></extra>")),
        go.Scatter(x=experts[on], y=detail["gate"].to_numpy()[on], mode="markers", name="gate (served)",
                   marker=dict(symbol="diamond", size=9, color=IDEAL_COLOR),
                   hovertemplate="expert %{x}<br>gate %{y:.6g}<extra></extra>"),
        go.Bar(x=experts, y=detail["contribution"].to_numpy(), name="contribution", showlegend=False,
               marker=dict(color=colors), xaxis="x2", yaxis="y2",
               hovertemplate="expert %{x}<br>contribution %{y:.6g}<extra></extra>"),
    ]
    top = expert_xaxis(E, "", anchor="y", showticklabels=False)
    top.pop("title")
    return go.Figure(data, layout(
        title=f"Token {token}", xaxis=top, yaxis=axis("probability / gate", domain=[0.45, 1.0]),
        xaxis2=expert_xaxis(E, anchor="y2", matches="x"), yaxis2=axis("contribution", domain=[0.0, 0.35]),
        uirevision="inspector", height=HEIGHT + 100))
