"""Expert placement over W ranks: the contiguous default, a balanced plan with replicas, and its JSON file.

A placement lists, per rank, the experts it hosts. An expert listed on several ranks (or twice on one) is
replicated: its served assignments, in global token order, are cut into contiguous chunks of near-equal size
(sizes differ by at most one), one per slot, the first chunk to the lowest rank; a rank with two slots of one
expert serves both chunks (an uneven split, as DeepSeek's EPLB makes them). Because routing is deterministic,
`predicted_load` of a placement equals the per-rank load the expert-parallel forward measures.

`plan` makes a balanced placement with moe.parallel.planner (replicate the hot experts, pack, refine). Greedy
packing can still lose to the placement it would replace (an even load split into contiguous blocks), so `plan`
compares the two on the load it was given and keeps the current placement, flagged, unless the busiest rank gets
lighter.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from moe.jsonio import dumps
from moe.parallel.chunks import chunk_share, replica_index
from moe.parallel.planner import balanced_rows, rank_lists
from moe.roots import read_regular

FORMAT = "moe-scope-placement/1"
MAX_FILE_BYTES = 1 << 20  # a placement file lists E·(1 + replicas) small integers: 1 MiB is ample


@dataclass(frozen=True)
class Placement:
    n_experts: int
    ranks: tuple[tuple[int, ...], ...]  # ranks[r]: the experts rank r hosts, ascending (listed twice: two slots)

    def __post_init__(self) -> None:
        check_placement(self.ranks, self.n_experts)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    @property
    def redundant_slots(self) -> int:
        return sum(len(r) for r in self.ranks) - self.n_experts

    def replicas(self, expert: int) -> list[int]:
        """The rank of each slot of `expert`, ascending (a rank with two slots twice): slot i serves chunk i."""
        return [r for r, experts in enumerate(self.ranks) for e in experts if e == expert]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "world_size": self.world_size, "n_experts": self.n_experts,
                "redundant_slots": self.redundant_slots, "ranks": [list(r) for r in self.ranks]}


def check_placement(ranks, n_experts: int, redundant_slots: int | None = None) -> None:
    """ValueError unless every expert is placed, every rank has one, R matches (a rank may list an expert twice:
    two slots, two chunks of its tokens)."""
    listed = [e for r in ranks for e in r]
    if not all(_is_index(e) for e in listed):  # before any set(): a nested list is not hashable
        raise ValueError("placement lists something other than expert indices (integers >= 0); give each rank "
                         "a flat list such as [0, 1]")
    bad = sorted({e for e in listed if e >= n_experts})
    if bad:
        raise ValueError(f"placement names experts {short(bad)} outside 0..{n_experts - 1}; list only existing "
                         f"experts")
    missing = sorted(set(range(n_experts)) - set(listed))
    if missing:
        raise ValueError(f"placement misses experts {short(missing)}: every expert 0..{n_experts - 1} must be "
                         f"on a rank")
    for r, experts in enumerate(ranks):
        if not experts:
            raise ValueError(f"rank {r} hosts no expert; give every rank at least one expert or use fewer ranks")
    extra = len(listed) - n_experts
    if redundant_slots is not None and extra != redundant_slots:
        repeated = sorted(e for e, n in Counter(listed).items() if n > 1)
        raise ValueError(f"placement repeats experts {short(repeated)} ({extra} extra slots) but declares "
                         f"redundant_slots={redundant_slots}; list each expert once or declare the replicas")


def contiguous(n_experts: int, world_size: int) -> Placement:
    """Rank r hosts experts [r·E/W, (r+1)·E/W): the default split, no replicas."""
    if world_size > n_experts:
        raise ValueError(f"world size {world_size} is larger than n_experts={n_experts}: a rank would host no "
                         f"expert; use at most {n_experts} processes or a --placement with redundant slots")
    return Placement(n_experts, tuple(tuple(range(r * n_experts // world_size, (r + 1) * n_experts // world_size))
                                      for r in range(world_size)))


def chunk_sizes(n: int, parts: int) -> list[int]:
    """n items cut into `parts` contiguous chunks whose sizes differ by at most one, cut at i·n // parts (so
    chunk_sizes(7, 5) = [1, 1, 2, 1, 2])."""
    return chunk_share(n, np.arange(parts), parts).tolist()


def predicted_load(placement: Placement, load) -> np.ndarray:
    """(W,) assignments each rank will run, given per-expert load (E,) and the replica split rule."""
    load = np.asarray(load, dtype=np.int64)
    expert = np.array([e for r in placement.ranks for e in r])                       # (P,) slots rank by rank
    rank = np.repeat(np.arange(placement.world_size), [len(r) for r in placement.ranks])
    share = chunk_share(load[expert], *replica_index(expert))                         # slot i of e: chunk i
    return np.bincount(rank, weights=share, minlength=placement.world_size).astype(np.int64)


CURRENT = "the current placement"


@dataclass(frozen=True)
class Plan:
    """The planner's answer for one load: the placement to use, and whether it is the current one, kept."""
    placement: Placement
    kept_current: bool           # True: the planned layout did not lighten the busiest rank; placement = current
    redundant_slots: int         # R asked for (placement.redundant_slots is 0 when the current one was kept)
    predicted: tuple[int, ...]   # (W,) predicted_load(placement, load)
    planned_max: int             # the busiest rank's load under the layout the planner built (R replicas)
    current_max: int | None      # the busiest rank's load under the current placement; None when there is none
    current_name: str = CURRENT  # what the note calls it

    @property
    def note(self) -> str:
        """One line for the page and the CLI: what the planner chose and why."""
        if self.kept_current:
            which = "the current one gives" if self.current_name == CURRENT else f"{self.current_name} give"
            return (f"kept {self.current_name}: the planned layout ({self.redundant_slots} redundant slots) would "
                    f"give the busiest rank {self.planned_max} assignments, {which} it {self.current_max}; planning "
                    f"does not help this load")
        than = "" if self.current_max is None else f" ({self.current_name}: {self.current_max})"
        return (f"planned {self.redundant_slots} redundant slots: the busiest rank gets {self.planned_max} "
                f"assignments{than}")


