"""Pure figure builders for load, expert metrics, token heatmaps and histograms.

Tables in, `go.Figure` out: no Streamlit, no I/O, no forward, inputs never mutated. Every
per-expert chart takes `colors` (from `dashboard.figures.colors.expert_colors`) so expert e has one colour
on the whole page; `uirevision` keeps the user's zoom across reruns. Each figure is built in one
`go.Figure(data, layout)` call: Plotly validates every update, so fewer calls redraw faster, and no
template is set (Streamlit's theme styles the charts).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.figures.row_groups import labels as row_group_labels

HEIGHT = 340
DEMAND_OPACITY = 0.35
IDEAL_COLOR = "#444444"
CAPACITY_COLOR = "#d62728"
NEUTRAL_COLOR = "#4c78a8"
EXPERT_METRICS = ("activation_sparsity", "output_rms", "mean_gate", "specialization")
ROUTING_METRICS = ("topk_margin", "bias_overlap")  # per-expert routing health (Megatron-LM's router diagnostics)
SHARED_COLOR = "#7f7f7f"  # the shared experts: grey, never one of the routed experts' colours
METRIC_TITLES = {
    "demand": "demand (assignments)", "served": "served (assignments)", "dropped": "dropped (assignments)",
    "load_share": "load share", "utilization": "utilization", "activation_sparsity": "activation sparsity",
    "output_rms": "output RMS", "mean_gate": "mean gate", "contribution": "contribution (Σ‖gate·y‖)",
    "specialization": "output distinctness (1 − cos)", "topk_margin": "top-k margin",
    "bias_overlap": "bias overlap",
}


# Plotly's toolbar sits at the top right of the figure: fewer buttons keep it short, so it stays clear of
# the left-aligned title; the legend gets its own row between the title and the plot, left-aligned.
MODEBAR_REMOVE = ["select2d", "lasso2d", "autoScale2d", "zoomIn2d", "zoomOut2d"]
TITLE_ROW, LEGEND_ROW = 40, 30  # pixels of top margin for the title, and for the legend row below it
# Margins that already hold the tick labels, the axis titles and a colour bar (measured in Chromium on every view).
# Where a label pushes past its margin, Plotly widens the margin and draws the whole chart a second time: twice
# the drawing time on every redraw. Plotly still does that for a label longer than planned, so nothing is clipped.
LEFT, RIGHT, BOTTOM = 80, 20, 78
ROW_LABELS_LEFT = 116  # a y axis of named rows ("layer 3", a token's text)
COLORBAR_RIGHT = 132  # a colour bar with its title


def layout(*, title: str, xaxis: dict, yaxis: dict, uirevision: str, height: int = HEIGHT,
           bargap: float = 0.15, showlegend: bool = True, colorbar: bool = False, row_labels: bool = False,
           **extra) -> dict:
    """The layout every chart shares: title at the top left, the legend in its own row below it (never over
    the title or the toolbar), margins that fit (a colour bar on the right, named rows on the left), kept zoom."""
    top = TITLE_ROW + (LEGEND_ROW if showlegend else 0)
    margin = dict(l=ROW_LABELS_LEFT if row_labels else LEFT, r=COLORBAR_RIGHT if colorbar else RIGHT, t=top,
                  b=BOTTOM)
    return dict(title=dict(text=title, x=0.0, xanchor="left", xref="container", y=1.0, yref="container",
                           yanchor="top", pad=dict(t=10, l=10)),
                height=height, uirevision=uirevision, margin=margin, bargap=bargap,
                xaxis=xaxis, yaxis=yaxis, showlegend=showlegend, modebar=dict(remove=MODEBAR_REMOVE),
                legend=dict(orientation="h", yanchor="bottom", y=1.0, yref="paper", xanchor="left", x=0.0),
                **extra)


# Expert numbers side by side, level (tickangle 0: Plotly would tilt crowded labels instead): a half-width chart
# (~350 px of plot at 1400 px) fits 16 of them, a grid cell or a heatmap beside its colour bar (~200 px) 8.
MAX_EXPERT_TICKS, NARROW_EXPERT_TICKS = 16, 8


def shared_range(tops, headroom: float = 1.0) -> list[float]:
    """[0, the largest top × headroom]: one axis or colour range for charts drawn side by side, so equal heights
    (or colours) mean equal numbers; [0, headroom] when there is nothing to draw (a range Plotly can still draw)."""
    top = max((float(v) for v in tops), default=0.0)
    return [0.0, (top if top > 0 else 1.0) * headroom]


def expert_tick_step(n_experts: int, max_ticks: int = MAX_EXPERT_TICKS) -> int:
    """1 (every expert's number) up to max_ticks experts, else 2, 4, 8, …: at most max_ticks ticks."""
    return 1 if n_experts <= max_ticks else 2 ** math.ceil(math.log2(n_experts / max_ticks))


def expert_category_ticks(names: list[str]) -> dict:
    """Ticks of a category axis of expert names (sorted, ranked): every Nth name, at most 16, never a smear."""
    return dict(tickmode="array", tickvals=list(names[::expert_tick_step(len(names))]), tickangle=0)


def expert_xaxis(n_experts: int, title: str = "expert", *, narrow: bool = False, **extra) -> dict:
    """An x axis over experts 0..E-1: a tick at every expert, or at every Nth when more would not fit
    (narrow: a grid cell or a heatmap beside its colour bar)."""
    step = expert_tick_step(n_experts, NARROW_EXPERT_TICKS if narrow else MAX_EXPERT_TICKS)
    return dict(title=dict(text=title), range=[-0.5, n_experts - 0.5], tickmode="linear", tick0=0, dtick=step,
                tickangle=0, **extra)


def axis(title: str, **extra) -> dict:
    return dict(title=dict(text=title), **extra)


def _hline(x0, x1, y: float, name: str, color: str, dash: str, showlegend: bool = True) -> go.Scatter:
    """A horizontal reference line as a trace, so it shows on hover (and in the legend unless labelled)."""
    return go.Scatter(x=[x0, x1], y=[y, y], mode="lines", name=name, line=dict(color=color, dash=dash, width=2),
                      hovertemplate=f"{name}<extra></extra>", showlegend=showlegend)


def _swatch(name: str, opacity: float) -> go.Scatter:
    """A legend-only entry in a neutral colour: the bars carry one colour per expert, so a bar's own legend
    swatch would show expert 0's colour for both demand and served."""
    return go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                      marker=dict(symbol="square", size=14, color=IDEAL_COLOR, opacity=opacity,
                                  line=dict(color=IDEAL_COLOR, width=1.5)))


