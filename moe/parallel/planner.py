"""Our planner's steps on many rows (windows × layers): give each redundant slot to the expert whose replicas carry the
most load each (`replicate`), pack the replicas, heaviest first, onto the least loaded rank that still has a free slot
and does not hold that expert yet (`pack`), then a local search moves or swaps single replicas off the busiest rank
while that helps (`refine`). `balanced_rows` runs the three on every row: the first two with the shared greedy kernels
(moe.parallel.greedy), the local search compiled here, one row at a time, on the rows where a cheap conservative test
(`_may_refine`: it never skips a row the search would change) finds a move or swap that could lighten the busiest
rank. A rank's weight is the sum of its replicas' loads in list order. moe.parallel.placement wraps one row of it in a
Placement (`balanced`, `plan`). Shapes: X rows, E experts, W ranks, P = E + R slots, C = ceil(P / W) slots per rank.
"""
from __future__ import annotations

import numpy as np

from moe.compiled import jit
from moe.parallel import greedy


def replicate(load: np.ndarray, redundant_slots: int, world_size: int) -> np.ndarray:
    """(E,) replica count per expert: each extra slot goes to the expert with the most load per replica (ties: the
    lower expert; at most one replica per rank, so at most W replicas of an expert)."""
    return greedy.top_up(np.asarray(load, dtype=np.float64)[None], redundant_slots, world_size)[0][0]


def pack(load: np.ndarray, count: np.ndarray, world_size: int) -> tuple[tuple[int, ...], ...]:
    """Replicas (load/count each), heaviest first (ties: the lower expert), to the least loaded rank with room not
    holding that expert (ties: the rank with fewer experts, then the lower rank); ranks hold ceil(P / W) slots at most.
    ValueError when a replica finds no rank with room free of its expert."""
    held = _packed(np.asarray(load, dtype=np.float64)[None], np.asarray(count)[None], world_size)
    return tuple(tuple(int(e) for e in r if e >= 0) for r in held[0])


def rank_lists(expert: np.ndarray, rank: np.ndarray, world_size: int) -> tuple[tuple[int, ...], ...]:
    """One row's slots (P,) as each rank's experts, in slot order."""
    return tuple(tuple(expert[rank == r].tolist()) for r in range(world_size))