def plan(load, world_size: int, redundant_slots: int = 0, current: Placement | None = None,
         current_name: str = CURRENT) -> Plan:
    """A balanced placement of E experts on W ranks with R replicas of the hottest experts, or `current`
    (default: contiguous blocks when W <= E) when that plan does not lighten the busiest rank on `load`;
    `current_name`: what the note calls `current`."""
    load = np.asarray(load, dtype=np.float64)
    E = len(load)
    check_plan_args(load, world_size, redundant_slots)
    if current is None and world_size <= E:
        current = contiguous(E, world_size)
    if current is not None and (current.n_experts, current.world_size) != (E, world_size):
        raise ValueError(f"the current placement is for E={current.n_experts}, W={current.world_size}; "
                         f"the load has E={E} and the plan W={world_size}")
    planned = balanced(load, world_size, redundant_slots)
    planned_load = predicted_load(planned, load)
    current_max = None if current is None else int(predicted_load(current, load).max())
    keep = current_max is not None and current_max <= int(planned_load.max())  # no gain: replicas cost memory, traffic
    chosen = current if keep else planned
    return Plan(chosen, keep, redundant_slots, tuple(int(v) for v in predicted_load(chosen, load)),
                int(planned_load.max()), current_max, current_name)


def balanced(load, world_size: int, redundant_slots: int) -> Placement:
    """The layout `plan` builds (replicate, pack, refine), whether or not it beats the current placement."""
    load = np.asarray(load, dtype=np.float64)
    check_plan_args(load, world_size, redundant_slots)
    expert, rank = balanced_rows(load[None], world_size, redundant_slots)
    return Placement(len(load), rank_lists(expert[0], rank[0], world_size))


