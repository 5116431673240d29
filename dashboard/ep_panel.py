"""The panel under an Expert parallel Run button: progress and Cancel while its EPRun runs (the fragment reruns
every tick), then the outcome. The page's own run (contiguous, planned) and the Placement section's plan run
each have one, under their own session keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from dashboard.ep_run import EPRun

PROGRESS_HELP = ("**rank processes** = ranks torchrun has started (each first imports torch); **ready** = ranks "
                 "that entered ep-report; **joined** = ranks in the process group; **forwards** = forwards (warm-up "
                 "+ repeats) the slowest rank has finished; memory = the job's process tree, sum of proportional "
                 "set sizes, against the budget (MOE_SCOPE_MEMORY_GB).")


@dataclass(frozen=True)
class PanelKeys:
    job: str     # session key of the running EPRun
    runs: str    # session key of the finished runs' documents
    cancel: str  # the Cancel button's key


def busy(*job_keys: str) -> bool:
    """Whether any of these EPRuns is running (one expert-parallel job at a time on the machine)."""
    return any(getattr(st.session_state.get(k), "running", False) for k in job_keys)


def panel(key, ticking: bool, keys: PanelKeys, draw: Callable[[dict], None]) -> None:
    """Progress and Cancel while the job runs; then its outcome, drawn by `draw` when it ran for `key`."""
    ss = st.session_state
    run: EPRun | None = ss.get(keys.job)
    if run is not None and run.running:
        fraction, text = run.status()
        st.progress(min(fraction, 1.0), text=text)
        st.caption(PROGRESS_HELP)
        st.button("Cancel", key=keys.cancel, on_click=_cancel, args=(keys.job,))
        return
    if ticking:  # the run ended while this fragment ticked: redraw without the timer
        st.rerun()
    if run is not None and run.state == "cancelled":
        if run.left:
            st.warning(f"Cancelled, but {len(run.left)} process(es) of the job could not be ended.", icon="⚠️")
        else:
            st.info("Cancelled: the expert-parallel job was stopped and no process is left.")
        return
    if run is not None and run.state == "failed":
        st.error(f"The expert-parallel job did not complete: {run.error}", icon="⚠️")
        return
    if run is not None and run.state == "done":
        ss[keys.runs] = {"key": run.key, "docs": run.docs, "predicted": run.predicted,
                         "plan_note": run.plan_note, "kept_current": run.kept_current}
        del ss[keys.job]
    runs = ss.get(keys.runs)
    if runs is None or runs["key"] != key:
        st.caption("Not run yet for these settings.")
        return
    draw(runs)


def _cancel(job_key: str) -> None:
    run: EPRun | None = st.session_state.get(job_key)
    if run is not None:
        run.cancel()


def session_alive_check():
    """A callable telling whether this browser session is still connected (always true outside a server)."""
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None or not runtime.exists():
        return lambda: True
    server, session_id = runtime.get_instance(), ctx.session_id
    return lambda: server.is_active_session(session_id)


def start(job_key: str, runs_key: str, *args, **kwargs) -> bool:
    """A new expert-parallel job under job_key (EPRun(*args, **kwargs); the old results under runs_key go); False and
    one message when it cannot start."""
    st.session_state.pop(runs_key, None)
    st.session_state.pop(job_key, None)
    try:
        st.session_state[job_key] = EPRun(*args, **kwargs)
    except ValueError as err:
        st.error(f"The expert-parallel job did not start: {err}", icon="⚠️")
        return False
    return True
