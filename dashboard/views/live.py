"""Live: train the router and watch the load collapse or stay balanced, step by step.

Each browser session owns its Trainer (model, optimiser, history) in st.session_state. While playing,
only the panel fragment reruns (st.fragment(run_every=...)); the rest of the page stays usable.
"""
from __future__ import annotations

import time
from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from moe.train.presets import PRESET_HELP, preset
from moe.train.trainer import BALANCE_HELP, BALANCES, TrainConfig, Trainer

from dashboard import state
from dashboard.definitions import caption
from dashboard.figures.colors import expert_colors
from dashboard.figures.live import (balance_switches, expert_bias_columns, expert_bias_figure, health_columns, health_figure,
                            load_share_columns, load_share_figure, refresh, saturation_columns, saturation_figure)
from dashboard.result import RunResult

SETUPS = state.LIVE_SETUPS
TICK_SECONDS = 0.4          # how often the playing panel advances
MAX_SIDEBAR_TOKENS = 1024   # tokens per training step when training the sidebar's layer


def train_config(setup: str, result: RunResult, balance: str, aux_coef: float, z_coef: float,
                 bias_rate: float) -> TrainConfig:
    """The TrainConfig for a setup and balancing choice (ValueError with a message if impossible)."""
    knobs = dict(balance=balance, aux_coef=aux_coef, z_coef=z_coef, bias_rate=bias_rate)
    if setup == "Collapse and cure":
        return preset("collapse", **knobs)
    params = {k: v for k, v in result.scenario_params.items() if k != "step"}
    return TrainConfig(model=result.config, scenario=result.scenario, scenario_params=params,
                       tokens=min(result.trace.tokens, MAX_SIDEBAR_TOKENS), seed=result.config.seed, **knobs)


def _describe(cfg) -> str:
    return f"D={cfg.d_model}, H={cfg.d_expert}, E={cfg.n_experts}, K={cfg.top_k}, router={cfg.router}"


def _knobs() -> dict:
    ss = st.session_state
    return dict(balance=ss["live_balance"], aux_coef=ss["live_aux_coef"], z_coef=ss["live_z_coef"],
                bias_rate=ss["live_bias_rate"])


def _reset(result: RunResult) -> None:
    ss = st.session_state
    try:
        cfg = train_config(ss["live_setup"], result, **_knobs())
        trainer = Trainer(cfg)  # refuses (BudgetError) a layer whose training would exceed the memory budget
    except ValueError as err:
        ss[state.LIVE_ERROR] = str(err)
        ss.pop(state.TRAINER, None)  # never keep training a layer the sidebar no longer shows
        return
    ss[state.TRAINER] = trainer
    ss[state.LIVE_FIGURES] = {}
    ss[state.LIVE_SIGNATURE] = (ss["live_setup"], result.config if ss["live_setup"] == "Sidebar layer" else None)
    ss[state.LIVE_PLAYING] = False
    ss.pop(state.LIVE_ERROR, None)


def _apply_knobs() -> None:
    """Balancing switched while running: the trainer keeps its weights and history."""
    ss = st.session_state
    try:
        ss[state.TRAINER].set_balance(**_knobs())
        ss[state.LIVE_SWITCHED] = True  # this rerun only redraws: the switch shows at once, the next tick steps
        ss.pop(state.LIVE_ERROR, None)
    except ValueError as err:
        ss[state.LIVE_ERROR] = str(err)
        ss[state.LIVE_PLAYING] = False


def _step(n: int) -> None:
    try:
        st.session_state[state.TRAINER].run(n)
    except (ValueError, RuntimeError) as err:
        st.session_state[state.LIVE_ERROR] = f"training stopped: {err}"
        st.session_state[state.LIVE_PLAYING] = False


def _controls(result: RunResult) -> None:
    ss = st.session_state
    c1, c2 = st.columns([1, 2])
    c1.selectbox("Setup", SETUPS, key="live_setup", on_change=_reset, args=(result,),
                 help="Collapse and cure: a small layer and task built to collapse without balancing. "
                      "Sidebar layer: train the layer configured in the sidebar (Reset picks up sidebar changes).")
    c2.slider("steps per tick", 1, 50, key="live_speed",
              help=f"Optimiser steps taken every {TICK_SECONDS} s while playing.")
    b1, b2, b3, _ = st.columns([1, 1, 1, 3])
    if b1.button("Pause" if ss[state.LIVE_PLAYING] else "Play", key="live_play", type="primary", width="stretch"):
        ss[state.LIVE_PLAYING] = not ss[state.LIVE_PLAYING]
        st.rerun()
    if b2.button("Step", key="live_step", width="stretch", disabled=ss[state.LIVE_PLAYING]):
        _step(1)
    b3.button("Reset", key="live_reset", width="stretch", on_click=_reset, args=(result,))