def line_labels(ideal: float, capacity: int | None, top: float, capacity_name: str = "capacity C") -> list[dict]:
    """Annotations naming the ideal and capacity lines at their right end; one shared label when the two
    lines lie within 3 % of the y range of each other (they would overlap unseen)."""
    label = dict(xref="paper", x=1.0, xanchor="right", yanchor="bottom", showarrow=False, font=dict(size=11),
                 bgcolor="rgba(255,255,255,0.75)")  # readable over the bars
    if capacity is None:
        return [dict(label, y=ideal, text=f"ideal T·K/E = {ideal:.6g}", font=dict(size=11, color=IDEAL_COLOR))]
    if abs(capacity - ideal) <= 0.03 * max(top, 1.0):
        together = "coincide" if capacity == ideal else "(too close to label apart)"
        return [dict(label, y=max(ideal, capacity), text=f"ideal {ideal:.6g} and {capacity_name} = {capacity} "
                     f"{together}", font=dict(size=11, color=CAPACITY_COLOR))]
    above, below = (capacity, ideal) if capacity > ideal else (ideal, capacity)
    texts = {ideal: (f"ideal T·K/E = {ideal:.6g}", IDEAL_COLOR), capacity: (f"{capacity_name} = {capacity}",
                                                                          CAPACITY_COLOR)}
    return [dict(label, y=above, text=texts[above][0], font=dict(size=11, color=texts[above][1])),
            dict(label, y=below, yanchor="top", text=texts[below][0], font=dict(size=11, color=texts[below][1]))]


