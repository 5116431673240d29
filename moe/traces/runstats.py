"""What the Runs page shows for a run, computed from a routing log's counts (S, L, E) and per-token ids: percentiles
across layers, dead experts over time, hot-expert persistence, slot usage and co-occurrence of one (step, layer).

Pure numpy, no forward; every number's definition is in moe/definitions.py (the `run_*` keys) and each function is
checked against a naive loop in tests/test_runstats.py. Shape letters: S steps, L layers, E experts, N tokens,
K slots per token.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moe.metrics import max_over_mean_rows

PERCENTILES = (50, 95)          # with the max: what Megatron-LM's users ask for (NVIDIA/Megatron-LM #2398)
# Balancedness, as the stacks log it (mean / max over EP ranks, not experts): SGLang
# python/sglang/srt/eplb/expert_distribution.py compute_utilization_rate (per layer, then averaged over layers);
# vLLM vllm/distributed/eplb/eplb_state.py EplbState.step (Σ_l mean_r / Σ_l max_r). We show max/mean over experts.
HOT_SHARE = 0.1                 # an expert is hot at a step when it is among the top 10% of experts by tokens
CO_CHUNK_ENTRIES = 1 << 22      # (token, slot, slot) pairs counted at once (bounds their memory)


def layer_percentiles(steps: np.ndarray, counts: np.ndarray) -> pd.DataFrame:
    """Per step, across layers: p50/p95/max of tokens per expert (over the L·E cells) and of max/mean (over the L
    layers that routed a token). Long: one row per (step, stat); stat is "tokens_per_expert" or "max_over_mean"."""
    S, L, E = counts.shape
    cells = counts.reshape(S, L * E).astype(np.float64)                       # (S, L·E)
    c = counts.astype(np.float64)
    ratio = max_over_mean_rows(c)                                             # (S, L), NaN where a layer is empty
    frames = []
    for stat, values in (("tokens_per_expert", cells), ("max_over_mean", ratio)):
        empty = np.isnan(values).all(1)                                       # (S,) every layer empty at that step
        values = np.where(empty[:, None], 0.0, values)                        # no all-NaN row: numpy would warn
        row = {"step": np.asarray(steps, dtype=np.int64), "stat": stat}
        for q in PERCENTILES:
            row[f"p{q}"] = np.where(empty, np.nan, nan_percentile_rows(values, q))  # (S,) linear interpolation
        row["max"] = np.where(empty, np.nan, np.nanmax(values, axis=1))
        frames.append(pd.DataFrame(row))
    return pd.concat(frames, ignore_index=True)


def nan_percentile_rows(values: np.ndarray, q: float) -> np.ndarray:
    """np.nanpercentile(values, q, axis=1) (linear interpolation) of (S, n) values: one np.percentile over the rows
    with as many non-NaN values, each row sorted NaN last, where numpy calls a function per row (50,000 steps took an
    auditor's Runs page 28 s, every rerun)."""
    out = np.full(len(values), np.nan)
    valid = (~np.isnan(values)).sum(axis=1)                                   # (S,)
    ordered = np.sort(values, axis=1)                                         # NaN last
    for n in np.unique(valid[valid > 0]):
        rows = valid == n
        out[rows] = np.percentile(ordered[rows, :n], q, axis=1)
    return out


def dead_experts(steps: np.ndarray, layers: list[str], counts: np.ndarray) -> pd.DataFrame:
    """One row per (step, layer): experts that received no token there (`dead`), step-major."""
    S, L, _ = counts.shape
    dead = (counts == 0).sum(-1)                                              # (S, L)
    return pd.DataFrame({"step": np.repeat(np.asarray(steps, dtype=np.int64), L),
                         "layer": np.tile(np.asarray(layers, dtype=object), S), "dead": dead.ravel()})


def hot_top_n(n_experts: int) -> int:
    """N of "the top N experts": ceil(HOT_SHARE · E), at least 1."""
    return max(1, math.ceil(HOT_SHARE * n_experts))


def hot_mask(load: np.ndarray, top_n: int, order=None) -> np.ndarray:
    """(S, E) bool: expert e is among the top_n experts by tokens at step s (lower index first on ties) and received
    at least one token (an idle expert is never hot, even when fewer than top_n experts routed a token). `order`: the
    experts of each step, most tokens first (that stable sort), when the caller has it."""
    S, E = load.shape
    if not 1 <= top_n <= E:
        raise ValueError(f"the hot-expert count must be from 1 to E={E}, got {top_n}")
    if order is None:
        order = np.argsort(-load, axis=1, kind="stable")                      # stable: the lower index first
    order = order[:, :top_n]                                                  # (S, N)
    mask = np.zeros((S, E), dtype=bool)
    mask[np.arange(S)[:, None], order] = True
    return mask & (load > 0)


def hot_persistence(load: np.ndarray, top_n: int) -> pd.DataFrame:
    """Per expert of one layer's load (S, E): steps hot, their share of all steps, the longest run of consecutive
    hot steps, and the run still going at the last step."""
    mask = hot_mask(load, top_n)                                              # (S, E)
    run = np.zeros(mask.shape[1], dtype=np.int64)                             # (E,) current run length
    longest = np.zeros_like(run)
    for hot in mask:                                                          # S steps, vectorised over experts
        run = np.where(hot, run + 1, 0)
        longest = np.maximum(longest, run)
    hot_steps = mask.sum(0)
    return pd.DataFrame({"expert": np.arange(mask.shape[1]), "hot_steps": hot_steps,
                         "hot_share": hot_steps / mask.shape[0], "longest_run": longest, "current_run": run})


def slot_usage(ids: np.ndarray, n_experts: int) -> np.ndarray:
    """(K, E): how many tokens put expert e in slot k (ids (N, K); -1 = an empty slot, skipped)."""
    N, K = ids.shape
    slot = np.broadcast_to(np.arange(K), (N, K))
    keep = ids >= 0
    flat = np.bincount((slot[keep] * n_experts + ids[keep]).astype(np.int64), minlength=K * n_experts)
    return flat.reshape(K, n_experts)


def co_occurrence(ids: np.ndarray, n_experts: int, chunk_entries: int = CO_CHUNK_ENTRIES) -> np.ndarray:
    """(E, E): tokens that chose both e and f (the diagonal: tokens that chose e); ids (N, K), -1 skipped, an id
    repeated within a token counted once. Counted from the pairs of each token's slots, N·K² of them (chunks of
    `chunk_entries` pairs), not a one-hot product of N·E² (88 s at E = 16,384 for one token)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64), axis=1)                            # (N, K)
    ids[:, 1:][ids[:, 1:] == ids[:, :-1]] = -1                                        # a repeated id counts once
    N, K = ids.shape
    out = np.zeros(n_experts * n_experts, dtype=np.int64)
    rows = max(1, chunk_entries // max(K * K, 1))
    for lo in range(0, N, rows):
        part = ids[lo:lo + rows]
        a, b = part[:, :, None], part[:, None, :]                                     # (n, K, 1), (n, 1, K)
        pair = (a * n_experts + b)[(a >= 0) & (b >= 0)]                               # every (e, f) of a token
        out += np.bincount(pair, minlength=n_experts * n_experts)
    return out.reshape(n_experts, n_experts)
