"""Model: every MoE layer of a trained language model routing a text you type.

Thin view: widgets → `analyse` (cached: load once, one instrumented forward per text) → figure builders.
The sidebar's synthetic layer is not used here.
"""
from __future__ import annotations

import math
import pathlib

import pandas as pd
import streamlit as st

from moe.definitions import DEFINITIONS
from moe.hf.load import BUNDLED_MODELS, read_training_nmi
from moe.hf.tables import LAYER_COLUMNS, highest_aux_layer
from moe.hf.windows import window_stride
from moe.memory import out_of_memory
from moe.roots import resolve_allowed

from dashboard import loaders, state
from dashboard.figures.colors import expert_colors
from dashboard.figures.model import (WHITESPACE_MARKS, flow_figure, load_heatmap_figure, nmi_figure, token_html,
                                     token_layer_grid_figure, token_loss_figure)
from dashboard.model_link import (BUNDLE_CHOICES, EXAMPLES, LINK_DIR_KEY, MAX_TOKENS_LIMIT, bundle_choice,
                                  text_link_note, to_link)
from dashboard.quoting import md_text, quote
from dashboard.views import model_bias, model_cf

POOLED_LABEL = "Pooled aux (all layers, same scale as the table)"
HF_LABEL = "HF load_balancing_loss (transformers' own number)"
MAX_TEXT_CHARS = 100_000  # longer texts are cut before tokenising (no token is longer than 24 characters here)
POOLING_NOTE = ("Pooling sums the router statistics of all layers before multiplying f by P, so a layer that sends "
                "everything to one expert is averaged with the healthy ones and the pooled number barely moves (a "
                "test collapses one of 4 layers: that layer goes from 1.1 to 4.0, the pooled aux from 1.06 to "
                "1.16); read the per-layer column instead.")
# A lone surrogate (half of a UTF-16 pair, e.g. from a broken paste) cannot leave the browser: Streamlit's frontend
# writes it into the widget message as invalid UTF-8 and the server drops the whole message ("Error deserializing
# back message ... String field had bad UTF-8") before this page runs, so the edit would be lost without a word.
# This listener runs first (capture phase) and makes the text box's value well-formed, each lone surrogate
# becoming U+FFFD, which the page then counts (tests/test_browser_model_text.py).
WELL_FORMED_JS = """<script>
(() => {
  const page = window.parent;  // the app's window, whether this runs in it or in a frame of it
  if (page.moeWellFormedText) return;
  page.moeWellFormedText = true;
  page.document.addEventListener("input", (event) => {
    const box = event.target, view = box.ownerDocument.defaultView;
    if (box instanceof view.HTMLTextAreaElement && !box.value.isWellFormed()) {
      const setValue = Object.getOwnPropertyDescriptor(view.HTMLTextAreaElement.prototype, "value").set;
      setValue.call(box, box.value.toWellFormed());  // past React's value tracker: the widget sends this value
    }
  }, true);
})();
</script>"""
VOCABULARY_MARKS = [(WHITESPACE_MARKS[" "], "space"), (WHITESPACE_MARKS["\t"], "tab"),
                    (WHITESPACE_MARKS["\n"], "newline")]



def _init() -> None:
    state.ensure(state.model_defaults())  # drawn on its own (a test) the app's state.init() has not run
    for note in st.session_state.get(state.MODEL_LINK_NOTES, []):
        st.warning(note)


def _use_example() -> None:
    st.session_state["model_text"] = EXAMPLES[st.session_state["model_example"]]


def _use_bundled() -> None:
    name = st.session_state["model_bundle"]
    if name in BUNDLED_MODELS:
        st.session_state["model_path"] = BUNDLED_MODELS[name]


def _inputs() -> tuple[str, str, int]:
    ss = st.session_state
    ss["model_bundle"] = bundle_choice(ss["model_path"])  # the directory decides; the box follows it
    left, right = st.columns([1, 2])
    left.selectbox("Bundled model", BUNDLE_CHOICES, key="model_bundle", on_change=_use_bundled,
                   help="pydoc-mixtral: softmax router balanced by an aux loss; pydoc-deepseek: sigmoid router "
                        "balanced by an expert bias (no aux loss), groups, a shared expert. Each directory's "
                        "README.md is its model card. For another directory, type its path to the right.")
    right.text_input("Model directory (local files only)", key="model_path")
    left, right = st.columns([3, 1])
    left.selectbox("Example prompt", list(EXAMPLES), key="model_example", on_change=_use_example)
    right.number_input("Max tokens", min_value=1, max_value=MAX_TOKENS_LIMIT, step=64, key="model_max_tokens")
    st.text_area("Text", key="model_text", height=120)
    st.html(WELL_FORMED_JS, unsafe_allow_javascript=True)
    replaced = ss["model_text"].count("\ufffd")
    if replaced:
        st.info(f"The text holds {replaced} � (U+FFFD): each stands for a character that was not valid Unicode "
                "(half of a surrogate pair, or undecodable bytes), replaced as it was typed or pasted.")
    return ss["model_path"], ss["model_text"], int(ss["model_max_tokens"])


