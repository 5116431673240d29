"""Megatron-Core EP load dumps (`MCORE_MOE_EXPERT_LOAD_DUMP=1`) as a `RoutingLog`: one `.npz` per rank,
summed over the ranks of every expert-parallel group in the folder (one per data-parallel replica; pipeline stages
hold their own layers).

The writer followed is `megatron/core/transformer/moe/expert_load_recorder.py` (ExpertLoadRecorder) of
ultra-ep/Megatron-LM at 98c4f54b (a Megatron-LM fork; NVIDIA/Megatron-LM as stored has no such file), with the
fork's own offline plotting tool for the grouping rules:
- `mcore_ep_loads_rank{global_rank}_{capture_id}.npz` (`..._partial.npz` when the run ended before
  MCORE_MOE_EXPERT_LOAD_DUMP_MAX_FORWARDS), np.savez of: dump_version "mcore_ep_load_dump_v1", capture_id,
  loads int32 [local MoE layers, max(forward_counts), num_global_physical_experts], layer_numbers (sorted),
  forward_counts, ep_group_ranks (int32), and int32 scalars ep_rank, ep_size, global_rank,
  num_global_physical_experts, num_local_physical_experts.
- Each row is `routing_map.sum(dim=0)` of this rank's own tokens; the global load is the sum over the ranks of
  the EP group. `rank_counts` (forwards, ranks, layers, physical) keeps each rank's row as written: the tokens a
  rank sent, not the tokens its experts served (those are the summed counts' slots of that rank). The host buffer is `torch.empty`: rows past a layer's forward_counts are uninitialised memory,
  so every layer is cut to the fewest forwards any rank and layer captured (as the plotting tool does), and
  `meta["forwards_dropped"]` says how many rows that left out.
- `capture_id` is `{time}_pid{pid}`, different on every rank (one process each): it cannot tie the ranks of one
  run together. Files belong together when they name the same `ep_group_ranks`; each ep_rank must appear
  exactly once (two files of one rank, e.g. two runs in one folder, are refused).
- `layer_numbers` are Megatron's `layer_number`s (the MoELayer registers `self.layer_number`), which count from 1:
  TransformerBlock builds its layers with `build_layer(layer_spec, i + 1)` and TransformerLayer adds the pipeline
  offset (megatron/core/transformer/transformer_block.py, transformer_layer.py). The labels keep them, and the
  log says so (meta LAYER_BASE = 1), so a serving map puts layer n in row n − 1 (layer id n − 1). The router trace's
  `layer` (moe.traces.megatron) is the module index `decoder.layers.{i}`, which counts from 0.
- No physical → logical map is written: without Megatron's EPLB, num_global_physical_experts is the model's
  expert count and physical ids are logical; under its EPLB the ids are physical slots. So E =
  num_global_physical_experts (recorded) and the counts are per physical expert.
"""
from __future__ import annotations

import os

import numpy as np

from moe.memory import BUDGET_ENV, describe_over
from moe.traces.log import LAYER_BASE, RoutingLog, resolve_experts
from moe.traces.records import TraceLimits
from moe.traces.safeload import load_npz

SOURCE = "mcore-ep-loads"
IDS = ("physical expert slots, read as experts: the logical experts when the run had no EPLB (the dump records no "
       "physical → logical map)")
DUMP_VERSION = "mcore_ep_load_dump_v1"
SCALARS = ("ep_rank", "ep_size", "global_rank", "num_global_physical_experts", "num_local_physical_experts")
ARRAYS = ("loads", "layer_numbers", "forward_counts", "ep_group_ranks")
KEYS = frozenset(("dump_version", "capture_id") + SCALARS + ARRAYS)


def kind_npz(arrays: dict) -> bool:
    """Whether an .npz holds the arrays of a Megatron-Core EP load dump."""
    return KEYS <= set(arrays)


def _scalar(arrays: dict, name: str, what: str, low: int) -> int:
    value = arrays[name]
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < low:
        raise ValueError(f"{what}: '{name}' must be one integer >= {low}; give the dump Megatron wrote")
    return int(value)


def _vector(arrays: dict, name: str, what: str, length: int) -> np.ndarray:
    value = arrays[name]
    if value.shape != (length,) or value.dtype.kind not in "iu":
        raise ValueError(f"{what}: '{name}' must be {length} integers; give the dump Megatron wrote")
    return value.astype(np.int64)


