"""Counterfactual routing in the Model view: rerun the text with changed routing, beside the model's own.

Thin: widgets → `loaders.counterfactual` (cached; moe.hf.counterfactual) → figure builders.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import streamlit as st

from moe.config import DROP_POLICIES
from moe.definitions import DEFINITIONS
from moe.hf import cache as model_cache
from moe.hf.counterfactual import BIAS_COLD, BIAS_HOT, BIAS_NOTE, BIASES, Counterfactual
from moe.metrics import nats_to_bits

from dashboard import loaders, state
from dashboard.compare_models import cf_misfits, counterfactual_from, misfit_note
from dashboard.figures.model import counterfactual_loss_figure, load_heatmap_figure, share_range, sweep_figure

DEFAULTS = state.CF_DEFAULTS


def _sanitise(view: dict) -> None:
    """Values from a link or another model that this model cannot take go back to the defaults, with a note."""
    ss = st.session_state
    for key in cf_misfits(ss, view["layers"], view["n_experts"]):
        st.warning(misfit_note(key, ss[key], DEFAULTS[key]))
        ss[key] = DEFAULTS[key]


def _controls(view: dict) -> Counterfactual:
    ss = st.session_state
    _sanitise(view)
    E = view["n_experts"]
    a, b, c, d = st.columns(4)
    a.selectbox("Counterfactual layers", ["all", *map(str, view["layers"])], key="cf_layer",
                format_func=lambda v: "every MoE layer" if v == "all" else f"layer {v}")
    b.number_input("top_k (0 = the model's own)", min_value=0, max_value=E, key="cf_top_k")
    c.number_input("Capacity factor (0 = dropless)", min_value=0.0, max_value=64.0, step=0.25, key="cf_capacity")
    d.selectbox("Drop policy", list(DROP_POLICIES), key="cf_drop", disabled=ss["cf_capacity"] == 0)
    e, f, g = st.columns([1, 1, 2])
    e.number_input("Temperature", min_value=0.01, max_value=100.0, step=0.1, key="cf_temperature")
    f.selectbox("Bias one expert", list(range(-1, E)), key="cf_bias_expert",
                format_func=lambda x: "none" if x < 0 else f"expert {x}")
    g.radio("Bias", list(BIASES), key="cf_bias", horizontal=True, disabled=ss["cf_bias_expert"] < 0,
            help=f"hot adds {BIAS_HOT:+g} to the expert's selection score, cold {BIAS_COLD:+g}: {BIAS_NOTE}; the "
                 "combine weights are unchanged")
    return counterfactual_from(ss)


def render(view: dict, path: str, text: str, max_tokens: int) -> None:
    st.markdown("#### Counterfactual routing")
    st.caption("Rerun this text with other routing settings at one layer or all of them, with the model's "
               "weights unchanged; the model's own routing is on the left. Layers after a changed one see "
               "changed inputs, so their routing moves too.")
    if not st.toggle("Compare a counterfactual routing", key="cf_on",
                     help="off: no second forward and no extra charts when the text changes"):
        return
    if view["routing_only"]:
        st.info(f"Layers {view['routing_only']} are traced from their routing alone: counterfactuals need layers "
                "the engine runs.")
    cf = _controls(view)
    new = _counterfactual(view, path, text, max_tokens, cf)
    if new is not None:
        _draw(view, new, cf)
    if st.toggle("Sweep: apply to each layer alone", key="cf_sweep",
                 help="one forward per MoE layer with this change at that layer only (the layer choice above "
                      "does not apply): which layer hurts most?"):
        _sweep(path, text, max_tokens, cf)


def _counterfactual(view: dict, path: str, text: str, max_tokens: int, cf: Counterfactual) -> dict | None:
    """The counterfactual's tables (the model's own when nothing changed); under an error the last good one, only
    when it ran the same model files on the same text: two models with one tokenizer have equal token counts."""
    if not cf.changed():  # Counterfactual() reproduces the model exactly (tested): no second forward
        return {"load": view["load"], "loss": view["loss"], "dropped": view["dropped"]}
    ran_on = (path, text, max_tokens, model_cache.fingerprint(path))
    try:
        with st.spinner("Rerunning the text with the counterfactual routing…", show_time=True):
            new = loaders.counterfactual(path, text, max_tokens, cf)
        st.session_state[state.CF_LAST] = (ran_on, new)
        return new
    except Exception as err:  # a bad combination (top_k over the kept groups, …): a message, the last good one
        st.error(f"Could not run this counterfactual: {_detail(err)}", icon="⚠️")
        last_on, new = st.session_state.get(state.CF_LAST) or (None, None)
        if last_on != ran_on:
            return None
        st.info("Showing the last good counterfactual below.")
        return new


def _detail(err: Exception) -> str:
    return str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"


def _draw(view: dict, new: dict, cf: Counterfactual) -> None:
    own_bits, new_bits = (nats_to_bits(float(np.mean(x))) for x in (view["loss"], new["loss"]))
    a, b, c = st.columns(3)
    a.metric("Mean next-token loss, own routing", f"{own_bits:.3f} bits")
    b.metric("Counterfactual", f"{new_bits:.3f} bits", delta=f"{new_bits - own_bits:+.3f} bits", delta_color="inverse")
    c.metric("Dropped assignments (all layers)", f"{sum(new['dropped']):,}")
    if not cf.changed():
        st.caption("No setting changed: the counterfactual is the model's own routing (identical loss).")
    zrange = share_range(view["load"], new["load"])  # one colour scale: the same colour is the same share
    left, right = st.columns(2)
    left.plotly_chart(load_heatmap_figure(view["load"], "own routing", zrange), width="stretch", key="cf_load_own")
    right.plotly_chart(load_heatmap_figure(new["load"], "counterfactual", zrange), width="stretch",
                       key="cf_load_new")
    st.plotly_chart(counterfactual_loss_figure(view["loss"], new["loss"], view["tokens"]), width="stretch",
                    key="cf_loss")
    st.caption(f"Loss of token s+1: {DEFINITIONS['next_token_loss']} Δ: {DEFINITIONS['counterfactual_loss_delta']} "
               "Dropped = `Σ_layers Σ_e (demand_e − served_e)` over the counterfactual forward. Both heatmaps "
               "share one colour scale, 0 to the larger of their largest shares." + _windows_note(view, cf))


def _windows_note(view: dict, cf: Counterfactual) -> str:
    """How a capacity is counted on a text read in several windows ("" otherwise)."""
    if view["windows"] <= 1 or cf.capacity_factor is None:
        return ""
    return (f" The text is read in {view['windows']} windows: the capacity is ranked among each window's scored "
            "tokens alone (C from their count); its context tokens, scored in an earlier window, are served in full.")


def _sweep(path: str, text: str, max_tokens: int, cf: Counterfactual) -> None:
    """The counterfactual at each MoE layer alone: a row and a bar pair per layer."""
    try:
        with st.spinner("Rerunning the text once per MoE layer…", show_time=True):
            # the layer choice does not apply: one cache entry per change, whichever layer is chosen
            table = loaders.counterfactual_sweep(path, text, max_tokens, replace(cf, layers=None))
    except Exception as err:
        st.error(f"Could not run the sweep: {_detail(err)}", icon="⚠️")
        return
    st.plotly_chart(sweep_figure(table), width="stretch", key="cf_sweep_chart")
    st.dataframe(table, hide_index=True, column_config={
        "delta_loss_bits": st.column_config.NumberColumn("Δloss (bits per token)", format="%+.4f"),
        "dropped_fraction": st.column_config.NumberColumn("dropped fraction", format="percent")})
    st.caption(f"Sweep: {DEFINITIONS['counterfactual_sweep']}")
