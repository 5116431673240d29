"""Pure figure builders for the Placement section: a replayed routing log under each placement.

Tables in (the tidy rows of moe.parallel.judge.balance_rows, a rank-load array, the interval table), `go.Figure`
out; no replay here. One colour per placement (current, our planner, DeepSeek's EPLB) and one dash per R, the same
in every chart (the run's placement as recorded: the current one's colour, dotted); expert bars take the page's
expert colours.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from moe.parallel.judge import RUN_PLACEMENTS

from dashboard.figures.core import NEUTRAL_COLOR, axis, expert_tick_step, layout
from dashboard.figures.parallel import PLANNED_COLOR

EPLB_COLOR = "#ff7f0e"
PLACEMENT_COLORS = {"current": NEUTRAL_COLOR, "recorded": NEUTRAL_COLOR, "planned": PLANNED_COLOR,
                    "eplb": EPLB_COLOR}
PLACEMENT_NAMES = {"current": "current", "recorded": "current, as recorded", "planned": "our planner",
                   "eplb": "DeepSeek's EPLB"}
BALANCE_RANGE = [0.0, 1.05]  # balancedness lies in 0 … 1
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
METRIC_TITLES = {"balancedness_vllm": "balancedness (vLLM: mean / max)",
                 "balancedness_sglang": "balancedness (SGLang: (mean + 1e-5) / (max + 1e-5))",
                 "max_over_mean": "max / mean (rank load)"}


def series_name(placement: str, redundant_slots: int) -> str:
    """The legend name of one (placement, R): the current placement has no R of its own."""
    name = PLACEMENT_NAMES.get(placement, placement)
    return name if placement in RUN_PLACEMENTS else f"{name}, R={redundant_slots}"


def _dash(placement: str, redundant_slots: int, all_r: list[int]) -> str:
    """The run's own placement solid (dotted as recorded), a planner's by its R."""
    if placement in RUN_PLACEMENTS:
        return "solid" if placement == "current" else "dot"
    return DASHES[all_r.index(redundant_slots) % len(DASHES)]


def balance_figure(rows: pd.DataFrame, metric: str = "balancedness_vllm", layer: str = "") -> go.Figure:
    """Per window, `metric` under each (placement, R): one line each (rows as balance_rows writes them)."""
    all_r = sorted(rows["redundant_slots"].unique().tolist())
    data = []
    for (name, R), group in rows.groupby(["placement", "redundant_slots"], sort=False):
        group = group.sort_values("window")
        label = series_name(name, int(R))
        data.append(go.Scatter(x=group["window"], y=group[metric], mode="lines+markers", name=label,
                               line=dict(color=PLACEMENT_COLORS.get(name, NEUTRAL_COLOR),
                                         dash=_dash(name, int(R), all_r)),
                               marker=dict(size=5),
                               hovertemplate="window %{x}: %{y:.3f}<extra>" + label + "</extra>"))
    title = f"{METRIC_TITLES.get(metric, metric)} per window" + (f", layer {layer}" if layer else "")
    bounded = dict(range=BALANCE_RANGE) if metric.startswith("balancedness") else {}  # 0 … 1: a flat line stays flat
    return go.Figure(data, layout(title=title, xaxis=axis("window", tickformat="d"),
                                  yaxis=axis(METRIC_TITLES.get(metric, metric), **bounded),
                                  uirevision="placement_balance"))


def rank_heatmap_figure(load, title: str = "Load per rank and window") -> go.Figure:
    """W × windows heatmap of the tokens each rank serves, from load (N, W)."""
    load = np.asarray(load)                                                        # (N, W)
    N, W = load.shape
    heat = go.Heatmap(z=load.T, x=list(range(N)), y=list(range(W)), colorscale="Blues",
                      hovertemplate="window %{x}, rank %{y}: %{z} tokens<extra></extra>",
                      colorbar=dict(title=dict(text="tokens")))
    return go.Figure([heat], layout(title=title, xaxis=axis("window", tickformat="d"),
                                    yaxis=axis("rank", dtick=1, autorange="reversed"), uirevision="placement_heat",
                                    colorbar=True, showlegend=False))


def interval_table(intervals: dict, rest: dict) -> pd.DataFrame:
    """Tidy rows (placement, redundant_slots, every, p50_balancedness) from a LayerReplay's intervals, with
    every = 0 standing for the rest of the run (each plan measured on every later window)."""
    rows = []
    for (name, R), by_every in intervals.items():
        for every, value in sorted(by_every.items()):
            rows.append({"placement": name, "redundant_slots": R, "every": every, "p50_balancedness": value})
        rows.append({"placement": name, "redundant_slots": R, "every": 0, "p50_balancedness": rest[(name, R)]})
    return pd.DataFrame(rows, columns=["placement", "redundant_slots", "every", "p50_balancedness"])


def interval_figure(table: pd.DataFrame) -> go.Figure:
    """p50 balancedness (vLLM) when replanning every N windows, one line per (placement, R); the rest of the
    run (every = 0 in the table) is left to the table."""
    table = table[table["every"] > 0]
    all_r = sorted(table["redundant_slots"].unique().tolist())
    data = []
    for (name, R), group in table.groupby(["placement", "redundant_slots"], sort=False):
        if name == "current" and R != all_r[0]:
            continue  # the current placement does not depend on R: drawn once
        label = series_name(name, int(R))
        data.append(go.Scatter(x=group["every"], y=group["p50_balancedness"], mode="lines+markers", name=label,
                               line=dict(color=PLACEMENT_COLORS.get(name, NEUTRAL_COLOR),
                                         dash=_dash(name, int(R), all_r)),
                               hovertemplate="every %{x} windows: p50 %{y:.3f}<extra>" + label + "</extra>"))
    everies = sorted(table["every"].unique().tolist())
    return go.Figure(data, layout(title="Replanning every N windows: p50 balancedness (vLLM) on the windows after",
                                  xaxis=axis("replan every N windows", type="log", tickmode="array",
                                             tickvals=everies, ticktext=[str(v) for v in everies]),
                                  yaxis=axis("p50 balancedness (vLLM)", range=BALANCE_RANGE),
                                  uirevision="placement_intervals"))


def hot_figure(hot_windows, n_windows: int, hot_top: int, colors: list[str]) -> go.Figure:
    """Per expert, the windows in which it is among the hot_top busiest (bars in the experts' colours)."""
    hot = np.asarray(hot_windows)                                                  # (E,)
    E = len(hot)
    bars = go.Bar(x=list(range(E)), y=hot, marker_color=colors[:E],
                  hovertemplate="expert %{x}: hot in %{y} of " + str(n_windows) + " windows<extra></extra>")
    return go.Figure([bars], layout(title=f"Windows each expert is hot (top {hot_top})",
                                    xaxis=axis("expert", tickmode="linear", tick0=0, dtick=expert_tick_step(E)),
                                    yaxis=axis("windows hot", range=[0, max(n_windows, 1)]),
                                    uirevision="placement_hot", showlegend=False))
