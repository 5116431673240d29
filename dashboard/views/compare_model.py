"""Compare, model sides: two models on one text, or a model and its counterfactual — each side a Model-page link
(dashboard.compare_models), drawn with the same charts on one colour scale and one loss axis, with the Δ table of
a model's headline numbers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from moe.definitions import DEFINITIONS
from moe.metrics import nats_to_bits

from dashboard import loaders, state
from dashboard.compare_models import MODEL_HEADLINE, ModelSpec, fitted_counterfactual, model_headline
from dashboard.definitions import caption
from dashboard.figures.core import shared_range
from dashboard.figures.model import load_heatmap_figure, share_range, token_loss_figure
from dashboard.quoting import md_text


def tables(name: str, spec: ModelSpec) -> dict | None:
    """The side's forward (cached per (model, text, max tokens[, counterfactual])); an error is one line."""
    try:
        with st.spinner(f"Routing side {name}'s text through its model…", show_time=True):
            view = loaders.analyse(spec.path, spec.text, spec.max_tokens)
            if view["total"] > len(view["tokens"]):  # as the Model page says it
                st.warning(f"{name}: the text has {view['total']:,} tokens; routing the first "
                           f"{len(view['tokens']):,} (max tokens).")
            if spec.cf is None:
                return view
            fitted, notes = fitted_counterfactual(spec, view["layers"], view["n_experts"], state.CF_DEFAULTS)
            for note in notes:  # as the Model page: a value this model cannot take goes back to its default
                st.warning(f"{name}: {note}")
            if fitted is None:
                return view
            cf = loaders.counterfactual(spec.path, spec.text, spec.max_tokens, fitted)
            return {**view, **cf}  # the counterfactual's load, loss, drops, table and aux; the text's tokens
    except Exception as err:  # a model that does not load, a counterfactual the model refuses: never a traceback
        detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        st.error(f"{name}: could not route this text: {md_text(detail)}", icon="⚠️")
        return None


def draw(sides: dict[str, dict]) -> None:
    """Load share per layer (one colour scale) and next-token loss (one y range) of each side."""
    zrange = share_range(*(t["load"] for t in sides.values()))
    columns = st.columns(len(sides))
    for (name, t), column in zip(sides.items(), columns):
        column.plotly_chart(load_heatmap_figure(t["load"], name, zrange), width="stretch",
                            key=f"compare_model_load_{name}")
    st.caption("Both heatmaps share one colour scale, 0 to the larger of their largest shares. "
               + caption("load_share"))
    top = shared_range([float(np.max(nats_to_bits(np.asarray(t["loss"])), initial=0.0)) for t in sides.values()],
                       1.05)
    for (name, t), column in zip(sides.items(), st.columns(len(sides))):
        fig = token_loss_figure(t["loss"], t["tokens"], t.get("token_bytes"), t.get("context"))
        fig.update_layout(title_text=f"{name}: " + fig.layout.title.text, yaxis_range=top,
                          uirevision=f"compare-model-loss-{name}")
        column.plotly_chart(fig, width="stretch", key=f"compare_model_loss_{name}")
    st.caption(caption("next_token_loss", "rolling_loss"))


def delta(a: dict, b: dict) -> None:
    """The headline numbers of both sides and B − A, each with its definition."""
    ha, hb = model_headline(a), model_headline(b)
    table = pd.DataFrame([(label, ha[key], hb[key]) for label, key in MODEL_HEADLINE],
                         columns=["number", "A", "B"]).set_index("number")
    table["B − A"] = table["B"] - table["A"]
    st.markdown("**Headline numbers**")
    st.table(table.style.format("{:.4g}"))
    st.caption(caption("compare_model_headline", "pooled_aux", "cv", "max_over_mean", "dead_fraction",
                       "dropped_fraction", "text_bits_per_byte"))
    if "sigmoid" in (a.get("score"), b.get("score")):
        st.caption(f"**aux loss with a sigmoid router:** {DEFINITIONS['aux_loss_sigmoid']}")
