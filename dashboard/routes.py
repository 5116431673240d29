"""The pages, one per task (st.navigation), and the links from before them: `?view=Traces` opens Runs,
`?view=Router` the Playground's Router sub-view, `?view=Model&…` the Model page with its keys."""
from __future__ import annotations

import streamlit as st

from dashboard import page, state
from dashboard.quoting import quote
from dashboard.views import about, compare, model, parallel, traces

PLAYGROUND, MODEL, RUNS, EXPERT_PARALLEL, ABOUT = page.TITLE, "Model", "Runs", "Expert parallel", about.TITLE
COMPARE = compare.TITLE
# a view of the old single page -> the page it became (the Playground's sub-views keep their names); Compare is new,
# and `?view=Compare&a=…&b=…` opens it like the others
OLD_VIEWS = {"Model": MODEL, "Traces": RUNS, "Expert parallel": EXPERT_PARALLEL, about.TITLE: ABOUT, COMPARE: COMPARE}


def pages() -> dict[str, st.Page]:
    """Every page by its title, in the navigation's order (the Playground is the default, at /)."""
    return {
        PLAYGROUND: st.Page(page.render, title=PLAYGROUND, icon=":material/tune:", url_path="playground", default=True),
        MODEL: st.Page(model.render, title=MODEL, icon=":material/psychology:", url_path="model"),
        RUNS: st.Page(traces.show, title=RUNS, icon=":material/history:", url_path="runs"),
        EXPERT_PARALLEL: st.Page(parallel.show, title=EXPERT_PARALLEL, icon=":material/hub:",
                                 url_path="expert-parallel"),
        COMPARE: st.Page(compare.show, title=COMPARE, icon=":material/compare:", url_path="compare"),
        ABOUT: st.Page(about.show, title=ABOUT, icon=":material/info:", url_path="about"),
    }


def follow_view_link(all_pages: dict[str, st.Page]) -> None:
    """Once per session: the opening link's `view` picks a Playground sub-view or the page it became; an unknown
    one is named in a note (the Playground shows it)."""
    ss = st.session_state
    if ss.get(state.VIEW_LINK_READ):
        return
    ss[state.VIEW_LINK_READ] = True
    view = st.query_params.get("view")
    if view is None:
        return
    if view in page.VIEWS:
        ss[state.VIEW] = view
    elif view in OLD_VIEWS:
        rest = {key: value for key, value in st.query_params.to_dict().items() if key != "view"}
        st.switch_page(all_pages[OLD_VIEWS[view]], query_params=rest)
    else:
        state.add_link_note(f"unknown view {quote(view)} in the link; showing {quote(page.DEFAULT_VIEW)} "
                            f"(views: {', '.join([*page.VIEWS, *OLD_VIEWS])})")
