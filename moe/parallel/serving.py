"""The serving formats' rule for a plan (issue #18): every rank the same number of slots, each a distinct expert on
its rank, and never heavier than the placement the plan replaces. `serving_layout` turns our plan of a layer into
such a layout: the plan itself, padded with replicas (`pad_to`), or another candidate that keeps the rule.
"""
from __future__ import annotations

import numpy as np

from moe.parallel.eplb import rebalance
from moe.parallel.placement import Placement, balanced
from moe.parallel.planner import pack, refine, replicate
from moe.parallel.replay import Layout, distinct_per_rank, from_map, from_placement, rank_load, rank_load_rows


def serving_layout(layout: Layout, load, n_slots: int, current: Layout, name: str = "0") -> tuple[Layout, str]:
    """`layout` as the serving formats take it: n_slots slots, a distinct expert per slot of a rank, and a busiest
    rank no heavier than under `current` (the placement it replaces). Tried in order: the layout itself; padded
    with replicas (pad_to) no heavier than itself; else the lightest that keeps the rule of: placement.balanced,
    DeepSeek's global EPLB, the layout padded no heavier than `current`, and re-packed replica counts (some extra
    slots to the lightest experts: _mixed_replicas; the run's own, when `current` has n_slots slots).
    Returns the layout and what was done (for the note); ValueError when none of those is as light as `current` (a
    search, not a proof: another layout may be)."""
    load = np.asarray(load, dtype=np.int64)
    W, E = layout.world_size, len(load)
    if layout.n_slots == n_slots and distinct_per_rank(layout):
        return layout, "; a distinct expert per slot of a rank (the serving formats' rule)"
    if distinct_per_rank(layout):
        try:
            return pad_to(layout, load, n_slots), (f"; padded to {n_slots} slots with replicas that load no rank "
                                                   f"more than its busiest")
        except ValueError:
            pass
    limit = int(rank_load(load[None], current).max())
    found = [from_placement(balanced(load, W, n_slots - E)),
             from_map(rebalance(load[None], n_slots, 1, 1, W)[0], W)]
    counts = _mixed_replicas(load, n_slots, W)
    if distinct_per_rank(layout):
        try:
            found.append(pad_to(layout, load, n_slots, limit))
        except ValueError:
            pass
    count, own = current.replicas(E), ""                                              # (E,) the run's replica counts
    if current.n_slots == n_slots and count.max() <= W:
        counts.append(count)
        own = "the run's own replica counts re-packed, "
    for count in counts:  # re-packed with a distinct expert per slot of a rank
        try:
            found.append(from_placement(Placement(E, refine(pack(load, count, W), load, count))))
        except ValueError:  # greedy packing of these counts ran out of ranks free of one expert
            pass
    found = sorted((int(rank_load(load[None], lay).max()), k, lay) for k, lay in enumerate(found)
                   if distinct_per_rank(lay))
    if found and found[0][0] <= limit:
        return found[0][2], (f"; the serving files hold {n_slots - E} replicas planned with a distinct expert per "
                             f"slot of a rank (busiest rank {found[0][0]}, current {limit})")
    raise ValueError(f"layer {name!r}: none of the layouts tried with {n_slots} slots and a distinct expert per slot "
                     f"of a rank (a balanced layout, DeepSeek's global EPLB, replicas of the busiest and the "
                     f"lightest experts re-packed, {own}and our plan padded where it holds each expert once a rank) "
                     f"is as light as the current placement (busiest rank {limit}); export as moe-scope, or with "
                     f"another --redundant-slots")


MIXES = 17  # serving_layout: replica counts tried with r of the R extra slots to the busiest experts, r evenly spaced
MIX_SLOTS = 1 << 18  # ... fewer where each is big: at most this many slots packed over all of them (at least 2 mixes)


