"""The Expert parallel page's Placement section: the page's own load (the Playground forward's served assignments,
in token order, cut into blocks of consecutive tokens) replayed by the Placement section at the page's W; and a plan
of it run for real on W processes, the measured per-rank load next to the replayed one. They are equal: the replay
splits a replicated expert's tokens by the forward's own rule (moe.parallel.replay)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from moe.parallel.eplb import eplb_layout
from moe.parallel.judge import current_layout, plan_layout
from moe.parallel.placement import Placement
from moe.parallel.replay import from_placement, rank_load, to_placement
from moe.traces.log import RoutingLog

from dashboard import state
from dashboard.definitions import caption
from dashboard.ep_panel import PanelKeys, busy, panel, session_alive_check, start
from dashboard.ep_run import POLL_S, EPRun
from dashboard.figures.parallel import comparison_table, rank_load_figure
from dashboard.result import RunResult
from dashboard.views import placement

BLOCKS = 32  # steps of the page's log: the forward's tokens in this many blocks of consecutive tokens
PLANNERS = {"our planner": "planned", "DeepSeek's EPLB": "eplb"}
KEYS = PanelKeys(job=state.EP_PLAN_JOB, runs=state.EP_PLAN_RUNS, cancel=state.placement_key("ep", "real_cancel"))


def key(name: str) -> str:
    return state.placement_key("ep", name)


def log_from_result(result: RunResult, blocks: int = BLOCKS) -> RoutingLog:
    """The forward's served assignments as a routing log: step s = the s-th of `blocks` blocks of consecutive tokens
    (global token order, as the ranks split them); the steps sum to the per-expert served load the page plans from."""
    served = result.trace.served.numpy().astype(np.int64)                            # (T, E)
    T = len(served)
    n = min(blocks, T)
    starts = np.linspace(0, T, n + 1).astype(np.int64)[:-1]                           # (S,) strictly ascending
    counts = np.add.reduceat(served, starts, axis=0)                                  # (S, E)
    return RoutingLog(source="playground", layers=["0"], steps=np.arange(n), counts=counts[:, None, :],
                      top_k=result.config.top_k, meta={"tokens": int(T)})


def section(result: RunResult, W: int, flags: list[str]) -> None:
    """The Placement section for this page's load at W ranks, then a chosen plan run for real."""
    if W > result.config.n_experts:
        st.markdown("**Placement**")
        st.info(f"The placement replay compares plans with contiguous blocks, which leave a rank without an expert at "
                f"W={W} > n_experts={result.config.n_experts}; choose at most {result.config.n_experts} processes "
                f"to replay this page's load.")
        return
    log = log_from_result(result)
    replayed = placement.render(log, "ep", world_size=W)
    st.caption(f"The log: this page's forward, {log.meta['tokens']} tokens cut into {len(log.steps)} step(s) of "
               f"consecutive tokens; its counts are the served assignments the page plans from.")
    if replayed is not None:
        _real(replayed, W, flags)


def planned_placement(load, world_size: int, redundant_slots: int, planner: str, nodes: int = 1) -> Placement:
    """The Placement a planner makes from one load (E,), ready for ep-report --placement (a rank may hold two slots
    of one expert, as DeepSeek's EPLB makes them: it serves both chunks)."""
    load = np.asarray(load, dtype=np.int64)
    E = len(load)
    if planner == "planned":
        layout, _ = plan_layout(load, world_size, redundant_slots, current_layout(E, world_size))
    else:
        layout = eplb_layout(load, redundant_slots, world_size, nodes)
    return to_placement(layout, E)


def _real(replayed: placement.Replayed, W: int, flags: list[str]) -> None:
    st.markdown("**Run a plan for real** (planned from the whole forward's load, run on W processes)")
    settings, log = replayed.settings, replayed.log
    c1, c2 = st.columns(2)
    placement.keep_choice(key("real_planner"), list(PLANNERS), list(PLANNERS)[0])
    label = c1.selectbox("Planner", list(PLANNERS), key=key("real_planner"))
    Rs = list(settings.redundant_slots)
    placement.keep_choice(key("real_slots"), Rs, Rs[-1])
    R = int(c2.selectbox("Redundant slots", Rs, key=key("real_slots")))
    load = log.counts.sum(axis=0)[0]                                                   # (E,)
    try:
        chosen = planned_placement(load, W, R, PLANNERS[label], settings.num_nodes)
    except ValueError as err:
        st.error(f"No plan to run: {err}", icon="⚠️")
        return
    predicted = rank_load(load[None], from_placement(chosen))[0]
    st.caption("Placement: " + "; ".join(f"rank {r}: {' '.join(map(str, e))}" for r, e in enumerate(chosen.ranks))
               + f" · replayed load per rank: {' '.join(map(str, predicted.tolist()))}")
    name = f"{label}, R={R}"
    run_key = (tuple(flags), W, name, chosen.ranks)
    job: EPRun | None = st.session_state.get(state.EP_PLAN_JOB)
    running = job is not None and job.running
    if st.button("Run this plan on W processes", key=key("real_run"), disabled=busy(state.EP_JOB, state.EP_PLAN_JOB)):
        running = _start(run_key, W, R, flags, load, {name: chosen})
    st.fragment(panel, run_every=POLL_S * 2 if running else None)(run_key, running, KEYS, _draw)


def _start(run_key, W: int, R: int, flags: list[str], load, placements: dict[str, Placement]) -> bool:
    return start(state.EP_PLAN_JOB, state.EP_PLAN_RUNS, run_key, W, R, flags, len(load), load,
                 session_alive_check(), placements=placements)


def _draw(runs: dict) -> None:
    """Measured assignments per rank (bars) against the replayed load (markers), and whether they agree."""
    docs, predicted = runs["docs"], runs["predicted"]
    name, doc = next(iter(docs.items()))
    measured = [int(row["assignments"]) for row in doc["per_rank"]]
    st.plotly_chart(rank_load_figure({name: pd.DataFrame(doc["per_rank"])}, predicted, "replayed"),
                    width="stretch", key=key("real_chart"))
    differ = [r for r, (m, p) in enumerate(zip(measured, predicted[name])) if m != p]
    if differ:
        st.warning(f"Measured differs from replayed on ranks {differ}: measured {measured}, replayed "
                   f"{predicted[name]}.", icon="⚠️")
    else:
        st.success(f"Measured equals replayed on every rank: {measured}.")
    st.dataframe(comparison_table(docs), hide_index=True)
    st.caption(caption("ep_assignments", "replay_rank_load", "ep_comparison"))
