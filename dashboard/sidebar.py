"""The Playground's sidebar: presets and every control of the synthetic layer, each with a help tooltip."""
from __future__ import annotations

import streamlit as st
import torch

from moe import available_devices
from moe.config import (ACTIVATIONS, CAPACITY_SCOPES, DROP_POLICIES, DTYPES, ROUTER_DTYPES, ROUTERS, SCORES,
                        SPARSITY_MODES)
from moe.scenarios import SCENARIO_HELP, SCENARIOS

from dashboard import state
from dashboard.limits import D_EXPERT_OPTIONS, D_MODEL_OPTIONS, SEQ_OPTIONS, divisors, sanitize
from dashboard.links import LABELLED_SCENARIOS
from dashboard.presets import CONTROL_DEFAULTS, PRESETS, preset_values

# The page's results live in a fragment with this key. Knobs that only change values (no other widget
# depends on them) rerun just that fragment: the sidebar is not redrawn. Knobs that change other widgets
# (preset, n_experts, dropless, hot expert, scenario, tokens) and structural knobs rerun the whole app.
RESULTS_FRAGMENT = "results"


def redraw_results() -> None:
    """on_change of a value-only knob: rerun only the results fragment (st.rerun with a fragment key)."""
    st.rerun(RESULTS_FRAGMENT)


def current_values() -> dict:
    """Every control's value, from session state (the widgets' keys)."""
    return {key: st.session_state[key] for key in CONTROL_DEFAULTS}


def _apply_preset() -> None:
    name = st.session_state[state.PRESET]
    if name == "Custom":
        return
    values, _ = sanitize(preset_values(name), available_devices())
    for key, value in values.items():
        st.session_state[key] = value


def changed_from_preset(name: str) -> list[str]:
    """The controls whose value differs from the preset's (none for Custom): the page says "modified"."""
    if name == "Custom":
        return []
    values, _ = sanitize(preset_values(name), available_devices())
    return [key for key, value in values.items() if st.session_state.get(key, value) != value]


def _clamp_after_experts() -> None:
    """n_experts changed: clamp top_k, the hot expert and n_group before their widgets render."""
    ss = st.session_state
    ss["top_k"] = max(1, min(ss["top_k"], ss["n_experts"]))
    if ss["hot_expert"] >= ss["n_experts"]:
        ss["hot_expert"] = -1
    if ss["n_experts"] % ss["n_group"]:
        ss["n_group"] = max(d for d in divisors(ss["n_experts"]) if d <= ss["n_group"])


def _device_label(device: str) -> str:
    if device.startswith("cuda:"):
        return f"{device} ({torch.cuda.get_device_name(int(device[5:]))})"
    return {"cpu": "cpu", "mps": "mps (Apple GPU)"}.get(device, device)


def render_sidebar() -> None:
    """Draw every control (each writes its value to st.session_state under the engine's name)."""
    ss = st.session_state
    sb = st.sidebar
    sb.selectbox("Preset", list(PRESETS), key=state.PRESET, on_change=_apply_preset,
                 help="Load a teaching scenario. Every control stays editable afterwards.")
    preset = PRESETS[ss[state.PRESET]]
    sb.button("Reset to preset", key="reset_preset", on_click=_apply_preset, disabled=ss[state.PRESET] == "Custom",
              help="Set every control back to this preset's values (the page says when they differ).")
    sb.caption(f"**Look for:** {preset.look_for}  \n**Why:** {preset.why}")

    sb.subheader("Dimensions")
    sb.select_slider("d_model", D_MODEL_OPTIONS, key="d_model", help="D: width of each token vector.")
    sb.select_slider("d_expert", D_EXPERT_OPTIONS, key="d_expert",
                     help="H: hidden width of each SwiGLU expert (the FFN's intermediate size).")
    sb.slider("n_experts", 1, 256, key="n_experts", on_change=_clamp_after_experts,
              help="E: number of experts in the pool.")
    if ss["n_experts"] > 1:
        sb.slider("top_k", 1, ss["n_experts"], key="top_k", on_change=redraw_results,
                  help="K: experts per token (for expert_choice, the average number of experts per token).")
    else:
        ss["top_k"] = 1
        sb.caption("top_k = 1 (a single expert serves every token)")
    c1, c2 = sb.columns(2)
    c1.number_input("batch", 1, 64, key="batch", help="B: sequences per forward. Tokens T = B × S.")
    c2.select_slider("seq_len", SEQ_OPTIONS, key="seq_len", help="S: tokens per sequence.")
    sb.caption(f"T = {ss['batch'] * ss['seq_len']:,} tokens")

    _routing_controls(sb, ss)
    _group_controls(sb, ss)
    _expert_controls(sb, ss)
    _input_controls(sb, ss)

    sb.subheader("Device")
    sb.selectbox("device", available_devices(), key="device", format_func=_device_label,
                 help="Where the forward runs. Only devices present on this machine are listed.")
    sb.selectbox("dtype", list(DTYPES), key="dtype", help="Expert weights and activations dtype.")
    sb.selectbox("router_dtype", list(ROUTER_DTYPES), key="router_dtype",
                 help="'float32' runs the router in fp32 whatever the experts use; 'model' uses the expert "
                      "dtype, which can flip close top-k decisions.")


