"""Pure figure builders for the Compare page: the same chart for each side, drawn on one y range (the x axes
already agree: experts by number, confidence on fixed bins), so bars of equal height mean equal numbers.
Tables in, figures out: no Streamlit, no forward, inputs never mutated."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from dashboard.figures.core import histogram_figure, load_figure, shared_range

HEADROOM = 1.05  # the shared range ends 5 % above the tallest bar or line of either side


@dataclass(frozen=True)
class LoadInput:
    """One side's load chart: its per-expert table and its reference lines (the Load view's)."""
    name: str                   # "A" or "B"
    per_expert: pd.DataFrame    # trace.per_expert(): expert, demand, served, dropped, ...
    ideal: float                # T·K/E
    capacity: int | None        # the capacity line's height (None: dropless)
    capacity_name: str = "capacity C"

    @property
    def top(self) -> float:
        """The tallest thing the chart draws: a demand bar, the ideal line or the capacity line."""
        return float(max(self.per_expert["demand"].max(), self.ideal, self.capacity or 0))


def load_pair(sides: list[LoadInput], colors: list[str]) -> list[go.Figure]:
    """Demand vs served per expert for each side, on one y range; `colors` covers the larger side's experts, so
    expert e has one colour on the whole page."""
    y_range = shared_range([side.top for side in sides], HEADROOM)
    return [load_figure(side.per_expert, colors, side.ideal, side.capacity, capacity_name=side.capacity_name)
            .update_layout(title_text=f"{side.name}: demand vs served per expert", yaxis_range=y_range,
                           uirevision=f"compare-load-{side.name}")
            for side in sides]


def confidence_pair(hists: dict[str, pd.DataFrame]) -> list[go.Figure]:
    """The router-confidence histogram of each side (dashboard.tables.confidence_histogram: the same log bins
    from 1 to 100 for any E), on one y range."""
    y_range = shared_range([float(h["count"].max()) if len(h) else 0.0 for h in hists.values()], HEADROOM)
    return [histogram_figure(hist, title=f"{name}: confidence per token", xaxis_title="min(p₁/p₂, 100) (log scale)",
                             log_x=True).update_layout(yaxis_range=y_range)
            for name, hist in hists.items()]