def _mixed_replicas(load: np.ndarray, n_slots: int, world_size: int) -> list[np.ndarray]:
    """(E,) replica counts for n_slots, one per expert and R = n_slots − E more: r of them to the experts with the
    most load per replica (planner.replicate), the other R − r to the lightest experts in turn (ties: the lower), at
    most world_size each, for up to MIXES values of r from 0 to R (fewer past MIX_SLOTS slots). A replica of a light
    expert adds little to the rank it joins: it fills a slot the serving formats require where replicating more busy
    experts does not help."""
    E = len(load)
    R = n_slots - E
    light = np.argsort(load, kind="stable")
    out = []
    for r in np.unique(np.linspace(0, R, min(MIXES, R + 1, max(2, MIX_SLOTS // n_slots))).astype(np.int64)):
        count = replicate(load, int(r), world_size)
        left = R - int(r)
        for _ in range(world_size):                                                  # a pass over the lightest
            room = light[count[light] < world_size][:left]
            count[room] += 1
            left -= len(room)
            if not left or not len(room):
                break
        if not left:
            out.append(count)
    return out


def pad_to(layout: Layout, load, n_slots: int, limit: int | None = None) -> Layout:
    """`layout` grown to n_slots (a multiple of W) equal ranks by replicas, so a kept layer fits a serving map:
    first each rank takes the lightest experts of the next ranks (what it gains, it gives away in turn), else the
    least loaded experts, else the first of those improved one padded slot at a time (_search_padding); ValueError
    when none leaves the busiest rank at most `limit` (default: as light as before)."""
    load = np.asarray(load, dtype=np.int64)
    W = layout.world_size
    per = n_slots // W
    if any(len(r) > per for r in layout.rank_experts()):
        raise ValueError(f"a rank holds more than {per} slots; plan with more redundant slots")
    before = rank_load(load[None], layout).max() if limit is None else limit
    tried = []
    for pick in (_next_ranks, _least_loaded):
        ranks = layout.rank_experts()
        for r, rank in enumerate(ranks):
            spare = [e for e in pick(layout, load, r) if e not in rank]
            rank.extend(list(dict.fromkeys(spare))[: per - len(rank)])
        padded = Layout(np.array([e for r in ranks for e in r]), np.repeat(np.arange(W), per), W)
        if len(padded.slot_expert) != n_slots:
            continue
        if rank_load(load[None], padded).max() <= before:
            return padded
        tried.append(padded)
    found = _search_padding(tried[0], layout, load, before) if tried else None
    if found is not None:
        return found
    raise ValueError("the current placement kept for a layer cannot take the extra slots without loading its "
                     "busiest rank more; export with fewer redundant slots or as --export moe-scope")


SEARCH_CELLS = 1 << 21  # a padding search round replays at most this many (candidate, slot) cells (16 MiB of int64)


def _search_padding(padded: Layout, base: Layout, load: np.ndarray, limit: int, rounds: int = 64) -> Layout | None:
    """Local search over the slots `padded` added to `base`: each round swaps the expert of one added slot for the
    one (not on its rank) that lowers (busiest rank, Σ load²) most, all candidates replayed at once (the lightest
    experts only when every expert would pass SEARCH_CELLS); the layout once its busiest rank is <= limit, None when
    no swap helps first."""
    W = padded.world_size
    ranks = padded.rank_experts()
    sizes = [len(r) for r in base.rank_experts()]
    spots = [(r, i) for r in range(W) for i in range(sizes[r], len(ranks[r]))]      # (rank, index) of added slots
    experts = np.array([e for r in ranks for e in r])                                # (P,) rank by rank
    slot_rank = padded.slot_rank[np.argsort(padded.slot_rank, kind="stable")]
    offset = np.cumsum([0] + [len(r) for r in ranks])[:-1]
    score = _padding_score(load, experts[None], slot_rank, W)[0]
    # candidates per round: every added slot × the lightest experts, at most SEARCH_CELLS cells of layouts
    pool = np.argsort(load, kind="stable")[: max(1, SEARCH_CELLS // (len(spots) * len(experts)))]
    for _ in range(rounds):
        if score[0] <= limit:
            return Layout(experts, slot_rank, W)
        cand = np.repeat(experts[None], len(spots) * len(pool), axis=0)               # (C, P)
        flat = np.array([offset[r] + i for r, i in spots])                           # (S,) slot index of each spot
        cand[np.arange(len(cand)), np.repeat(flat, len(pool))] = np.tile(pool, len(spots))
        held = np.array([[(experts[offset[r]:offset[r] + len(ranks[r])] == e).any() for e in pool]
                         for r, _ in spots]).ravel()                                 # (C,) e already on that rank
        scores = _padding_score(load, cand, slot_rank, W)
        scores[held] = np.inf
        best = int(np.lexsort((scores[:, 1], scores[:, 0]))[0])
        if not tuple(scores[best]) < tuple(score):
            return None
        experts, score = cand[best], scores[best]
    return Layout(experts, slot_rank, W) if score[0] <= limit else None


def _padding_score(load: np.ndarray, experts: np.ndarray, slot_rank: np.ndarray, W: int) -> np.ndarray:
    """(C, 2) busiest rank and Σ load² of each candidate layout (C, P) (slots rank by rank)."""
    rows = rank_load_rows(np.broadcast_to(load, (len(experts), len(load))), experts,
                          np.broadcast_to(slot_rank, experts.shape), W).astype(np.float64)   # (C, W)
    return np.stack([rows.max(axis=1), (rows ** 2).sum(axis=1)], axis=1)


def _next_ranks(layout: Layout, load: np.ndarray, r: int) -> list[int]:
    """The experts of ranks r+1, r+2, … (cyclic), each rank's lightest first."""
    ranks, W = layout.rank_experts(), layout.world_size
    return [e for k in range(1, W) for e in sorted(ranks[(r + k) % W], key=lambda e: (load[e], e))]


def _least_loaded(layout: Layout, load: np.ndarray, r: int) -> list[int]:
    return np.argsort(load, kind="stable").tolist()