def load_figure(per_expert: pd.DataFrame, colors: list[str], ideal: float,
                capacity: int | None = None, *, sort: bool = False, capacity_name: str = "capacity C") -> go.Figure:
    """Demand (faded) and served (solid) per expert, the ideal line T·K/E and the capacity line C;
    sort=True orders experts by demand, largest first (readable at hundreds of experts). capacity_name
    labels the capacity line (per-sequence capacity draws B·C, the most an expert serves over B sequences)."""
    E = len(per_expert)
    frame = per_expert.sort_values("demand", ascending=False, kind="stable") if sort else per_expert
    experts = frame["expert"].to_numpy()
    x = [str(e) for e in experts] if sort else experts
    bar_colors = [colors[int(e)] for e in experts]
    extra = frame[["demand", "served", "dropped"]].to_numpy()  # (E, 3) for hover
    hover = ("expert %{x}<br>demand %{customdata[0]}<br>served %{customdata[1]}"
             "<br>dropped %{customdata[2]}<extra></extra>")
    data = [
        go.Bar(x=x, y=frame["demand"].to_numpy(), name="demand (routed)", customdata=extra, showlegend=False,
               marker=dict(color=bar_colors, opacity=DEMAND_OPACITY, line=dict(color=bar_colors, width=1.5)),
               hovertemplate=hover),
        go.Bar(x=x, y=frame["served"].to_numpy(), name="served", customdata=extra, showlegend=False,
               marker=dict(color=bar_colors), hovertemplate=hover),
        _swatch("demand (routed): faded", DEMAND_OPACITY), _swatch("served: solid", 1.0),
    ]
    ends = (x[0], x[-1]) if sort else (-0.5, E - 0.5)  # a category axis takes category names, not positions
    lines = [(ideal, f"ideal T·K/E = {ideal:.6g}", IDEAL_COLOR, "dash")]
    if capacity is not None:
        lines.append((float(capacity), f"{capacity_name} = {capacity}", CAPACITY_COLOR, "dot"))
    data += [_hline(*ends, y, name, color, dash, showlegend=False) for y, name, color, dash in lines]  # labelled
    top = float(max(frame["demand"].max(), ideal, capacity or 0))
    xaxis = (axis("expert (sorted by demand)", type="category", categoryorder="array", categoryarray=x,
                  showticklabels=E <= 64, **expert_category_ticks(x)) if sort else expert_xaxis(E))
    return go.Figure(data, layout(title="Demand vs served per expert", xaxis=xaxis, yaxis=axis("assignments"),
                                  uirevision=f"load-{sort}", barmode="group",
                                  annotations=line_labels(ideal, capacity, top, capacity_name)))


def expert_bar_figure(per_expert: pd.DataFrame, column: str, colors: list[str], *, ranked: bool = False,
                      title: str | None = None, height: int = HEIGHT) -> go.Figure:
    """One per_expert column as bars in expert colours; ranked=True sorts experts by value, largest first."""
    label = METRIC_TITLES.get(column, column)
    frame = per_expert[["expert", column]]
    if ranked:
        frame = frame.sort_values(column, ascending=False, kind="stable", na_position="last")
    experts = frame["expert"].to_numpy()
    names = [str(e) for e in experts]
    bar = go.Bar(x=names if ranked else experts, y=frame[column].to_numpy(dtype=float), name=label,
                 marker=dict(color=[colors[int(e)] for e in experts]),
                 hovertemplate=f"expert %{{x}}<br>{column} %{{y:.6g}}<extra></extra>")
    xaxis = (axis("expert (ranked)", type="category", categoryorder="array", categoryarray=names,
                  **expert_category_ticks(names)) if ranked else expert_xaxis(len(per_expert)))
    return go.Figure([bar], layout(title=title or (f"Top contributors: {label}" if ranked else label),
                                   xaxis=xaxis, yaxis=axis(label), uirevision=f"expert-{column}",
                                   height=height, showlegend=False))


