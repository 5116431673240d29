"""Tables the charts show, derived from a host-side Trace: pure functions, no forward, no mutation.

Shape letters: T tokens, E experts, K top_k, R heatmap rows (≤ max_rows), C clusters.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch

from moe import Trace
from moe.metrics import nmi_from_counts, safe_ratio
from moe.stats import CONFIDENCE_CAP

HEATMAP_MAX_ROWS = 2000
HEATMAP_MAX_CELLS = 262_144  # 2000 rows at E ≤ 131, fewer rows for more experts: the browser stays fast


def heatmap_rows(n_experts: int, max_rows: int = HEATMAP_MAX_ROWS, max_cells: int = HEATMAP_MAX_CELLS) -> int:
    """The row limit of a tokens × experts heatmap: at most max_rows rows and max_cells cells."""
    return max(1, min(max_rows, max_cells // max(n_experts, 1)))


def _np(t: torch.Tensor) -> np.ndarray:
    """A float64 (or bool) NumPy copy of a host tensor; the trace itself is never touched."""
    t = t.detach().cpu()
    return t.numpy().copy() if t.dtype == torch.bool else t.double().numpy()


# --- per token ---------------------------------------------------------------------------------

def token_entropy(probs: np.ndarray) -> np.ndarray:
    """(T,) router entropy in nats, −Σ_e p log p with 0·log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, -probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)  # (T, E)
    terms = np.where(np.isnan(probs), np.nan, terms)  # NaN input stays visible
    return terms.sum(axis=1)


def token_confidence(probs: np.ndarray) -> np.ndarray:
    """(T,) min(p1/p2, 100) with p1 ≥ p2 the two largest probs; NaN when E = 1."""
    T, E = probs.shape
    if E < 2:
        return np.full(T, np.nan)
    top2 = -np.sort(np.partition(-probs, 1, axis=1)[:, :2], axis=1)  # (T, 2) descending, O(T·E)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = top2[:, 0] / top2[:, 1]
    return np.minimum(ratio, CONFIDENCE_CAP)  # p2 = 0 gives inf, capped like the engine


def _chosen(trace: Trace, probs: np.ndarray, routed: np.ndarray) -> tuple[list, list]:
    """Per token: the router's choice in selection order and its weights (before capacity)."""
    if trace.top_k_index is not None:
        idx = trace.top_k_index.cpu().numpy()  # (T, K)
        w = _np(trace.top_k_weights)           # (T, K)
        return [tuple(int(e) for e in row) for row in idx], [tuple(float(v) for v in row) for row in w]
    gates = _np(trace.gates)
    experts, weights = [], []
    for t in range(probs.shape[0]):  # expert_choice: a token gets 0..E experts, ordered by prob
        chosen = np.flatnonzero(routed[t])
        chosen = chosen[np.argsort(-probs[t, chosen], kind="stable")]
        experts.append(tuple(int(e) for e in chosen))
        weights.append(tuple(float(gates[t, e]) for e in chosen))
    return experts, weights


def token_table(trace: Trace) -> pd.DataFrame:
    """One row per token: chosen experts and weights, served/dropped experts, max prob, entropy, confidence."""
    probs, routed, served = _np(trace.probs), _np(trace.routed), _np(trace.served)
    experts, weights = _chosen(trace, probs, routed)
    return pd.DataFrame({
        "token": np.arange(probs.shape[0]),
        "experts": experts,
        "weights": weights,
        "served": [tuple(int(e) for e in np.flatnonzero(row)) for row in served],
        "dropped": [tuple(int(e) for e in np.flatnonzero(row)) for row in routed & ~served],
        "n_served": served.sum(axis=1).astype(np.int64),
        "max_prob": probs.max(axis=1),
        "entropy": token_entropy(probs),
        "confidence": token_confidence(probs),
    })


def token_detail(trace: Trace, t: int) -> pd.DataFrame:
    """One row per expert for token t: prob, logit, routed, served, dropped, gate, contribution."""
    T = trace.tokens
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < T:
        raise ValueError(f"token index must be an integer in 0..{T - 1}, got {t!r}")
    routed, served = trace.routed[t].cpu().numpy(), trace.served[t].cpu().numpy()
    return pd.DataFrame({
        "expert": np.arange(routed.shape[0]),
        "prob": _np(trace.probs[t]),
        "logit": _np(trace.router_logits[t]),
        "routed": routed,
        "served": served,
        "dropped": routed & ~served,
        "gate": _np(trace.gates[t]),
        "contribution": _np(trace.contributions[t]),
    })


# --- histograms and logit spread ---------------------------------------------------------------