def _load_link_dir() -> None:
    st.session_state["model_path"] = st.session_state.pop(LINK_DIR_KEY)


def _drop_link_dir() -> None:
    st.session_state.pop(LINK_DIR_KEY, None)
    st.query_params.pop("mdir", None)


def _link_dir_waits() -> bool:
    """A model directory named by the link is shown quoted, with a Load button; nothing is loaded before the click."""
    pending = st.session_state.get(LINK_DIR_KEY)
    if pending is None:
        return False
    st.info(f"This link names the model directory {quote(pending)}. It is loaded only when you click Load, and "
            "only from the directories this server may open.")
    left, right = st.columns(2)
    left.button("Load", key="model_link_load", on_click=_load_link_dir)
    right.button("Keep the default model", key="model_link_keep", on_click=_drop_link_dir)
    return True


def _failure(err: Exception) -> str:
    """The one line for a failed load or forward, Markdown-escaped (it may hold a path or a tensor name)."""
    if isinstance(err, MemoryError):
        return out_of_memory("loading the model or routing the text")
    return md_text(str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}")


def render() -> None:
    """The Model page (its own inputs; the Playground's layer is not used here)."""
    _init()
    st.subheader("Model: every MoE layer of a trained language model")
    if _link_dir_waits():
        return
    path, text, max_tokens = _inputs()
    if note := text_link_note(st.session_state, EXAMPLES):
        st.caption(note)  # _sync_link leaves a long text out of the URL: say so, never silently
    try:
        path = str(resolve_allowed(path, "dir"))  # a path typed or linked: only under the server's roots
        if len(text) > MAX_TEXT_CHARS:
            st.warning(f"The text has {len(text):,} characters; routing the first {MAX_TEXT_CHARS:,} "
                       f"(then at most {max_tokens:,} tokens).")
            text = text[:MAX_TEXT_CHARS]
        with st.spinner(f"Loading {quote(pathlib.Path(path).name)} (local files only) and routing the text "
                        f"through every MoE layer…", show_time=True):
            view = loaders.analyse(path, text, max_tokens)
        st.session_state[state.MODEL_LAST] = view
    except Exception as err:  # never a traceback on the page: a message, and the last good result
        st.error(f"Could not route this text: {_failure(err)}", icon="⚠️")
        view = st.session_state.get(state.MODEL_LAST)
        if view is None:
            return
        st.info("Showing the last good result below.")
    if view["total"] > len(view["tokens"]):
        st.warning(f"The text has {view['total']:,} tokens; showing the first {len(view['tokens']):,} (max tokens).")
    _draw(view)
    model_cf.render(view, view["path"], view["text"], view["max_tokens"])
    _downloads(view)
    _sync_link()


