"""The Model view's section for a model balanced by an expert bias (DeepSeek-V3's aux-loss-free balancing, e.g.
the bundled pydoc-deepseek): the bias per layer and expert, and per layer the top-k margin, bias overlap and the
shared expert's share. Thin: the analysed view's tables → pure figures (dashboard.figures.model_bias)."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard.definitions import caption
from dashboard.figures.model_bias import balance_figure, bias_heatmap_figure


def figures(view: dict) -> tuple[go.Figure, go.Figure] | None:
    """(bias heatmap, per-layer balance bars), or None when no MoE layer of the model has an expert bias.
    Built before the page's first element goes out (dashboard.views.model._draw)."""
    if view.get("bias") is None:
        return None
    return bias_heatmap_figure(view["bias"]), balance_figure(view["balance"])


def render(figs: tuple[go.Figure, go.Figure] | None, score: str) -> None:
    """`score`: the router's ("sigmoid": DeepSeek-V3, which trains the bias instead of an aux loss; "softmax":
    Ernie 4.5, which adds it to its probabilities and trains with an aux loss too)."""
    if figs is None:
        return
    sigmoid = score == "sigmoid"
    st.markdown("#### Aux-loss-free balancing: the expert bias" if sigmoid else "#### The expert bias")
    st.plotly_chart(figs[0], width="stretch", key="model_bias")
    trained = ("trained by the rule below, without an aux loss" if sigmoid else
               "this model trains it alongside an aux loss (its `router_aux_loss_coef`)")
    st.caption(f"The bias each router adds to its {'sigmoid scores' if sigmoid else 'softmax probabilities'} when "
               f"it picks the top-k experts (never to the gate weights); {trained}. Positive: the expert was "
               "underloaded in training and is favoured now.  \n" + caption("expert_bias"))
    st.plotly_chart(figs[1], width="stretch", key="model_balance")
    st.caption("On this text, per MoE layer.  \n" + caption("topk_margin", "bias_overlap", "shared_fraction"))