def check_plan_args(load: np.ndarray, world_size: int, redundant_slots: int) -> None:
    """ValueError naming the fix unless the planner takes these arguments; load (E,), or (X, E) for many loads."""
    E = load.shape[-1]
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if redundant_slots < 0:
        raise ValueError(f"redundant_slots must be >= 0, got {redundant_slots}")
    if world_size > E + redundant_slots:
        raise ValueError(f"{world_size} ranks but only {E} experts + {redundant_slots} redundant slots: a rank "
                         f"would host no expert; add redundant slots (at least {world_size - E}) or use fewer ranks")
    if np.any(load < 0) or not np.all(np.isfinite(load)):
        raise ValueError("expert load must be finite and >= 0 (counts of served assignments)")
    if redundant_slots > E * (world_size - 1):
        raise ValueError(f"{redundant_slots} redundant slots exceed E·(W-1) = {E * (world_size - 1)}: this planner "
                         f"gives an expert at most one slot per rank; use fewer redundant slots")


def save(placement: Placement, path: str, load=None) -> None:
    """Write the plan as JSON; with `load`, also its predicted per-rank load (for the reader)."""
    doc = placement.to_dict()
    if load is not None:
        doc["load"] = [int(v) for v in np.asarray(load)]
        doc["predicted_load"] = [int(v) for v in predicted_load(placement, load)]
    with open(path, "w") as f:
        f.write(dumps(doc, indent=1))


def load_file(path: str, n_experts: int, world_size: int) -> Placement:
    """Read and check a placement file for this E and W; every problem is a ValueError naming the fix.
    Only a regular file of at most MAX_FILE_BYTES is read (a device or a FIFO would never end)."""
    return placement_from_doc(read_json(path), path, n_experts, world_size)


def read_json(path: str) -> object:
    """The JSON document of a placement file (any of the formats moe.parallel.export reads); ValueError otherwise."""
    try:
        return json.loads(_read_regular(path, MAX_FILE_BYTES))
    except UnicodeDecodeError:
        raise ValueError(f"placement file {path!r} is not UTF-8 text; give the JSON file moe.parallel.placement.save "
                         f"writes") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"placement file {path!r} is not JSON ({err.msg}, line {err.lineno})") from None
    except RecursionError:
        raise ValueError(f"placement file {path!r} nests lists too deeply; 'ranks' is a list of flat lists") from None


def placement_from_doc(doc, path: str, n_experts: int, world_size: int) -> Placement:
    """The Placement of a document in `save`'s format ({"ranks": [[...], ...], ...}), checked for this E and W."""
    if not isinstance(doc, dict) or not isinstance(doc.get("ranks"), list):
        raise ValueError(f"placement file {path!r} needs a 'ranks' list (one list of experts per rank)")
    if doc.get("n_experts", n_experts) != n_experts:
        raise ValueError(f"placement file {path!r} is for n_experts={short(doc['n_experts'])}, this run has "
                         f"{n_experts}")
    ranks = doc["ranks"]
    if len(ranks) != world_size:
        raise ValueError(f"placement file {path!r} has {len(ranks)} ranks but the world size is {world_size}; "
                         f"launch {len(ranks)} processes or plan for {world_size}")
    if not all(isinstance(r, list) and all(_is_index(e) for e in r) for r in ranks):
        raise ValueError(f"placement file {path!r}: every entry of 'ranks' must be a flat list of expert "
                         f"indices (integers), e.g. [[0, 1], [2, 3]]")
    slots = doc.get("redundant_slots", 0)
    if not _is_index(slots):
        raise ValueError(f"placement file {path!r}: 'redundant_slots' must be an integer >= 0, got {short(slots)}")
    check_placement(ranks, n_experts, slots)
    return Placement(n_experts, tuple(tuple(sorted(r)) for r in ranks))


def _read_regular(path: str, cap: int) -> bytes:
    """The bytes of a regular file of at most `cap` bytes; ValueError for anything else."""
    data = read_regular(path, cap, "placement file", "give the JSON file moe.parallel.placement.save writes")
    if len(data) > cap:
        raise ValueError(f"placement file {path!r} is larger than {cap // 1024} KiB; a placement lists a few "
                         f"integers per rank, give the file moe.parallel.placement.save writes")
    return data


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def short(value, chars: int = 60) -> str:
    """A value read from a file, shortened for a message."""
    text = repr(value)
    return text if len(text) <= chars else text[: chars - 1] + "…"
