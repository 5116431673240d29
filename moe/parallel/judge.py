"""Should I enable EPLB? Replay each layer of a routing log, window by window, under the placement the run used,
under our planner and under DeepSeek's EPLB, each planned on one window and measured on the windows after it.

Protocol (definitions "replay_next_window", "replay_rebalance_interval", "hot_expert_persistence"): the log's
steps are cut into windows; for every window k each planner makes a plan from window k's expert load and is
measured on window k + 1 (the honest figure), on windows k + 1 … k + N when it replans every N windows, and on
every later window (the rest of the run). A plan of ours that does not lighten the busiest rank of its own
window keeps the current placement (`plan_rows`), so it is never worse than what it replaces where it was
made. Each planner plans all windows of a layer in one call (compiled greedy steps, one window after another, from
one sort of the window's experts shared by both planners); `replay_log` replays layers side by side on threads.
Shapes: S steps, E experts, N windows, W ranks, P slots.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from moe.metrics import balancedness_sglang, balancedness_vllm, rank_max_over_mean
from moe.parallel.chunks import replica_index
from moe.parallel.eplb import check_eplb_args, is_global, rebalance
from moe.parallel.greedy import heaviest_first
from moe.parallel.placement import check_plan_args, contiguous
from moe.parallel.planner import balanced_rows
from moe.parallel.replay import (Layout, from_map, from_placement, rank_load, rank_load_rows, slot_rank_load,
                                 to_placement, window_counts)
from moe.parallel.schedules import p50, schedules, span_balancedness, span_windows
from moe.traces.log import RecordedSlots
from moe.traces.runstats import hot_mask

PLANNERS = ("planned", "eplb")  # ours (plan_layout: definitions.OUR_PLANNER), DeepSeek's (moe.parallel.eplb)
RUN_PLACEMENTS = ("current", "recorded")  # the run's own placement: modelled (chunk rule), as recorded; no R
DEFAULT_WINDOWS = 32  # without a window length, a log is cut into at most this many windows (plan CLI, the page)


def default_window(n_steps: int) -> int:
    """Steps per window that cut n_steps into at most DEFAULT_WINDOWS windows (at least one step each)."""
    return max(1, -(-n_steps // DEFAULT_WINDOWS))


@dataclass(frozen=True)
class ReplaySettings:
    world_size: int
    redundant_slots: tuple[int, ...] = (0,)  # R values to replay
    window: int = 1                          # steps per window
    num_nodes: int = 1                       # DeepSeek's EPLB: nodes (world_size / num_nodes GPUs each)
    num_groups: int | None = None            # DeepSeek's EPLB: expert groups (default: num_nodes)
    intervals: tuple[int, ...] = (1, 2, 4, 8)
    hot_top: int | None = None               # top-n experts called hot (default: max R, or W when max R = 0)

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.window < 1 or self.num_nodes < 1:
            raise ValueError("world size, window and nodes must be at least 1")
        if not self.redundant_slots or min(self.redundant_slots) < 0:
            raise ValueError("give one or more redundant slot counts R >= 0")
        if not self.intervals or min(self.intervals) < 1:
            raise ValueError("rebalance intervals must be at least 1 window")


@dataclass
class LayerReplay:
    """One layer's replay. Rank loads (N, W) per (placement, R): "current" on every window; a planner's row k is
    window k under the plan made from window k − 1 (row 0: the current placement, before any plan)."""
    layer: str
    windows: np.ndarray                                   # (N, E) tokens per window and expert
    loads: dict[tuple[str, int], np.ndarray]              # (placement, R) -> (N, W)
    own_window: dict[tuple[str, int], np.ndarray]         # (planner, R) -> (N, W): window k under its own plan
    kept: dict[int, np.ndarray]                           # R -> (N,) bool: our plan of window k kept the current one
    intervals: dict[tuple[str, int], dict[int, float]]    # (placement, R) -> {every N windows: p50 balancedness}
    rest: dict[tuple[str, int], float]                    # (placement, R) -> p50 balancedness on all later windows
    hot_windows: np.ndarray                               # (E,) windows in which each expert is hot
    hot_top: int
    persistence: float                                    # mean share of window k's hot experts hot in k + 1
    absorbed: dict[int, float]                            # R -> p50 share of window k+1's load on plan k's replicas
    notes: list[str] = field(default_factory=list)
    recorded: np.ndarray | None = None                    # (N, W) the current placement's load as the run recorded it

    @property
    def redundant_slots(self) -> list[int]:
        return sorted({R for _, R in self.loads})

    def next_window(self, placement: str, R: int) -> np.ndarray:
        """(N − 1,) vLLM balancedness of windows 1 … N−1 (each after a plan); the current placement's too."""
        return balancedness_vllm(self.loads[(placement, R)][1:])

    def recorded_p50(self) -> float | None:
        """p50 vLLM balancedness of the run's placement as recorded on windows 1 … N−1 (those next_window reads):
        `recorded_next_window_p50`; None when not recorded or with one window."""
        if self.recorded is None or len(self.windows) < 2:
            return None
        return p50(balancedness_vllm(self.recorded[1:]))

    def shown_loads(self) -> dict[tuple[str, int], np.ndarray]:
        """(placement, R) -> (N, W) as the rows and charts list them: the current placement once (at the first R),
        "recorded" after it where the run recorded its slots' counts, then each planner per R."""
        first = self.redundant_slots[0]
        run = {("current", first): self.loads[("current", first)]}
        if self.recorded is not None:
            run[("recorded", first)] = self.recorded
        return run | {key: load for key, load in self.loads.items() if key[0] not in RUN_PLACEMENTS}


