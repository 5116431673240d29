"""Pure figure builders for live mode: a training history (one row per step) in, `go.Figure` out.

Each chart's traces come from history columns, listed by its `*_columns` function (trace order, scale);
`refresh` puts a newer history into a figure built from the same columns, in place.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.figures.core import axis, layout

# (column, label, scale): the health series, grouped into stacked panels that share the step axis.
PANELS: list[list[tuple[str, str, float]]] = [
    [("task_loss", "task loss", 1.0)],
    [("aux_loss", "aux loss", 1.0)],   # aux ≈ 1 when balanced and z-loss can be 100× larger:
    [("z_loss", "z-loss", 1.0)],       # on one axis aux would look flat
    [("cv", "CV", 1.0), ("max_over_mean", "max/mean", 1.0)],
    [("dropped_fraction", "dropped %", 100.0), ("dead_fraction", "dead experts %", 100.0)],
]
PANEL_TITLES = ["task loss", "aux loss", "z-loss", "CV, max/mean", "%"]
SWITCH_COLOR = "#555555"
SERIES_COLORS = ["#4c78a8", "#f58518", "#b279a2", "#54a24b", "#e45756", "#9d755d", "#72b7b2"]


def _expert_columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix) and c[len(prefix):].isdigit()]


def health_columns() -> list[tuple[str, float]]:
    """(column, scale) behind each trace of the health figure, in trace order."""
    return [(column, scale) for panel in PANELS for column, _, scale in panel]


def load_share_columns(history: pd.DataFrame) -> list[tuple[str, float]]:
    return [(c, 1.0) for c in _expert_columns(history, "load_share_")]


def expert_bias_columns(history: pd.DataFrame) -> list[tuple[str, float]]:
    return [(c, 1.0) for c in _expert_columns(history, "expert_bias_")]


def saturation_columns() -> list[tuple[str, float]]:
    return [("router_saturation", 1.0)]


def refresh(fig: go.Figure, history: pd.DataFrame, columns: list[tuple[str, float]]) -> go.Figure:
    """The figure with a newer history, changed in place (equal to a fresh build when the columns and the
    balancing switches are the same). Unlike a new figure it leaves no cyclic garbage (plotly objects point
    back to their parents): what of a figure per tick outlives the young collections waits for a rare full one."""
    with fig.batch_update():
        for trace, (column, scale) in zip(fig.data, columns, strict=True):
            trace.x, trace.y = history["step"], history[column] * scale
    return fig


def balance_switches(history: pd.DataFrame) -> list[tuple[int, str]]:
    """(step, new balance) for every step whose balancing differs from the step before it."""
    balance = history["balance"]
    changed = balance.ne(balance.shift()) & balance.shift().notna()  # the first kept row is no switch
    return [(int(step), str(name)) for step, name in zip(history["step"][changed], balance[changed])]


def with_switches(fig: go.Figure, history: pd.DataFrame) -> go.Figure:
    """Mark each balancing switch with a dotted vertical line across the figure, labelled with the new method."""
    for step, name in balance_switches(history):
        fig.add_shape(type="line", xref="x", yref="paper", x0=step, x1=step, y0=0, y1=1,
                      line=dict(color=SWITCH_COLOR, width=1, dash="dot"))
        fig.add_annotation(x=step, xref="x", y=1, yref="paper", text=f"→ {name}", showarrow=False,
                           xanchor="left", yanchor="top", font=dict(size=11, color=SWITCH_COLOR))
    return fig


def health_figure(history: pd.DataFrame) -> go.Figure:
    """Task loss and the routing health numbers over steps, in stacked panels sharing the x axis."""
    n = len(PANELS)
    gap = 0.04
    height = (1 - gap * (n - 1)) / n
    traces, axes, color = [], {}, iter(SERIES_COLORS)
    for i, panel in enumerate(PANELS):
        top = 1 - i * (height + gap)
        suffix = "" if i == 0 else str(i + 1)
        domain = [round(max(0.0, top - height), 6), round(min(1.0, top), 6)]
        axes[f"yaxis{suffix}"] = dict(domain=domain, title=dict(text=PANEL_TITLES[i]))
        axes[f"xaxis{suffix}"] = dict(anchor=f"y{suffix}", matches="x" if i else None,
                                      showticklabels=i == n - 1, title=dict(text="step" if i == n - 1 else ""))
        for column, label, scale in panel:
            traces.append(go.Scatter(
                x=history["step"], y=history[column] * scale, name=label, mode="lines",
                xaxis=f"x{suffix}", yaxis=f"y{suffix}", line=dict(color=next(color), width=2),
                hovertemplate=f"step %{{x}}<br>{label} %{{y:.4g}}<extra></extra>"))
    base = layout(title="Training and routing health", xaxis=axes.pop("xaxis"), yaxis=axes.pop("yaxis"),
                  uirevision="live_health", height=120 * n + 140)
    return with_switches(go.Figure(traces, {**base, **axes}), history)


def load_share_figure(history: pd.DataFrame, colors: list[str]) -> go.Figure:
    """Each expert's share of the served load over steps, stacked to 1."""
    columns = [c for c, _ in load_share_columns(history)]
    traces = [go.Scatter(x=history["step"], y=history[c], name=f"expert {c[11:]}", stackgroup="load",
                         mode="lines", line=dict(width=0.5, color=colors[int(c[11:])]),
                         fillcolor=colors[int(c[11:])],
                         hovertemplate=f"expert {c[11:]}<br>step %{{x}}<br>share %{{y:.3f}}<extra></extra>")
              for c in columns]
    fig = go.Figure(traces, layout(title="Load share per expert", xaxis=axis("step"),
                                   yaxis=axis("share of served load", range=[0, 1]), uirevision="live_share"))
    return with_switches(fig, history)


def expert_bias_figure(history: pd.DataFrame, colors: list[str]) -> go.Figure:
    """The aux-loss-free expert bias b_e over steps (flat unless balance = bias)."""
    columns = [c for c, _ in expert_bias_columns(history)]
    traces = [go.Scatter(x=history["step"], y=history[c], name=f"expert {c[12:]}", mode="lines",
                         line=dict(color=colors[int(c[12:])], width=2),
                         hovertemplate=f"expert {c[12:]}<br>step %{{x}}<br>b %{{y:.4f}}<extra></extra>")
              for c in columns]
    fig = go.Figure(traces, layout(title="Expert bias trajectories", xaxis=axis("step"),
                                   yaxis=axis("expert_bias b_e"), uirevision="live_bias"))
    return with_switches(fig, history)


def saturation_figure(history: pd.DataFrame) -> go.Figure:
    """Router saturation: share of probe tokens whose top-k set did not change since the previous step."""
    trace = go.Scatter(x=history["step"], y=history["router_saturation"], mode="lines", name="saturation",
                       line=dict(color=SERIES_COLORS[0], width=2),
                       hovertemplate="step %{x}<br>saturation %{y:.3f}<extra></extra>")
    fig = go.Figure([trace], layout(title="Router saturation", xaxis=axis("step"),
                                    yaxis=axis("unchanged top-k share", range=[0, 1.02]),
                                    uirevision="live_saturation"))
    return with_switches(fig, history)