def pack_rows(load: np.ndarray, count: np.ndarray, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`pack` for every row of load and count (X, E) (each row's counts sum to the same P): the expert and rank of
    every slot (X, P), rank by rank, experts ascending within a rank."""
    return _slots(_packed(np.asarray(load, dtype=np.float64), np.asarray(count), world_size))


def balanced_rows(load, world_size: int, redundant_slots: int, order=None) -> tuple[np.ndarray, np.ndarray]:
    """Our layout (replicate, pack, refine) for every row of load (X, E): slot experts and ranks (X, P), rank by rank,
    experts ascending. `order`: greedy.heaviest_first(load), when the caller has it. The caller checks the arguments
    (moe.parallel.placement.check_plan_args)."""
    load = np.ascontiguousarray(load, dtype=np.float64)
    if not len(load):
        return np.zeros((0, load.shape[1] + redundant_slots), dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
    order = greedy.heaviest_first(load) if order is None else order
    count = greedy.top_up(load, redundant_slots, world_size, order)[0]               # (X, E)
    held = _packed(load, count, world_size, order)
    _refine_rows(held, load / count, 4 * load.shape[1], True)
    return _slots(held)


def _packed(load: np.ndarray, count: np.ndarray, world_size: int, order=None) -> np.ndarray:
    """`pack` of every row as each rank's experts (X, W, C), ascending, -1 after the last."""
    order = greedy.heaviest_first(load) if order is None else order
    expert = greedy.replica_order(load, count, order)                                 # (X, P) in placing order
    P = expert.shape[1]
    weight = np.divide(load, count, out=np.zeros_like(load), where=count > 0)         # one replica's load
    try:
        rank, _ = greedy.pack(weight, world_size, -(-P // world_size), item=expert, group=expert, fewer_first=True)
    except greedy.NoPackError:
        raise ValueError("no rank with room is free of an expert: these replica counts cannot be packed with a "
                         "distinct expert per slot of a rank") from None
    held = np.full((len(load), world_size, -(-P // world_size)), -1, dtype=np.int64)
    _lists(expert, rank, held)
    return held


@jit
def _lists(expert, rank, held):
    """Slots (X, P) into each rank's list (X, W, C), experts ascending."""
    n = np.zeros(held.shape[1], np.int64)
    for x in range(held.shape[0]):
        n[:] = 0
        for p in range(expert.shape[1]):
            r = rank[x, p]
            held[x, r, n[r]] = expert[x, p]
            n[r] += 1
        _sort_lists(held[x], n)


@jit
def _sort_lists(lists, n):
    for r in range(lists.shape[0]):
        for i in range(1, n[r]):
            j = i
            while j > 0 and lists[r, j - 1] > lists[r, j]:
                lists[r, j - 1], lists[r, j] = lists[r, j], lists[r, j - 1]
                j -= 1


def _slots(held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each rank's list (X, W, C) as slot experts and ranks (X, P), rank by rank, in list order."""
    X, W, C = held.shape
    keep = held.reshape(X, -1) >= 0
    P = int(keep[0].sum()) if X else 0
    rank = np.broadcast_to(np.repeat(np.arange(W), C), (X, W * C))
    return held.reshape(X, -1)[keep].reshape(X, P), rank[keep].reshape(X, P)


def refine(ranks, load: np.ndarray, count: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Local search after `pack`: move one replica off the busiest rank, or swap it for a lighter one, while
    that lightens the busiest rank and leaves the other rank lighter than the busiest was (greedy packing
    leaves such gains on near-even loads). Keeps the slots per rank, an expert on every rank, none twice.
    Each rank's experts keep their list order while searching (a move appends); the result is sorted."""
    held = _held(ranks)
    _refine_rows(held, (np.asarray(load, dtype=np.float64) / count)[None], 4 * len(load), False)
    return tuple(tuple(sorted(int(e) for e in r if e >= 0)) for r in held[0])


def may_refine(ranks, w: np.ndarray) -> bool:
    """`_may_refine` of one row: False only where the local search provably takes no step."""
    held, w = _held(ranks), np.asarray(w, dtype=np.float64)
    n = (held[0] >= 0).sum(axis=1)
    return bool(_may_refine(held[0], n, w, _weights(held[0], n, w)))


def best_step(ranks, w: np.ndarray, weight, slots: int) -> tuple | None:
    """The local search's step on one row (ranks in list order, a rank holds at most `slots`): (busiest rank, other
    rank, expert moved there, expert moved back or None), or None when no step helps."""
    held = _held(ranks, slots)[0]
    b, s, e, f = _best_step(held, (held >= 0).sum(axis=1), np.asarray(w, dtype=np.float64),
                            np.asarray(weight, dtype=np.float64))
    return None if b < 0 else (int(b), int(s), int(e), None if f < 0 else int(f))


def _held(ranks, slots: int | None = None) -> np.ndarray:
    """One row's rank lists as (1, W, slots) (default: the longest list), -1 after the last expert."""
    held = np.full((1, len(ranks), slots or max(len(r) for r in ranks)), -1, dtype=np.int64)
    for r, experts in enumerate(ranks):
        held[0, r, : len(experts)] = experts
    return held


@jit
def _weights(lists, n, w):
    """Each rank's weight: its replicas' loads summed in list order."""
    weight = np.zeros(lists.shape[0])
    for r in range(lists.shape[0]):
        for i in range(n[r]):
            weight[r] += w[lists[r, i]]
    return weight


@jit
def _refine_rows(held, w, max_steps, sort):
    """`refine` on every row of held (X, W, C) (each rank's experts in list order, -1 after the last) with w (X, E)
    the load of one replica of each expert, in place, skipping rows `_may_refine` rules out; with `sort`, the lists
    of a row the search ran on are sorted after (the others are left as they were). Each step lowers (max weight,
    ranks at the max); a row stops when no step helps or after max_steps."""
    X, W, C = held.shape
    n = np.empty(W, np.int64)
    for x in range(X):
        lists, wx = held[x], w[x]
        for r in range(W):
            n[r] = 0
            while n[r] < C and lists[r, n[r]] >= 0:
                n[r] += 1
        weight = _weights(lists, n, wx)
        if not _may_refine(lists, n, wx, weight):
            continue
        for _ in range(max_steps):
            b, s, e, f = _best_step(lists, n, wx, weight)
            if b < 0:
                break
            _take_out(lists, n, b, e)
            if f >= 0:  # before e comes in: a full rank has no room for both
                _take_out(lists, n, s, f)
            lists[s, n[s]] = e
            n[s] += 1
            d = wx[e]
            if f >= 0:
                lists[b, n[b]] = f
                n[b] += 1
                d -= wx[f]
            weight[b] -= d
            weight[s] += d
        if sort:
            _sort_lists(lists, n)


@jit
def _take_out(lists, n, r, e):
    """Remove expert e from rank r's list, the later experts moving up one (list.remove)."""
    i = 0
    while i < n[r] - 1 and lists[r, i] != e:  # e is there (the search moves only what it found)
        i += 1
    for j in range(i, n[r] - 1):
        lists[r, j] = lists[r, j + 1]
    n[r] -= 1
    lists[r, n[r]] = -1


@jit
def _best_step(lists, n, w, weight):
    """(busiest rank b, other rank s, expert e moved b -> s, expert f moved back or -1) lowering the pair's max most:
    the moves and swaps in (s, e in b's list order, no f then f in s's list order) order, the first strictly
    lighter than the busiest rank (beyond rounding) winning ties; all -1 when none. Ranks and experts skipped are ones
    whose every step, as computed in floating point, is no lighter than the best found so far (the rank bound keeps a
    1e-15 · top margin for rounding; the expert bound is exact: fl is monotone)."""
    W, C = lists.shape
    b = np.argmax(weight)
    top = weight[b]
    best, step = top * (1 - 1e-12), (-1, -1, -1, -1)
    on_b, on_s = np.zeros(len(w), np.bool_), np.zeros(len(w), np.bool_)              # who is on b, on s
    for i in range(n[b]):
        on_b[lists[b, i]] = True
    for s in range(W):  # skipped: a rank or expert no step of which can beat `best` (max(x, y) >= (x + y) / 2)
        if s == b or 0.5 * (top + weight[s]) - 1e-15 * top >= best:
            continue
        for j in range(n[s]):
            on_s[lists[s, j]] = True
        for i in range(n[b]):
            e = lists[b, i]
            if on_s[e] or top - w[e] >= best:  # any step of e leaves b at top - w[e] or more
                continue
            if n[s] < C and n[b] > 1:
                value = max(top - w[e], weight[s] + w[e])
                if value < best:
                    best, step = value, (b, s, e, -1)
            for j in range(n[s]):
                f = lists[s, j]
                if w[f] < w[e] and not on_b[f]:
                    d = w[e] - w[f]
                    value = max(top - d, weight[s] + d)
                    if value < best:
                        best, step = value, (b, s, e, f)
        for j in range(n[s]):
            on_s[lists[s, j]] = False
    return step


@jit
def _may_refine(lists, n, w, weight):
    """False where `_best_step` provably finds no step. It computes a step's value as the search does, max(top − d,
    weight_s + d) against the search's limit top · (1 − 1e-12), for the one candidate that decides: per replica f on
    another rank s, the lightest replica e on the busiest rank b heavier than f (a heavier e only raises weight_s + d);
    per rank s with room, b's lightest non-empty replica (moves need two replicas on b). It ignores that an expert
    may not sit twice on a rank, and says True where that e is so close to f (or so light) that top − d misses the
    limit while weight_s + d does not: so it never skips a row the search would change."""
    W, C = lists.shape
    b = np.argmax(weight)
    top = weight[b]
    limit = top * (1 - 1e-12)
    ladder = np.sort(w[lists[b, : n[b]]])                                             # b's replicas, ascending
    for s in range(W):
        if s == b:
            continue
        for j in range(n[s]):
            f = w[lists[s, j]]
            k = np.searchsorted(ladder, f, side="right")                              # b's first heavier than f
            if k < len(ladder):
                d = ladder[k] - f
                if weight[s] + d < limit:
                    return True
        if n[s] < C and n[b] > 1:
            for e in ladder:
                if e > 0:
                    if weight[s] + e < limit:
                        return True
                    break
    return False
