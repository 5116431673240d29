"""The routing log: one in-memory record for every routing source (SGLang, vLLM, Megatron, plain counts, our own
recorder), and the checks every reader shares.

A `RoutingLog` holds, per (step, layer), the token count of every *logical* expert (`counts`, (S, L, E));
optionally the per-token top-k (`tokens`), the physical → logical expert map of the run (`physical_to_logical`,
(L, P)) and per-rank physical counts (`rank_counts`, (S, W, L, P)); and where it came from (`source`, `meta`).
Readers build one with the helpers below (physical → logical mapping, ids → counts, the expert count), which
refuse a malformed input in one line (a ValueError naming what is wrong and the fix) and never echo a string
from the file. `moe.traces.store` writes and reads it as a Parquet dataset (docs/routing-log.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moe.traces.records import MAX_EXPERTS, MAX_LAYERS, check_experts

# Where the expert count came from (shown on the page and in trace-report's JSON): the caller's --n-experts, the
# source's own shapes or metadata, or (plain counts only) the largest expert id in the file + 1.
GIVEN, RECORDED, INFERRED = "given", "recorded", "inferred"


class ExpertsNeeded(ValueError):
    """The source does not record its expert count and none was given; `at_least` is the largest index + 1 seen."""

    def __init__(self, at_least: int, what: str = "this file") -> None:
        self.at_least = at_least
        super().__init__(f"{what} does not record the number of experts; give it (--n-experts, the model's expert "
                         f"count), at least the largest expert index + 1 ({at_least})")


@dataclass
class TokenRouting:
    """Per-token routing: row n is one token of step `step[n]` at layer `layer[n]` (an index into log.layers)."""
    step: np.ndarray                   # (N,) int64
    layer: np.ndarray                  # (N,) int32
    ids: np.ndarray                    # (N, K) int64 logical expert ids; -1 = no expert in that slot (padding)
    weights: np.ndarray | None = None  # (N, K) float32 gate weights, when the source records them

    def __post_init__(self) -> None:
        n = len(self.step)
        if self.layer.shape != (n,) or self.ids.ndim != 2 or self.ids.shape[0] != n:
            raise ValueError("per-token routing needs step (N,), layer (N,) and ids (N, K) of one length")
        if self.weights is not None and self.weights.shape != self.ids.shape:
            raise ValueError("per-token weights must have the shape of the ids (N, K)")


LAYER_BASE = "layer_base"  # meta key: the number the source gives its first layer, when not 0
UNKNOWN_W = ("The log does not record the run's number of ranks: the slots recorded lie on the W chosen here "
             "(slot p on rank p // (P / W)), the run's placement only if that is the run's W.")


@dataclass(frozen=True)
class RecordedSlots:
    """A layer's per-slot counts as the run recorded them (RoutingLog.slot_counts): `counts` (S, P) when they are
    shown, else None; `note`: why they are not shown, or what to read them with (the W is the one chosen)."""
    counts: np.ndarray | None
    note: str = ""


@dataclass
class RoutingLog:
    source: str                        # a key of moe.traces.formats.FORMATS, e.g. "sglang-stat"
    layers: list[str]                  # layer labels: the source's own numbers where it names them, else "0".."L-1"
    steps: np.ndarray                  # (S,) int64, strictly ascending
    counts: np.ndarray                 # (S, L, E) int64: tokens routed to each logical expert
    n_experts_source: str = RECORDED   # GIVEN (--n-experts), RECORDED (the file's shapes) or INFERRED (largest id + 1)
    top_k: int | None = None           # experts per token, when the source records it
    meta: dict = field(default_factory=dict)  # JSON-able: world_size, ranks, files, model, ...
    tokens: TokenRouting | None = None
    physical_to_logical: np.ndarray | None = None  # (L, P) int64: the placement the run used
    rank_counts: np.ndarray | None = None          # (S, W, L, P) int64: each rank's physical counts

    def __post_init__(self) -> None:
        self.steps = np.asarray(self.steps, dtype=np.int64)
        S, L = len(self.steps), len(self.layers)
        if self.counts.ndim != 3 or self.counts.shape[:2] != (S, L):
            raise ValueError(f"counts must be (steps={S}, layers={L}, experts), got {self.counts.shape}")
        if S == 0 or L == 0:
            raise ValueError("the routing log holds no steps or no layers; give a file with at least one record")
        if L > MAX_LAYERS:  # every reader (a meta.json's list, an npz's or npy's axis): an auditor's 100,000 took 86 s
            raise ValueError(f"the routing log names {L:,} layers, more than the {MAX_LAYERS:,} a file may name (far "
                             f"above any MoE model); give the log of one model")
        if S > 1 and not bool((np.diff(self.steps) > 0).all()):
            raise ValueError("the routing log's steps must be strictly ascending")
        if len(set(self.layers)) != L:
            raise ValueError("the routing log names a layer twice")
        check_experts(self.counts.shape[2], "the routing log's expert count")
        if self.physical_to_logical is not None:
            check_map(self.physical_to_logical, self.n_experts, "the physical → logical map", L)
        base = self.meta.get(LAYER_BASE, 0)
        if type(base) is not int or base not in (0, 1):  # from a file's meta.json: checked, never int()ed
            raise ValueError(f"the routing log's {LAYER_BASE} must be 0 or 1 (the number its source gives its first "
                             f"layer); write the log again")

    @property
    def n_experts(self) -> int:
        return int(self.counts.shape[2])

    @property
    def layer_base(self) -> int:
        """The number the source gives its first layer (meta LAYER_BASE; 0 when absent): Megatron-Core's layer_number
        counts from 1, so its label n is layer id n − 1 in a serving map (moe.parallel.export.sglang_layer_ids)."""
        return self.meta.get(LAYER_BASE, 0)

    def recorded_world_size(self) -> int | None:
        """The run's W as the log records it: meta world_size, 2 or more (one rank says nothing of a placement) and,
        with a map, a divisor of its slots (slot p on rank p // (P / W)); else None."""
        run = self.meta.get("world_size")
        if type(run) is not int or run < 2:
            return None
        return run if self.physical_to_logical is None or self.physical_to_logical.shape[1] % run == 0 else None

    def slot_counts(self, layer: int, world_size: int) -> RecordedSlots | None:
        """What each physical slot of the run's map served in the layer at index `layer` (rank_counts summed over
        the ranks that recorded them), for a replay on `world_size` ranks (definition "replay_recorded"); None when
        the log records no per-slot counts of a map."""
        p2l, ranks = self.physical_to_logical, self.rank_counts
        if p2l is None or ranks is None:
            return None
        S, L, P = len(self.steps), len(self.layers), p2l.shape[1]
        if ranks.ndim != 4 or (ranks.shape[0], *ranks.shape[2:]) != (S, L, P):
            return RecordedSlots(None, f"the run's per-rank counts {list(ranks.shape)} are not [steps={S}, ranks, "
                                       f"layers={L}, slots={P}] of its map: not shown as recorded")
        run = self.recorded_world_size()
        if run is not None and run != world_size:
            return RecordedSlots(None, f"the run's per-slot counts are shown as recorded at its own W={run} only (slot "
                                       f"p on rank p // (P / W)); replay at W={run} to see them")
        per_slot = ranks[:, :, layer].sum(axis=1, dtype=np.int64)                    # (S, P)
        if not np.array_equal(map_to_logical(per_slot[:, None], p2l[layer: layer + 1], self.n_experts)[:, 0],
                              self.counts[:, layer]):
            return RecordedSlots(None, "the run's per-slot counts of this layer do not sum, through its physical → "
                                       "logical map, to its expert counts: not shown as recorded")
        return RecordedSlots(per_slot, "" if run is not None else UNKNOWN_W)

    def layer_load(self, layer: str) -> np.ndarray:
        """(S, E) tokens per step and expert of one layer."""
        return self.counts[:, self.layers.index(layer), :]


def resolve_experts(given: int | None, recorded: int | None, max_id: int, what: str) -> tuple[int, str]:
    """E and where it came from: the source's own count when it records one (the caller's must then agree),
    else the caller's; never below the largest id + 1. `max_id` is -1 when no id was seen."""
    if recorded is not None:
        E = check_experts(recorded, f"{what}'s expert count")
        if given is not None and given != E:
            raise ValueError(f"{what} records {E} experts but --n-experts {given} was given; give {E} or leave the "
                             f"count out")
        source = RECORDED
    elif given is None:
        raise ExpertsNeeded(max_id + 1, what)
    else:
        E, source = check_experts(given, "--n-experts"), GIVEN
    if max_id >= E:
        raise ValueError(f"{what} routes to expert {max_id} but the expert count is {E}; the count must be at least "
                         f"the largest expert index + 1 ({max_id + 1})")
    return E, source


def check_map(p2l, n_experts: int | None, what: str, n_layers: int | None = None) -> np.ndarray:
    """A physical → logical map (L, P) of integers in 0..E-1 in which every logical expert has a slot in every layer
    (and, with n_layers, one row per layer of the log). With n_experts None, E is the map's largest id + 1. Returns
    it as int64."""
    arr = np.asarray(p2l)
    if arr.ndim != 2 or 0 in arr.shape or arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an integer array [layers, physical_experts], got "
                         f"{'shape ' + str(tuple(arr.shape)) if arr.dtype.kind in 'iu' else 'non-integers'}")
    if n_layers is not None and arr.shape[0] != n_layers:
        raise ValueError(f"{what} has {arr.shape[0]:,} row(s) for {n_layers:,} layer(s); give one row per layer")
    arr = arr.astype(np.int64)
    E = int(arr.max()) + 1 if n_experts is None else n_experts
    if int(arr.min()) < 0 or int(arr.max()) >= E or E > MAX_EXPERTS:
        raise ValueError(f"{what} holds expert {int(arr.min()) if arr.min() < 0 else int(arr.max())}, outside "
                         f"0..{E - 1}")
    if arr.shape[1] < E:  # before the (L, E) table below: a map of one slot per row and E = 16,384 took 3.6 GB
        raise ValueError(f"{what} has {arr.shape[1]} physical slots per layer for {E} logical experts; every expert "
                         f"needs at least one")
    present = np.zeros((arr.shape[0], E), dtype=bool)                                 # (L, E), at most the map's size
    present[np.arange(arr.shape[0])[:, None], arr] = True
    if not present.all():
        layer, expert = (int(v[0]) for v in np.nonzero(~present))
        raise ValueError(f"{what} gives logical expert {expert} no physical slot in layer {layer}; every expert needs "
                         f"at least one")
    return arr