def plan_layout(load, world_size: int, redundant_slots: int, current: Layout, distinct: bool = False
                ) -> tuple[Layout, bool]:
    """Our plan for one load (E,) (definitions.OUR_PLANNER): `plan_rows` of one row."""
    expert, rank, kept = plan_rows(np.asarray(load, dtype=np.int64)[None], world_size, redundant_slots, current,
                                   distinct)
    used = expert[0] >= 0
    return (current, True) if kept[0] else (Layout(expert[0][used], rank[0][used], world_size), False)


def plan_rows(loads, world_size: int, redundant_slots: int, current: Layout, distinct: bool = False, order=None,
              eplb=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our plan for every load (X, E) at once (definitions.OUR_PLANNER): per row, the lighter busiest rank of
    moe.parallel.placement.plan's choice (its balanced layout, or the current placement when that is no heavier) and
    of DeepSeek's global EPLB (where E + R is a multiple of W; so it is never heavier than DeepSeek's greedy rule), or
    `current` (kept: True) when neither lightens the busiest rank. `distinct`: only layouts with no expert twice on a
    rank (what the serving formats take). Returns slot experts (X, P) (-1: unused), their ranks (X, P) and kept (X,).
    When the caller has them: `order` = greedy.heaviest_first(loads), `eplb` = rebalance(loads, E + R, 1, 1, W)."""
    loads = np.asarray(loads, dtype=np.int64)
    X, E = loads.shape
    W, R = world_size, redundant_slots
    check_plan_args(loads.astype(np.float64), W, R)
    experts = current.slot_expert
    if current.world_size != W or experts.min() < 0 or experts.max() >= E or len(set(experts.tolist())) < E:
        raise ValueError(f"the current placement is for W={current.world_size} and experts "
                         f"{sorted(set(experts.tolist()))[:8]}…; the load has E={E} and the plan W={W}: "
                         f"give a placement of every expert 0..{E - 1} on {W} ranks")
    order = heaviest_first(loads) if order is None else order
    candidates = [balanced_rows(loads, W, R, order)]                                  # placement.balanced, per row
    peak = rank_load_rows(loads, *candidates[0], W).max(axis=1)
    choice = np.zeros(X, dtype=np.int64)                                              # per row: its candidate
    now = to_placement(current, E) if current.n_slots == E else contiguous(E, W) if W <= E else None
    if now is not None:  # placement.plan keeps `now` unless the balanced layout is strictly lighter
        now = from_placement(now)
        peak = _lighter(rank_load(loads, now).max(axis=1), peak, choice, len(candidates), True)
        candidates.append(_rows_of(now, X))
    if (E + R) % W == 0:  # DeepSeek's global EPLB where it is strictly lighter (and, with `distinct`, allowed)
        rank = np.broadcast_to(np.arange(E + R) // ((E + R) // W), (X, E + R))
        theirs = (rebalance(loads, E + R, 1, 1, W, order) if eplb is None else eplb, rank)
        allowed = _distinct_rows(*theirs, E) if distinct else np.ones(X, dtype=bool)
        mine = rank_load_rows(loads, *theirs, W).max(axis=1)
        peak = _lighter(np.where(allowed, mine, np.iinfo(np.int64).max), peak, choice, len(candidates), False)
        candidates.append(theirs)
    kept = ~(peak < rank_load(loads, current).max(axis=1))
    choice[kept] = len(candidates)
    candidates.append(_rows_of(current, X))
    expert, rank = _pick(choice, candidates)
    return expert, rank, kept


def _lighter(theirs: np.ndarray, peak: np.ndarray, choice: np.ndarray, candidate: int, ties: bool) -> np.ndarray:
    """Per row, choose `candidate` where its busiest rank (`theirs`) is lighter than the chosen one's (`peak`), or as
    light with ties (choice updated in place); returns the chosen busiest ranks."""
    take = (theirs <= peak) if ties else (theirs < peak)
    choice[take] = candidate
    return np.where(take, theirs, peak)


def _rows_of(layout: Layout, X: int) -> tuple[np.ndarray, np.ndarray]:
    """One layout's slots (experts, ranks) for X rows (read-only views)."""
    shape = (X, layout.n_slots)
    return np.broadcast_to(layout.slot_expert, shape), np.broadcast_to(layout.slot_rank, shape)


