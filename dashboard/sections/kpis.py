"""The KPI row: the routing's health at a glance."""
from __future__ import annotations

import math

import streamlit as st

from ..definitions import DEFINITIONS
from ..result import RunResult

KPI_WIDTH = 128  # pixels: the eleven KPIs fill two rows of the wide layout at 1400 px


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def kpi_values(result: RunResult) -> list[tuple[str, str, str]]:
    """(label, shown value, definition key) for every KPI, in display order."""
    s, E = result.summary, result.config.n_experts
    ms = s["forward_ms"]
    dead = round(s["dead_fraction"] * E)
    return [
        ("tokens", f"{s['tokens']:,.0f}", "tokens"),
        ("active experts", f"{s['active_experts']:.0f} / {E}", "active_experts"),
        ("aux loss", _fmt(s["aux_loss"]), "aux_loss"),
        ("z-loss", _fmt(s["z_loss"]), "z_loss"),
        ("CV", _fmt(s["cv"]), "cv"),
        ("max/mean load", _fmt(s["max_over_mean"]), "max_over_mean"),
        ("dropped", f"{100 * s['dropped_fraction']:.1f} %", "dropped_fraction"),
        ("dead experts", f"{dead}", "dead_fraction"),
        ("forward", f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms", "forward_ms"),
        ("tokens/s", f"{s['tokens'] / (ms / 1e3):,.0f}" if ms > 0 else "n/a", "tokens_per_s"),
        ("device", result.device, "device"),
    ]


def render(result: RunResult) -> None:
    """One wrapping row of metrics (a single flex container: half the page updates of a columns grid)."""
    row = st.container(horizontal=True, gap="small")
    for label, shown, key in kpi_values(result):
        row.metric(label, shown, help=DEFINITIONS.get(key), width=KPI_WIDTH)
