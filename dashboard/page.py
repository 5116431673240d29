"""The page: run (or reuse) the forward for the current controls, then draw the chosen view."""
from __future__ import annotations

import streamlit as st

from dashboard import sidebar
from dashboard import loaders
from dashboard.model_link import text_link_note
from dashboard.result import RunResult
from dashboard.views import (about, contributors, downloads, experts, inspector, kpis, live, model, overview, parallel,
                       pathways, router, scenario, traces)
from dashboard.links import quote, spec_from_controls, to_query

VIEWS = {
    "Overview": (overview.render,),
    "Experts": (experts.render,),
    "Contributors": (contributors.render,),
    "Router": (router.render,),
    "Pathways": (pathways.render,),
    "Scenario": (scenario.render,),
    "Token inspector": (inspector.render,),
    "Live": (live.render,),
    "Model": (model.render,),
    "Expert parallel": (parallel.render,),
    "Traces": (traces.render,),
    about.TITLE: (about.render,),
}

# views that do not show the sidebar's forward: its files would confuse
NO_DOWNLOADS = {"Live", "Model", "Expert parallel", "Traces", about.TITLE}
OWN_KPIS = {"Live", "Model", "Traces"}  # views with their own numbers: the sidebar forward's KPI row would mislead
DEFAULT_VIEW = next(iter(VIEWS))


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
            result = loaders.run(spec)
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


def page_query(values: dict) -> dict[str, str]:
    """The link for these controls and the current view (the default view is left out)."""
    query = to_query(values, st.session_state["preset"])
    view = st.session_state.get("view", DEFAULT_VIEW)
    if view != DEFAULT_VIEW:
        query["view"] = view
    return {**query, **(st.session_state.get("model_query", {}) if view == "Model" else {})}


def sync_link(values: dict) -> None:
    """Write the controls and the view into the URL so the link restores this page."""
    query = page_query(values)
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def init_view() -> None:
    """Once per session: open the view named in the link (?view=Router); an unknown one gets a note."""
    ss = st.session_state
    if ss.get("_view_initialised"):
        return
    ss["_view_initialised"] = True
    model.init_link()  # the Model view's link keys, read before sync_link rewrites the URL
    view = st.query_params.get("view")
    if view is None:
        return
    if view in VIEWS:
        ss["view"] = view
    else:
        ss["link_notes"] = [*ss.get("link_notes", []), f"unknown view {quote(view)} in the link; showing "
                            f"{quote(DEFAULT_VIEW)} (views: {', '.join(VIEWS)})"]


def link_notes(values: dict) -> list[str]:
    """What the link asked for and did not get: shown until the user changes something (the URL is rewritten)."""
    ss = st.session_state
    if not ss.get("link_notes"):
        return []
    query = page_query(values)
    ss.setdefault("link_notes_query", query)  # the page as the link opened it
    if query != ss["link_notes_query"]:
        ss["link_notes"] = []
    return ss["link_notes"]


def render() -> None:
    """The page's header, then the results fragment."""
    init_view()
    st.title("moe-scope")
    st.caption("What every expert of a Mixture-of-Experts layer does, live. Move a control in the sidebar; "
               f"every number has its definition next to it and in the *{about.TITLE}* view.")
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
    cfg = result.config
    view = st.session_state.get("view", DEFAULT_VIEW)
    ran = (f"Ran on **{result.device}** · {cfg.dtype} · {result.summary['forward_ms']:.1f} ms forward "
           f"on {result.threads} threads · router={cfg.router}, score={cfg.score}, E={cfg.n_experts}, "
           f"K={cfg.top_k}, capacity={'dropless' if cfg.capacity_factor is None else result.trace.capacity}"
           f"{' per sequence' if cfg.capacity_scope == 'sequence' and result.seq_len else ''}")
    if view in OWN_KPIS:
        st.caption(ran + "  \nThe sidebar's forward is summarised in the other views; below are the numbers of "
                   "this view's own model.")
    else:
        # One caption (fewer rows above the charts); in the fragment, so a value-only knob updates it too.
        changed = sidebar.changed_from_preset(st.session_state["preset"])
        st.caption(ran + (f"  \nPreset *{st.session_state['preset']}* **modified** ({', '.join(changed)}): its "
                          "*Look for* text may not hold; **Reset to preset** in the sidebar restores it."
                          if changed else ""))
        kpis.render(result)
    view = st.radio("View", list(VIEWS), key="view", horizontal=True, label_visibility="collapsed")
    if view == "Model" and (note := text_link_note(st.session_state, model.EXAMPLES)):
        st.caption(note)  # sync_link leaves a long text out of the URL: say so, never silently
    for draw in VIEWS[view]:
        draw(result)
    if view not in NO_DOWNLOADS:
        downloads.render(result)
