"""The greedy steps both planners share, compiled (numba) and run on many rows (windows × layers) at once: hand extra
slots to the items with the most load per slot (`top_up`), put items in the order they are placed, heaviest first
(`replica_order`, `slot_order`), and pack them onto packs (ranks, GPUs, nodes), each to the lightest pack with room
(`pack`). Each row is planned exactly as a loop over its items plans it (the loop versions live in the tests); the
kernels take one row at a time and release the GIL. An expert order sorted once per window (`heaviest_first`) serves
every W and R. Shapes: X rows, n items, m loads, K packs, E experts, P slots.
"""
from __future__ import annotations

import numpy as np

from moe.compiled import jit


def heaviest_first(weight) -> np.ndarray:
    """(X, m) items of each row ordered by weight, heaviest first (ties: the lower item): a stable sort (numpy's radix
    sort for token counts below 2**16, the common case of a window)."""
    weight = np.asarray(weight)
    if weight.dtype.kind in "iu" and weight.size and 0 <= weight.min() and weight.max() < 1 << 16:
        return np.argsort((weight.max() - weight).astype(np.uint16), axis=1, kind="stable")
    return np.argsort(-weight.astype(np.float64), axis=1, kind="stable")


def top_up(weight, extra: int, cap: int | None = None, order=None) -> tuple[np.ndarray, np.ndarray]:
    """(X, m) slots per item: one each, then `extra` more, each to the item with the most weight per slot so far
    (ties: the lower item), an item at most `cap` slots (None: no cap). Returns the counts (X, m) and the item that
    got each extra slot, in turn (X, extra). Only an item among the `extra` heaviest (ties: the lower) can win a
    slot: any other has `extra` items whose first slot comes before its own, so only those are looked at. `order`:
    heaviest_first(weight), when the caller has it."""
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    X, m = weight.shape
    order = heaviest_first(weight) if order is None else _index(order, weight.shape, True)
    count, won = np.ones((X, m), dtype=np.int64), np.empty((X, extra), dtype=np.int64)
    _top_up(weight, np.ascontiguousarray(order[:, : min(extra, m)]), extra, cap or 0, count, won)
    return count, won


@jit
def _top_up(weight, hot, extra, cap, count, won):
    """Each row: the hot items in a heap by weight per slot (the most first; ties: the lower item), so a slot costs
    O(log n) instead of a look at every hot item (R = 16,384 redundant slots took a minute a window that way). An
    item at its cap leaves the heap; with none left, the lowest hot item (the callers' checks rule it out)."""
    n = hot.shape[1]
    key, item = np.empty(max(n, 1)), np.empty(max(n, 1), np.int64)
    for x in range(weight.shape[0]):
        size = 0
        for j in range(n):
            i = hot[x, j]
            if cap > 0 and count[x, i] >= cap:
                continue
            key[size], item[size] = weight[x, i] / count[x, i], i
            size = _sift_up(key, item, size)
        for t in range(extra):
            if size == 0:
                best = hot[x].min()
                count[x, best] += 1
                won[x, t] = best
                continue
            best = item[0]
            count[x, best] += 1
            won[x, t] = best
            if cap > 0 and count[x, best] >= cap:                                    # full: out of the heap
                size -= 1
                key[0], item[0] = key[size], item[size]
            else:
                key[0] = weight[x, best] / count[x, best]
            _sift_down(key, item, size)


@jit
def _first(key, item, a, b):
    """Heap entry a comes before b: more weight per slot, or as much and the lower item."""
    return key[a] > key[b] or (key[a] == key[b] and item[a] < item[b])


@jit
def _sift_up(key, item, size):
    """Entry `size` (just written) moved up to its place; returns the new size."""
    c = size
    while c > 0:
        p = (c - 1) >> 1
        if not _first(key, item, c, p):
            break
        key[c], key[p] = key[p], key[c]
        item[c], item[p] = item[p], item[c]
        c = p
    return size + 1


@jit
def _sift_down(key, item, size):
    """Entry 0 moved down to its place among the first `size`."""
    p = 0
    while True:
        a, b, best = 2 * p + 1, 2 * p + 2, p
        if a < size and _first(key, item, a, best):
            best = a
        if b < size and _first(key, item, b, best):
            best = b
        if best == p:
            return
        key[p], key[best] = key[best], key[p]
        item[p], item[best] = item[best], item[p]
        p = best