def _rank_dump(arrays: dict, path: str) -> dict:
    """One rank's file, its fields checked against each other."""
    what = f"the Megatron-Core EP load dump {path!r}"
    if not kind_npz(arrays):
        raise ValueError(f"{what} misses {sorted(KEYS - set(arrays))}; give the mcore_ep_loads_rank*.npz files "
                         f"MCORE_MOE_EXPERT_LOAD_DUMP wrote")
    version = arrays["dump_version"]
    if version.shape != () or version.dtype.kind != "U" or str(version) != DUMP_VERSION:
        raise ValueError(f"{what} is not dump version {DUMP_VERSION}, the one this reader knows; give a dump of "
                         f"that version")
    dump = {name: _scalar(arrays, name, what, 1 if name.startswith(("ep_size", "num_")) else 0) for name in SCALARS}
    loads = arrays["loads"]
    if loads.ndim != 3 or 0 in loads.shape or loads.dtype.kind not in "iu":
        raise ValueError(f"{what}: 'loads' must be integers [local MoE layers, forwards, physical experts], got "
                         f"{'shape ' + str(loads.shape) if loads.dtype.kind in 'iu' else 'non-integers'}")
    L, F, P = loads.shape
    if P != dump["num_global_physical_experts"] or P != dump["num_local_physical_experts"] * dump["ep_size"]:
        raise ValueError(f"{what}: 'loads' has {P} physical experts but the dump names "
                         f"{dump['num_global_physical_experts']} ({dump['ep_size']} ranks × "
                         f"{dump['num_local_physical_experts']}); give the dump Megatron wrote")
    dump["layer_numbers"] = _vector(arrays, "layer_numbers", what, L)
    dump["forward_counts"] = counts = _vector(arrays, "forward_counts", what, L)
    dump["ep_group_ranks"] = group = _vector(arrays, "ep_group_ranks", what, dump["ep_size"])
    if int(counts.min()) < 0 or int(counts.max()) != F:
        raise ValueError(f"{what}: 'forward_counts' must be 0..{F} with {F} reached (the rows written); give the "
                         f"dump Megatron wrote")
    if len(set(dump["layer_numbers"].tolist())) != L:
        raise ValueError(f"{what}: 'layer_numbers' names a layer twice; give the dump Megatron wrote")
    if dump["ep_rank"] >= dump["ep_size"] or int(group[dump["ep_rank"]]) != dump["global_rank"]:
        raise ValueError(f"{what}: ep_rank {dump['ep_rank']} and global_rank {dump['global_rank']} do not match "
                         f"'ep_group_ranks'; give the dump Megatron wrote")
    dump["loads"] = loads
    return dump


def _group(dumps: list[dict], paths: list[str]) -> list[dict]:
    """The dumps of one EP group, ordered by ep_rank: every rank once, the same layers and sizes."""
    first = dumps[0]
    for dump, path in zip(dumps, paths):
        if not all(dump[k] == first[k] for k in ("ep_size", "num_global_physical_experts")):
            raise ValueError(f"{path!r} and {paths[0]!r} name one expert-parallel group but differ in its size or "
                             f"expert count; give the files of one run")
        if not np.array_equal(dump["layer_numbers"], first["layer_numbers"]):
            raise ValueError(f"{path!r} holds other MoE layers than {paths[0]!r}; give the files of one EP group "
                             f"of one run")
    seen = np.bincount([d["ep_rank"] for d in dumps], minlength=first["ep_size"])  # (ep_size,) files per rank
    if (seen != 1).any():
        problem = (f"ep_rank {int(np.flatnonzero(seen > 1)[0])} appears twice" if (seen > 1).any() else
                   f"ep_rank {int(np.flatnonzero(seen == 0)[0])} is missing")
        raise ValueError(f"the Megatron-Core EP load dumps of group {first['ep_group_ranks'].tolist()[:8]} do not "
                         f"hold each of its {first['ep_size']} ranks once ({problem}); give one file per rank of one "
                         f"run")
    return sorted(dumps, key=lambda d: d["ep_rank"])