def histogram(values: np.ndarray, edges: np.ndarray) -> pd.DataFrame:
    """Counts of the finite values in each bin [left, right) (the last bin is closed)."""
    finite = values[np.isfinite(values)]
    counts, edges = np.histogram(finite, bins=edges)
    return pd.DataFrame({"left": edges[:-1], "right": edges[1:], "count": counts.astype(np.int64)})


def entropy_histogram(trace: Trace, bins: int = 40) -> pd.DataFrame:
    """Token entropy binned on [0, ln E] (ln E is the uniform router's entropy)."""
    top = max(math.log(trace.probs.shape[1]), 1e-6)
    values = np.clip(token_entropy(_np(trace.probs)), 0.0, top)  # rounding may pass ln E by an ulp
    return histogram(values, np.linspace(0.0, top, bins + 1))


def confidence_histogram(trace: Trace, bins: int = 40) -> pd.DataFrame:
    """Token confidence min(p1/p2, 100) binned on log-spaced edges from 1 to 100."""
    return histogram(token_confidence(_np(trace.probs)), np.geomspace(1.0, CONFIDENCE_CAP, bins + 1))


def logit_quantiles(trace: Trace) -> pd.DataFrame:
    """Per expert: min, q1, median, q3, max, mean, std of its finite router logits over tokens."""
    logits = np.ascontiguousarray(_np(trace.router_logits).T)  # (E, T): each expert's logits contiguous
    logits = np.where(np.isfinite(logits), logits, np.nan)  # non-finite logits are counted by `nonfinite`
    nan = np.isnan(logits).any()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN expert gives NaN, as intended
        quantile, lo, hi, mean, std = ((np.nanquantile, np.nanmin, np.nanmax, np.nanmean, np.nanstd) if nan
                                       else (np.quantile, np.min, np.max, np.mean, np.std))  # nan* are slow
        q1, median, q3 = quantile(logits, [0.25, 0.5, 0.75], axis=1)  # (E,) each
        return pd.DataFrame({
            "expert": np.arange(logits.shape[0]), "min": lo(logits, axis=1), "q1": q1, "median": median,
            "q3": q3, "max": hi(logits, axis=1), "mean": mean(logits, axis=1), "std": std(logits, axis=1),
            "n": (~np.isnan(logits)).sum(axis=1).astype(np.int64)})


# --- tokens × experts heatmaps -----------------------------------------------------------------

def token_order(trace: Trace, labels: torch.Tensor | None = None,
                names: list[str] | None = None) -> tuple[np.ndarray, list[str], str]:
    """(perm (T,), group name of each sorted row, what the sort is): tokens grouped by topic when labels
    exist, then by top-1 expert (largest gate; "none" when no expert served the token), then by index."""
    gates = _np(trace.gates)                                  # (T, E)
    served = gates.max(axis=1) > 0                            # (T,) some expert served it
    top1 = np.where(served, gates.argmax(axis=1), gates.shape[1])  # (T,) E = "none", sorted last
    index = np.arange(gates.shape[0])
    if labels is None:
        perm = np.lexsort((index, top1))
        groups = [f"expert {e}" if e < gates.shape[1] else "none" for e in top1[perm]]
        return perm, groups, "tokens by top-1 expert"
    lab = labels.detach().cpu().numpy().astype(np.int64)     # (T,)
    perm = np.lexsort((index, top1, lab))
    groups = [names[c] if names is not None and c < len(names) else f"topic {c}" for c in lab[perm]]
    return perm, groups, "tokens by topic"


def sorted_matrix(matrix: np.ndarray, perm: np.ndarray, groups: list[str],
                  max_rows: int = HEATMAP_MAX_ROWS) -> tuple[np.ndarray, list[str], str, list[str]]:
    """Rows of (T, E) `matrix` in `perm` order, aggregated above max_rows; returns (matrix, row labels,
    note, group of each row). A bin holds tokens of one group (`group_bin_edges`), so every group keeps a row."""
    if len(perm) <= max_rows:
        shown, labels, note = aggregate_rows(matrix[perm], max_rows, perm)
        return shown, labels, note, list(groups)
    edges = group_bin_edges(groups, max_rows)
    shown, labels, note = aggregate_rows(matrix[perm], max_rows, perm, edges)  # (R, E)
    row_groups = [groups[i] for i in edges[:-1]]
    apart = len(group_starts(groups)) <= max_rows  # else equal bins across the groups
    return shown, labels, note + (" A bin never mixes two groups." if apart else ""), row_groups


def group_starts(groups: list[str]) -> np.ndarray:
    """The first row of each run of equal `groups`."""
    g = np.asarray(groups)
    return np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1]) if len(g) else np.zeros(0, np.int64)


