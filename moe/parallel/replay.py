"""Replay a routing log under a placement: the per-rank load of every window (`rank_load`: one layout, vectorised over
windows; `rank_load_rows`: a layout per window, compiled).

A placement is read as slots (`Layout`): slot p holds logical expert `slot_expert[p]` on rank `slot_rank[p]`.
An expert with c slots splits each window's n tokens into c contiguous chunks of near-equal size (sizes differ
by at most one; cut at i·n // c), the i-th chunk to its i-th slot in slot order: the rule of
`moe.parallel.placement.predicted_load` (a Placement's slots run rank by rank, so the first chunk goes to the
lowest rank), so a replayed window equals the load the expert-parallel forward measures for that placement.
Shapes: S steps, E logical experts, N windows, P physical slots, W ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moe.memory import BUDGET_ENV, budget_bytes, describe_over
from moe.parallel.chunks import chunk_share, peak_rows, rank_rows, replica_index
from moe.parallel.placement import Placement

@dataclass(frozen=True, eq=False)
class Layout:
    """Where the slots of one layer live: expert and rank of every physical slot (replica order = slot order)."""
    slot_expert: np.ndarray  # (P,) int64 logical expert of each slot
    slot_rank: np.ndarray    # (P,) int64 rank of each slot
    world_size: int

    def __post_init__(self) -> None:
        e, r = np.asarray(self.slot_expert, dtype=np.int64), np.asarray(self.slot_rank, dtype=np.int64)
        if e.ndim != 1 or e.shape != r.shape or e.size == 0:
            raise ValueError("a layout needs one expert and one rank per slot")
        if int(r.min()) < 0 or int(r.max()) >= self.world_size:
            raise ValueError(f"a layout's ranks must lie in 0..{self.world_size - 1}")
        object.__setattr__(self, "slot_expert", e)
        object.__setattr__(self, "slot_rank", r)

    @property
    def n_slots(self) -> int:
        return len(self.slot_expert)

    def replicas(self, n_experts: int) -> np.ndarray:
        """(E,) slots per logical expert."""
        return np.bincount(self.slot_expert, minlength=n_experts)

    @cached_property
    def plan(self) -> tuple[np.ndarray, ...]:
        """What rank_load needs, computed once: slots in rank order, where each rank starts, the ranks that hold
        a slot, and (in that order) the replicated slots with their replica index and count."""
        order = np.argsort(self.slot_rank, kind="stable")                            # (P,) rank by rank
        ranks, starts = np.unique(self.slot_rank[order], return_index=True)
        index, count = replica_index(self.slot_expert)
        index, count = index[order], count[order]
        rep = np.flatnonzero(count > 1)
        return order, starts, ranks, rep, index[rep], count[rep]

    def rank_experts(self) -> list[list[int]]:
        """Per rank, its slots' experts in slot order."""
        return [self.slot_expert[self.slot_rank == r].tolist() for r in range(self.world_size)]


def from_placement(placement: Placement) -> Layout:
    """A Placement's slots, rank by rank, experts ascending within a rank."""
    experts = [e for r in placement.ranks for e in r]
    ranks = [i for i, r in enumerate(placement.ranks) for _ in r]
    return Layout(np.array(experts), np.array(ranks), placement.world_size)


