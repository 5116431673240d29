"""The statistics of a routing log that holds counts only, vectorised over every (step, layer) at once.

The numbers and their definitions are summary_dict's (moe/stats.py, moe/definitions.py) on load-side sums
(`moe.from_routing.sums_from_counts`): a test checks every row against summary_dict. Probability-side numbers
(aux loss, z-loss, confidence) need router logits, which counts do not carry: they are NaN.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from moe.from_routing import sums_from_counts
from moe.metrics import max_over_mean_rows, safe_ratio
from moe.stats import summary_dict


def tokens_of(counts: np.ndarray, top_k: int | None) -> np.ndarray:
    """Tokens behind the counts (…, E): assignments / top_k; NaN when the source does not record top_k."""
    total = counts.sum(-1).astype(np.float64)
    return total / top_k if top_k else np.full(total.shape, np.nan)


def load_rows(steps: np.ndarray, layers: list[str], counts: np.ndarray, top_k: int | None) -> pd.DataFrame:
    """One row per (step, layer), step-major: summary_dict's load-side numbers of counts (S, L, E)."""
    S, L, E = counts.shape
    c = counts.astype(np.float64)                                              # (S, L, E)
    total = c.sum(-1)                                                          # (S, L)
    mean = total / E
    p = c / np.where(total > 0, total, 1.0)[..., None]                         # (S, L, E)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)  # (S, L) nats
    nan = np.full((S, L), np.nan)
    cols = {"aux_loss": nan, "max_over_mean": max_over_mean_rows(c), "cv": safe_ratio(c.std(-1), mean),
            "load_entropy": np.where(total > 0, np.exp(h) / E, np.nan), "dead_fraction": (c == 0).mean(-1),
            "z_loss": nan, "mean_confidence": nan, "tokens": tokens_of(counts, top_k)}
    frame = pd.DataFrame({"step": np.repeat(steps, L), "layer": np.tile(np.asarray(layers, dtype=object), S)})
    for name, values in cols.items():
        frame[name] = np.asarray(values, dtype=np.float64).ravel()
    return frame


def pooled(layers: list[str], counts: np.ndarray, top_k: int | None) -> dict[str, dict]:
    """Per layer, summary_dict of its counts summed over steps."""
    total = counts.sum(0)                                                      # (L, E)
    tokens = tokens_of(total, top_k)                                           # (L,)
    with np.errstate(divide="ignore", invalid="ignore"):  # a layer without tokens: its ratios are NaN
        # tokens as a NumPy float: a layer without tokens divides to NaN (a Python 0.0 would raise)
        return {name: summary_dict(sums_from_counts(total[i], np.float64(tokens[i]), top_k, forwards=len(counts)))
                for i, name in enumerate(layers)}
