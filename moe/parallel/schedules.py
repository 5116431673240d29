"""How a plan holds over the windows after it (moe.parallel.judge): the p50 vLLM balancedness per rebalance interval
(plan k measured on windows k + 1 … k + N) and on the rest of the run, each computed span by span (a plan serves a
span of consecutive windows, measured by its busiest rank only). Shapes: N windows, E experts, K plans, P slots.
"""
from __future__ import annotations

import numpy as np

from moe.metrics import vllm_ratio
from moe.parallel.replay import peak_load_spans

MAX_REST_PLANS = 64  # plans measured on the whole rest of the run: at most this many, evenly spaced


def span_balancedness(windows, experts, ranks, W: int, split: tuple, columns: np.ndarray, mean: np.ndarray, plan_of,
                      lo, hi) -> np.ndarray:
    """vLLM balancedness of windows lo[m] … hi[m] − 1 under the plan of window plan_of[m], span after span: plans
    (K, P) slot experts and ranks with their replica split, counts (N, E) and transposed (E, N). A rank's mean load
    is the window's tokens / W (`mean` (N,)) whatever the plan: the chunks of an expert sum to its count."""
    return vllm_ratio(mean[span_windows(lo, hi)],
                      peak_load_spans(windows, experts, ranks, W, plan_of, lo, hi, split, columns))


def span_windows(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The windows lo[m] … hi[m] − 1 of every span, one span after another."""
    size = hi - lo
    return np.repeat(lo - np.cumsum(size) + size, size) + np.arange(size.sum())


def schedules(N: int, intervals, spans, every_window=None) -> tuple[dict, float]:
    """p50 balancedness per rebalance interval N (plan k measured on windows k + 1 … k + N, k = 0, N, 2N, …), and on
    the rest of the run (every window after k under the plan of window k, for at most MAX_REST_PLANS evenly spaced k):
    `spans(plan_of, lo, hi)` gives the balancedness of windows lo[m] … hi[m] − 1 under the plan of window plan_of[m];
    `every_window`: the values of interval 1 (each plan on the next window), when the caller has them."""
    out = {}
    for every in [k for k in intervals if k < max(N, 2)] or [1]:  # an interval longer than the log says nothing
        starts = np.arange(0, max(N - 1, 0), every)
        out[every] = p50(every_window if every == 1 and every_window is not None
                         else spans(starts, starts + 1, np.minimum(starts + every + 1, N)))
    starts = np.unique(np.linspace(0, N - 2, min(MAX_REST_PLANS, max(N - 1, 0))).astype(np.int64)) if N > 1 else []
    starts = np.asarray(starts, dtype=np.int64)
    return out, p50(spans(starts, starts + 1, np.full(len(starts), N)) if len(starts) else np.zeros(0))


def p50(values: np.ndarray) -> float:
    """The median, NaN when there are no values."""
    return float(np.median(values)) if len(values) else float("nan")