def replica_order(weight, count, order) -> np.ndarray:
    """(X, P) the expert of each replica in the order they are placed: c replicas of an expert with c slots, each
    weighing weight / c, heaviest first; ties: the lower expert (its replicas together). `order`: heaviest_first of
    weight (counts 0 place nothing)."""
    weight, count = np.ascontiguousarray(weight, dtype=np.float64), np.ascontiguousarray(count, dtype=np.int64)
    P = int(count[0].sum()) if len(count) else 0
    if (count.sum(axis=1) != P).any() or (count < 0).any():
        raise ValueError("every row must place the same number of replicas (counts >= 0 with equal sums)")
    out = np.empty((len(weight), P), dtype=np.int64)
    order = np.ascontiguousarray(_index(order, weight.shape, True))
    _merge(weight, count, order, np.zeros((len(weight), 0), dtype=np.int64), out)
    return out


def slot_order(weight, count, won, order) -> np.ndarray:
    """(X, P) slot indices in the order DeepSeek's packing takes them: slot i < m holds item i, slot m + t the item
    that won extra slot t (`won`); each slot weighs weight / count of its item; heaviest first, ties: the lower slot."""
    weight, count = np.ascontiguousarray(weight, dtype=np.float64), np.ascontiguousarray(count, dtype=np.int64)
    order = np.ascontiguousarray(_index(order, weight.shape, True), dtype=np.int64)
    won = np.ascontiguousarray(_index(won, weight.shape), dtype=np.int64)
    out = np.empty((len(weight), weight.shape[1] + won.shape[1]), dtype=np.int64)
    _merge(weight, count, order, won, out)
    return out


@jit
def _merge(weight, count, order, won, out):
    """Merge each row's items of one slot (already in order) with its replicated items (sorted here, few): with
    `won` (slots), a replicated item's first slot is its own index and its extra slots follow at m + t; without,
    each of its c replicas is the item itself, ties by item."""
    X, m = weight.shape
    slots = won.shape[1] > 0
    key, tie, item = np.empty(m + won.shape[1]), np.empty(m + won.shape[1], np.int64), np.empty(m + won.shape[1],
                                                                                                 np.int64)
    for x in range(X):
        n = 0
        for e in range(m):
            if count[x, e] > 1:
                key[n], tie[n], item[n] = weight[x, e] / count[x, e], e, e
                n += 1
        if slots:
            for t in range(won.shape[1]):
                e = won[x, t]
                key[n], tie[n], item[n] = weight[x, e] / count[x, e], m + t, e
                n += 1
        if n > 1:  # sorted by (-key, tie): by tie, then stably by -key (O(n log n); n reaches 2R)
            by = np.argsort(tie[:n], kind="mergesort")
            by = by[np.argsort(-key[:n][by], kind="mergesort")]
            key[:n], tie[:n], item[:n] = key[:n][by], tie[:n][by], item[:n][by]
        a, b, p = 0, 0, 0
        while p < out.shape[1]:
            while a < m and count[x, order[x, a]] != 1:
                a += 1
            if a < m and (b == n or weight[x, order[x, a]] > key[b]
                          or (weight[x, order[x, a]] == key[b] and order[x, a] < tie[b])):
                out[x, p] = order[x, a]
                a, p = a + 1, p + 1
            elif slots:
                out[x, p] = tie[b]
                b, p = b + 1, p + 1
            else:
                for _ in range(count[x, item[b]]):
                    out[x, p] = item[b]
                    p += 1
                b += 1


class NoPackError(ValueError):
    """`pack`: an item found no pack with room (and without its group)."""


def take_rows(a, index) -> np.ndarray:
    """a[x, index[x, j]] for every x, j (np.take_along_axis on axis 1, compiled)."""
    a, index = np.asarray(a), _index(index, np.shape(a))
    out = np.empty(index.shape, dtype=a.dtype)
    _take_rows(a, index, out)
    return out


def put_rows(out: np.ndarray, index, values) -> np.ndarray:
    """out[x, index[x, j]] = values[x, j] for every x, j (np.put_along_axis on axis 1, compiled); returns out."""
    index = _index(index, out.shape)
    _put_rows(out, index, np.broadcast_to(values, index.shape))
    return out


def _index(index, shape: tuple, full: bool = False) -> np.ndarray:
    """index as an integer array of rows into an array of `shape` (with `full`, of that shape itself: an order of
    every item); IndexError unless every entry is in range (the compiled loops do not check)."""
    index = np.asarray(index)
    if (index.dtype.kind not in "iu" or index.ndim != 2 or index.shape[0] != shape[0]
            or (full and index.shape != tuple(shape)) or (index.size and (index.min() < 0 or index.max() >= shape[1]))):
        raise IndexError(f"row indices {index.shape} must be integers in 0..{shape[1] - 1} for each of {shape[0]} rows")
    return index


@jit
def _take_rows(a, index, out):
    for x in range(index.shape[0]):
        for j in range(index.shape[1]):
            out[x, j] = a[x, index[x, j]]


@jit
def _put_rows(out, index, values):
    for x in range(index.shape[0]):
        for j in range(index.shape[1]):
            out[x, index[x, j]] = values[x, j]


