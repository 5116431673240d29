"""The KPI row: the routing's health at a glance."""
from __future__ import annotations

import math

import streamlit as st

from dashboard.definitions import DEFINITIONS
from dashboard.result import RunResult

KPI_WIDTH = "content"  # each KPI as wide as its value: no value is ever cut off ("238 / …")
DIGITS = 3              # significant digits of every non-integer KPI, trailing zeros kept ("2.00" next to "1.01")
_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def fmt(value: float | None, digits: int = DIGITS) -> str:
    """`digits` significant digits, trailing zeros kept; k/M/G/T from 1000 up, short exponent below 0.001."""
    if value is None or not math.isfinite(value):
        return "n/a" if value is None or math.isnan(value) else str(value)
    if value == 0:
        return "0"  # exact: no digits to show
    for scale, suffix in _SI:
        if abs(value) >= scale * (1 - 0.5 * 10 ** -digits):  # 999.95 rounds to "1.00 k", not "1000"
            return f"{_plain(value / scale, digits)} {suffix}"
    if value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return _plain(value, digits)


def _plain(value: float, digits: int) -> str:
    text = f"{value:#.{digits}g}"  # '#': keep trailing zeros
    return text[:-1] if text.endswith(".") else text


def fmt_ms(ms: float) -> str:
    """A duration: milliseconds below one second, seconds above, `DIGITS` significant digits."""
    return f"{fmt(ms / 1e3)} s" if ms >= 1e3 * (1 - 0.5 * 10 ** -DIGITS) else f"{fmt(ms)} ms"


def kpi_values(result: RunResult) -> list[tuple[str, str, str]]:
    """(label, shown value, definition key) for every KPI, in display order."""
    s, cfg = result.summary, result.config
    E, ms = cfg.n_experts, result.forward_ms  # the warm time (a median of repeats), not the first forward's
    dead = round(s["dead_fraction"] * E)
    routing = []  # #9's numbers join the row only where the config uses them: the default row fits one line
    if cfg.expert_bias is not None or cfg.n_group > 1:  # else bias overlap is 1 exactly (the Router view shows both)
        routing += [("top-k margin", fmt(s["topk_margin"]), "topk_margin"),
                    ("bias overlap", fmt(s["bias_overlap"]), "bias_overlap")]
    if cfg.shared_experts > 0:
        routing += [("shared share", f"{fmt(100 * s['shared_fraction'])} %", "shared_fraction"),
                    ("shared RMS", fmt(s["shared_output_rms"]), "shared_output_rms")]
    return [
        ("tokens", f"{s['tokens']:,.0f}", "tokens"),
        ("active experts", f"{s['active_experts']:.0f} / {E}", "active_experts"),
        ("aux loss", fmt(s["aux_loss"]), "aux_loss"),
        ("z-loss", fmt(s["z_loss"]), "z_loss"),
        ("CV", fmt(s["cv"]), "cv"),
        ("max/mean load", fmt(s["max_over_mean"]), "max_over_mean"),
        ("dropped", f"{fmt(100 * s['dropped_fraction'])} %", "dropped_fraction"),
        ("dead experts", f"{dead}", "dead_fraction"),
        *routing,
        ("forward", fmt_ms(ms), "warm_forward_ms"),
        ("tokens/s", fmt(s["tokens"] / (ms / 1e3)) if ms > 0 else "n/a", "warm_tokens_per_s"),
        ("device", result.device, "device"),
    ]


def render(result: RunResult) -> None:
    """One wrapping row of metrics (a single flex container: half the page updates of a columns grid)."""
    row = st.container(horizontal=True, gap="small")
    for label, shown, key in kpi_values(result):
        row.metric(label, shown, help=DEFINITIONS.get(key), width=KPI_WIDTH)
    if result.config.score == "sigmoid":
        st.caption(f"**aux loss with a sigmoid router:** {DEFINITIONS['aux_loss_sigmoid']}")