def _sync_link() -> None:
    """The Model page's values, and only them, into the URL: the link restores this page."""
    query = to_link(st.session_state, state.model_defaults(), EXAMPLES)
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def _draw(view: dict) -> None:
    ss = st.session_state
    layers = view["layers"]
    if not 0 <= ss["model_layer"] < len(layers):  # from a link, or another model
        ss["model_layer"] = 0
    pos = ss["model_layer"]  # the slider below is keyed on it: its value for this run
    # Everything is built before the first element goes out, so the browser gets the view in one burst and
    # lays it out once, not once per chart as each arrives between two figure builds.
    colors = expert_colors(view["n_experts"])
    tokens_html = token_html(view["tokens"], view["top1"][pos].tolist(), colors)
    grid = token_layer_grid_figure(view["grid"], view["tokens"], colors)
    load = load_heatmap_figure(view["load"])
    flow_at = min(pos, len(layers) - 2)
    flow = flow_figure(view["flows"][flow_at], layers[flow_at], layers[flow_at + 1]) if len(layers) > 1 else None
    loss = token_loss_figure(view["loss"], view["tokens"], view["token_bytes"], view["context"])
    nmi_rows, nmi_note = _nmi_table(view)
    nmi = nmi_figure(nmi_rows)
    styled_table, highest = _styled_layer_table(view)
    bias = model_bias.figures(view)

    notes = f" · mapped: {view['notes']}" if view["notes"] else ""
    st.caption(f"{quote(view['name'])} ({view['family']}) · {len(layers)} MoE layers · "
               f"{view['n_experts']} experts · {len(view['tokens'])} tokens{notes}")
    st.caption(context_note(view["context"], view["windows"], len(view["tokens"])))
    if view["routing_only"]:
        st.warning(f"Layers {view['routing_only']} are traced from their router's output alone (the engine cannot "
                   "run that block exactly yet): routing numbers are exact, output-side numbers are blank.")
    st.select_slider("Layer", options=list(range(len(layers))), key="model_layer",
                     format_func=lambda i: f"layer {layers[i]}")
    st.markdown(tokens_html, unsafe_allow_html=True)
    st.caption("Each token's background is the colour of its top-1 expert at the chosen layer: its selected expert "
               "with the largest combine weight (the highest router probability for a softmax router; a biased "
               "router selects by score + bias, so its first pick is not always the heaviest); hover a token for the "
               "expert number. A long text scrolls inside its box.")
    st.plotly_chart(grid, width="stretch", key="model_grid")
    st.plotly_chart(load, width="stretch", key="model_load")
    st.caption("Load share of expert e at a layer: `served_e / Σ served` over this text's tokens; 1/E is balanced.")
    model_bias.render(bias, view["score"])
    _layer_table(view, styled_table, highest)
    _vocabulary(view, layers[pos])
    if flow is not None:
        st.plotly_chart(flow, width="stretch", key="model_flow")
        st.caption("Row i: where the tokens whose top-1 expert is i at this layer go at the next MoE layer, "
                   "`P(top-1 at l+1 = j | top-1 at l = i)`; an empty row means no token had expert i on top.")
    st.plotly_chart(loss, width="stretch", key="model_loss")
    st.caption("Next-token loss of token s+1: `−log₂ p(token_{s+1} | tokens ≤ s)` in bits, from the model's "
               f"logits; the line: {DEFINITIONS['rolling_loss']} Title: {DEFINITIONS['text_bits_per_byte']}"
               + (f" The dashed line marks position {view['context']}, the model's context."
                  if view["context"] is not None and len(view["tokens"]) > view["context"] else ""))
    st.plotly_chart(nmi, width="stretch", key="model_nmi")
    st.caption("NMI between a token's top-1 expert and the class of the first character of the text it stands "
               "for (a SentencePiece `▁cat` stands for \" cat\": space; letter, digit, space, newline, punctuation, "
               "other; a byte of a non-ASCII character: other): `2·I(expert; class) / (H(expert) + H(class))`, "
               "0 = unrelated, 1 = the expert names the class. 'held-out (training)' and 'at initialisation' come from "
               "training.json when the model directory has one." + (f" {nmi_note}." if nmi_note else ""))


def context_note(context: int | None, windows: int, n_tokens: int) -> str:
    """The model's context, and how the text was read: in one forward, or in sliding windows."""
    if context is None:
        return (f"The model's context is not recorded: the {n_tokens} tokens were read in one forward, and "
                "positions past the length it was trained on are not trustworthy.")
    note = (f"Context {context} tokens: the model's trained length (or its max_position_embeddings when "
            f"shorter); no forward reads more.")
    if windows > 1:
        note += (f" Read in {windows} windows of {context} tokens (stride {window_stride(context)}): each token's "
                 "routing and loss come from the window where it has the most left context.")
    return note


def _highlight(view: dict) -> tuple[str, str]:
    """(the column whose highest layer is highlighted, its words): aux for a softmax router; for a sigmoid router the
    aux hardly moves with the load (definitions aux_loss_sigmoid), so max/mean."""
    return ("max_over_mean", "highest max/mean") if view["score"] == "sigmoid" else ("aux_loss", "highest-aux")


def _styled_layer_table(view: dict):
    """(the per-layer table sorted as the controls ask, the highlighted layer's row (_highlight) marked; that layer)."""
    ss = st.session_state
    table = view["table"]
    column = _highlight(view)[0]
    highest, flag = highest_aux_layer(table, column), "highest_aux" if column == "aux_loss" else f"highest_{column}"
    shown = table.assign(**{flag: table["layer"] == highest}).sort_values(
        ss["model_sort"], ascending=not ss["model_sort_desc"], kind="stable", na_position="last")
    styled = shown.style.apply(lambda row: ["background-color: #f8d7da" if row[flag] else ""] * len(row),
                               axis=1).format(precision=3)
    return styled, highest