def _groups(dumps: list[dict], paths: list[str]) -> list[list[dict]]:
    """The dumps by EP group (their ep_group_ranks), each complete and ordered by ep_rank (_group). One folder holds
    every rank of a run: with data parallelism one group per replica, with pipeline parallelism one per stage (its
    own layers); every group must have the same size and expert count."""
    members: dict[tuple, list[int]] = {}
    for i, dump in enumerate(dumps):
        members.setdefault(tuple(dump["ep_group_ranks"].tolist()), []).append(i)
    groups = [_group([dumps[i] for i in idx], [paths[i] for i in idx]) for idx in members.values()]
    first = groups[0][0]
    for group in groups[1:]:
        if not all(group[0][k] == first[k] for k in ("ep_size", "num_global_physical_experts")):
            raise ValueError("the Megatron-Core EP load dumps hold expert-parallel groups of different sizes or expert "
                             "counts; give the files of one run")
    if len({rank for group in groups for d in group for rank in d["ep_group_ranks"].tolist()}) != sum(
            len(group) for group in groups):
        raise ValueError("two expert-parallel groups of the dumps share a rank; give the files of one run")
    held = {}  # layer -> the groups holding it: one per data-parallel replica, the same number for every layer
    for group in groups:
        for n in group[0]["layer_numbers"].tolist():
            held[n] = held.get(n, 0) + 1
    few, most = min(held, key=held.get), max(held, key=held.get)
    if held[few] != held[most]:
        raise ValueError(f"layer {few} is held by {held[few]} expert-parallel group(s) of the dumps, layer {most} by "
                         f"{held[most]}: a run holds every layer in one group per data-parallel replica; give every "
                         f"rank's file")
    return groups


def read_npz(paths: list[str], n_experts: int | None, limits: TraceLimits | None = None) -> RoutingLog:
    """The per-rank dumps of a run summed (each EP group complete; the groups of one layer added): steps = forwards,
    layers = Megatron's layer numbers."""
    if not paths:
        raise ValueError("no Megatron-Core EP load dump was given; give the mcore_ep_loads_rank*.npz files")
    limits = limits or TraceLimits.from_env()
    dumps, held = [], 0
    for path in paths:
        dump = _rank_dump(load_npz(path, limits), path)
        held += 3 * dump["loads"].nbytes  # the int32 dumps and the int64 (F, W, L, P) they are copied into
        if held > limits.budget // 4:
            held_text, _, budget_text = describe_over(held, limits.budget // 4, limits.budget)
            raise ValueError(f"the Megatron-Core EP load dumps hold {held_text} by {path!r}, over a "
                             f"quarter of the memory budget of {budget_text}; capture fewer "
                             f"forwards (MCORE_MOE_EXPERT_LOAD_DUMP_MAX_FORWARDS) or raise {BUDGET_ENV}")
        dumps.append(dump)
    groups = _groups(dumps, paths)
    first = groups[0][0]
    F = int(min(d["forward_counts"].min() for d in dumps))
    if F == 0:
        raise ValueError("a layer of the Megatron-Core EP load dumps captured no forward on some rank; give dumps "
                         "of a run that made at least one forward")
    W, P = first["ep_size"], first["num_global_physical_experts"]
    layers = sorted({int(n) for group in groups for n in group[0]["layer_numbers"].tolist()})
    L = len(layers)
    E, source = resolve_experts(n_experts, P, -1, "the Megatron-Core EP load dumps")
    limits.check_summary(F, L, E)
    rank_counts = np.zeros((F, W, L, P), dtype=np.int64)  # each EP rank's rows, summed over the groups of a layer
    for group in groups:
        at = np.searchsorted(layers, group[0]["layer_numbers"])                      # this group's layers
        for w, d in enumerate(group):
            rank_counts[:, w, at] += d["loads"][:, :F, :].transpose(1, 0, 2)         # (F, its L, P) of rank w
    if int(rank_counts.min()) < 0:
        raise ValueError("the Megatron-Core EP load dumps hold a negative load in a captured forward; give the "
                         "dumps Megatron wrote")
    written = sum(int(d["forward_counts"].sum()) for d in dumps)
    meta = {"ep_size": W, "ep_groups": [group[0]["ep_group_ranks"].tolist() for group in groups],
            "dump_version": DUMP_VERSION, "num_local_physical_experts": first["num_local_physical_experts"],
            "ids": IDS, "forwards_dropped": written - F * sum(len(g[0]["layer_numbers"]) * W for g in groups),
            "files": [os.path.basename(p) for p in paths], LAYER_BASE: 1}
    return RoutingLog(source=SOURCE, layers=[str(n) for n in layers],
                      steps=np.arange(F, dtype=np.int64), counts=rank_counts.sum(axis=1), n_experts_source=source,
                      meta=meta, rank_counts=rank_counts)
