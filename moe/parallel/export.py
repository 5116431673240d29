"""Plan files: write one placement per layer in the formats the serving stacks read, read any of them back.

- "sglang": SGLang's `--init-expert-location` JSON, `{"physical_to_logical_map": [[...], ...]}` [num_layers,
  physical_experts], row i = decoder layer id i (ExpertLocationMetadata.num_layers is the model's layer count;
  `logical_to_all_physical(layer_id, ...)` reads row layer_id), and nothing else: SGLang passes the document's
  keys to `ExpertLocationMetadata.init_by_mapping` as arguments (python/sglang/srt/eplb/expert_location.py,
  `compute_initial_expert_location_metadata`, v0.5), so an extra key would be refused. Slot p is on rank
  p // (P / W), P = E + ep_num_redundant_experts.
- "vllm": the same map (vLLM's `EplbState.physical_to_logical_map`, (layers, physical experts), slot p on rank
  p // (P / W)) with `ep_size`, `num_redundant_experts`, `num_logical_experts` and `layers` beside it.
- "moe-scope": our own, any R: per layer the experts of each rank (ranks may hold different numbers of slots).
The serving formats we write need every rank to hold the same number of slots, each a distinct expert on its rank
(issue #18's rule): E + R must be a multiple of W (`serving_redundant_slots` lists the R that are), and the plan is
made with `plan_layout(..., distinct=True)` and `moe.parallel.serving.serving_layout`. Reading is liberal: the
stacks' own balancer may put two slots of one expert on a GPU (vLLM's DefaultEplbPolicy,
vllm/distributed/eplb/policy/default.py @02c1119c5782, DeepSeek's rule: `balanced_packing` of the physical replicas
onto GPUs has no one-per-GPU check), and such a map opens (two slots, two chunks of that expert's tokens).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from moe.jsonio import dumps
from moe.metrics import balancedness_sglang, balancedness_vllm, rank_max_over_mean
from moe.parallel.judge import current_layout, plan_layout
from moe.parallel.placement import Placement, placement_from_doc, read_json, short
from moe.parallel.replay import (Layout, distinct_per_rank, from_map, from_placement, rank_load, to_placement,
                                 window_counts)
from moe.parallel.serving import serving_layout
from moe.traces.log import check_map
from moe.traces.records import MAX_EXPERTS, MAX_LAYERS

FORMATS = ("sglang", "vllm", "moe-scope")
MAX_SGLANG_CELLS = 1 << 20  # layers × slots of an SGLang map we write (DeepSeek-V3's: 61 × 288): a 16 KB log
                            # labelled "20000000" made one of 20 M rows, 4 GB and minutes
MOE_SCOPE_FORMAT = "moe-scope-plan/1"


@dataclass(frozen=True)
class PlanFile:
    """A plan read back: one layout per layer."""
    format: str                 # a key of FORMATS, or "placement" (moe.parallel.placement.save's one-layer file)
    layers: list[str]
    layouts: list[Layout]
    n_experts: int
    world_size: int


@dataclass(frozen=True)
class LayerPlan:
    """The plan of one layer to export: its layout, the load it was made from and whether it kept the current one."""
    layout: Layout
    load: np.ndarray     # (E,) tokens per expert it was planned from
    kept_current: bool
    note: str

    def to_dict(self) -> dict:
        """Ranks (lists of integers), predicted per-rank load and its balance (definitions: balancedness_*)."""
        ranks = rank_load(self.load[None], self.layout)[0]                           # (W,)
        return {"kept_current": self.kept_current, "note": self.note,
                "ranks": [sorted(r) for r in self.layout.rank_experts()], "predicted_load": ranks.tolist(),
                "balancedness_vllm": float(balancedness_vllm(ranks)),
                "balancedness_sglang": float(balancedness_sglang(ranks)),
                "max_over_mean": float(rank_max_over_mean(ranks))}


def layer_plans(counts, layers: list[str], world_size: int, redundant_slots: int, p2l=None,
                last_window: int | None = None, serving: bool = False, only: list[str] | None = None
                ) -> dict[str, LayerPlan]:
    """One plan per layer of counts (S, L, E) from the whole log (or its last window of `last_window` steps);
    with `serving`, every layer gets exactly E + R slots, a distinct expert per slot of a rank (serving_layout)."""
    counts = np.asarray(counts, dtype=np.int64)
    E, W, R = counts.shape[2], world_size, redundant_slots
    if serving:
        check_serving(E, R, W)
    out = {}
    for name in layers if only is None else only:
        if name not in layers:
            raise ValueError(f"layer {name!r} is not in the log; choose from {layers[:8]}")
        i = layers.index(name)
        current = current_layout(E, W, None if p2l is None else p2l[i])
        load = window_counts(counts[:, i, :], last_window or len(counts))[-1]         # (E,)
        layout, kept = plan_layout(load, W, R, current, distinct=serving)
        placed = layout.n_slots - E
        note = ("kept the current placement: no plan with these slots lightens the busiest rank" if kept
                else f"planned {placed} redundant slots" + (f" of the {R} allowed: contiguous blocks, lighter than "
                                                            f"the current placement; with {R}, neither our layout "
                                                            f"nor DeepSeek's was lighter still (a smaller R may be: "
                                                            f"greedy plans are not monotone in R)"
                                                            if placed < R else ""))
        if serving:
            layout, how = serving_layout(layout, load, E + R, current, name)
            note += how
        out[name] = LayerPlan(layout, load, kept, note)
    return out


def serving_redundant_slots(n_experts: int, world_size: int, most: int) -> list[int]:
    """The R in 0..most the serving formats accept: E + R a multiple of W (and at least W slots)."""
    return [R for R in range(most + 1) if (n_experts + R) % world_size == 0 and n_experts + R >= world_size]


def check_serving(n_experts: int, redundant_slots: int, world_size: int) -> None:
    """ValueError (one line, with the nearest R that works) unless E + R is a multiple of W."""
    if (n_experts + redundant_slots) % world_size or n_experts + redundant_slots < world_size:
        ok = serving_redundant_slots(n_experts, world_size, redundant_slots + 2 * world_size)
        above = [R for R in ok if R >= redundant_slots][:2]
        raise ValueError(f"SGLang and vLLM need E + R to be a multiple of W: E={n_experts}, R={redundant_slots}, "
                         f"W={world_size}; use R in {above} (or --export moe-scope, which takes any R)")


def _rank_major(layout: Layout) -> list[int]:
    """A layout's slots rank by rank (experts ascending within a rank): one row of a physical → logical map."""
    return [e for r in layout.rank_experts() for e in sorted(r)]