def _balancing() -> None:
    """Inside the panel fragment: a change reruns only the panel, and the very next step uses it."""
    st.radio("Balancing", BALANCES, key="live_balance", horizontal=True, on_change=_apply_knobs,
             help="Switchable while running. " + " · ".join(f"{k}: {v}" for k, v in BALANCE_HELP.items()))
    k1, k2, k3 = st.columns(3)
    k1.number_input("aux_coef", 0.0, 10.0, key="live_aux_coef", step=0.01, format="%.3f", on_change=_apply_knobs,
                    help="Weight of the aux loss E·Σ f·P in the training loss (balance = aux).")
    k2.number_input("z_coef", 0.0, 1.0, key="live_z_coef", step=1e-3, format="%.4f", on_change=_apply_knobs,
                    help="Weight of the router z-loss (balance = zloss).")
    k3.number_input("bias rate", 0.0, 0.1, key="live_bias_rate", step=1e-3, format="%.4f", on_change=_apply_knobs,
                    help="γ in b_e += γ·sign(mean load − load_e) after each step (balance = bias).")


def _chart(key: str, history: pd.DataFrame, columns: list[tuple[str, float]], build: Callable[[], go.Figure]) -> None:
    """Draw a live chart from the session's kept figure, refreshed in place with the new history; built anew only
    when its traces or balancing switches change. New figures every tick (~0.5 MB with a full history) are cyclic
    garbage; what outlived the young collections waited for a rare full one, and the server's memory grew."""
    figures = st.session_state[state.LIVE_FIGURES]
    shape = ([column for column, _ in columns], balance_switches(history))
    if key in figures and figures[key][0] == shape:
        fig = refresh(figures[key][1], history, columns)
    else:
        fig = build()
        figures[key] = (shape, fig)
    st.plotly_chart(fig, width="stretch", key=key)


def _panel() -> None:
    """The live charts; while playing this fragment reruns every TICK_SECONDS and advances the trainer."""
    ss = st.session_state
    _balancing()
    trainer: Trainer = ss[state.TRAINER]
    switched = ss.pop(state.LIVE_SWITCHED, False)
    if ss[state.LIVE_PLAYING] and not switched:
        started = time.perf_counter()
        _step(ss["live_speed"])
        ss[state.LIVE_TICK_MS] = (time.perf_counter() - started) * 1e3
    if ss.get(state.LIVE_ERROR):
        st.error(ss[state.LIVE_ERROR])
    history = trainer.history_frame()
    row = trainer.last_row
    status = "playing" if ss[state.LIVE_PLAYING] else "paused"
    tick = f" · last tick {ss[state.LIVE_TICK_MS]:.0f} ms" if ss[state.LIVE_PLAYING] and state.LIVE_TICK_MS in ss else ""
    st.markdown(f"**step {trainer.step_count}** · {status} · balance = `{trainer.config.balance}`{tick}")
    if row is None:
        st.info("Press **Step** or **Play** to start training.")
        return
    m = st.columns(5)
    m[0].metric("task loss", f"{row['task_loss']:.4g}")
    m[1].metric("max/mean (this step)", f"{row['max_over_mean']:.3g}")
    m[2].metric("aux loss (this step)", f"{row['aux_loss']:.3g}")
    m[3].metric("dead experts (this step)", f"{round(row['dead_fraction'] * trainer.config.model.n_experts)}")
    saturation = row["router_saturation"]
    m[4].metric("router saturation", f"{saturation:.2f}" if saturation == saturation else "— (random router)")
    colors = expert_colors(trainer.config.model.n_experts)
    _chart("live_health", history, health_columns(), lambda: health_figure(history))
    st.caption(caption("task_loss", "aux_loss", "z_loss", "cv", "max_over_mean", "dropped_fraction", "dead_fraction"))
    c1, c2 = st.columns(2)
    with c1:
        _chart("live_share", history, load_share_columns(history), lambda: load_share_figure(history, colors))
        st.caption(caption("live_load_share"))
    with c2:
        _chart("live_bias", history, expert_bias_columns(history), lambda: expert_bias_figure(history, colors))
        st.caption(caption("expert_bias"))
    _chart("live_saturation", history, saturation_columns(), lambda: saturation_figure(history))
    st.caption(caption("router_saturation") + f"  \nHistory keeps the last {trainer.config.history} steps.")


def render(result: RunResult) -> None:
    ss = st.session_state
    st.subheader("Live")
    state.ensure({**state.live_defaults(), state.LIVE_PLAYING: False, state.LIVE_FIGURES: {}})  # drawn on its own
    st.caption(PRESET_HELP["collapse"] + " Try: Play with balancing *none* and watch max/mean climb; switch to "
               "*aux* to cure it while running, or pick *bias* and press Reset to see the load even out instead "
               "of collapsing. "
               "Playing continues while this view is open.")
    signature = (ss["live_setup"], result.config if ss["live_setup"] == "Sidebar layer" else None)
    if state.TRAINER not in ss or (ss.get(state.LIVE_SIGNATURE) != signature and ss[state.TRAINER].step_count == 0):
        _reset(result)  # nothing trained yet: follow the sidebar silently
    if state.TRAINER not in ss:
        st.error(ss.get(state.LIVE_ERROR, "could not build the trainer"))
        return
    if ss.get(state.LIVE_SIGNATURE) != signature:  # a sidebar nudge never discards a run: say so, offer the switch
        st.info(f"The sidebar's layer changed after this run started. Training continues on the layer it "
                f"started with ({_describe(ss[state.TRAINER].config.model)}); press **Reset** to train the "
                f"sidebar's layer ({_describe(result.config)}) from step 0.")
    _controls(result)
    st.fragment(_panel, run_every=TICK_SECONDS if ss[state.LIVE_PLAYING] else None)()