def group_bin_edges(groups: list[str], max_rows: int) -> np.ndarray:
    """(R + 1,) bin starts, then T, for T rows whose runs of equal `groups` stay apart: a bin per row up to max_rows
    rows; above, a run of n rows gets min(n, 1 + n·(max_rows − G) // T) near-equal bins (G runs), so R ≤ max_rows and
    no bin holds two groups. With more runs than max_rows, equal bins across them (bin_edges; a bin then takes its
    first row's group)."""
    T = len(groups)
    if T <= max_rows:
        return np.arange(T + 1)
    starts = group_starts(groups).tolist()
    if len(starts) > max_rows:
        return bin_edges(T, max_rows)
    bounds, spare = starts + [T], max_rows - len(starts)
    edges = [np.linspace(a, b, min(b - a, 1 + (b - a) * spare // T) + 1).round().astype(np.int64)[:-1]
             for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate(edges + [np.array([T])])


def bin_tokens(tokens: np.ndarray, shown: int = 3) -> str:
    """A bin's token indices as a row label: `a–b` when they are consecutive, else the first `shown` ascending and
    how many more (bins are disjoint, so labels never repeat)."""
    ids = np.sort(np.asarray(tokens, dtype=np.int64))
    if len(ids) and ids[-1] - ids[0] == len(ids) - 1:
        return f"{ids[0]}–{ids[-1]}" if len(ids) > 1 else str(ids[0])
    more = f", … (+{len(ids) - shown})" if len(ids) > shown else ""
    return ", ".join(str(i) for i in ids[:shown]) + more


def aggregate_rows(matrix: np.ndarray, max_rows: int = HEATMAP_MAX_ROWS, tokens: np.ndarray | None = None,
                   edges: np.ndarray | None = None) -> tuple[np.ndarray, list[str], str]:
    """(T, E) → (R, E) with R ≤ max_rows: above the limit, means of bins of neighbouring rows (`edges`: their starts,
    then T; default: max_rows equal bins, bin_edges). `tokens` (T,): the token of each row (default: row t is token
    t, so a bin is consecutive tokens, labelled `a–b`); with them, a bin's label names its tokens (bin_tokens)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    T = matrix.shape[0]
    if T <= max_rows:
        return matrix.copy(), [str(int(t)) for t in (range(T) if tokens is None else tokens)], ""
    edges = bin_edges(T, max_rows) if edges is None else edges        # (R+1,)
    sums = np.add.reduceat(matrix, edges[:-1], axis=0)                # (R, E)
    sizes = np.diff(edges)                                            # (R,)
    bins = list(zip(edges[:-1], edges[1:]))
    labels = ([f"{a}–{b - 1}" for a, b in bins] if tokens is None else [bin_tokens(tokens[a:b]) for a, b in bins])
    what = "consecutive tokens" if tokens is None else "tokens next to each other in this order (hover names them)"
    note = f"Aggregated: {T} tokens shown as {len(bins)} rows, each the mean of {sizes.min()}–{sizes.max()} {what}."
    return sums / sizes[:, None], labels, note


def bin_edges(T: int, max_rows: int) -> np.ndarray:
    """(max_rows + 1,) the first row of each of max_rows equal bins of T rows, then T (sizes differ by ≤ 1)."""
    return np.linspace(0, T, max_rows + 1).round().astype(np.int64)


def step_rows(matrix: np.ndarray, steps, reduce=np.add, max_cells: int = HEATMAP_MAX_CELLS
              ) -> tuple[np.ndarray, list[int], str]:
    """A steps × columns (S, C) heatmap within max_cells cells: one row per step, or, for a longer log, rows of
    consecutive steps (bin_edges, sizes differ by ≤ 1) reduced by `reduce` (np.add: summed; np.fmax: the largest,
    NaN skipped). Returns the rows (R, C), each row's first step, and a note for the title ("" when not binned)."""
    S, C = matrix.shape
    rows = max(1, min(S, max_cells // max(C, 1)))
    steps = [int(v) for v in steps]
    if S <= rows:
        return matrix, steps, ""
    edges = bin_edges(S, rows)                                        # (R+1,)
    sizes = np.diff(edges)
    how = "the sum" if reduce is np.add else "the largest"
    note = f"{S:,} steps in {rows:,} rows, each {how} of {sizes.min()}–{sizes.max()} consecutive steps"
    return reduce.reduceat(matrix, edges[:-1], axis=0), [steps[i] for i in edges[:-1]], note


def sorted_token_matrix(trace: Trace, field: str, labels: torch.Tensor | None = None,
                        names: list[str] | None = None, max_rows: int = HEATMAP_MAX_ROWS
                        ) -> tuple[np.ndarray, list[str], str, list[str], str]:
    """A (T, E) trace field ("contributions", "probs") with rows in token_order, aggregated above max_rows:
    (matrix, row labels, note, group of each row, what the sort is)."""
    perm, groups, sort_text = token_order(trace, labels, names)
    matrix, row_labels, note, row_groups = sorted_matrix(_np(getattr(trace, field)), perm, groups, max_rows)
    return matrix, row_labels, note, row_groups, sort_text


def contribution_matrix(trace: Trace, max_rows: int = HEATMAP_MAX_ROWS) -> tuple[np.ndarray, list[str], str]:
    """Contributions (T, E), aggregated above max_rows tokens; returns (matrix, row labels, note)."""
    return aggregate_rows(_np(trace.contributions), max_rows)


def probability_matrix(trace: Trace, max_rows: int = HEATMAP_MAX_ROWS) -> tuple[np.ndarray, list[str], str]:
    """Router probabilities (T, E), aggregated above max_rows tokens; returns (matrix, row labels, note)."""
    return aggregate_rows(_np(trace.probs), max_rows)


# --- pathways ----------------------------------------------------------------------------------

def conditional_coactivation(trace: Trace) -> pd.DataFrame:
    """(E, E) P(j | i) = coactivation[i, j] / coactivation[i, i]; a NaN row for an idle expert i."""
    co = _np(trace.coactivation)  # (E, E)
    cond = safe_ratio(co, np.diag(co)[:, None])  # (E, E) row i divided by its diagonal
    E = co.shape[0]
    return pd.DataFrame(cond, index=pd.RangeIndex(E, name="i"), columns=pd.RangeIndex(E, name="j"))


def topk_combinations(trace: Trace, n: int = 15) -> pd.DataFrame:
    """The n most frequent served expert sets: combo (sorted tuple), label, count, share = count / T."""
    served = trace.served.cpu().numpy()  # (T, E) bool
    T = served.shape[0]
    packed = np.ascontiguousarray(np.packbits(served, axis=1))  # (T, ceil(E/8))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()  # (T,) one opaque key per set
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    combos = [tuple(int(e) for e in np.flatnonzero(served[i])) for i in first]
    # Most frequent first; equal counts in combination order, so the table is deterministic.
    order = sorted(range(len(combos)), key=lambda i: (-counts[i], combos[i]))[:n]
    combos = [combos[i] for i in order]
    count = counts[order].astype(np.int64)
    return pd.DataFrame({
        "combo": combos,
        "label": [" + ".join(str(e) for e in c) if c else "none" for c in combos],
        "count": count,
        "share": count / T,
    })


# --- scenario ----------------------------------------------------------------------------------

def cluster_share(trace: Trace, labels: torch.Tensor, names: list[str] | None = None) -> pd.DataFrame:
    """(C, E) share of each cluster's served assignments going to each expert; rows sum to 1 (NaN if none)."""
    counts = cluster_counts(trace, labels, len(names) if names is not None else 0)  # (C, E)
    C = counts.shape[0]
    share = safe_ratio(counts, counts.sum(axis=1, keepdims=True))  # (C, E)
    index = [names[c] if names is not None and c < len(names) else f"cluster {c}" for c in range(C)]
    return pd.DataFrame(share, index=pd.Index(index, name="cluster"),
                        columns=pd.RangeIndex(counts.shape[1], name="expert"))


def cluster_counts(trace: Trace, labels: torch.Tensor, min_clusters: int = 0) -> np.ndarray:
    """(C, E) served assignments of each cluster's tokens to each expert (the contingency table)."""
    served = _np(trace.served).astype(np.float64)  # (T, E)
    lab = labels.detach().cpu().numpy().astype(np.int64)  # (T,)
    if lab.shape[0] != served.shape[0]:
        raise ValueError(f"labels have {lab.shape[0]} entries but the trace has {served.shape[0]} tokens")
    C = max(int(lab.max()) + 1 if lab.size else 0, min_clusters)
    counts = np.zeros((C, served.shape[1]))
    np.add.at(counts, lab, served)  # (C, E) served assignments per cluster and expert
    return counts


def routing_nmi(trace: Trace, labels: torch.Tensor) -> float:
    """Normalised mutual information between topic and serving expert over served assignments:
    `2·I(L; E) / (H(L) + H(E))`, natural logs; 0 = experts ignore topics, 1 = topic ↔ expert one-to-one.
    NaN when there is nothing to measure (no served assignment, or one topic and one expert); moe.metrics."""
    return nmi_from_counts(cluster_counts(trace, labels))  # (C, E) contingency table


# --- experts per token -------------------------------------------------------------------------

def experts_per_token(trace: Trace) -> pd.DataFrame:
    """Tokens by how many experts served them: n (0..max), tokens, share = tokens / T."""
    n = trace.served.sum(dim=1).cpu().numpy().astype(np.int64)  # (T,)
    counts = np.bincount(n, minlength=max(int(n.max(initial=0)), trace.config.top_k) + 1)
    return pd.DataFrame({"n": np.arange(len(counts)), "tokens": counts.astype(np.int64),
                         "share": counts / max(len(n), 1)})
