"""The page: run (or reuse) the forward for the current controls, then draw the chosen view."""
from __future__ import annotations

import streamlit as st

from . import controls, runner
from .result import RunResult
from .sections import (about, contributors, downloads, experts, inspector, kpis, live, load, pathways, router,
                       scenario)
from .sections import parallel
from .state import spec_from_controls, to_query

VIEWS = {
    "Overview": (load.render, experts.render_one),
    "Experts": (experts.render,),
    "Contributors": (contributors.render,),
    "Router": (router.render,),
    "Pathways": (pathways.render,),
    "Scenario": (scenario.render,),
    "Token inspector": (inspector.render,),
    "Live": (live.render,),
    "Expert parallel": (parallel.render,),
    "About": (about.render,),
}

# views that do not show the sidebar's forward: its files would confuse
NO_DOWNLOADS = {"Live", "About", "Expert parallel"}


def current_result(values: dict) -> RunResult | None:
    """The result for these controls: reused when unchanged, else recomputed; errors keep the last good one."""
    ss = st.session_state
    try:
        spec = spec_from_controls(values)
    except ValueError as err:
        return _keep_last(f"This configuration is not valid: {err}")
    if ss.get("result_spec") == spec and ss.get("result") is not None:
        return ss["result"]
    try:
        with st.spinner(f"Running {spec.tokens:,} tokens through {spec.config.n_experts} experts "
                        f"on {spec.config.device}…", show_time=True):  # shown after 0.5 s, with the elapsed time
            result = runner.run(spec)
    except (ValueError, RuntimeError, MemoryError) as err:  # bad input or the device refused: never a traceback
        return _keep_last(f"Could not run this configuration: {err}")
    ss["result"], ss["result_spec"] = result, spec
    return result


def _keep_last(message: str) -> RunResult | None:
    st.error(message, icon="⚠️")
    last = st.session_state.get("result")
    if last is not None:
        st.info("Showing the last good result below.")
    return last


def sync_link(values: dict) -> None:
    """Write the controls into the URL so the link restores this page."""
    query = to_query(values, st.session_state["preset"])
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def render() -> None:
    """The page's header, then the results fragment."""
    st.title("moe-scope")
    st.caption("What every expert of a Mixture-of-Experts layer does, live. Move a control in the sidebar; "
               "every number has its definition next to it and in *About these numbers*.")
    for note in st.session_state.get("link_notes", []):
        st.warning(note)
    results()


@st.fragment(key=controls.RESULTS_FRAGMENT)
def results() -> None:
    """Run (or reuse) the forward for the controls and draw the chosen view.

    A fragment: it reruns alone when a value-only knob changes (controls.redraw_results) or a widget inside
    it changes (the view, the metric), so the sidebar is not redrawn; a full app run redraws it too.
    """
    values = controls.current_values()
    result = current_result(values)
    sync_link(values)
    if result is None:
        return
    for warning in result.warnings:
        st.warning(warning)
    cfg = result.config
    st.caption(f"Ran on **{result.device}** · {cfg.dtype} · {result.summary['forward_ms']:.1f} ms forward · "
               f"router={cfg.router}, score={cfg.score}, E={cfg.n_experts}, K={cfg.top_k}, "
               f"capacity={'dropless' if cfg.capacity_factor is None else result.trace.capacity}")
    kpis.render(result)
    view = st.radio("View", list(VIEWS), key="view", horizontal=True, label_visibility="collapsed")
    for draw in VIEWS[view]:
        draw(result)
    if view not in NO_DOWNLOADS:
        downloads.render(result)