def sglang_layer_ids(layers: list[str], num_layers: int | None = None, layer_base: int = 0, n_slots: int = 1
                     ) -> tuple[list[int], int]:
    """The decoder layer id of each label (integers only: SGLang's map row i is layer i, counted from 0): the label
    less `layer_base`, the number the source gives its first layer (RoutingLog.layer_base: 1 for Megatron-Core's
    layer_number), and the model's layer count (default: the largest id + 1); ValueError (one line) otherwise, and
    when the map of that many rows of `n_slots` slots would hold more than MAX_SGLANG_CELLS entries."""
    if not all(isinstance(x, str) and x.isdigit() and x.isascii() for x in layers):
        raise ValueError("SGLang's map has one row per decoder layer id (row i = layer i), so --export sglang needs "
                         "layer labels that are integers; this log's are not (use --export vllm or moe-scope)")
    ids = [int(x) - layer_base for x in layers]
    if len(set(ids)) != len(ids):
        raise ValueError("two layers of the log have the same layer id; SGLang's map has one row per layer id")
    if min(ids) < 0:
        raise ValueError(f"the log has layer {min(ids) + layer_base}, but its source numbers layers from "
                         f"{layer_base}; give the log as its source wrote it")
    count = max(ids) + 1 if num_layers is None else num_layers
    if max(ids) >= count:
        shift = f" (layer id {max(ids)}: its source counts from {layer_base})" if layer_base else ""
        raise ValueError(f"the log has layer {max(ids) + layer_base}{shift}, which does not fit --num-layers {count}; "
                         f"give the model's number of layers (at least {max(ids) + 1})")
    if count > MAX_LAYERS or count * n_slots > MAX_SGLANG_CELLS:
        size, limit = ((f"{count:,} rows", f"the {MAX_LAYERS:,} layers a log may name") if count > MAX_LAYERS else
                       (f"{count:,} layers × {n_slots:,} slots", f"{MAX_SGLANG_CELLS:,} entries"))
        cause, fix = ((f"--num-layers {count:,}", "give the model's number of layers") if num_layers is not None else
                      (f"the log's largest layer id is {max(ids):,}", "give a log whose layer labels are the model's "
                       "decoder layer ids, or use --export vllm or moe-scope"))
        raise ValueError(f"SGLang's map (one row per layer id) would hold {size} ({cause}), more than {limit}, far "
                         f"above any model's; {fix}")
    return ids, count