def _grid(n: int, cols: int, hgap: float = 0.16, vgap: float = 0.2) -> list[tuple[list[float], list[float]]]:
    """(x domain, y domain) of n subplots on a grid, filled row by row from the top."""
    rows = math.ceil(n / cols)
    width, height = (1 - hgap * (cols - 1)) / cols, (1 - vgap * (rows - 1)) / rows
    cells = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y1 = c * (width + hgap), 1 - r * (height + vgap)
        cells.append(([max(x0, 0.0), min(x0 + width, 1.0)], [max(y1 - height, 0.0), min(y1, 1.0)]))  # no rounding below 0
    return cells


def expert_metrics_figure(per_expert: pd.DataFrame, colors: list[str],
                          metrics: tuple[str, ...] = EXPERT_METRICS) -> go.Figure:
    """A grid of per-expert bar charts (two columns), one subplot per metric, in one light figure."""
    E, experts = len(per_expert), per_expert["expert"].to_numpy()
    data, axes, titles = [], {}, []
    for i, (metric, (xd, yd)) in enumerate(zip(metrics, _grid(len(metrics), 2)), start=1):
        s = "" if i == 1 else str(i)
        label = METRIC_TITLES.get(metric, metric)
        data.append(go.Bar(x=experts, y=per_expert[metric].to_numpy(dtype=float), name=metric, showlegend=False,
                           marker=dict(color=colors), xaxis=f"x{s}", yaxis=f"y{s}",
                           hovertemplate=f"expert %{{x}}<br>{label} %{{y:.6g}}<extra></extra>"))
        axes[f"xaxis{s}"] = expert_xaxis(E, domain=xd, anchor=f"y{s}", narrow=True)
        axes[f"yaxis{s}"] = axis(label, domain=yd, anchor=f"x{s}")
        titles.append(dict(text=METRIC_TITLES.get(metric, metric), x=sum(xd) / 2, y=yd[1], xref="paper",
                           yref="paper", xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=14)))
    rows = math.ceil(len(metrics) / 2)
    top = TITLE_ROW + LEGEND_ROW  # the first row's titles sit below the toolbar, which covers the top 40 px
    return go.Figure(data, dict(height=250 * rows + top + 20, uirevision="expert-metrics", bargap=0.15,
                                margin=dict(l=LEFT, r=RIGHT, t=top, b=BOTTOM), annotations=titles,
                                modebar=dict(remove=MODEBAR_REMOVE), **axes))


def token_heatmap_figure(matrix: np.ndarray, row_labels: list[str], *, title: str, value_name: str,
                         colorscale: str = "Viridis", zmin: float | None = None,
                         zmax: float | None = None, uirevision: str = "heatmap", row_groups: list[str] | None = None,
                         yaxis_title: str = "token", height: int = HEIGHT + 80) -> go.Figure:
    """Tokens (or token bins) × experts; row labels name the token or the bin's token range. With
    row_groups (the group of each row, rows sorted by group), every group is named next to its rows, or none
    when they do not fit (dashboard.figures.row_groups)."""
    heat = go.Heatmap(
        z=np.asarray(matrix, dtype=np.float32),  # float32: half the bytes to send, same hover digits
        x=np.arange(matrix.shape[1]), y=row_labels, colorscale=colorscale, zmin=zmin, zmax=zmax,
        colorbar=dict(title=dict(text=value_name)),
        hovertemplate=f"token %{{y}}<br>expert %{{x}}<br>{value_name} %{{z:.6g}}<extra></extra>")
    yaxis = axis(yaxis_title, autorange="reversed", type="category", showticklabels=len(row_labels) <= 40)
    groups = None if row_groups is None else row_group_labels(row_groups, height)  # every group, or None
    extra = {}
    if groups is not None:  # a bracket and a name per group replace the token ticks
        annotations, shapes, standoff = groups
        yaxis.update(showticklabels=False, ticks="", title=dict(text=yaxis_title, standoff=standoff))
        extra = dict(annotations=annotations, shapes=shapes)
    return go.Figure([heat], layout(title=title, xaxis=expert_xaxis(matrix.shape[1], narrow=True), yaxis=yaxis,
                                    uirevision=uirevision, height=height, showlegend=False, colorbar=True,
                                    row_labels=True, **extra))