def _layer_table(view: dict, styled, highest: int) -> None:
    table = view["table"]
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.selectbox("Sort layers by", LAYER_COLUMNS, key="model_sort")
    right.toggle("Highest first", key="model_sort_desc")
    # A static table, sorted by the two controls above (they are in the link too): it redraws with the text in
    # a fraction of a data grid's time (benchmarks/bench_browser.py).
    st.table(styled, hide_index=True)
    column, words = _highlight(view)
    st.caption(f"Per-layer routing health on this text; {words} layer highlighted: layer {highest}. "
               "aux = `E·Σ_e f_e·P_e` (Switch scale, 1 = balanced), CV = std/mean of demand, max/mean, dead = "
               "share of experts with no token, load entropy = `exp(H(load share))/E`, confidence = mean "
               "`min(p1/p2, 100)`, z-loss = mean `logsumexp(logits)²`.")
    k, pooled = view["top_k"], view["pooled_aux"]
    if view["score"] == "sigmoid":
        st.metric(POOLED_LABEL, f"{pooled:.3f}", help=DEFINITIONS["pooled_aux"])
        st.caption(f"**aux loss with a sigmoid router:** {DEFINITIONS['aux_loss_sigmoid']} This model trains with no "
                   "aux loss (its router's bias balances it), and transformers' DeepSeek-V3 computes no "
                   "`load_balancing_loss`: the highlight follows max/mean instead.")
        return
    left, right = st.columns(2)
    left.metric(POOLED_LABEL, f"{pooled:.3f}", help=DEFINITIONS["pooled_aux"])
    hf = view["pooled_hf_aux"]
    right.metric(HF_LABEL, f"{hf:.3f}", help=DEFINITIONS["pooled_hf_aux"])
    why = ("this router chooses with its correction bias added" if view.get("bias") is not None else
           "this router's choice and that count part on ties")
    relation = (f"top_k ({k}) × the pooled aux" if math.isclose(hf, k * pooled, rel_tol=1e-9) else
                f"not top_k ({k}) × the pooled aux ({k * pooled:.3f}) here: transformers counts each token's top "
                f"{k} of the probabilities alone, and {why}")
    st.caption(f"Pooled aux (`E·Σ_e f̄_e·P̄_e`, the aux column's scale): {pooled:.3f}, while the highest-aux layer "
               f"({highest}) is at {float(table['aux_loss'].max()):.3f}. Hugging Face's `load_balancing_loss` is "
               f"{relation}. {POOLING_NOTE}")


def _vocabulary(view: dict, layer: int) -> None:
    # st.table, not st.dataframe: a static table redraws with the text; a data grid settles after the charts
    st.table(view["vocab"][layer], hide_index=True)
    marks = ", ".join(f"{mark} = {name}" for mark, name in VOCABULARY_MARKS)
    st.caption("An expert's vocabulary: the tokens whose top-1 expert it is at the chosen layer, most frequent first. "
               f"Whitespace is drawn as a symbol ({marks}); other characters that print nothing as escapes "
               "(`\\r`, `\\x00`). Tokens are counted by id: where two ids read alike (each byte of a multi-byte "
               "character reads �), the id follows (`� #195`).")


def _nmi_table(view: dict) -> tuple[pd.DataFrame, str | None]:
    """This text's NMI per layer, with training.json's when the directory has a usable one (else a note)."""
    nmi = pd.DataFrame({"layer": view["layers"], "this text": view["nmi"]})
    saved, note = read_training_nmi(view["path"], len(nmi))
    if saved:
        nmi["held-out (training)"] = saved["nmi_trained"]
        nmi["at initialisation"] = saved["nmi_init"]
    return nmi, note


def _downloads(view: dict) -> None:
    """Built on a click, from the shown result's model, text and max tokens (`exports`)."""
    args = (view["path"], view["text"], view["max_tokens"])
    a, b, c = st.columns(3)
    a.download_button("Per-layer per-expert CSV", lambda: loaders.model_exports(*args)["per_expert_csv"], "model_per_expert.csv",
                      "text/csv")
    b.download_button("Per-token routing CSV", lambda: loaders.model_exports(*args)["routing_csv"],
                      "model_routing.csv", "text/csv",
                      help="A row per (token, layer): position, token, layer, experts and weights (selection "
                           "order), and next_token_loss_bits = −log₂ p(token s+1 | tokens ≤ s), empty at the last "
                           "token.")
    c.download_button("Summary JSON", lambda: loaders.model_exports(*args)["summary_json"], "model_summary.json",
                      "application/json")