def _routing_controls(sb, ss) -> None:
    sb.subheader("Routing")
    sb.selectbox("router", list(ROUTERS), key="router", on_change=redraw_results,
                 help="topk: tokens pick their K best experts. expert_choice: each expert picks its C best "
                      "tokens. hash: expert from the token index (no learning). random: uniform random logits.")
    sb.radio("score", list(SCORES), key="score", on_change=redraw_results, horizontal=True,
             help="softmax over experts (Mixtral), or independent sigmoids (DeepSeek-V3).")
    sb.slider("temperature", 0.05, 10.0, key="temperature", on_change=redraw_results, step=0.05,
              help="Logits are divided by it: high flattens the probabilities, low sharpens them.")
    sb.checkbox("normalize_topk", key="normalize_topk", on_change=redraw_results,
                help="Divide the chosen experts' scores by their sum (Mixtral). Off: raw scores (Switch, Qwen).")
    sb.number_input("routed_scaling_factor", 0.1, 10.0, key="routed_scaling_factor", on_change=redraw_results, step=0.1,
                    help="Multiplies every combine weight (DeepSeek-V3 uses 2.5).")
    sb.checkbox("dropless", key="dropless", help="No capacity limit: every routed token is served.")
    sb.slider("capacity_factor", 0.1, 4.0, key="capacity_factor", on_change=redraw_results, step=0.05,
              disabled=ss["dropless"],
              help="Capacity C = ceil(capacity_factor · T · K / E) tokens per expert; the rest are dropped.")
    sb.radio("drop_policy", list(DROP_POLICIES), key="drop_policy", on_change=redraw_results, horizontal=True,
             disabled=ss["dropless"],
             help="position: an expert keeps its first C tokens in token order. probs: it keeps the C "
                  "tokens with the highest router probability.")
    sb.radio("capacity_scope", list(CAPACITY_SCOPES), key="capacity_scope", on_change=redraw_results, horizontal=True,
             disabled=ss["dropless"],
             help="batch: C counts over all B·S tokens of the forward. sequence (Switch Transformers): C = "
                  "ceil(capacity_factor · S · K / E) applies to each sequence of S tokens separately, which "
                  "changes who is dropped.")
    sb.slider("noise_std", 0.0, 3.0, key="noise_std", on_change=redraw_results, step=0.05,
              help="Adds N(0, σ²) to the logits (training-style noisy gating), seeded.")
    sb.slider("jitter_eps", 0.0, 0.5, key="jitter_eps", on_change=redraw_results, step=0.01,
              help="Multiplies the router input by U(1−ε, 1+ε) (Switch jitter), seeded.")
    sb.selectbox("hot expert", [-1, *range(ss["n_experts"])], key="hot_expert",
                 format_func=lambda e: "none" if e == -1 else f"expert {e}",
                 help="Make one expert hot: its logit gets the bias below (changes probabilities).")
    sb.slider("logit_bias (hot expert)", -10.0, 10.0, key="hot_bias", on_change=redraw_results, step=0.1,
              disabled=ss["hot_expert"] < 0,
              help="Added to the hot expert's logit before the softmax/sigmoid.")
    sb.slider("logit_bias spread", 0.0, 5.0, key="bias_spread", on_change=redraw_results, step=0.1,
              help="Adds a random N(0, σ²) logit bias to every expert (seeded): graded imbalance.")
    sb.slider("expert_bias (hot expert)", -2.0, 2.0, key="expert_bias_hot", on_change=redraw_results, step=0.05,
              disabled=ss["hot_expert"] < 0,
              help="DeepSeek-V3's aux-loss-free bias on the hot expert: steers selection only, never the weights.")
    sb.slider("expert_bias spread", 0.0, 1.0, key="expert_bias_spread", on_change=redraw_results, step=0.01,
              help="A random N(0, σ²) selection-only bias on every expert (seeded).")


def _after_groups() -> None:
    """n_group changed: topk_group above it is lowered (a full rerun, so its widget shows it), else results only."""
    ss = st.session_state
    if ss["topk_group"] > ss["n_group"]:
        ss["topk_group"] = ss["n_group"]
        return
    redraw_results()


