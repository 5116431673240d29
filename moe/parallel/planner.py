"""Our planner's steps on arrays, vectorised over rows (windows × layers) where the rule allows: give each redundant
slot to the expert whose replicas carry the most load each (`replicate`), pack the replicas, heaviest first, onto the
least loaded rank that still has a free slot and does not hold that expert yet (`pack`), then a local search moves or
swaps single replicas off the busiest rank while that helps (`refine`). `balanced_rows` runs the three on many loads
at once: the first two for all rows together (moe.parallel.greedy), the local search only on the rows where a
cheap exact test finds a move or swap that could lighten the busiest rank (`_may_refine`). moe.parallel.placement
wraps one row of it in a Placement (`balanced`, `plan`). Shapes: X rows, E experts, W ranks, P = E + R slots.
"""
from __future__ import annotations

import numpy as np
import torch

from moe.parallel import greedy


def replicate(load: np.ndarray, redundant_slots: int, world_size: int) -> np.ndarray:
    """(E,) replica count per expert: each extra slot goes to the expert with the most load per replica (ties: the
    lower expert; at most one replica per rank, so at most W replicas of an expert)."""
    return greedy.top_up(np.asarray(load, dtype=np.float64)[None], redundant_slots, world_size)[0][0]


def pack(load: np.ndarray, count: np.ndarray, world_size: int) -> tuple[tuple[int, ...], ...]:
    """Replicas (load/count each), heaviest first (ties: the lower expert), to the least loaded rank with room not
    holding that expert (ties: the rank with fewer experts, then the lower rank); ranks hold ceil(P / W) slots at most.
    ValueError when a replica finds no rank with room free of its expert."""
    expert, rank = pack_rows(np.asarray(load, dtype=np.float64)[None], np.asarray(count)[None], world_size)
    return tuple(tuple(expert[0][rank[0] == r].tolist()) for r in range(world_size))


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
    """Our layout (replicate, pack, refine) for every row of load (X, E), arguments checked as
    moe.parallel.placement.balanced checks them: slot experts and ranks (X, P), rank by rank, experts ascending."""
    load = np.asarray(load, dtype=np.float64)
    count = greedy.top_up(load, redundant_slots, world_size)[0]                      # (X, E)
    expert, rank = pack_rows(load, count, world_size)
    w = np.take_along_axis(load / count, expert, axis=1)                             # (X, P) each slot's weight
    for x in np.flatnonzero(_may_refine(w, rank, world_size, -(-expert.shape[1] // world_size))):
        ranks = [expert[x][rank[x] == r].tolist() for r in range(world_size)]
        done = refine(ranks, load[x], count[x])
        expert[x] = [e for r in done for e in r]
        rank[x] = np.repeat(np.arange(world_size), [len(r) for r in done])
    return expert, rank


def _may_refine(w: np.ndarray, rank: np.ndarray, world_size: int, slots: int) -> np.ndarray:
    """(X,) False where `refine` provably takes no step: no replica e on the busiest rank b and f on another rank s
    has w_f < w_e < w_f + (weight_b − weight_s) (a swap lighter than b), and no plain move fits (a rank with room
    lighter than b by more than b's lightest non-empty replica). The bounds are loosened by 1e-13 · weight_b, ten
    times less than refine's own margin, so that rounding never hides a step refine would take."""
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
    leaves such gains on near-even loads). Keeps the slots per rank, an expert on every rank, none twice."""
    ranks, w = [list(r) for r in ranks], load / count  # w: (E,) load of one replica of each expert
    weight, slots = np.array([w[r].sum() for r in ranks]), max(len(r) for r in ranks)
    for _ in range(4 * len(load)):  # each step lowers (max weight, ranks at the max); this only bounds it
        step = _best_step(ranks, w, weight, slots)
        if step is None:
            break
        b, s, e, f = step  # e: rank b -> rank s; f (or None): rank s -> rank b
        ranks[b].remove(e)
        ranks[s].append(e)
        d = w[e]
        if f is not None:
            ranks[s].remove(f)
            ranks[b].append(f)
            d -= w[f]
        weight[b] -= d
        weight[s] += d
    return tuple(tuple(sorted(r)) for r in ranks)


def _best_step(ranks: list[list[int]], w: np.ndarray, weight: np.ndarray, slots: int):
    """(busiest rank, other rank, expert moved there, expert moved back or None) lowering the pair's max most: every
    move and swap at once, as arrays; ties go to the first in (other rank, expert on the busiest, None then the other
    rank's experts) order, as a loop over them in that order would pick."""
    b = int(np.argmax(weight))
    W, on_b = len(ranks), np.array(ranks[b])                                          # (Lb,) experts on b
    held = np.full((W, slots), -1)                                                    # (W, slots) -1 = empty
    for s, r in enumerate(ranks):
        held[s, : len(r)] = r
    filled = held >= 0
    there = (held[:, :, None] == on_b[None, None, :]).any(axis=1)                     # (W, Lb) s holds e already
    ok = (np.arange(W) != b)[:, None] & ~there                                        # (W, Lb) e may go to s
    we, wf = w[on_b], np.where(filled, w[np.maximum(held, 0)], np.inf)                # (Lb,), (W, slots)
    back = filled & ~np.isin(held, on_b)                                              # (W, slots) f may go to b
    room = (filled.sum(axis=1) < slots) & (len(on_b) > 1)                             # (W,) a plain move fits
    d = np.concatenate([np.broadcast_to(we[None, :, None], (W, len(on_b), 1)),
                        we[None, :, None] - wf[:, None, :]], axis=2)                  # (W, Lb, 1 + slots)
    valid = ok[:, :, None] & np.concatenate([np.broadcast_to(room[:, None, None], (W, len(on_b), 1)),
                                             back[:, None, :] & (wf[:, None, :] < we[None, :, None])], axis=2)
    value = np.where(valid, np.maximum(weight[b] - d, weight[:, None, None] + d), np.inf)
    i = int(np.argmin(value))  # the first of the smallest, in loop order
    if not value.flat[i] < weight[b] * (1 - 1e-12):  # strictly lighter than the busiest rank, beyond rounding
        return None
    s, e, f = np.unravel_index(i, value.shape)
    return b, int(s), int(on_b[e]), None if f == 0 else int(held[s, f - 1])


