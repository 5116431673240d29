"""About: every definition the captions use, in one place. TITLE is the page's one name (navigation, heading,
README)."""
from __future__ import annotations

import streamlit as st

from dashboard.definitions import DEFINITIONS, caption
from dashboard.result import RunResult

TITLE = "About"


def show() -> None:
    """The About page (its link holds nothing)."""
    st.query_params.clear()
    render(None)


def render(result: RunResult | None) -> None:
    st.subheader(TITLE)
    st.markdown("What every number on this page means. Notation: T tokens, E experts, K top_k, D d_model, H d_expert, C capacity. "
                "The same texts appear as the captions under the charts.")
    st.markdown("\n".join(f"- {caption(key)}" for key in DEFINITIONS))