def _sglang_rows(layers: list[str], rows: list[list[int]], n_experts: int, num_layers: int | None,
                 layer_base: int = 0) -> list[list[int]]:
    """[num_layers, P]: row i = layer id i; a layer with no routing in the log gets SGLang's trivial row
    (`arange(P) % E`, ExpertLocationMetadata.init_trivial in python/sglang/srt/eplb/expert_location.py)."""
    ids, count = sglang_layer_ids(layers, num_layers, layer_base, len(rows[0]))
    P = len(rows[0])
    out = [(np.arange(P) % n_experts).tolist() for _ in range(count)]              # (num_layers, P)
    for i, row in zip(ids, rows):
        out[i] = row
    return out


def plan_document(fmt: str, layers: list[str], layouts: list[Layout], n_experts: int, notes=None,
                  num_layers: int | None = None, layer_base: int = 0) -> dict:
    """The JSON document of a plan in format `fmt` (one layout per layer); `num_layers`: the model's layer count for
    SGLang's map (default: the largest layer id + 1); `layer_base`: the source's first layer number
    (sglang_layer_ids)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown plan format {fmt!r}; choose one of {', '.join(FORMATS)}")
    W = layouts[0].world_size
    if fmt == "moe-scope":
        return {"format": MOE_SCOPE_FORMAT, "world_size": W, "n_experts": n_experts,
                "layers": {name: {"ranks": [sorted(r) for r in lay.rank_experts()],
                                  "redundant_slots": lay.n_slots - n_experts,
                                  **({"note": notes[i]} if notes else {})}
                           for i, (name, lay) in enumerate(zip(layers, layouts))}}
    sizes = {lay.n_slots for lay in layouts}
    if len(sizes) != 1:
        raise ValueError("the layers' plans hold different numbers of slots; a serving map needs one count")
    check_serving(n_experts, sizes.pop() - n_experts, W)
    twice = [name for name, lay in zip(layers, layouts) if not distinct_per_rank(lay)]
    if twice:
        raise ValueError(f"layer {twice[0]!r}'s plan puts two slots of one expert on a rank; the {fmt} map takes a "
                         f"distinct expert per slot of a rank: plan with layer_plans(..., serving=True) or export as "
                         f"moe-scope")
    rows = [_rank_major(lay) for lay in layouts]
    if fmt == "sglang":
        return {"physical_to_logical_map": _sglang_rows(list(layers), rows, n_experts, num_layers, layer_base)}
    return {"physical_to_logical_map": rows, "ep_size": W, "num_redundant_experts": len(rows[0]) - n_experts,
            "num_logical_experts": n_experts, "layers": list(layers)}


def check_out(path: str) -> None:
    """ValueError (one line) unless a plan can be written at `path`: its folder exists and it is not a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise ValueError(f"cannot write the plan to {path!r}: " + ("it is a folder" if os.path.isdir(path) else
                         "its folder does not exist") + "; give a file path in an existing folder")


def write_plan(path: str, doc: dict) -> None:
    """The plan document as JSON at `path`; ValueError (one line) when it cannot be written."""
    check_out(path)
    text = dumps(doc, indent=1)  # before the file is opened: a document that cannot be written leaves no file
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as err:
        raise ValueError(f"cannot write the plan to {path!r} ({err.strerror or type(err).__name__}); give a writable "
                         f"file path") from None


