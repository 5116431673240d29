"""Expert parallel: run the Playground's layer on W torchrun processes, contiguous vs planned placement."""
from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

from moe.cli.options import config_argv, scenario_argv
from moe.parallel.forward import check_ep_config
from moe.parallel.launch import check_torchrun

from dashboard import page, sidebar, state
from dashboard.definitions import DEFINITIONS
from dashboard.ep_panel import PanelKeys, busy, panel, session_alive_check, start
from dashboard.ep_run import POLL_S, TIMEOUT_S, EPRun
from dashboard.figures.parallel import comparison_table, rank_load_figure, rank_times_figure, traffic_figure
from dashboard.links import EP_WORLD, SLOTS_PER_EXPERT, ep_to_query, to_query
from dashboard.result import RunResult
from dashboard.views import ep_placement

KEYS = PanelKeys(job=state.EP_JOB, runs=state.EP_RUNS, cancel="ep_cancel")

def ep_flags(result: RunResult) -> list[str]:
    """The ep-report flags for the sidebar's layer and scenario (ValueError when EP cannot run it). The ranks run
    on the CPU (the default device), whatever the sidebar's device."""
    cfg = result.config.replace(device="cpu")
    check_ep_config(cfg)
    if cfg.capacity_per_sequence:
        raise ValueError("per-sequence capacity needs whole sequences per rank: run `ep-report --capacity-scope "
                         "sequence --seq-len S` from the command line")
    return config_argv(cfg) + scenario_argv(result.scenario, result.scenario_params, result.trace.tokens)


def show() -> None:
    """The Expert parallel page: the Playground's layer (its controls are kept in session state and in this page's
    link), its forward reused; the Playground's sidebar is not drawn here."""
    values = sidebar.current_values()
    result = page.current_result(values)
    for note in page.link_notes(values):  # the link's layer values that were refused or clamped, as the Playground
        st.warning(note)                  # says them
    if result is not None:
        st.caption("The layer and input are the *Playground* page's: change them there (this page's link keeps "
                   "them).")
        render(result)
    query = {**to_query(values, st.session_state[state.PRESET]), **ep_to_query(st.session_state, state.EP_DEFAULTS)}
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def render(result: RunResult) -> None:
    state.ensure(state.EP_DEFAULTS)  # drawn on its own (a test), the app's state.init() has not run
    st.subheader("Expert parallel")
    for note in st.session_state.get(state.EP_LINK_NOTES, []):
        st.warning(note)
    try:
        check_torchrun()
        flags = ep_flags(result)
    except ValueError as err:
        st.error(f"Expert parallelism cannot run this configuration: {err}", icon="⚠️")
        return
    E = result.config.n_experts
    st.session_state["ep_slots"] = min(st.session_state["ep_slots"], E * SLOTS_PER_EXPERT)  # a link, a larger layer
    c1, c2, c3 = st.columns(3)
    W = c1.slider("Processes (W)", *EP_WORLD, key="ep_world", help="torchrun --nproc-per-node W (gloo, loopback)")
    R = c2.number_input("Redundant slots (R)", 0, E * SLOTS_PER_EXPERT, key="ep_slots",
                        help="planned placement: extra replicas of the hottest experts")
    c3.caption("Runs contiguous blocks, then the planner's placement for the measured load.")
    if W > E:
        st.info(f"W={W} > n_experts={E}: contiguous blocks would leave a rank without an expert; only the planned "
                f"placement with R ≥ {W - E} can run.")
    st.code(shlex.join(["torchrun", "--standalone", f"--nproc-per-node={W}", "-m", "moe", "ep-report", *flags]),
            language="bash", wrap_lines=True)  # wrapped: the whole command readable at any width
    key = (tuple(flags), W, int(R))
    st.caption(f"A job that runs past {TIMEOUT_S:.0f} s, or whose processes together use more than the memory "
               f"budget, is stopped; **Cancel** (shown while it runs) stops it at once. Either way every torchrun "
               f"process is ended, and so is a job whose browser tab is closed.")
    run: EPRun | None = st.session_state.get(state.EP_JOB)
    running = run is not None and run.running
    if st.button("Run on W processes", key="ep_run", type="primary", disabled=busy(state.EP_JOB, state.EP_PLAN_JOB)):
        running = _start(key, flags, W, int(R), result)
    st.fragment(panel, run_every=POLL_S * 2 if running else None)(key, running, KEYS, _draw)
    ep_placement.section(result, W, flags)


def _start(key, flags: list[str], W: int, R: int, result: RunResult) -> bool:
    """Start the jobs in the background (the old results go); False and a message when they cannot start."""
    return start(state.EP_JOB, state.EP_RUNS, key, W, R, flags, result.config.n_experts,
                 result.per_expert["served"].to_numpy(), session_alive_check())


def _draw(runs: dict) -> None:
    docs, predicted = runs["docs"], runs["predicted"]
    if runs.get("kept_current"):
        st.info(f"The planner {runs['plan_note']}: the planned run uses the contiguous blocks.")
    table = comparison_table(docs)
    cols = st.columns(len(table))
    for col, row in zip(cols, table.itertuples()):
        col.metric(f"straggler factor, {row.placement}", f"{row.straggler_factor:.2f}",
                   help="median over the repeats of (max over ranks of expert_ms / mean)")
        col.caption(f"spread over {row.repeats} repeats: min–max {row.straggler_min:.2f}–{row.straggler_max:.2f}, "
                    f"IQR {row.straggler_q1:.2f}–{row.straggler_q3:.2f}")
        col.metric(f"load max/mean, {row.placement}", f"{row.load_max_over_mean:.3f}")
    st.plotly_chart(rank_load_figure({n: pd.DataFrame(d["per_rank"]) for n, d in docs.items()}, predicted),
                    width="stretch", key="ep_load_chart")
    st.caption(DEFINITIONS["ep_assignments"])
    for name, doc in docs.items():
        left, right = st.columns(2)
        left.plotly_chart(traffic_figure(doc["traffic"], f"Token traffic, {name}"), width="stretch",
                          key=f"ep_traffic_{name}")
        right.plotly_chart(rank_times_figure(pd.DataFrame(doc["per_rank"]), f"Time per rank, {name}"),
                           width="stretch", key=f"ep_times_{name}")
        st.caption(f"Placement ({name}): " + "; ".join(f"rank {r}: {' '.join(map(str, e))}"
                                                      for r, e in enumerate(doc["placement"]["ranks"])))
    st.caption(DEFINITIONS["ep_traffic"] + " " + DEFINITIONS["ep_times"])
    st.dataframe(table, hide_index=True)
    st.caption(DEFINITIONS["ep_comparison"])
