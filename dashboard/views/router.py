"""Router: probabilities per token, how confident and how spread they are, and the logits' scale."""
from __future__ import annotations

import math

import streamlit as st

from dashboard.definitions import DEFINITIONS, caption
from dashboard.figures.colors import expert_colors
from dashboard.figures.core import HEIGHT, histogram_figure, token_heatmap_figure
from dashboard.figures.router import logits_figure
from dashboard.figures.row_groups import unlabelled_note
from dashboard.result import RunResult
from dashboard.tables import confidence_histogram, entropy_histogram, heatmap_rows, logit_quantiles, sorted_token_matrix
from dashboard.views.kpis import fmt


def render(result: RunResult) -> None:
    st.subheader("Router")
    trace, E = result.trace, result.config.n_experts
    if result.config.router == "hash":
        st.info(DEFINITIONS["hash_router_probs"], icon="ℹ️")
    matrix, labels, note, groups, sort_text = sorted_token_matrix(trace, "probs", result.labels,
                                                                  result.label_names, heatmap_rows(E))
    fig = token_heatmap_figure(matrix, labels, title="Router probability per token and expert"
                               + (" (binned means)" if note else ""), value_name="prob", zmin=0.0,
                               uirevision="probs", row_groups=groups, yaxis_title=sort_text)
    st.plotly_chart(fig, width="stretch", key="router_probs")
    text = caption("probs", "token_order", "token_heatmap_aggregation")
    note = " ".join(filter(None, (note, unlabelled_note(groups, HEIGHT + 80))))
    st.caption(f"**{note}**  \n{text}" if note else text)
    margin, overlap = result.summary["topk_margin"], result.summary["bias_overlap"]
    st.markdown(f"Close to flipping: **top-k margin = {fmt(margin)}** · kept by the bias and groups: "
                f"**bias overlap = {fmt(overlap)}** (per expert in the Experts view)")
    st.caption(caption("topk_margin", "bias_overlap"))

    left, right = st.columns(2)
    with left:
        fig = histogram_figure(confidence_histogram(trace), title="Confidence per token",
                               xaxis_title="min(p₁/p₂, 100) (log scale)", log_x=True)
        st.plotly_chart(fig, width="stretch", key="router_confidence")
        st.caption(caption("token_confidence", "mean_confidence"))
    with right:
        fig = histogram_figure(entropy_histogram(trace), title="Router entropy per token",
                               xaxis_title="entropy (nats)", reference=math.log(E),
                               reference_name=f"uniform: ln E = {math.log(E):.4g}")
        st.plotly_chart(fig, width="stretch", key="router_entropy")
        st.caption(caption("token_entropy"))

    fig = logits_figure(logit_quantiles(trace), expert_colors(E), result.summary["z_loss"])
    st.plotly_chart(fig, width="stretch", key="router_logits")
    st.caption(caption("router_logits", "z_loss", "nonfinite"))