def _pick(choice: np.ndarray, candidates: list) -> tuple[np.ndarray, np.ndarray]:
    """Per row x, the slots (experts, ranks) of candidates[choice[x]]; the narrower are padded with unused slots
    (expert -1, rank 0)."""
    P = max(experts.shape[1] for experts, _ in candidates)
    expert, rank = np.full((len(choice), P), -1, dtype=np.int64), np.zeros((len(choice), P), dtype=np.int64)
    for c, (experts, ranks) in enumerate(candidates):
        rows = np.flatnonzero(choice == c)
        expert[rows, : experts.shape[1]], rank[rows, : ranks.shape[1]] = experts[rows], ranks[rows]
    return expert, rank


def _distinct_rows(expert: np.ndarray, rank: np.ndarray, n_experts: int) -> np.ndarray:
    """(X,) True where no rank holds two slots of one expert (replay.distinct_per_rank, per row)."""
    key = np.sort(rank * n_experts + expert, axis=1)
    return ~(key[:, 1:] == key[:, :-1]).any(axis=1)


def current_name(has_map: bool, world_size: int, run_world_size: int | None) -> str:
    """What the replay calls the current placement (the verdict's "beats …"): the run's map is the run's placement
    at the W the log records; at another W, or where the log records none, it is that map on the W chosen."""
    if not has_map:
        return "contiguous blocks"
    if run_world_size == world_size:
        return "the run's placement"
    had = "" if run_world_size is None else f" (the run had {run_world_size})"
    return f"the run's map on {world_size} ranks{had}"