def read_plan(path: str, n_experts: int | None = None, world_size: int | None = None) -> PlanFile:
    """Any plan file: SGLang's or the vLLM-style map (W needed for SGLang's, which does not record it), ours, or
    moe.parallel.placement.save's one-layer file. Every problem is one ValueError naming the fix."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"plan file {path!r} is not a JSON object; give a file `python -m moe plan --export` wrote")
    if "physical_to_logical_map" in doc:
        return _read_map(doc, path, n_experts, world_size)
    if doc.get("format") == MOE_SCOPE_FORMAT:
        return _read_ours(doc, path, n_experts, world_size)
    if "ranks" in doc:
        E = doc.get("n_experts", n_experts)
        W = len(doc["ranks"]) if isinstance(doc["ranks"], list) and world_size is None else world_size
        if not isinstance(E, int) or isinstance(E, bool):
            raise ValueError(f"placement file {path!r} does not record n_experts; give it")
        if n_experts is not None and E != n_experts:  # before any set of E experts is built: E may be 300,000,000
            raise ValueError(f"placement file {path!r} is for {short(E)} experts, this run has {n_experts}; give "
                             f"a placement of this run's experts")
        if not 1 <= E <= MAX_EXPERTS:
            raise ValueError(f"placement file {path!r} records n_experts={short(E)}; a count from 1 to "
                             f"{MAX_EXPERTS} is an expert count")
        return PlanFile("placement", ["0"], [from_placement(placement_from_doc(doc, path, E, W))], E, W)
    raise ValueError(f"plan file {path!r} has neither 'physical_to_logical_map' nor 'ranks'; give a file "
                     f"`python -m moe plan --export` wrote")


def _read_map(doc: dict, path: str, n_experts: int | None, world_size: int | None) -> PlanFile:
    W = doc.get("ep_size", world_size)
    if world_size is not None and W != world_size:
        raise ValueError(f"plan file {path!r} is for ep_size={short(W)}, this run has {world_size} ranks")
    if not isinstance(W, int) or isinstance(W, bool) or W < 1:
        raise ValueError(f"plan file {path!r} does not record the world size (SGLang's map does not); give it")
    rows = doc["physical_to_logical_map"]
    integers = isinstance(rows, list) and rows and all(isinstance(r, list) and r and all(
        isinstance(e, int) and not isinstance(e, bool) for e in r) for r in rows)
    if not integers or len({len(r) for r in rows}) != 1:
        raise ValueError(f"plan file {path!r}: 'physical_to_logical_map' must be [layers, physical_experts] integers")
    E = doc.get("num_logical_experts", n_experts)
    if E is not None and (not isinstance(E, int) or isinstance(E, bool) or E < 1):
        raise ValueError(f"plan file {path!r}: 'num_logical_experts' must be a positive integer (e.g. 8, not \"8\" "
                         f"or 8.0); write the number of logical experts")
    try:
        table = np.array(rows, dtype=np.int64)
    except OverflowError:  # an entry beyond int64: no expert index
        raise ValueError(f"plan file {path!r}: 'physical_to_logical_map' holds a number beyond 64-bit integers; "
                         f"each entry is a logical expert index") from None
    p2l = check_map(table, E, f"plan file {path!r}'s physical_to_logical_map")
    E = int(p2l.max()) + 1 if E is None else E
    if n_experts is not None and E != n_experts:
        raise ValueError(f"plan file {path!r} is for {E} experts, this run has {n_experts}")
    R = doc.get("num_redundant_experts", p2l.shape[1] - E)
    if R != p2l.shape[1] - E:  # the file contradicts itself: which number is the mistake is not ours to guess
        raise ValueError(f"plan file {path!r} says num_redundant_experts={short(R)}, but its map holds "
                         f"{p2l.shape[1]} slots for {E} experts ({p2l.shape[1] - E} redundant); write the file again")
    layouts = [from_map(row, W) for row in p2l]
    layers = doc.get("layers", [str(i) for i in range(len(rows))])
    if not (isinstance(layers, list) and len(layers) == len(rows) and all(isinstance(x, str) for x in layers)
            and len(set(layers)) == len(layers)):
        raise ValueError(f"plan file {path!r}: 'layers' must name each row of the map, each layer once")
    return PlanFile("vllm" if "ep_size" in doc else "sglang", layers, layouts, E, W)


def _read_ours(doc: dict, path: str, n_experts: int | None, world_size: int | None) -> PlanFile:
    E, W, layers = doc.get("n_experts"), doc.get("world_size"), doc.get("layers")
    if not isinstance(layers, dict) or not layers or not all(isinstance(v, dict) for v in layers.values()):
        raise ValueError(f"plan file {path!r}: 'layers' must map each layer to its {{'ranks': [...]}}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_EXPERTS for v in (E, W)):
        raise ValueError(f"plan file {path!r}: 'n_experts' and 'world_size' must be integers from 1 to {MAX_EXPERTS}")
    for given, recorded, what in ((n_experts, E, "n_experts"), (world_size, W, "world_size")):  # "2" said "is for
        if given is not None and given != recorded:                                          # '2', this run has 2"
            raise ValueError(f"plan file {path!r} is for {what}={short(recorded)}, this run has {given}")
    layouts = [from_placement(placement_from_doc(v, f"{path}, layer {short(name)}", E, W))
               for name, v in layers.items()]
    return PlanFile("moe-scope", list(layers), layouts, E, W)


def load_placement(path: str, n_experts: int, world_size: int, layer: str | None = None) -> Placement:
    """The one placement `ep-report --placement` runs from a plan file in any format read_plan knows: its layer
    named `layer` (SGLang's map: the layer id), or its only layer."""
    found = read_plan(path, n_experts, world_size)
    if layer is None and len(found.layouts) != 1:
        raise ValueError(f"plan file {path!r} holds {len(found.layouts)} layers and ep-report runs one; choose it with "
                         f"--placement-layer NAME (one of {short(found.layers)})")
    if layer is not None and layer not in found.layers:
        raise ValueError(f"plan file {path!r} has no layer {short(layer)}; choose one of {short(found.layers)}")
    return to_placement(found.layouts[0 if layer is None else found.layers.index(layer)], n_experts)