def from_map(p2l_row, world_size: int) -> Layout:
    """One layer of a physical → logical map (P,): slot p on rank p // (P / W), as SGLang and vLLM place them."""
    row = np.asarray(p2l_row, dtype=np.int64)
    if len(row) % world_size:
        raise ValueError(f"the physical → logical map has {len(row)} slots per layer, not a multiple of the world "
                         f"size {world_size}; give the W the run used")
    return Layout(row, np.arange(len(row)) // (len(row) // world_size), world_size)


def to_placement(layout: Layout, n_experts: int) -> Placement:
    """The Placement of a layout (slot order within a rank dropped; two slots of one expert on a rank stay two)."""
    return Placement(n_experts, tuple(tuple(sorted(r)) for r in layout.rank_experts()))


def distinct_per_rank(layout: Layout) -> bool:
    """True when no rank holds two slots of one expert (what the serving formats take, issue #18)."""
    return all(len(set(r)) == len(r) for r in layout.rank_experts())


def rank_load(counts, layout: Layout) -> np.ndarray:
    """(N, W) tokens each rank serves in each window, from per-window expert counts (N, E), under one layout."""
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    order, starts, ranks, rep, index, count = layout.plan
    n = np.take(counts, layout.slot_expert[order], axis=1)                           # (N, P) slots rank by rank
    if len(rep):  # only replicated slots need the chunk rule; the rest serve their expert's whole count
        n[:, rep] = chunk_share(n[:, rep], index, count)
    out = np.add.reduceat(n, starts, axis=1)                                         # (N, ranks with a slot)
    if len(ranks) == layout.world_size:
        return out
    full = np.zeros((counts.shape[0], layout.world_size), dtype=np.int64)
    full[:, ranks] = out
    return full


def slot_rank_load(slot_counts, layout: Layout) -> np.ndarray:
    """(N, W) tokens each rank serves in each window, from tokens per window and physical slot (N, P), as recorded:
    slot p's count on rank slot_rank[p] (no split rule: the slots' own counts)."""
    slot_counts = np.asarray(slot_counts, dtype=np.int64)
    if slot_counts.ndim != 2 or slot_counts.shape[1] != layout.n_slots:
        raise ValueError(f"per-slot counts {slot_counts.shape} must be (windows, {layout.n_slots} slots) of the "
                         f"placement")
    order, starts, ranks, *_ = layout.plan
    out = np.zeros((len(slot_counts), layout.world_size), dtype=np.int64)
    out[:, ranks] = np.add.reduceat(slot_counts[:, order], starts, axis=1)           # (N, ranks with a slot)
    return out


def rank_load_rows(counts, slot_expert, slot_rank, world_size: int, plan_of=None, window_of=None, split=None
                   ) -> np.ndarray:
    """(N, W) like rank_load, with a layout per window: slot_expert and slot_rank (N, P); slot expert -1 = unused.
    With plan_of (M,): the layouts are K plans (K, P) and row i is served by plan plan_of[i] (each plan's replica
    split is worked out once, however many windows it serves); with window_of (M,), row i is window window_of[i] of
    counts; either gives (M, W). `split`: replica_index(slot_expert), when the caller has it."""
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    slot_expert = np.ascontiguousarray(slot_expert, dtype=np.int64)
    slot_rank = np.ascontiguousarray(slot_rank, dtype=np.int64)
    window_of = np.arange(len(counts)) if window_of is None else np.asarray(window_of, dtype=np.int64)
    plan_of = window_of if plan_of is None else np.asarray(plan_of, dtype=np.int64)
    _check_rows(slot_expert, slot_rank, plan_of, window_of, len(counts), split)
    index, count = replica_index(slot_expert) if split is None else split             # -1 (unused): one "expert"
    out = np.zeros((len(window_of), world_size), dtype=np.int64)
    if not rank_rows(counts, slot_expert, slot_rank, index, count, plan_of, window_of, out):
        raise ValueError(_outside(counts.shape[1], world_size))
    return out


def peak_load_spans(counts, slot_expert, slot_rank, world_size: int, plan_of, lo, hi, split=None, columns=None
                    ) -> np.ndarray:
    """The busiest rank's load (rank_load_rows(...).max(axis=1)) for plans that each serve a span of consecutive
    windows: span m is windows lo[m] .. hi[m] − 1 under plan plan_of[m] (slot_expert, slot_rank (K, P)). Returns
    (Σ (hi − lo),), the spans one after another. Windows are read expert by expert (counts transposed), so that a
    slot adds a whole span of windows at once; one span's rank loads at a time are kept. `split` as in
    rank_load_rows; `columns`: counts transposed (E, N) as a contiguous int64 array, when the caller has them."""
    if columns is None or columns.dtype != np.int64 or not columns.flags.c_contiguous:
        columns = np.ascontiguousarray(np.asarray(counts, dtype=np.int64).T)          # (E, N)
    slot_expert = np.ascontiguousarray(slot_expert, dtype=np.int64)
    slot_rank = np.ascontiguousarray(slot_rank, dtype=np.int64)
    plan_of, lo, hi = (np.asarray(v, dtype=np.int64) for v in (plan_of, lo, hi))
    if (hi < lo).any():
        raise ValueError("a span of windows ends before it starts")
    used = hi > lo
    _check_rows(slot_expert, slot_rank, plan_of, np.concatenate([lo[used], hi[used] - 1]), columns.shape[1], split)
    index, count = replica_index(slot_expert) if split is None else split
    out = np.empty(int((hi - lo).sum()), dtype=np.int64)
    if len(out):
        span = np.empty((world_size, int((hi - lo).max())), dtype=np.int64)
        if not peak_rows(columns, slot_expert, slot_rank, index, count, plan_of, lo, hi, span, out):
            raise ValueError(_outside(columns.shape[0], world_size))
    return out


def _outside(E: int, W: int) -> str:
    return f"a layout names an expert outside 0..{E - 1} or a rank outside 0..{W - 1}"


def _check_rows(slot_expert: np.ndarray, slot_rank: np.ndarray, plan_of: np.ndarray, window_of: np.ndarray,
                n_windows: int, split=None) -> None:
    """ValueError unless the slots (and a given split) are (K, P) all and every plan and window index is in range (the
    compiled loops check the experts and ranks of the slots, not these)."""
    if slot_expert.ndim != 2 or slot_expert.shape != slot_rank.shape:
        raise ValueError(f"slot experts {slot_expert.shape} and ranks {slot_rank.shape} must both be (plans, slots)")
    if split is not None and any(np.shape(v) != slot_expert.shape for v in split):
        raise ValueError(f"the replica split {[np.shape(v) for v in split]} must be replica_index of the slot experts "
                         f"{slot_expert.shape}")
    for name, values, size in (("plan", plan_of, len(slot_expert)), ("window", window_of, n_windows)):
        if len(values) and (values.min() < 0 or values.max() >= size):
            raise ValueError(f"a {name} index is outside 0..{size - 1}")


def window_counts(counts, steps: int) -> np.ndarray:
    """(N, ...) counts summed over consecutive windows of `steps` steps from (S, ...); a last partial window is
    dropped unless it is the only one (N = max(1, S // steps))."""
    counts = np.asarray(counts, dtype=np.int64)
    if steps < 1:
        raise ValueError(f"a window must hold at least one step, got {steps}")
    N = counts.shape[0] // steps
    if N == 0:
        return counts.sum(axis=0, keepdims=True)
    return counts[: N * steps].reshape(N, steps, *counts.shape[1:]).sum(axis=1)


ROW_BYTES = 4096  # a replayed (layer, window, placement) row with its share of the replay: measured ~4 KB
TEMP_COPIES = 28  # (windows, E + R) int64 arrays one layer's replay holds at its peak: measured 22-25 (E 4,096-16,384)


def replay_bytes(layers: int, windows: int, n_slots: int, n_experts: int, max_r: int, n_physical: int = 0) -> int:
    """About what a replay (`plan`, the Placement section) takes: its rows (each layer's windows under the current
    placement and both planners per R) at ROW_BYTES each, every layer's (windows, E) counts, and the (windows, E + R)
    arrays of the layers replayed at once (one a CPU), TEMP_COPIES of them each. An auditor's 432 KB counts file of
    16,384 layers ran 420 s to 2.1 GB under a 1 GB budget (~4 KB a row); a reviewer's one layer of 16,384 experts ×
    200 windows grew 541 MB. `n_physical`: the slots of the run's own map, when wider (a window's plans are padded to
    the widest placement: a 7.8 MB EPLB dump of 3.9 M slots for 2 experts grew 400 MB under a 256 MiB budget)."""
    width = windows * max(n_experts + max_r, n_physical) * 8
    return (layers * windows * (1 + 2 * n_slots) * ROW_BYTES + layers * windows * n_experts * 8
            + min(layers, os.cpu_count() or 1) * width * TEMP_COPIES)


def check_replay_cost(need: int, what: str, fix: str, kept: int = 0) -> None:
    """ValueError (one line) unless `need` (replay_bytes) fits half the memory budget, before the replay runs:
    "replaying {what} would take about …; {fix}, or raise MOE_SCOPE_MEMORY_GB". `kept`: what a server's open pages
    keep already (dashboard.trace_room), so that the replay fits half of what they leave."""
    budget = budget_bytes()
    limit = max(budget - kept, 0) // 2
    if need > limit:
        need_text, limit_text, budget_text, kept_text = describe_over(need, limit, budget, kept)
        over = (f"half the memory budget of {budget_text}" if not kept else
                f"{limit_text}, half of what the memory budget of {budget_text} leaves beside the {kept_text} the "
                f"pages open on this server keep")
        raise ValueError(f"replaying {what} would take about {need_text}, over {over}; {fix}, or raise {BUDGET_ENV}")
