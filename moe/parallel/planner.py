"""Our planner's steps on arrays, vectorised over rows (windows × layers) where the rule allows: give each redundant
slot to the expert whose replicas carry the most load each (`replicate`), pack the replicas, heaviest first, onto the
least loaded rank that still has a free slot and does not hold that expert yet (`pack`), then a local search moves or
swaps single replicas off the busiest rank while that helps (`refine`). `balanced_rows` runs the three on many loads
at once: the first two for all rows together (moe.parallel.greedy), the local search on the rows where a cheap
conservative test (`_may_refine`: it never skips a row the search would change) finds a move or swap that could
lighten the busiest rank. A rank's weight is the sum of its replicas' loads in list order. moe.parallel.placement
wraps one row of it in a Placement (`balanced`, `plan`). Shapes: X rows, E experts, W ranks, P = E + R slots.
"""
from __future__ import annotations

import numpy as np
import torch

from moe.parallel import greedy

CELLS = 1 << 17  # the local search weighs this many (row, rank, expert, expert back) steps at a time


def replicate(load: np.ndarray, redundant_slots: int, world_size: int) -> np.ndarray:
    """(E,) replica count per expert: each extra slot goes to the expert with the most load per replica (ties: the
    lower expert; at most one replica per rank, so at most W replicas of an expert)."""
    return greedy.top_up(np.asarray(load, dtype=np.float64)[None], redundant_slots, world_size)[0][0]


def pack(load: np.ndarray, count: np.ndarray, world_size: int) -> tuple[tuple[int, ...], ...]:
    """Replicas (load/count each), heaviest first (ties: the lower expert), to the least loaded rank with room not
    holding that expert (ties: the rank with fewer experts, then the lower rank); ranks hold ceil(P / W) slots at most.
    ValueError when a replica finds no rank with room free of its expert."""
    expert, rank = pack_rows(np.asarray(load, dtype=np.float64)[None], np.asarray(count)[None], world_size)
    return rank_lists(expert[0], rank[0], world_size)


def rank_lists(expert: np.ndarray, rank: np.ndarray, world_size: int) -> tuple[tuple[int, ...], ...]:
    """One row's slots (P,) as each rank's experts, in slot order."""
    return tuple(tuple(expert[rank == r].tolist()) for r in range(world_size))