def histogram_figure(hist: pd.DataFrame, *, title: str, xaxis_title: str, color: str = NEUTRAL_COLOR,
                     log_x: bool = False, reference: float | None = None,
                     reference_name: str = "") -> go.Figure:
    """Pre-binned counts (left, right, count) as bars; log_x draws the bins on a log10 axis."""
    left, right = hist["left"].to_numpy(), hist["right"].to_numpy()
    fx = np.log10 if log_x else (lambda v: v)
    x0, x1 = fx(left), fx(right)
    data = [go.Bar(
        x=(x0 + x1) / 2, y=hist["count"].to_numpy(), width=x1 - x0, name="tokens", marker=dict(color=color),
        customdata=np.stack([left, right], axis=1),
        hovertemplate="[%{customdata[0]:.4g}, %{customdata[1]:.4g})<br>%{y} tokens<extra></extra>")]
    if reference is not None:
        top = float(hist["count"].max()) if len(hist) else 1.0
        data.append(go.Scatter(x=[fx(reference)] * 2, y=[0, max(top, 1.0)], mode="lines", name=reference_name,
                               line=dict(color=IDEAL_COLOR, dash="dash"),
                               hovertemplate=f"{reference_name}<extra></extra>"))
    xaxis = axis(xaxis_title)
    if len(hist):  # the bins' full span, so a reference line at the last edge stays visible
        pad = 0.02 * (x1.max() - x0.min())
        xaxis["range"] = [x0.min() - pad, x1.max() + pad]
    if log_x:
        ticks = [v for v in (1, 2, 5, 10, 20, 50, 100) if len(hist) and left.min() <= v <= right.max()]
        xaxis.update(tickmode="array", tickvals=[math.log10(v) for v in ticks], ticktext=[str(v) for v in ticks])
    return go.Figure(data, layout(title=title, xaxis=xaxis, yaxis=axis("tokens"), uirevision=title,
                                  showlegend=reference is not None, bargap=0))


def shared_share_figure(shared_fraction: float, height: int = 130) -> go.Figure:
    """One bar split into the output norm's routed and shared shares (summary's shared_fraction)."""
    parts = (("routed experts", 1.0 - shared_fraction, NEUTRAL_COLOR), ("shared experts", shared_fraction, SHARED_COLOR))
    data = [go.Bar(x=[share], y=["output"], name=name, orientation="h", marker=dict(color=color),
                   text=[f"{name} {100 * share:.1f} %"], textposition="inside", insidetextanchor="middle",
                   hovertemplate=f"{name}: %{{x:.1%}} of Σ‖r‖ + Σ‖s‖<extra></extra>")
            for name, share, color in parts]
    fig_layout = layout(title="Share of the output norm", xaxis=axis("share", range=[0, 1], tickformat=".0%"),
                        yaxis=dict(visible=False), uirevision="shared-share", height=height, showlegend=False,
                        barmode="stack")
    fig_layout["margin"].update(r=30, b=66)  # room for the last tick label and the axis title, no more
    return go.Figure(data, fig_layout)
