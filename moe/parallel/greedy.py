"""The two greedy steps both planners share, vectorised over rows (windows × layers): hand extra slots to the items
with the most load per slot, and pack weighted items onto packs (ranks, GPUs, nodes), heaviest first, each to the
lightest pack with room. Every row is planned exactly as a loop over its items would plan it (the loop versions
live in the tests); rows are taken in blocks so that a block's pack loads stay in cache.
Shapes: X rows, n items, m loads, K packs.
"""
from __future__ import annotations

import numpy as np

BLOCK = 2048  # rows packed together: (BLOCK, K) pack loads stay in the CPU cache for K <= 64


def top_up(weight: np.ndarray, extra: int, cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, m) slots per item: one each, then `extra` more, each to the item with the most weight per slot so far
    (ties: the lower item), an item at most `cap` slots (None: no cap). Returns the counts (X, m) and the item that
    got each extra slot, in turn (X, extra). Only an item among the `extra` heaviest (ties: the lower) can win a
    slot: any other has `extra` items whose first slot comes before its own, so only those are looked at."""
    weight = np.asarray(weight, dtype=np.float64)
    X, m = weight.shape
    count, won = np.ones((X, m), dtype=np.int64), np.empty((X, extra), dtype=np.int64)
    if extra == 0:
        return count, won
    k = min(extra, m)
    hot = np.sort(np.argsort(-weight, axis=1, kind="stable")[:, :k], axis=1)        # (X, k) ascending: ties low
    w = np.take_along_axis(weight, hot, axis=1).reshape(-1)
    c = np.ones(X * k, dtype=np.int64)
    ratio, base = w.copy(), np.arange(X) * k
    for t in range(extra):
        i = base + ratio.reshape(X, k).argmax(axis=1)                                # (X,) flat index of the winner
        c[i] += 1
        ratio[i] = w[i] / c[i]
        if cap is not None:
            ratio[i[c[i] >= cap]] = -np.inf
        won[:, t] = hot.reshape(-1)[i]
    np.put_along_axis(count, hot, c.reshape(X, k), axis=1)
    return count, won


def pack(weight: np.ndarray, n_packs: int, capacity: int, group: np.ndarray | None = None,
         fewer_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(X, n) items, in the order they are placed, onto n_packs packs of at most `capacity` items: each to the pack
    with the least weight among those with room (and, with `group`, none holding an item of the same group: a
    group's items must be consecutive); ties: the pack with fewer items when `fewer_first`, then the lower pack.
    Returns each item's pack and its position in that pack, both (X, n). ValueError when an item finds no pack."""
    weight = np.asarray(weight, dtype=np.float64)
    X, n = weight.shape
    pack_of, pos = np.empty((X, n), dtype=np.int64), np.empty((X, n), dtype=np.int64)
    same = None if group is None else np.concatenate([group[:, 1:] == group[:, :-1], np.zeros((X, 1), bool)], 1)
    for a in range(0, X, BLOCK):
        b = min(a + BLOCK, X)
        _pack_block(weight[a:b], n_packs, capacity, None if same is None else same[a:b], fewer_first,
                    pack_of[a:b], pos[a:b])
    return pack_of, pos


def _pack_block(weight, K, capacity, same, fewer_first, pack_of, pos) -> None:
    B, n = weight.shape
    key = np.zeros((B, K))                     # each pack's weight; inf: full (or holding the current group)
    count = np.zeros((B, K), dtype=np.int64)
    kf, cf = key.reshape(-1), count.reshape(-1)
    base, packs = np.arange(B) * K, np.arange(K)
    held = np.zeros((B, K), dtype=bool) if same is not None else None   # packs set aside for the current group
    aside = np.zeros((B, K))                                             # their weights meanwhile
    holding = np.zeros(B, dtype=bool)                                    # rows with packs set aside
    for j in range(n):
        c = key.argmin(axis=1)                                                        # (B,) first lightest
        i = base + c
        low = kf[i]
        if not np.isfinite(low).all():
            raise ValueError("an item found no pack with room (and without its group): these counts cannot be packed")
        if fewer_first:
            tie = np.flatnonzero((key == low[:, None]).sum(axis=1) > 1)
            if len(tie):  # equal weights: the pack with fewer items, then the lower pack
                rank = np.where(key[tie] == low[tie, None], count[tie] * K + packs, np.iinfo(np.int64).max)
                c[tie] = rank.argmin(axis=1)
                i = base + c
        pack_of[:, j], pos[:, j] = c, cf[i]
        cf[i] += 1
        kf[i] += weight[:, j]
        kf[i[cf[i] >= capacity]] = np.inf
        if same is None:
            continue
        hold = same[:, j]                                                             # the next item: same group
        if hold.any():
            h = i[hold]
            aside.reshape(-1)[h], held.reshape(-1)[h], kf[h] = kf[h], True, np.inf
            holding |= hold
        back = np.flatnonzero(holding & ~hold)
        if len(back):  # the group ended: its packs come back with their weights
            key[back] = np.where(held[back], aside[back], key[back])
            held[back], holding[back] = False, False