def pack(weight, n_packs: int, capacity: int, group=None, fewer_first: bool = False, item=None, by_item=False
         ) -> tuple[np.ndarray, np.ndarray]:
    """(X, n) items, in the order they are placed, onto n_packs packs of at most `capacity` items: each to the pack
    with the least weight among those with room (and, with `group`, none holding an item of the same group: a
    group's items must be consecutive); ties: the pack with fewer items when `fewer_first`, then the lower pack.
    With `item` (X, n), the j-th item placed weighs weight[x, item[x, j]] (weight (X, m)), and with `by_item` the
    results are written at item[x, j] (a permutation) instead of j. Returns each item's pack and its position in that
    pack, both (X, n). NoPackError (a ValueError) when an item finds no pack; ValueError when the weights placed are
    not finite or their magnitudes sum to half the float64 range or more (so that no pack's load overflows), or when
    `by_item` and `item` is not a permutation of each row's items."""
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    if weight.ndim != 2:
        raise ValueError(f"item weights must be (rows, items), got shape {weight.shape}")
    X, every = weight.shape[0], item is None or by_item                              # every weight is placed
    item = np.broadcast_to(np.arange(weight.shape[1]), weight.shape) if item is None else _index(item, weight.shape)
    n = item.shape[1]
    if by_item and n != weight.shape[1]:
        raise ValueError("by_item needs one index per item: `item` must be a permutation of each row's items")
    placed = weight if every else take_rows(weight, item)                             # the weights the packs take
    with np.errstate(over="ignore", invalid="ignore"):                               # inf and NaN are refused
        total = np.abs(placed).sum(axis=1)
    if not (total < np.finfo(np.float64).max / 2).all():                             # False for NaN too
        raise ValueError("item weights must be finite, and their magnitudes must sum to under 8.9e307 per row")
    same = np.zeros((X, n), dtype=np.bool_)
    if group is not None:
        same[:, :-1] = group[:, 1:] == group[:, :-1]                                 # the next item: same group
    pack_of, pos = np.full((X, n), -1, dtype=np.int64), np.empty((X, n), dtype=np.int64)
    if _pack(weight, item, n_packs, capacity, same, fewer_first, by_item, pack_of, pos) >= 0:
        raise NoPackError("an item found no pack with room (and without its group): these counts cannot be packed")
    if by_item and n and pack_of.min() < 0:  # an index written twice leaves another never written
        raise ValueError("by_item needs `item` to be a permutation of each row's items")
    return pack_of, pos


@jit
def _pack(weight, item, K, capacity, same, fewer_first, by_item, pack_of, pos):
    """Every row with a winner tree over the packs: leaves M .. M + K − 1 (M a power of two), and each node above
    holds the better pack of its two children (the lighter free one, then (fewer_first) the one with fewer items;
    ties: the left child, which holds the lower packs), so the root names the pack the next item goes to. A full
    pack, or one holding the current group (set aside until the group ends), weighs +inf there. Returns -1, or the
    first row where an item found no pack."""
    M = 1
    while M < K:
        M *= 2
    key, load, count = np.empty(M), np.empty(M), np.empty(M, np.int64)  # key: the load, +inf when not free
    tree, leaves = np.empty(2 * M, np.int64), np.empty(K + 1, np.int64)  # leaves: the paths to replay
    for x in range(weight.shape[0]):
        for p in range(M):
            key[p] = 0.0 if p < K else np.inf
            load[p], count[p], tree[M + p] = 0.0, 0, p
        for node in range(M - 1, 0, -1):
            a, b = tree[2 * node], tree[2 * node + 1]
            tree[node] = b if key[b] < key[a] else a
        n_aside = 0  # leaves[1 .. n_aside]: the packs set aside
        for j in range(item.shape[1]):
            c, i = tree[1], item[x, j]
            if key[c] == np.inf:
                return x
            at = i if by_item else j
            pack_of[x, at], pos[x, at] = c, count[c]
            count[c] += 1
            load[c] += weight[x, i]
            key[c] = load[c] if count[c] < capacity else np.inf
            if count[c] < capacity and same[x, j]:
                key[c] = np.inf
                n_aside += 1
                leaves[n_aside] = c
            leaves[0], n = c, 1
            if not same[x, j]:  # the group ended: its packs are free again
                for q in range(1, n_aside + 1):
                    key[leaves[q]] = load[leaves[q]]
                n, n_aside = n_aside + 1, 0
            for q in range(n):
                node = (M + leaves[q]) >> 1
                while node >= 1:
                    a, b = tree[2 * node], tree[2 * node + 1]
                    if key[b] < key[a] or (fewer_first and key[b] == key[a] and count[b] < count[a]):
                        a = b
                    tree[node] = a
                    node >>= 1
    return -1
