"""Placement: should this run enable EPLB? One layer of a routing log replayed window by window under the current
placement, our planner and DeepSeek's EPLB (each planned on one window, measured on the next), the engine's
verdict, and the plan files for SGLang, vLLM and moe-scope. Self-contained: `render(log, key_prefix)` is the one
call a page makes; the Runs page passes "runs", the Expert parallel page "ep" (with its own W)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from moe.metrics import max_over_mean_rows
from moe.parallel.eplb import check_eplb_sizes
from moe.parallel.export import serving_redundant_slots
from moe.parallel.judge import RUN_PLACEMENTS, LayerReplay, ReplaySettings, balance_rows, default_window
from moe.parallel.replay import check_replay_cost, replay_bytes
from moe.parallel.schedules import p50
from moe.traces.log import RoutingLog

from dashboard import replays, trace_room
from dashboard.definitions import caption
from dashboard.quoting import md_text, quote
from dashboard.figures.colors import expert_colors
from dashboard.figures.placement import (METRIC_TITLES, balance_figure, hot_figure, interval_figure, interval_table,
                                         rank_heatmap_figure, series_name)
from dashboard.state import placement_key

INTRO = ("Replays the log's expert counts window by window under the placement the run used (its physical → logical "
         "map, else contiguous blocks), our planner and DeepSeek's EPLB: each plan is made on one window and measured "
         "on the next, the honest figure.")
METRIC_DEFINITIONS = {"balancedness_vllm": "balancedness_vllm", "balancedness_sglang": "balancedness_sglang",
                      "max_over_mean": "rank_max_over_mean"}
EXPORT_FROM = ("whole log", "last window")
AUTO_PLAN_LAYERS = 256  # more layers are planned for the downloads on a click: ~3 ms a layer, and an auditor's 322 KB
                        # log of 16,384 layers kept the server busy for 50 s on every open


@dataclass(frozen=True)
class Replayed:
    """What the section replayed: a page may act on it (the Expert parallel page runs a plan for real)."""
    log: RoutingLog
    layer: str
    settings: ReplaySettings
    result: LayerReplay


def render(log: RoutingLog, key_prefix: str, world_size: int | None = None) -> Replayed | None:
    """The Placement section for `log`; world_size fixes W (the Expert parallel page's processes)."""
    st.subheader("Placement")
    st.caption(INTRO)
    key = _keys(key_prefix)
    try:
        settings, layer = _controls(log, key, world_size)
        i = log.layers.index(layer)
        p2l = None if log.physical_to_logical is None else log.physical_to_logical[i]
        _check_cost(log, settings, 0 if p2l is None else len(p2l))
        with st.spinner(f"Replaying layer {layer} under each placement…"):
            result, text = replays.replay(log.counts[:, i, :], layer, p2l, settings,
                                          log.slot_counts(i, settings.world_size), log.recorded_world_size())
    except ValueError as err:
        st.error(f"The replay cannot run: {err}", icon="⚠️")
        return None
    st.info(md_text(text))  # it names the log's layers: shown as typed
    st.caption(caption("placement_verdict"))
    for note in result.notes:
        st.caption(note)
    _charts(result, key, log.n_experts)
    _downloads(log, settings, key)
    return Replayed(log, layer, settings, result)


def _check_cost(log: RoutingLog, settings: ReplaySettings, n_physical: int) -> None:
    """One layer's replay against the budget, as `plan` checks it: a run's map of 3.9 M slots for 2 experts took a
    replay 400 MB past a 256 MiB budget. Within what the pages open on this server leave (trace_room: the traces
    they keep, this log among them, and the Playground's results)."""
    windows, Rs = -(-len(log.steps) // settings.window), settings.redundant_slots
    check_replay_cost(replay_bytes(1, windows, len(Rs), log.n_experts, max(Rs), n_physical),
                      f"this layer's {windows:,} windows", "choose longer windows or fewer redundant slot counts",
                      trace_room.room()[1])


def _keys(prefix: str):
    return lambda name: placement_key(prefix, name)


def keep_choice(key: str, options: list, default) -> None:
    """A kept value that this log does not offer goes back to the default (options depend on the log)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


def world_options(log: RoutingLog) -> list[int]:
    """W that make sense: the W the run recorded when it recorded its map too (the map is read at that W); else
    divisors of the slots per layer (E, or the map's P) and, without a map, powers of two up to E (contiguous
    blocks take any W <= E)."""
    P = log.n_experts if log.physical_to_logical is None else log.physical_to_logical.shape[1]
    recorded = log.recorded_world_size()
    known = recorded is not None and P % recorded == 0
    if known and log.physical_to_logical is not None:
        return [recorded]
    found = {d for d in range(2, P + 1) if P % d == 0}
    if log.physical_to_logical is None:
        found |= {2 ** k for k in range(1, P.bit_length()) if 2 ** k <= P}
    if known:
        found.add(recorded)
    return sorted(found) or [1]


def most_uneven_layer(log: RoutingLog) -> str:
    """The layer to open on: the largest max/mean of its load summed over the run (the first on ties; a layer
    without tokens never), where a placement has the most to gain."""
    ratios = np.nan_to_num(max_over_mean_rows(log.counts.sum(axis=0)), nan=-1.0)    # (L,): one pass, not L lookups
    return log.layers[int(np.argmax(ratios))]


def slot_options(n_experts: int, world_size: int, run: int | None = None) -> list[int]:
    """R offered: from W − E (every rank needs a slot) to E·(W − 1) (our planner gives an expert one slot per rank):
    0, powers of two up to E, the first R the serving formats take (E + R a multiple of W), and the run's own R
    (`run`: its map's slots − E) when it recorded a map."""
    least, most = max(0, world_size - n_experts), n_experts * (world_size - 1)
    found = {0, least} | {2 ** k for k in range(n_experts.bit_length()) if 2 ** k <= n_experts} | {run or 0}
    found |= set(serving_redundant_slots(n_experts, world_size, n_experts)[:16])
    return sorted(R for R in found if least <= R <= most) or [least]


def default_slots(n_experts: int, world_size: int, run: int | None = None) -> list[int]:
    """The R replayed at first: the least offered, and the run's own R (`run`) when it recorded a map (planners
    then get the slots the run had), else the first larger one the serving formats take (so that the plan files
    include SGLang's and vLLM's), else the next offered."""
    options = slot_options(n_experts, world_size, run)
    if run in options and run > options[0]:
        return [options[0], run]
    serving = [R for R in serving_redundant_slots(n_experts, world_size, n_experts) if R > options[0] and R in options]
    return [options[0]] + (serving[:1] or options[1:2])


def _controls(log: RoutingLog, key, world_size: int | None) -> tuple[ReplaySettings, str]:
    E, S = log.n_experts, len(log.steps)
    c1, c2, c3, c4, c5 = st.columns([1, 2, 1, 1, 1])
    if world_size is None:
        options = world_options(log)
        recorded = log.recorded_world_size()
        keep_choice(key("world"), options, recorded if recorded in options
                    else max([w for w in options if w <= 8], default=options[0]))
        W = c1.selectbox("Ranks (W)", options, key=key("world"), help="expert-parallel ranks (GPUs) the replay "
                         "spreads the experts over")
    else:
        W = world_size
        c1.metric("Ranks (W)", W, help="this page's processes")
    run = None if log.physical_to_logical is None else log.physical_to_logical.shape[1] - E  # the run's own R
    options, default = slot_options(E, W, run), default_slots(E, W, run)
    this, (was, steps_was) = (log.source, tuple(log.layers), E, run), st.session_state.get(key("window_of"), (0, 1))
    kept = [] if was != this else [R for R in st.session_state.get(key("slots"), default) if R in options]
    st.session_state[key("slots")] = kept or default  # another log starts from its defaults (its own R among them)
    Rs = c2.multiselect("Redundant slots (R)", options, key=key("slots"),
                        help="extra expert slots (replicas) each planner may place; the serving formats need E + R "
                             "to be a multiple of W")
    window = st.session_state.get(key("window"))
    chosen = isinstance(window, int) and was == this and window != default_window(steps_was)  # by the visitor
    if not chosen or (S != steps_was and S // window < 2):  # the default follows the log as it grows; a chosen
        window = default_window(S)                          # window stays while it leaves two windows or more
    st.session_state[key("window")], st.session_state[key("window_of")] = min(window, S), (this, S)
    window = c3.number_input("Steps per window", 1, S, key=key("window"),
                             help=f"the log's {S} steps cut into windows of this many steps (a last partial window "
                                  f"dropped)")
    nodes_options = [n for n in range(1, W + 1) if _eplb_takes(E, n, W)]  # what `plan --nodes` takes too
    keep_choice(key("nodes"), nodes_options, 1)
    nodes = c4.selectbox("Nodes (EPLB)", nodes_options, key=key("nodes"),
                         help="DeepSeek's hierarchical mode: groups of experts to nodes first, then replicas to "
                              "the node's GPUs (num_nodes; W / nodes GPUs each; as many expert groups as nodes)")
    if st.session_state.get(key("layer")) not in log.layers:  # keep_choice, with its default computed only here
        st.session_state[key("layer")] = most_uneven_layer(log)
    layer = c5.selectbox("Layer", log.layers, key=key("layer"), disabled=len(log.layers) == 1)
    if not Rs:
        raise ValueError("choose at least one number of redundant slots R (0 replays the placements without "
                         "replicas)")
    return ReplaySettings(W, tuple(sorted(Rs)), window=window, num_nodes=nodes), layer


def _eplb_takes(n_experts: int, nodes: int, world_size: int) -> bool:
    """Whether DeepSeek's EPLB takes `nodes` nodes (as many expert groups) for these E and W, whatever R."""
    try:
        check_eplb_sizes(n_experts, nodes, nodes, world_size)
    except ValueError:
        return False
    return True


def _charts(result: LayerReplay, key, n_experts: int) -> None:
    rows = pd.DataFrame(balance_rows(result))
    metric = st.selectbox("Balance measure", list(METRIC_TITLES), format_func=METRIC_TITLES.get, key=key("metric"))
    st.plotly_chart(balance_figure(rows, metric, result.layer), width="stretch", key=key("balance_chart"))
    st.caption(caption(METRIC_DEFINITIONS[metric], "replay_next_window"))
    if result.recorded is not None:
        _recorded(result)
    loads = result.shown_loads()
    labels = {series_name(*k): k for k in loads}
    keep_choice(key("heat"), list(labels), "current")  # the run as it was: does its imbalance persist?
    chosen = st.selectbox("Rank load of", list(labels), key=key("heat"))
    first = "" if labels[chosen][0] in RUN_PLACEMENTS else (" (window 0: the current placement, no plan "
                                                                      "before it)")
    st.plotly_chart(rank_heatmap_figure(loads[labels[chosen]], f"Load per rank and window: {chosen}{first}"),
                    width="stretch", key=key("heat_chart"))
    st.caption(caption("replay_rank_load"))
    table = interval_table(result.intervals, result.rest)
    st.plotly_chart(interval_figure(table), width="stretch", key=key("interval_chart"))
    shown = table.assign(placement=[series_name(n, int(R)) for n, R in zip(table["placement"],
                                                                           table["redundant_slots"])],
                         every=table["every"].map(lambda v: "rest of the run" if v == 0 else f"every {v}"))
    st.dataframe(shown.pivot_table(index="placement", columns="every", values="p50_balancedness", sort=False,
                                   dropna=False),
                 key=key("interval_table"))
    st.caption(caption("replay_rebalance_interval"))
    _hot(result, key, n_experts)


def _recorded(result: LayerReplay) -> None:
    """The run's own per-rank load as recorded beside the modelled one (definition "replay_recorded"); what to read
    it with (the W it lies on) is among the layer's notes, above."""
    recorded = result.recorded_p50()
    if recorded is not None:
        modelled = p50(result.next_window("current", result.redundant_slots[0]))  # as the verdict reads it
        st.caption(f"This run recorded what each slot of its placement served: on windows 1 … "
                   f"{len(result.windows) - 1} its p50 balancedness (vLLM) is {recorded:.3f} as recorded and "
                   f"{modelled:.3f} as modelled (\"current\": each expert's tokens split over its slots by the chunk "
                   f"rule, as the plans are measured).")
    st.caption(caption("replay_recorded"))


def _hot(result: LayerReplay, key, n_experts: int) -> None:
    left, right = st.columns([2, 1])
    left.plotly_chart(hot_figure(result.hot_windows, len(result.windows), result.hot_top, expert_colors(n_experts)),
                      width="stretch", key=key("hot_chart"))
    every = result.hot_top >= n_experts  # every expert with tokens is hot: persistence would say 100% of nothing
    right.metric("Hot experts persisting", "—" if every else _share(result.persistence),
                 help="share of the n hottest experts of a window (with tokens) still among the n hottest in the next "
                      "(mean over windows)")
    for R, share in result.absorbed.items():
        if R or share > 0:  # R = 0: only where a plan kept the run's map and its replicas
            right.metric(f"Absorbed by replicas, R={R}", _share(share),
                         help="p50 share of the next window's tokens on the experts the plan replicated")
    if every:
        st.caption(f"n = {result.hot_top} of {n_experts} experts: in each window, every expert with tokens there is "
                   f"hot; choose fewer redundant slots (n = the largest R, or W when R = 0) to see which experts stay "
                   f"hot.")
    st.caption(caption("hot_expert_persistence"))


def _share(value: float) -> str:
    """A share as a percentage; "—" where there is none (one window: no next window to compare)."""
    return f"{value:.0%}" if np.isfinite(value) else "—"


def _downloads(log: RoutingLog, settings: ReplaySettings, key) -> None:
    st.markdown("**Plan files** (our planner, one plan per layer of the log)")
    c1, c2 = st.columns(2)
    Rs, W = list(settings.redundant_slots), settings.world_size
    serving = [R for R in Rs if R in serving_redundant_slots(log.n_experts, W, R)]
    keep_choice(key("export_slots"), Rs, (serving or Rs)[-1])  # the largest R whose plan has every file
    R = c1.selectbox("Redundant slots of the plan", Rs, key=key("export_slots"))
    keep_choice(key("export_from"), list(EXPORT_FROM), EXPORT_FROM[0])
    source = c2.radio("Plan made from", EXPORT_FROM, key=key("export_from"), horizontal=True)
    if not _asked(log, (W, int(R), source, settings.window), key):
        return
    try:
        with st.spinner("Planning every layer…"):
            files = replays.plan_files(log.counts, tuple(log.layers), log.physical_to_logical, W, int(R),
                                       settings.window if source == EXPORT_FROM[1] else None, log.layer_base)
    except ValueError as err:
        st.error(f"No plan: {err}", icon="⚠️")
        return
    cols = st.columns(3)
    cols[0].download_button("moe-scope plan (JSON)", files["moe-scope"], file_name="plan-moe-scope.json",
                            mime="application/json", on_click="ignore", key=key("file_moe_scope"))
    if files["serving_error"]:
        cols[1].caption(f"No SGLang or vLLM file for R={R}: {files['serving_error']}")
    else:
        if files["sglang"] is None:
            cols[1].caption(f"No SGLang file: {files.get('sglang_error', '')}")
        else:
            cols[1].download_button("SGLang --init-expert-location (JSON)", files["sglang"],
                                    file_name="plan-sglang.json", mime="application/json", on_click="ignore",
                                    key=key("file_sglang"), help=_sglang_rows_help(log.layer_base))
        cols[2].download_button("vLLM-style map (JSON)", files["vllm"], file_name="plan-vllm.json",
                                mime="application/json", on_click="ignore", key=key("file_vllm"))
    heavier = files["serving_heavier"]
    if heavier:
        worst = max(heavier, key=lambda name: heavier[name][1] / max(heavier[name][0], 1))
        st.caption(f"The SGLang and vLLM files hold a distinct expert per slot of a rank; on {len(heavier)} of "
                   f"{len(files['notes'])} layers that loads their busiest rank more than our plan does (most: layer "
                   f"{quote(worst)}, {heavier[worst][1]} tokens against {heavier[worst][0]}).")
    kept = [name for name, note in files["notes"].items() if note.startswith("kept")]
    if kept:
        st.caption(f"{len(kept)} of {len(files['notes'])} layers keep the current placement: no plan with these "
                   f"slots lightens their busiest rank.")
    st.caption(caption("placement_export"))


def _asked(log: RoutingLog, choice: tuple, key) -> bool:
    """Whether to plan every layer now: always up to AUTO_PLAN_LAYERS layers, else once the visitor asked for these
    plans (a button; the request is kept while the log's source, layers and experts and the choice stay)."""
    if len(log.layers) <= AUTO_PLAN_LAYERS:
        return True
    wanted = (log.source, tuple(log.layers), log.n_experts, *choice)  # a followed log that grows keeps its request
    if st.session_state.get(key("plans_asked")) == wanted:
        return True
    st.caption(f"This log has {len(log.layers):,} layers: their plan files are made when you ask (one plan per "
               f"layer; over {AUTO_PLAN_LAYERS} layers that takes a while).")
    st.button(f"Plan all {len(log.layers):,} layers", key=key("plan_all"), on_click=st.session_state.__setitem__,
              args=(key("plans_asked"), wanted))
    return False


def _sglang_rows_help(layer_base: int) -> str:
    """The SGLang button's help: which row holds which layer."""
    rows = ("One row per decoder layer id, counted from 0 (row i is layer i; a layer the log lacks gets SGLang's "
            "trivial row)")
    if not layer_base:
        return rows + "."
    return rows + (f". This log numbers its layers from {layer_base} (its source's own numbers): layer n is row "
                   f"n − {layer_base}.")