def map_to_logical(physical: np.ndarray, p2l: np.ndarray, n_experts: int) -> np.ndarray:
    """Counts per physical slot (..., L, P) summed into counts per logical expert (..., L, E) through the map (L, P)."""
    *lead, L, P = physical.shape
    if p2l.shape != (L, P):
        raise ValueError(f"the counts have {L} layers × {P} physical experts but the physical → logical map is "
                         f"{list(p2l.shape)}; give the map written with the counts")
    flat = physical.reshape(-1, L * P).astype(np.int64)                               # (M, L·P)
    target = (np.arange(L)[:, None] * n_experts + p2l).ravel()                       # (L·P,) logical column
    out = np.zeros((flat.shape[0], L * n_experts), dtype=np.int64)                   # (M, L·E)
    _add_columns(out, flat, target)
    return out.reshape(*lead, L, n_experts)


def _add_columns(out: np.ndarray, flat: np.ndarray, target: np.ndarray) -> None:
    """out[:, target[j]] += flat[:, j] for every j, vectorised over rows (repeated targets add up)."""
    order = np.argsort(target, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(target[order])) + 1]
    sums = np.add.reduceat(flat[:, order], starts, axis=1)                           # (M, distinct targets)
    out[:, target[order][starts]] += sums


def counts_from_ids(step_index: np.ndarray, layer_index: np.ndarray, ids: np.ndarray, n_steps: int,
                    n_layers: int, n_experts: int) -> np.ndarray:
    """(S, L, E) token counts from per-token ids (N, K) at (step_index, layer_index) (N,); -1 slots are skipped."""
    keep = ids >= 0                                                                  # (N, K)
    cell = (step_index.astype(np.int64) * n_layers + layer_index)[:, None] * n_experts + ids  # (N, K)
    flat = np.bincount(cell[keep], minlength=n_steps * n_layers * n_experts)
    return flat.reshape(n_steps, n_layers, n_experts).astype(np.int64)