def current_layout(n_experts: int, world_size: int, p2l_row=None) -> Layout:
    """The run's placement: its physical → logical map row when it recorded one, else contiguous blocks."""
    if p2l_row is not None:
        return from_map(p2l_row, world_size)
    if world_size > n_experts:
        raise ValueError(f"{world_size} ranks but {n_experts} experts: without the run's physical → logical map the "
                         f"placement compared against is contiguous blocks, which leave a rank without an expert; "
                         f"replay at most {n_experts} ranks, or a log that records its map")
    return from_placement(contiguous(n_experts, world_size))


def _eplb_slots(windows: np.ndarray, s: ReplaySettings, R: int, order=None):
    """DeepSeek's EPLB slots (N, P) and ranks (N, P) for every window at once (`order`: heaviest_first(windows))."""
    E = windows.shape[1]
    groups = s.num_nodes if s.num_groups is None else s.num_groups
    experts = rebalance(windows, E + R, groups, s.num_nodes, s.world_size, order)    # (N, P)
    ranks = np.broadcast_to(np.arange(E + R) // ((E + R) // s.world_size), experts.shape)
    return experts, ranks


def _hot(windows: np.ndarray, n: int, order=None) -> tuple[np.ndarray, float]:
    """(E,) windows in which each expert is hot (among the n busiest with at least one token: runstats.hot_mask,
    ties to the lower index), and persistence: the mean over windows k with a hot expert of the share of window k's
    hot experts still hot in window k + 1 (NaN when no such k)."""
    N = len(windows)
    top = hot_mask(windows, n, order)                                                # (N, E)
    now = top[:-1].sum(axis=1)                                                       # (N − 1,) hot in window k
    kept = (top[1:] & top[:-1]).sum(axis=1)                                          # (N − 1,) of them hot in k + 1
    shares = kept[now > 0] / now[now > 0] if N > 1 else np.zeros(0)
    return top.sum(axis=0), float(shares.mean()) if len(shares) else float("nan")


def _absorbed(windows: np.ndarray, experts: np.ndarray) -> float:
    """p50 over k of the share of window k+1's tokens on experts that plan k replicated."""
    if len(windows) < 2:
        return float("nan")
    N, E = windows.shape
    used = experts[:-1] >= 0
    cell = (np.arange(N - 1)[:, None] * E + experts[:-1])[used]
    slots = np.bincount(cell, minlength=(N - 1) * E).reshape(N - 1, E)               # (N − 1, E) slots of plan k
    total = windows[1:].sum(axis=1)
    hit = np.where(slots > 1, windows[1:], 0).sum(axis=1)
    shares = np.where(total > 0, hit / np.maximum(total, 1), np.nan)
    return float(np.nanmedian(shares)) if np.isfinite(shares).any() else float("nan")


def replay_layer(layer: str, counts, current: Layout, s: ReplaySettings, run: RecordedSlots | None = None
                 ) -> LayerReplay:
    """Replay one layer's (S, E) counts under the current placement and both planners, for every R. `run`: what each
    slot of `current` served where the run recorded it (RoutingLog.slot_counts; definition "replay_recorded"), its
    note kept with the layer's notes."""
    windows = window_counts(counts, s.window)                                        # (N, E)
    N, E = windows.shape
    W = s.world_size
    cur = rank_load(windows, current)                                                # (N, W)
    bal_cur = balancedness_vllm(cur)
    loads, own, kept, intervals, rest, absorbed, notes = {}, {}, {}, {}, {}, {}, []
    order = heaviest_first(windows)                                                  # one sort serves every plan
    columns, mean = np.ascontiguousarray(windows.T), windows.sum(axis=1) / W           # (E, N), (N,)
    groups = s.num_nodes if s.num_groups is None else s.num_groups
    for R in s.redundant_slots:
        loads[("current", R)] = cur
        intervals[("current", R)], rest[("current", R)] = schedules(
            N, s.intervals, lambda _, lo, hi: bal_cur[span_windows(lo, hi)])
        try:
            check_eplb_args(E, E + R, groups, s.num_nodes, W)
            theirs = _eplb_slots(windows, s, R, order) + (None,)
        except ValueError as err:
            theirs = None
            notes.append(f"DeepSeek's EPLB skipped for R={R}: {err}")
        one = theirs is not None and is_global(groups, s.num_nodes)
        slots = {"planned": plan_rows(windows, W, R, current, order=order, eplb=theirs[0] if one else None)}
        kept[R] = slots["planned"][2]
        absorbed[R] = _absorbed(windows, slots["planned"][0])  # R = 0 too: a plan may keep the run's map's replicas
        if theirs is not None:
            slots["eplb"] = theirs
        for name, (experts, ranks, _) in slots.items():
            split = replica_index(experts)                                                # each plan's, once
            own[(name, R)] = rank_load_rows(windows, experts, ranks, W, split=split)
            after = rank_load_rows(windows, experts, ranks, W, np.arange(N - 1), np.arange(1, N), split)  # k on k+1
            loads[(name, R)] = np.concatenate([cur[:1], after])
            spans = partial(span_balancedness, windows, experts, ranks, W, split, columns, mean)
            intervals[(name, R)], rest[(name, R)] = schedules(N, s.intervals, spans, balancedness_vllm(after))
    n = min(E, s.hot_top or max(max(s.redundant_slots), 0) or W)
    hot, persistence = _hot(windows, n, order)
    recorded = None
    if run is not None:
        notes += [run.note] if run.note else []
        if run.counts is not None:
            recorded = slot_rank_load(window_counts(run.counts, s.window), current)    # (N, W)
    return LayerReplay(layer, windows, loads, own, kept, intervals, rest, hot, n, persistence, absorbed, notes,
                       recorded)


def balance_rows(result: LayerReplay) -> list[dict]:
    """Tidy rows: one per (placement, R, window) with vLLM's and SGLang's balancedness, max/mean, max and mean load,
    in the order of LayerReplay.shown_loads; a planner's window 0 is left out (no plan comes before it)."""
    rows = []
    for (name, R), load in result.shown_loads().items():
        vllm, sgl, mom = balancedness_vllm(load), balancedness_sglang(load), rank_max_over_mean(load)
        for k in range(0 if name in RUN_PLACEMENTS else 1, len(load)):
            rows.append({"layer": result.layer, "window": k, "placement": name, "redundant_slots": R,
                         "balancedness_vllm": float(vllm[k]), "balancedness_sglang": float(sgl[k]),
                         "max_over_mean": float(mom[k]), "max_load": int(load[k].max()),
                         "mean_load": float(load[k].mean())})
    return rows


def replay_log(counts, layers: list[str], settings: ReplaySettings, p2l=None, only: list[str] | None = None,
               workers: int | None = None, slot_counts: Callable[[int], RecordedSlots | None] | None = None
               ) -> list[LayerReplay]:
    """replay_layer for every layer (or those named in `only`) of counts (S, L, E); p2l (L, P): the run's map;
    slot_counts(i): what each slot of it served in layer i, when recorded (RoutingLog.slot_counts at this W). Layers
    are replayed side by side on `workers` threads (default: the CPUs; the compiled steps release the GIL)."""
    counts = np.asarray(counts)
    chosen = layers if only is None else list(dict.fromkeys(only))  # a layer named twice is replayed once
    missing = [name for name in chosen if name not in layers]
    if missing:
        raise ValueError(f"layer {missing[0]!r} is not in the log; choose from {layers[:8]}")

    def one(name: str) -> LayerReplay:
        i = layers.index(name)
        current = current_layout(counts.shape[2], settings.world_size, None if p2l is None else p2l[i])
        return replay_layer(name, counts[:, i, :], current, settings, None if slot_counts is None else slot_counts(i))
    if len(chosen) < 2 or workers == 1:
        return [one(name) for name in chosen]
    with ThreadPoolExecutor(max_workers=min(len(chosen), workers or os.cpu_count() or 1)) as pool:
        return list(pool.map(one, chosen))