def pack_rows(load: np.ndarray, count: np.ndarray, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`pack` for every row of load and count (X, E) (each row's counts sum to the same P): the expert and rank of
    every slot (X, P), rank by rank, experts ascending within a rank."""
    X, E = load.shape
    P = int(count[0].sum())
    expert = np.repeat(np.broadcast_to(np.arange(E), (X, E)).ravel(), count.ravel()).reshape(X, P)
    weight = np.take_along_axis(load / count, expert, axis=1)
    order = np.argsort(-weight, axis=1, kind="stable")                               # heaviest first, ties: lower e
    weight, expert = np.take_along_axis(weight, order, axis=1), np.take_along_axis(expert, order, axis=1)
    try:
        rank, _ = greedy.pack(weight, world_size, -(-P // world_size), group=expert, fewer_first=True)
    except ValueError:
        raise ValueError("no rank with room is free of an expert: these replica counts cannot be packed with a "
                         "distinct expert per slot of a rank") from None
    order = np.argsort(rank * E + expert, axis=1, kind="stable")
    return np.take_along_axis(expert, order, axis=1), np.take_along_axis(rank, order, axis=1)


def balanced_rows(load, world_size: int, redundant_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Our layout (replicate, pack, refine) for every row of load (X, E): slot experts and ranks (X, P), rank by rank,
    experts ascending. The caller checks the arguments (moe.parallel.placement.check_plan_args)."""
    load = np.asarray(load, dtype=np.float64)
    if not len(load):
        return np.zeros((0, load.shape[1] + redundant_slots), dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
    count = greedy.top_up(load, redundant_slots, world_size)[0]                      # (X, E)
    expert, rank = pack_rows(load, count, world_size)
    P, C = expert.shape[1], -(-expert.shape[1] // world_size)
    w = np.take_along_axis(load / count, expert, axis=1)                             # (X, P) each slot's weight
    x = np.flatnonzero(_may_refine(w, rank, world_size, C))                          # rows the search may change
    if len(x):
        Y, E = len(x), load.shape[1]
        n = np.stack([np.bincount(r, minlength=world_size) for r in rank[x]])        # (Y, W) slots per rank
        at = np.arange(P) - np.take_along_axis(np.cumsum(n, axis=1) - n, rank[x], axis=1)  # (Y, P) place in its rank
        held = np.full((Y, world_size, C), -1, dtype=np.int64)
        held[np.arange(Y)[:, None], rank[x], at] = expert[x]
        held = refine_rows(held, (load / count)[x], 4 * E)
        held = np.sort(np.where(held >= 0, held, E), axis=2)                        # ascending, the empty (E) last
        keep = held.reshape(Y, -1) < E                                               # P per row: no slot is lost
        expert[x] = held.reshape(Y, -1)[keep].reshape(Y, P)
        rank[x] = np.broadcast_to(np.repeat(np.arange(world_size), C), (Y, world_size * C))[keep].reshape(Y, P)
    return expert, rank


def _may_refine(w: np.ndarray, rank: np.ndarray, world_size: int, slots: int) -> np.ndarray:
    """(X,) False where `refine` provably takes no step: no replica e on the busiest rank b and f on another rank s
    has w_f < w_e < w_f + (weight_b − weight_s) (a swap lighter than b), and no plain move fits (a rank with room
    lighter than b by more than b's lightest non-empty replica). The bounds are loosened by 1e-13 · weight_b, ten
    times less than refine's own margin, so that rounding never hides a step refine would take. Rank weights are
    summed slot by slot in the order refine_rows sums them (np.add.at adds in index order), so both see the same
    busiest rank, ties included."""
    X, P = w.shape
    rows = np.arange(X)[:, None]
    weight = np.zeros((X, world_size))
    np.add.at(weight, (rows, rank), w)
    n = np.zeros((X, world_size), dtype=np.int64)
    np.add.at(n, (rows, rank), 1)
    b = weight.argmax(axis=1)
    top = weight[rows[:, 0], b][:, None]                                              # (X, 1) the busiest weight
    on_b = rank == b[:, None]
    tol = 1e-13 * top
    ladder = np.sort(np.where(on_b, w, np.inf), axis=1)                               # (X, P) b's replicas, ascending
    above = torch.searchsorted(torch.from_numpy(ladder), torch.from_numpy(np.ascontiguousarray(w)),
                               right=True).numpy()                                    # first of b's heavier than f
    heavier = np.take_along_axis(np.concatenate([ladder, np.full((X, 1), np.inf)], axis=1), above, axis=1)
    gap = top - np.take_along_axis(weight, rank, axis=1)                              # (X, P) weight_b − weight_s
    swap = (~on_b & (heavier - w < gap + tol)).any(axis=1)
    room = (n < slots) & (np.arange(world_size) != b[:, None])
    widest = np.where(room, top - weight, -np.inf).max(axis=1)
    lightest = np.where(on_b & (w > 0), w, np.inf).min(axis=1)
    move = (on_b.sum(axis=1) > 1) & (lightest < widest + tol[:, 0])
    return swap | move


def refine(ranks, load: np.ndarray, count: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Local search after `pack`: move one replica off the busiest rank, or swap it for a lighter one, while
    that lightens the busiest rank and leaves the other rank lighter than the busiest was (greedy packing
    leaves such gains on near-even loads). Keeps the slots per rank, an expert on every rank, none twice.
    One row of `refine_rows`; each rank's experts keep their list order (a move appends)."""
    W, C = len(ranks), max(len(r) for r in ranks)
    held = np.full((1, W, C), -1, dtype=np.int64)
    for r, experts in enumerate(ranks):
        held[0, r, : len(experts)] = experts
    held = refine_rows(held, (np.asarray(load, dtype=np.float64) / count)[None], 4 * len(load))
    return tuple(tuple(sorted(e for e in r if e >= 0)) for r in held[0].tolist())


def refine_rows(held: np.ndarray, w: np.ndarray, max_steps: int) -> np.ndarray:
    """`refine` for every row at once: held (X, W, C) each rank's experts in list order (-1 after the last), w (X, E)
    the load of one replica of each expert. A rank's weight is the sum of its replicas in list order. Each step lowers
    (max weight, ranks at the max); a row stops when no step helps or after max_steps. Returns the new held."""
    held = held.copy()
    X, W, C = held.shape
    on = held >= 0
    wf = np.where(on, np.take_along_axis(w, np.maximum(held, 0).reshape(X, -1), axis=1).reshape(X, W, C), 0.0)
    weight = np.zeros((X, W))
    for c in range(C):  # in list order, as a loop adds them
        weight += wf[:, :, c]
    active = np.arange(X)
    for _ in range(max_steps):
        if not len(active):
            break
        chunk = max(1, CELLS // (W * C * (C + 1)))  # rows per evaluation: its (rows, W, C, 1 + C) values stay small
        step = [np.concatenate(v) for v in zip(*(_best_steps(held[a], w[a], weight[a])
                                                  for a in np.array_split(active, -(-len(active) // chunk))))]
        go = step[0] >= 0
        active, (b, s, e, f) = active[go], (v[go] for v in step)
        rows, back = active, f >= 0  # e: rank b -> rank s; f (or -1): rank s -> rank b
        _take_out(held, rows, b, e)
        _take_out(held, rows[back], s[back], f[back])  # before e comes in: a full rank has no room for both
        _put_in(held, rows, s, e)
        _put_in(held, rows[back], b[back], f[back])
        d = w[rows, e] - np.where(back, w[rows, np.maximum(f, 0)], 0.0)
        weight[rows, b] -= d
        weight[rows, s] += d
    return held


def _take_out(held: np.ndarray, rows, rank, e) -> None:
    """Remove expert e from held[rows, rank], the later experts moving up one (list.remove)."""
    C = held.shape[2]
    lists = held[rows, rank]                                                          # (Y, C)
    pos = (lists == e[:, None]).argmax(axis=1)
    shift = np.arange(C)[None, :] + (np.arange(C)[None, :] >= pos[:, None])
    moved = np.take_along_axis(lists, np.minimum(shift, C - 1), axis=1)
    moved[shift >= C] = -1
    held[rows, rank] = moved


def _put_in(held: np.ndarray, rows, rank, e) -> None:
    """Append e to held[rows, rank] (list.append)."""
    held[rows, rank, (held[rows, rank] >= 0).sum(axis=1)] = e


def _best_steps(held: np.ndarray, w: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row (held (X, W, C), w (X, E), weight (X, W)): (busiest rank, other rank, expert moved there, expert moved
    back or -1) lowering the pair's max most, every move and swap at once; ties go to the first in (other rank, expert
    on the busiest, no expert back then the other rank's experts) order, as a loop in that order would pick. Rows where
    no step makes the pair strictly lighter than the busiest rank get -1 everywhere."""
    X, W, C = held.shape
    x = np.arange(X)
    b = weight.argmax(axis=1)
    on_b = held[x, b]                                                                 # (X, C) experts on b, -1 pad
    filled = held >= 0                                                                # (X, W, C)
    there = (held[:, :, :, None] == on_b[:, None, None, :]).any(axis=2)               # (X, W, C) s holds e already
    ok = (np.arange(W)[None, :] != b[:, None])[:, :, None] & ~there & (on_b >= 0)[:, None, :]   # (X, W, Ce)
    we = np.take_along_axis(w, np.maximum(on_b, 0), axis=1)                           # (X, Ce)
    wf = np.where(filled, np.take_along_axis(w, np.maximum(held, 0).reshape(X, -1), axis=1).reshape(X, W, C), np.inf)
    back = filled & ~(held[:, :, :, None] == np.where(on_b >= 0, on_b, -2)[:, None, None, :]).any(axis=3)
    room = (filled.sum(axis=2) < C) & ((on_b >= 0).sum(axis=1) > 1)[:, None]        # (X, W) a plain move fits
    d = np.concatenate([np.broadcast_to(we[:, None, :, None], (X, W, C, 1)),
                        we[:, None, :, None] - wf[:, :, None, :]], axis=3)            # (X, W, Ce, 1 + Cf)
    valid = ok[..., None] & np.concatenate([np.broadcast_to(room[:, :, None, None], (X, W, C, 1)),
                                            back[:, :, None, :] & (wf[:, :, None, :] < we[:, None, :, None])], axis=3)
    top = weight[x, b]
    value = np.where(valid, np.maximum(top[:, None, None, None] - d, weight[:, :, None, None] + d), np.inf)
    i = value.reshape(X, -1).argmin(axis=1)                                           # the first of the smallest
    good = value.reshape(X, -1)[x, i] < top * (1 - 1e-12)  # strictly lighter than the busiest, beyond rounding
    s, e, f = np.unravel_index(i, value.shape[1:])
    moved, brought = on_b[x, e], np.where(f > 0, held[x, s, np.maximum(f - 1, 0)], -1)
    return tuple(np.where(good, v, -1) for v in (b, s, moved, brought))