def check_ids(ids: np.ndarray, where: str, allow_padding: bool = False) -> int:
    """Integer expert ids ≥ 0 (or -1 where padding is allowed), below MAX_EXPERTS; returns the largest (-1: none)."""
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{where}: expert ids must be integers, got {ids.dtype.name}")
    if ids.size == 0:
        return -1
    low, high = int(ids.min()), int(ids.max())
    if low < (-1 if allow_padding else 0):
        raise ValueError(f"{where}: expert id {low} is negative" + (" (only -1 marks an empty slot)"
                                                                   if allow_padding else ""))
    if high >= MAX_EXPERTS:
        raise ValueError(f"{where}: expert id {high} is beyond {MAX_EXPERTS - 1}")
    return high


def repeated_expert(ids: np.ndarray) -> int | None:
    """The first expert id (>= 0; -1 pads) that a token, a row along the last axis of ids, names twice; else None.
    Sorted a chunk of rows at a time (a copy of 2^20 ids at most)."""
    if ids.ndim == 0 or ids.size == 0 or ids.shape[-1] < 2:
        return None
    rows = ids.reshape(-1, ids.shape[-1])
    step = max(1, (1 << 20) // rows.shape[1])
    for lo in range(0, len(rows), step):
        ordered = np.sort(rows[lo:lo + step], axis=1)
        same = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if same.any():
            return int(ordered[:, 1:][same][0])
    return None


def check_distinct(ids: np.ndarray, where: str) -> None:
    """ValueError unless every token (a row along the last axis) names each expert once: a token's load counts it once
    per expert (definition "trace_load"), and the stacks' top-k never repeat one."""
    twice = repeated_expert(ids)
    if twice is not None:
        raise ValueError(f"{where}: a token names expert {twice} twice among its top-k; give the ids as written (K "
                         f"distinct experts per token)")


def default_layers(n: int) -> list[str]:
    """Layers labelled 0…L−1 in file order (for sources that do not name them)."""
    return [str(i) for i in range(n)]


def put_once(cells: np.ndarray, flat: np.ndarray, values: np.ndarray) -> int | None:
    """cells[flat] = values where every cell is still -1 (no row yet) and named by one row only; else the first row
    (index into flat) whose cell was given before or by another row, with cells left part-written. Each row first
    writes its own mark (-2 - row) and must read it back: no sort of the rows."""
    given = np.flatnonzero(cells[flat] != -1)
    if len(given):
        return int(given[0])
    marks = -2 - np.arange(len(flat))
    cells[flat] = marks
    lost = np.flatnonzero(cells[flat] != marks)
    if len(lost):
        return int(lost[0])
    cells[flat] = values
    return None
