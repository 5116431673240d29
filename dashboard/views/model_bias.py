"""The Model view's section for a model balanced by an expert bias (DeepSeek-V3's aux-loss-free balancing, e.g.
the bundled pydoc-deepseek): the bias per layer and expert, and per layer the top-k margin, bias overlap and the
shared expert's share. Thin: the analysed view's tables → pure figures (dashboard.figures.model_bias)."""
from __future__ import annotations

import streamlit as st

from dashboard.definitions import caption
from dashboard.figures.model_bias import balance_figure, bias_heatmap_figure


def render(view: dict) -> None:
    """Drawn only when some MoE layer of the model has an expert bias."""
    if view.get("bias") is None:
        return
    st.markdown("#### Aux-loss-free balancing: the expert bias")
    st.plotly_chart(bias_heatmap_figure(view["bias"]), width="stretch", key="model_bias")
    st.caption("The bias each router adds to its sigmoid scores when it picks the top-k experts (never to the "
               "gate weights); trained by the rule below, without an aux loss. Positive: the expert was "
               "underloaded in training and is favoured now.  \n" + caption("expert_bias"))
    st.plotly_chart(balance_figure(view["balance"]), width="stretch", key="model_balance")
    st.caption("On this text, per MoE layer.  \n" + caption("topk_margin", "bias_overlap", "shared_fraction"))
