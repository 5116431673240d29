"""Token inspector: one token's probabilities, chosen experts, weights, drops and contributions."""
from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.definitions import caption
from dashboard.figures.colors import expert_colors
from dashboard.figures.router import token_inspector_figure
from dashboard.result import RunResult
from dashboard.tables import token_confidence, token_detail, token_entropy

KEY = state.INSPECTOR_TOKEN


def _summary_line(detail, t: int) -> str:
    """One line: chosen experts with their gates, and any drops."""
    served = detail[detail["served"]]
    dropped = detail[detail["dropped"]]["expert"].tolist()
    chosen = ", ".join(f"{e} (gate {g:.4g})" for e, g in zip(served["expert"], served["gate"])) or "none"
    probs = detail["prob"].to_numpy()[None, :]  # (1, E)
    line = (f"Token **{t}** · served by: {chosen} · dropped: {', '.join(map(str, dropped)) or 'none'} · "
            f"max prob {probs.max():.4g} · entropy {token_entropy(probs)[0]:.4g} nats")
    confidence = token_confidence(probs)[0]
    return line + ("" if confidence != confidence else f" · confidence {confidence:.4g}")  # NaN when E = 1


def render(result: RunResult) -> None:
    st.subheader("Token inspector")
    T = result.trace.tokens
    # Fewer tokens than in the last run: clamp before the widget draws (Streamlit would reset it to 0).
    # No value= argument: the widget's state lives in session state only, so Streamlit never warns.
    st.session_state[KEY] = min(int(st.session_state.get(KEY, 0)), T - 1)
    t = int(st.number_input("token", min_value=0, max_value=T - 1, step=1, key=KEY,
                            help=f"Index of the token to inspect, 0..{T - 1} (tokens are flattened batch × seq)."))
    detail = token_detail(result.trace, t)
    st.markdown(_summary_line(detail, t))
    fig = token_inspector_figure(detail, expert_colors(result.config.n_experts), t)
    st.plotly_chart(fig, width="stretch", key="inspector_chart")
    st.caption(caption("token_detail", "probs", "gates", "contributions"))
