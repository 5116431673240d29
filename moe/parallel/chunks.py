"""The replica split rule, written once: an expert with c slots cuts each window's n tokens into c contiguous chunks
of near-equal size (cut at i·n // c), the i-th chunk to its i-th slot in slot order (`chunk_share`, `replica_index`),
and the compiled loops that apply it to windows for moe.parallel.replay. Those loops live here, beside the rule they
call: numba checks a cached kernel against its own file only, so a kernel in another file would keep an old rule.
"""
from __future__ import annotations

import threading

import numpy as np

from moe.compiled import jit, ufunc


def replica_index(slot_expert: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slot (..., P): its replica index among its expert's slots (slot order) and that expert's slot count
    (any negative entry counts as one more expert)."""
    slot_expert = np.asarray(slot_expert, dtype=np.int64)
    rows = np.ascontiguousarray(slot_expert.reshape(-1, slot_expert.shape[-1]))
    index, count = np.empty_like(rows), np.empty_like(rows)
    if rows.size:
        _replica_index(rows, max(int(rows.max()), -1) + 2, index, count)
    return index.reshape(slot_expert.shape), count.reshape(slot_expert.shape)


@jit
def _replica_index(rows, size, index, count):
    seen = np.zeros(size, np.int64)
    for x in range(rows.shape[0]):
        for p in range(rows.shape[1]):
            e = max(rows[x, p], -1) + 1
            index[x, p] = seen[e]
            seen[e] += 1
        for p in range(rows.shape[1]):
            count[x, p] = seen[max(rows[x, p], -1) + 1]
        for p in range(rows.shape[1]):
            seen[max(rows[x, p], -1) + 1] = 0


_COMPILING = threading.Lock()
_READY = threading.Event()


def chunk_share(n, index, count):
    """`share` (the rule) called from Python: its int64 loop is compiled on the first call, once, under a lock. Two
    threads (layers replayed side by side, or two sessions of the dashboard) each asked numba to compile it on their
    first call: a NumbaWarning on stderr ("Compilation requested for previously compiled argument types"). Compiling
    at import instead would add about 0.2 s to every import."""
    if not _READY.is_set():
        with _COMPILING:
            if not _READY.is_set():
                share(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.int64))
                _READY.set()
    return share(n, index, count)


@ufunc  # compiled on first use (for int64, by chunk_share), not at import
def share(n, index, count):
    """The index-th of count near-equal contiguous chunks of n (the cut points i·n // c), elementwise: a ufunc, also
    called from the compiled loops below. Below 2**32 tokens and 2**20 slots the cut points come from
    float64 division, several times faster than integer division and exact there: (index + 1)·n < 2**52 is exact,
    and a correctly rounded quotient lands within q·2**-53 < 1/count of x / count, so never on the next integer (n
    >= 0: int() truncates where // floors)."""
    if count == 2:  # the common split, without a division (>> 1 floors, negative n too)
        return n - (n >> 1) if index else n >> 1
    if 0 <= n < 4294967296 and count <= 1048576:
        return int((index + 1) * n / count) - int(index * n / count)
    return (index + 1) * n // count - index * n // count


@jit
def _in_range(slot_expert, slot_rank, E, W):
    """Every used slot (expert >= 0) names an expert in 0..E-1 and a rank in 0..W-1."""
    for k in range(slot_expert.shape[0]):
        for p in range(slot_expert.shape[1]):
            if slot_expert[k, p] >= E or (slot_expert[k, p] >= 0 and not 0 <= slot_rank[k, p] < W):
                return False
    return True


@jit
def rank_rows(counts, slot_expert, slot_rank, index, count, plan_of, window_of, out):
    """Add to out[i] (W,) the load of window window_of[i] of counts (N, E) on each rank under plan plan_of[i]
    (slot_expert, slot_rank (K, P), -1: unused; index, count: replica_index of slot_expert). False (and out
    unfinished) when a slot names an expert outside 0..E-1 or a rank outside 0..W-1; the caller checks the rows."""
    if not _in_range(slot_expert, slot_rank, counts.shape[1], out.shape[1]):
        return False
    for i in range(len(plan_of)):
        k, row = plan_of[i], counts[window_of[i]]
        for p in range(slot_expert.shape[1]):
            e = slot_expert[k, p]
            if e < 0:
                continue
            n, c = row[e], count[k, p]
            if c > 1:  # the chunk rule, on replicated slots only
                n = share(n, index[k, p], c)
            out[i, slot_rank[k, p]] += n
    return True


@jit
def peak_rows(columns, slot_expert, slot_rank, index, count, plan_of, lo, hi, span, out):
    """The busiest rank's load of windows lo[m] .. hi[m] − 1 under plan plan_of[m], span after span, into out; columns
    (E, N) the counts transposed, span (W, ≥ the longest span) scratch. False as rank_rows (the caller checks spans)."""
    if not _in_range(slot_expert, slot_rank, columns.shape[0], span.shape[0]):
        return False
    at = 0
    for m in range(len(plan_of)):
        k, a, n = plan_of[m], lo[m], hi[m] - lo[m]
        load = span[:, :n]
        load[:] = 0
        for p in range(slot_expert.shape[1]):
            e = slot_expert[k, p]
            if e < 0:
                continue
            src, dst, c = columns[e, a: a + n], load[slot_rank[k, p]], count[k, p]
            if c == 1:
                for t in range(n):
                    dst[t] += src[t]
            else:  # the chunk rule, on replicated slots only
                j = index[k, p]
                for t in range(n):
                    dst[t] += share(src[t], j, c)
        peak = out[at: at + n]
        peak[:] = load[0]
        for r in range(1, load.shape[0]):  # row by row: contiguous
            row = load[r]
            for t in range(n):
                peak[t] = max(peak[t], row[t])
        at += n
    return True