def _group_controls(sb, ss) -> None:
    sb.caption("**Group-limited routing** (DeepSeek-V3)")
    sb.selectbox("n_group", divisors(ss["n_experts"]), key="n_group", on_change=_after_groups,
                 help="Experts are split into n_group equal contiguous groups; a group's score is the sum of its "
                      "top-2 selection scores (score + expert_bias). Only the topk_group best groups may be "
                      "chosen, then top-k within them. 1 = no groups. Must divide n_experts; needs router topk.")
    sb.number_input("topk_group", 1, 256, key="topk_group", on_change=redraw_results,
                    help="How many groups each token may use (at most n_group). They must hold at least top_k "
                         "experts: topk_group · n_experts / n_group ≥ top_k.")


def _clear_shared() -> None:
    """shared_experts changed: with none left, d_shared and shared_gate go back to their defaults."""
    ss = st.session_state
    if ss["shared_experts"] == 0:
        ss["d_shared"], ss["shared_gate"] = CONTROL_DEFAULTS["d_shared"], CONTROL_DEFAULTS["shared_gate"]


def _expert_controls(sb, ss) -> None:
    """Expert variants and shared experts. gated, expert_biases and the shared_* knobs fix the weights, so
    changing them reruns the whole app (a new cached layer); the others only rerun the results."""
    sb.subheader("Experts")
    sb.selectbox("activation", list(ACTIVATIONS), key="activation", on_change=redraw_results,
                 help="silu (Mixtral, DeepSeek, Qwen), gelu, relu (Switch), or gpt_oss: "
                      "(clamp(up, ±limit) + 1) · g·σ(1.702·g), g = clamp(gate, max=limit). "
                      "The shared experts use it too.")
    sb.checkbox("gated", key="gated",
                help="On: h = act(W_gate x) ⊙ (W_up x) (SwiGLU). Off: h = act(W_up x), no W_gate (Switch's "
                     "ReLU FFN). gpt_oss needs it on. Changes the weights.")
    sb.checkbox("expert_biases", key="expert_biases",
                help="Bias terms in every expert's three projections (GPT-OSS). Changes the weights.")
    sb.slider("swiglu_limit", 0.5, 20.0, key="swiglu_limit", on_change=redraw_results, step=0.5,
              help="The gpt_oss clamp: gate ≤ limit, |up| ≤ limit (GPT-OSS uses 7). Read only by "
                   "activation gpt_oss.")
    sb.number_input("shared_experts", 0, 8, key="shared_experts", on_change=_clear_shared,
                    help="Always-on shared experts (DeepSeek-V3: 1; Qwen2-MoE: one wide one): a dense FFN every "
                         "token goes through, added to the routed output. 0 = none. Changes the weights.")
    none = ss["shared_experts"] == 0
    sb.number_input("d_shared", 0, 8192, key="d_shared", disabled=none, step=64,
                    help="Hidden width of the shared FFN; 0 = shared_experts × d_expert. Changes the weights.")
    sb.checkbox("shared_gate", key="shared_gate", disabled=none,
                help="Qwen2-MoE: σ(x·w) scales the shared output per token (a learned gate). Changes the weights.")
    if not none:
        width = ss["d_shared"] or ss["shared_experts"] * ss["d_expert"]
        sb.caption(f"shared FFN width Hs = {width:,}" + ("" if ss["d_shared"] else
                                                        f" (shared_experts × d_expert = {ss['shared_experts']} × {ss['d_expert']:,})"))
    sb.radio("sparsity_mode", list(SPARSITY_MODES), key="sparsity_mode", on_change=redraw_results, horizontal=True,
             help="How activation_sparsity counts a hidden unit as near zero: absolute |h| < 0.01, or relative "
                  "|h| ≤ 0.01 · rms of the token's hidden row (scale-free).")


def _input_controls(sb, ss) -> None:
    sb.subheader("Input")
    sb.selectbox("scenario", list(SCENARIOS), key="scenario", help=SCENARIO_HELP.get(ss["scenario"]))
    sb.caption(SCENARIO_HELP.get(ss["scenario"], ""))
    labelled = ss["scenario"] in LABELLED_SCENARIOS
    sb.slider("topics", 1, 32, key="n_clusters", on_change=redraw_results, disabled=not labelled,
              help="Number of cluster centres (topics) the tokens are drawn around.")
    sb.slider("skew", 0.0, 3.0, key="skew", on_change=redraw_results, step=0.1, disabled=ss["scenario"] != "clusters",
              help="Topic sizes ∝ exp(−skew · i): 0 gives equal topics, larger makes topic 0 dominate.")
    sb.slider("spread", 0.0, 2.0, key="spread", on_change=redraw_results, step=0.05, disabled=not labelled,
              help="Noise around each topic centre.")
    sb.slider("drift step", 0, 1000, key="drift_step", on_change=redraw_results, disabled=ss["scenario"] != "drifting",
              help="Time in the drifting mixture: topic proportions rotate as it grows.")
    sb.number_input("seed", 0, 2 ** 31 - 1, key="seed", on_change=redraw_results,
                    help="Seeds the weights, the input and the noise.")
