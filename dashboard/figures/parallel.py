"""Pure figure builders for the Expert parallel view: per-rank load, traffic heatmap, per-rank times.

Tables in (the `per_rank` rows and `traffic` matrix of an ep-report document), `go.Figure` out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from moe.metrics import max_over_mean

from dashboard.figures.core import IDEAL_COLOR, NEUTRAL_COLOR, axis, layout
from dashboard.tables import step_rows

PLANNED_COLOR = "#2ca02c"
PREDICTED_COLOR = "#000000"
TIME_COLORS = {"gather_ms": "#9467bd", "a2a_ms": "#ff7f0e", "expert_wall_ms": NEUTRAL_COLOR}  # wall times: they stack


def rank_axis(world_size: int) -> dict:
    return axis("rank", tickmode="linear", tick0=0, dtick=1, range=[-0.5, world_size - 0.5])


def rank_load_figure(runs: dict[str, pd.DataFrame], predicted: dict[str, list[int]] | None = None,
                     predicted_label: str = "predicted") -> go.Figure:
    """Assignments computed per rank for each placement (grouped bars), the mean line, predicted markers (named
    `predicted_label`: "replayed" for a plan of the Placement section)."""
    predicted = predicted or {}
    colors = [NEUTRAL_COLOR, PLANNED_COLOR]
    data = []
    for (name, rows), color in zip(runs.items(), colors):
        data.append(go.Bar(x=rows["rank"], y=rows["assignments"], name=f"{name}: measured", marker_color=color,
                           hovertemplate="rank %{x}: %{y} assignments<extra>" + name + "</extra>"))
        if name in predicted:
            data.append(go.Scatter(x=rows["rank"], y=predicted[name], mode="markers",
                                   name=f"{name}: {predicted_label}",
                                   marker=dict(symbol="line-ew-open", size=22, color=PREDICTED_COLOR, line_width=2),
                                   hovertemplate=f"rank %{{x}}: {predicted_label} %{{y}}<extra>{name}</extra>"))
    first = next(iter(runs.values()))
    W, mean = len(first), float(first["assignments"].mean())
    data.append(go.Scatter(x=[-0.5, W - 0.5], y=[mean, mean], mode="lines", name="mean",
                           line=dict(color=IDEAL_COLOR, dash="dash", width=2),
                           hovertemplate="mean %{y:.1f}<extra></extra>"))
    return go.Figure(data, layout(title="Load per rank: (token, expert) assignments computed", xaxis=rank_axis(W),
                                  yaxis=axis("assignments"), uirevision="ep_load", barmode="group"))


def traffic_figure(traffic: np.ndarray, title: str = "Token traffic (rows sent)") -> go.Figure:
    """W×W heatmap: token rows rank i (row) sends to rank j (column); the diagonal never leaves its rank."""
    traffic = np.asarray(traffic)
    W = traffic.shape[0]
    heat = go.Heatmap(z=traffic, x=list(range(W)), y=list(range(W)), colorscale="Blues", text=traffic,
                      texttemplate="%{text}", hovertemplate="rank %{y} → rank %{x}: %{z} tokens<extra></extra>",
                      colorbar=dict(title=dict(text="tokens")))
    return go.Figure([heat], layout(title=title, xaxis=axis("receiver rank", dtick=1),
                                    yaxis=axis("sender rank", dtick=1, autorange="reversed"), uirevision="ep_traffic",
                                    colorbar=True))


def rank_times_figure(per_rank: pd.DataFrame, title: str = "Time per rank") -> go.Figure:
    """Stacked per-rank wall times: logit all-gather, all-to-alls, local experts (ms, medians)."""
    data = [go.Bar(x=per_rank["rank"], y=per_rank[col], name=col, marker_color=color,
                   hovertemplate="rank %{x}: %{y:.1f} ms<extra>" + col + "</extra>")
            for col, color in TIME_COLORS.items()]
    return go.Figure(data, layout(title=title, xaxis=rank_axis(len(per_rank)), yaxis=axis("ms"),
                                  uirevision="ep_times", barmode="stack"))


def comparison_table(docs: dict[str, dict]) -> pd.DataFrame:
    """One row per placement: load max/mean, straggler factor (median) and its spread over the repeats,
    all-to-all share, the slowest forward."""
    rows = []
    for name, doc in docs.items():
        ranks = pd.DataFrame(doc["per_rank"])
        load = ranks["assignments"]
        spread = doc.get("straggler_spread") or {}
        rows.append({"placement": name, "redundant_slots": doc["placement"]["redundant_slots"],
                     "load_max_over_mean": max_over_mean(load),
                     "straggler_factor": _number(doc["straggler_factor"]),  # strict JSON: NaN arrives as null
                     **{f"straggler_{k}": _number(spread.get(k)) for k in ("min", "q1", "q3", "max")},
                     "repeats": spread.get("repeats", 1),
                     "a2a_share": float((ranks["a2a_ms"] / ranks["forward_ms"]).max()),
                     "forward_ms": float(ranks["forward_ms"].max())})
    return pd.DataFrame(rows)


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def trace_step_axis(steps: list[int]) -> dict:
    """Steps down the y axis, top to bottom: a tick at each step when there are few (one step is not a
    −0.4…0.4 range), integer ticks otherwise."""
    steps = [int(v) for v in steps]
    extra = dict(tickmode="array", tickvals=steps, ticktext=[str(v) for v in steps]) if len(steps) <= 20 else \
        dict(tickformat="d")
    return axis("step", autorange="reversed", **extra)


def _row_edges(starts: list[int], steps, binned: str) -> list[int]:
    """A row per step: its step (Plotly centres the row on it). Rows of several steps: R + 1 edges, each row's first
    step and one past the last step, so that a row spans exactly its steps on the axis (a step marked there, such as
    the worst, falls on its own row)."""
    return starts + [int(steps[-1]) + 1] if binned else starts


def _where(binned: str) -> str:
    return "steps of this row (the axis), " if binned else "step %{y}, "


def trace_load_figure(load: np.ndarray, steps: list[int], layer: str,
                      worst_step: int | None = None) -> go.Figure:
    """Step × expert heatmap of one layer's assignments (rows: steps, ascending; a long log's rows sum consecutive
    steps, tables.step_rows, as the title says); the worst step marked."""
    load = np.asarray(load)
    E = load.shape[1]
    z, starts, binned = step_rows(load, steps)
    heat = go.Heatmap(z=z, x=list(range(E)), y=_row_edges(starts, steps, binned), colorscale="Blues",
                      hovertemplate=_where(binned) + "expert %{x}: %{z} assignments<extra></extra>",
                      colorbar=dict(title=dict(text="assignments")))
    title = f"Load per step, layer {layer}" + (f"<br><sup>{binned}</sup>" if binned else "")
    fig = go.Figure([heat], layout(title=title, xaxis=axis("expert"), yaxis=trace_step_axis(starts),
                                   uirevision="trace_load", colorbar=True))
    if worst_step is not None:  # the label inside the plot at the left, clear of the colour bar and its title
        fig.add_hline(y=worst_step, line=dict(color=PREDICTED_COLOR, dash="dot", width=1),
                      annotation=dict(text="worst step", font=dict(size=11, color=PREDICTED_COLOR),
                                      bgcolor="rgba(255,255,255,0.8)"),
                      annotation_position="top left")
    return fig


def trace_worst_figure(rows: pd.DataFrame, layers: list[str]) -> go.Figure:
    """Step × layer heatmap of max_over_mean: where and when the routing is most uneven."""
    table = rows.pivot(index="step", columns="layer", values="max_over_mean").reindex(columns=layers)
    z, starts, binned = step_rows(table.to_numpy(), table.index, np.fmax)  # a long log: the worst of its steps
    heat = go.Heatmap(z=z, x=[str(c) for c in table.columns], y=_row_edges(starts, list(table.index), binned),
                      colorscale="Reds", hovertemplate=_where(binned) + "layer %{x}: max/mean %{z:.3f}<extra></extra>",
                      colorbar=dict(title=dict(text="max/mean")))
    title = "Busiest expert / mean, per step and layer" + (f"<br><sup>{binned}</sup>" if binned else "")
    return go.Figure([heat], layout(title=title, xaxis=axis("layer", type="category"), yaxis=trace_step_axis(starts),
                                    uirevision="trace_worst", colorbar=True))


def plan_load_figure(plan_doc: dict) -> go.Figure:
    """Predicted assignments per rank: contiguous blocks (when W ≤ E) against the plan, with the mean."""
    data, W = [], len(plan_doc["planned_load"])
    for name, color in (("contiguous", NEUTRAL_COLOR), ("planned", PLANNED_COLOR)):
        if f"{name}_load" in plan_doc:
            data.append(go.Bar(x=list(range(W)), y=plan_doc[f"{name}_load"], name=f"{name}: predicted",
                               marker_color=color, hovertemplate="rank %{x}: %{y}<extra>" + name + "</extra>"))
    mean = sum(plan_doc["planned_load"]) / W
    data.append(go.Scatter(x=[-0.5, W - 0.5], y=[mean, mean], mode="lines", name="mean",
                           line=dict(color=IDEAL_COLOR, dash="dash", width=2),
                           hovertemplate="mean %{y:.1f}<extra></extra>"))
    return go.Figure(data, layout(title="Predicted load per rank (from the trace)", xaxis=rank_axis(W),
                                  yaxis=axis("assignments"), uirevision="trace_plan", barmode="group"))
