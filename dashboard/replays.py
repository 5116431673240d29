"""The Placement section's caches (st.cache_data: each caller gets a copy): one layer of a routing log replayed under
each placement (moe.parallel.judge), and the plan files of every layer (moe.parallel.export), keyed by their inputs.
Nothing here draws; errors are the engine's one-line ValueErrors, left to the view."""
from __future__ import annotations

import numpy as np
import streamlit as st

from moe.jsonio import dumps
from moe.parallel.export import check_serving, layer_plans, plan_document
from moe.parallel.replay import distinct_per_rank, rank_load
from moe.parallel.judge import LayerReplay, ReplaySettings, current_name, replay_log
from moe.parallel.verdict import verdict
from moe.traces.log import RecordedSlots


@st.cache_data(max_entries=8, show_spinner=False)
def replay(layer_counts: np.ndarray, layer: str, p2l_row: np.ndarray | None, settings: ReplaySettings,
           slots: RecordedSlots | None = None, run_world_size: int | None = None) -> tuple[LayerReplay, str]:
    """One layer's replay (counts (S, E); p2l_row (P,) the run's map of that layer, or None; slots: what its slots
    served as the run recorded it, RoutingLog.slot_counts; run_world_size: the W the log records) and its verdict."""
    counts = np.asarray(layer_counts)[:, None, :]                                    # (S, 1, E)
    p2l = None if p2l_row is None else np.asarray(p2l_row)[None, :]                   # (1, P)
    results = replay_log(counts, [layer], settings, p2l, slot_counts=lambda _: slots)
    return results[0], verdict(results, current_name(p2l is not None, settings.world_size, run_world_size))


@st.cache_data(max_entries=8, show_spinner=False)
def plan_files(counts: np.ndarray, layers: tuple[str, ...], p2l: np.ndarray | None, world_size: int,
               redundant_slots: int, last_window: int | None = None, layer_base: int = 0) -> dict:
    """One plan per layer (moe.parallel.export.layer_plans: our planner, from the whole log or its last window of
    `last_window` steps) as the three plan files: {"moe-scope": text, "sglang": text | None, "vllm": text | None,
    "serving_error": why there is no serving file ("" when there is), "sglang_error": why there is no SGLang file
    (only when the other serving file exists), "notes": {layer: note}, "serving_heavier": {layer: (our busiest rank,
    the serving files' busiest rank)} for the layers where the serving rule (a distinct expert per slot of a rank)
    costs load}. `layer_base`: the log's RoutingLog.layer_base (SGLang's row of a layer label)."""
    counts, layers = np.asarray(counts), list(layers)                                # (S, L, E)
    E = counts.shape[2]
    ours = layer_plans(counts, layers, world_size, redundant_slots, p2l, last_window)
    out = {"moe-scope": _document("moe-scope", ours, E), "sglang": None, "vllm": None, "serving_error": "",
           "notes": {name: p.note for name, p in ours.items()}, "serving_heavier": {}}
    try:
        check_serving(E, redundant_slots, world_size)
        full = all(p.layout.n_slots == E + redundant_slots and distinct_per_rank(p.layout)
                   for p in ours.values())  # else serving plans again: padded, no expert twice on a rank
        padded = ours if full else layer_plans(counts, layers, world_size, redundant_slots, p2l, last_window,
                                               serving=True)
        out["vllm"] = _document("vllm", padded, E)
        out["serving_heavier"] = {name: (_busiest(p), _busiest(padded[name])) for name, p in ours.items()
                                  if _busiest(padded[name]) > _busiest(p)}
    except ValueError as err:
        out["serving_error"] = str(err)
        return out
    try:  # SGLang's map is indexed by layer id: integer labels only
        out["sglang"] = _document("sglang", padded, E, layer_base)
    except ValueError as err:
        out["sglang_error"] = str(err)
    return out


def _busiest(plan) -> int:
    """The busiest rank's tokens under a LayerPlan, on the load it was made from."""
    return int(rank_load(plan.load[None], plan.layout).max())


def _document(fmt: str, plans: dict, n_experts: int, layer_base: int = 0) -> str:
    layouts, notes = [p.layout for p in plans.values()], [p.note for p in plans.values()]
    return dumps(plan_document(fmt, list(plans), layouts, n_experts, notes, layer_base=layer_base), indent=1)
