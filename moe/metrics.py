"""Small formulas every table and chart shares, written once: safe ratios, max/mean, bits, entropy and NMI.

Host-side NumPy; definitions in moe/definitions.py ("safe_ratio", "max_over_mean", "nmi", "balancedness_vllm",
"balancedness_sglang", "rank_max_over_mean").
"""
from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2)


def safe_ratio(num, den):
    """num / den elementwise, NaN where den ≤ 0 (nothing to divide by); a float for scalar inputs."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = den > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ok, num / np.where(ok, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def max_over_mean(values) -> float:
    """max / mean of non-negative values (1.0 = perfectly even); NaN when the mean is not positive."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    return float(max_over_mean_rows(v.ravel()))


def max_over_mean_rows(values) -> np.ndarray:
    """max_over_mean over the last axis, computed as max · n / Σ: for counts (integers below 2**53) both are exact, so
    equal ratios give equal floats and a tie stays a tie (max / (Σ / n) rounds twice: 6 / (18 / 5) and 1 / (3 / 5)
    differed in the last bit, and the "first on ties" worst (step, layer) was the second)."""
    v = np.asarray(values, dtype=np.float64)
    return safe_ratio(v.max(axis=-1) * v.shape[-1], v.sum(axis=-1))


def nats_to_bits(nats):
    """A quantity in nats (natural log) in bits: divided by ln 2."""
    return nats / LN2


def entropy(p) -> float:
    """−Σ p·ln p in nats of a distribution p (any shape), with 0·ln 0 = 0."""
    p = np.asarray(p, dtype=np.float64).ravel()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def nmi_from_counts(counts) -> float:
    """NMI = 2·I(A; B) / (H(A) + H(B)) in [0, 1] from a contingency table counts[a, b] ≥ 0 (natural logs).

    NaN when there is nothing to measure: no count at all, or both margins constant (H(A) = H(B) = 0,
    so NMI is 0/0). One constant margin and a varied other gives 0: the labels share nothing.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n <= 0:
        return float("nan")
    p = counts / n  # (A, B)
    pa, pb = p.sum(axis=1), p.sum(axis=0)  # (A,), (B,)
    h = entropy(pa) + entropy(pb)
    if h == 0:
        return float("nan")
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    return max(0.0, 2.0 * mi / h)  # rounding can give −1e-17


def normalized_mutual_information(a, b) -> float:
    """nmi_from_counts of two integer labelings of the same items (T,) and (T,)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"labelings must be non-empty and of equal length, got {a.shape} and {b.shape}")
    _, ai = np.unique(a.ravel(), return_inverse=True)  # (T,) dense label ids
    _, bi = np.unique(b.ravel(), return_inverse=True)
    counts = np.zeros((ai.max() + 1, bi.max() + 1))  # (A, B) contingency table
    np.add.at(counts, (ai, bi), 1.0)
    return nmi_from_counts(counts)


# --- balance of per-rank load (definitions "balancedness_vllm", "balancedness_sglang", "rank_max_over_mean")
SGLANG_EPS = 1e-5  # SGLang's compute_utilization_rate adds it to mean and max (python/sglang/srt/eplb/expert_distribution.py)


def balancedness_vllm(rank_load) -> np.ndarray:
    """mean_r / max_r over the last axis (W,), 0 where max is 0: vLLM's EPLB balancedness for one layer
    (vllm/distributed/eplb/eplb_state.py: `avg_tokens / max_tokens if max_tokens > 0 else 0.0`, which sums mean_r and
    max_r over the layers first, since vllm-project/vllm PR #51813; before it, eplb_state.py at 50feac95 reduced its
    (layers, ranks) tensor over the layer axis, 1.0 for any one layer: logs of such versions are not comparable)."""
    v = np.asarray(rank_load)
    if v.dtype.kind not in "iu":  # integer counts are averaged in float64 as they are, without a copy
        v = v.astype(np.float64)
    return vllm_ratio(v.mean(axis=-1, dtype=np.float64), v.max(axis=-1))


def vllm_ratio(mean, top) -> np.ndarray:
    """balancedness_vllm from each row's mean and max per rank (what a caller that has only those needs)."""
    return np.where(top > 0, mean / np.where(top > 0, top, 1), 0.0)


def balancedness_sglang(rank_load) -> np.ndarray:
    """(mean_r + 1e-5) / (max_r + 1e-5) over the last axis (W,): SGLang's utilization rate (1 for an idle layer)."""
    v = np.asarray(rank_load, dtype=np.float64)
    return (v.mean(axis=-1) + SGLANG_EPS) / (v.max(axis=-1) + SGLANG_EPS)


def rank_max_over_mean(rank_load) -> np.ndarray:
    """max_r / mean_r over the last axis (W,), NaN where the mean is 0: the predicted straggler factor."""
    return max_over_mean_rows(rank_load)
