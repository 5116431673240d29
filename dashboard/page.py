"""The Playground page: the synthetic layer's sidebar, the forward for its controls (run or reused), the header
line and KPI row, then the chosen sub-view (Overview … Live)."""
from __future__ import annotations

import streamlit as st

from dashboard import loaders, sidebar, state
from dashboard.links import spec_from_controls, to_query
from dashboard.loaders import WARM_BUDGET_S
from dashboard.result import RunResult
from dashboard.views import (contributors, downloads, experts, inspector, kpis, live, overview, pathways, router,
                             scenario)

TITLE = "Playground"
VIEWS = {
    "Overview": (overview.render,),
    "Experts": (experts.render,),
    "Contributors": (contributors.render,),
    "Router": (router.render,),
    "Pathways": (pathways.render,),
    "Scenario": (scenario.render,),
    "Token inspector": (inspector.render,),
    "Live": (live.render,),
}
NO_DOWNLOADS = {"Live"}  # a view that does not show the sidebar's forward: its files would confuse
OWN_KPIS = {"Live"}      # a view with its own numbers: the sidebar forward's KPI row would mislead
DEFAULT_VIEW = state.DEFAULT_VIEW


def current_result(values: dict) -> RunResult | None:
    """The result for these controls: reused when unchanged, else recomputed; errors keep the last good one."""
    ss = st.session_state
    try:
        spec = spec_from_controls(values)
    except ValueError as err:
        return _keep_last(f"This configuration is not valid: {err}")
    if ss.get(state.RESULT_SPEC) == spec and ss.get(state.RESULT) is not None:
        return ss[state.RESULT]
    try:
        with st.spinner(f"Running {spec.tokens:,} tokens through {spec.config.n_experts} experts "
                        f"on {spec.config.device}…", show_time=True):  # shown after 0.5 s, with the elapsed time
            result = loaders.run(spec)
    except (ValueError, RuntimeError, MemoryError) as err:  # bad input or the device refused: never a traceback
        return _keep_last(f"Could not run this configuration: {err}")
    ss[state.RESULT], ss[state.RESULT_SPEC] = result, spec
    return result


def _keep_last(message: str) -> RunResult | None:
    st.error(message, icon="⚠️")
    last = st.session_state.get(state.RESULT)
    if last is not None:
        st.info("Showing the last good result below.")
    return last


def page_query(values: dict) -> dict[str, str]:
    """The link for these controls and the current sub-view (the default one is left out)."""
    query = to_query(values, st.session_state[state.PRESET])
    view = st.session_state.get(state.VIEW, DEFAULT_VIEW)
    if view != DEFAULT_VIEW:
        query["view"] = view
    return query


def sync_link(values: dict) -> None:
    """Write the controls and the sub-view into the URL so the link restores this page."""
    query = page_query(values)
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def link_notes(values: dict) -> list[str]:
    """What the link asked for and did not get: shown until the user changes something (the URL is rewritten)."""
    ss = st.session_state
    if not ss.get(state.LINK_NOTES):
        return []
    query = page_query(values)
    ss.setdefault(state.LINK_NOTES_QUERY, query)  # the page as the link opened it
    if query != ss[state.LINK_NOTES_QUERY]:
        ss[state.LINK_NOTES] = []
    return ss[state.LINK_NOTES]


def render() -> None:
    """The Playground: its sidebar, the header, then the results fragment."""
    sidebar.render_sidebar()
    st.title("moe-scope")
    st.caption("What every expert of a Mixture-of-Experts layer does, live. Move a control in the sidebar; "
               "every number has its definition next to it and on the *About* page.")
    results()


@st.fragment(key=sidebar.RESULTS_FRAGMENT)
def results() -> None:
    """Run (or reuse) the forward for the controls and draw the chosen view.

    A fragment: it reruns alone when a value-only knob changes (sidebar.redraw_results) or a widget inside
    it changes (the view, the metric), so the sidebar is not redrawn; a full app run redraws it too.
    """
    values = sidebar.current_values()
    for note in link_notes(values):  # inside the fragment: a results-only rerun clears them too
        st.warning(note)
    result = current_result(values)
    sync_link(values)
    if result is None:
        return
    for warning in result.warnings:
        st.warning(warning)
    view = st.session_state.get(state.VIEW, DEFAULT_VIEW)
    _header(result, view)
    view = st.radio("View", list(VIEWS), key=state.VIEW, horizontal=True, label_visibility="collapsed")
    for draw in VIEWS[view]:
        draw(result)
    if view not in NO_DOWNLOADS:
        downloads.render(result)


def forward_note(result: RunResult) -> str:
    """What the forward time measures (DEFINITIONS["warm_forward_ms"]): the repeats, or why there were none."""
    n = len(result.warm_times_ms)
    if n:
        return f"warm: median of {n} repeat{'s' if n > 1 else ''}"
    return f"one forward, not repeated: it alone takes more than {WARM_BUDGET_S:g} s, or a second would not fit " \
           "the memory budget"


def _header(result: RunResult, view: str) -> None:
    """One caption (fewer rows above the charts) and the KPI row; in the fragment, so a value-only knob updates
    them too."""
    cfg = result.config
    ran = (f"Ran on **{result.device}** · {cfg.dtype} · {result.forward_ms:.1f} ms forward "
           f"on {result.threads} thread{'s' * (result.threads != 1)} ({forward_note(result)}) · "
           f"router={cfg.router}, score={cfg.score}, "
           f"E={cfg.n_experts}, K={cfg.top_k}, "
           f"capacity={'dropless' if result.trace.capacity is None else result.trace.capacity}"
           f"{' per sequence' if cfg.capacity_scope == 'sequence' and result.seq_len else ''}")
    if view in OWN_KPIS:
        st.caption(ran + "  \nThe sidebar's forward is summarised in the other views; below are the numbers of "
                   "this view's own model.")
        return
    preset = st.session_state[state.PRESET]
    changed = sidebar.changed_from_preset(preset)
    st.caption(ran + (f"  \nPreset *{preset}* **modified** ({', '.join(changed)}): its *Look for* text may not "
                      "hold; **Reset to preset** in the sidebar restores it." if changed else ""))
    kpis.render(result)
