"""One fixed colour per expert, the same in every chart of the page."""
from __future__ import annotations

from functools import lru_cache

import plotly.colors as pc

# Up to 10 experts: Plotly's default cycle (what users already see in Plotly charts);
# up to 24: Dark24, readable on a white page; more: samples of a continuous scale, so
# neighbouring experts get neighbouring hues and 256 experts still get distinct colours.
_SMALL = pc.qualitative.Plotly
_MEDIUM = pc.qualitative.Dark24
_LARGE_SCALE = "Turbo"


@lru_cache(maxsize=64)
def _colors(n_experts: int) -> tuple[str, ...]:
    if n_experts <= len(_SMALL):
        return tuple(_SMALL[:n_experts])
    if n_experts <= len(_MEDIUM):
        return tuple(_MEDIUM[:n_experts])
    points = [i / (n_experts - 1) for i in range(n_experts)]
    return tuple(pc.sample_colorscale(_LARGE_SCALE, points))


def expert_colors(n_experts: int) -> list[str]:
    """The colour of each expert 0..E-1 (a fresh list: callers may keep or change it)."""
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
        raise ValueError(f"n_experts must be a positive integer, got {n_experts!r}")
    return list(_colors(n_experts))
