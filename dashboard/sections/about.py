"""About these numbers: every definition the captions use, in one place."""
from __future__ import annotations

import streamlit as st

from ..definitions import DEFINITIONS, caption
from ..result import RunResult


def render(result: RunResult) -> None:
    st.subheader("About these numbers")
    st.markdown("Notation: T tokens, E experts, K top_k, D d_model, H d_expert, C capacity. "
                "The same texts appear as the captions under the charts.")
    st.markdown("\n".join(f"- {caption(key)}" for key in DEFINITIONS))
