"""Traces: open a routing trace recorded elsewhere (moe-scope Parquet, Megatron-LM JSONL), per step and layer."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import streamlit as st

from moe.trace_io import detect_format
from moe.trace_report import TraceSummary, summarize

from ..definitions import caption
from ..figures_parallel import plan_load_figure, trace_load_figure, trace_worst_figure
from ..result import RunResult
from ..state import quote

INTRO = ("Open routing decisions recorded by a training or serving run, without running the model: the page's "
         "**Trace (Parquet)** download or a file written by `moe.trace_io.TraceWriter`, or Megatron-LM's "
         "`router_trace_rank{R}.jsonl` (`--moe-routing-trace-path`). The file is read in a stream: a large trace "
         "is best opened by its path on the server (an upload is held in memory by Streamlit, 200 MB at most). "
         "Headless: `python -m moe trace-report FILE`.")


def render(result: RunResult | None) -> None:
    st.subheader("Routing traces")
    st.caption(INTRO)
    source = st.radio("Source", ["Upload", "Path on the server"], horizontal=True, key="trace_source")
    c1, c2, c3 = st.columns(3)
    n_experts = c1.number_input("Experts (E), Megatron traces", 1, 65536, 8 if result is None else
                                result.config.n_experts, key="trace_experts",
                                help="A Megatron-LM trace does not record the expert count; a moe-scope trace does "
                                     "(this value is then ignored).")
    n_layers = c2.number_input("Expected MoE layers (0: no check)", 0, 10000, 0, key="trace_layers")
    score = c3.selectbox("Router score", ["softmax", "sigmoid"], key="trace_score",
                         help="how the recorded logits became probabilities (aux loss, confidence)")
    if source == "Upload":
        upload = st.file_uploader("Trace file", type=["parquet", "jsonl", "json"], key="trace_file")
        if upload is None:
            st.caption("Choose a file to open.")
            return
        key = ("upload", upload.file_id, int(n_experts), int(n_layers), score)
    else:
        path = st.text_input("Path of the trace file on the server", key="trace_path").strip()
        if not path:
            st.caption("Type a path to open.")
            return
        upload, key = None, ("path", path, int(n_experts), int(n_layers), score)
    if st.session_state.get("trace_view", {}).get("key") != key:
        opened = _open(upload, key[1], int(n_experts), int(n_layers) or None, score)
        if opened is None:
            return
        st.session_state["trace_view"] = {"key": key, "summary": opened}
    _draw(st.session_state["trace_view"]["summary"])


def _open(upload, path: str, n_experts: int, n_layers: int | None, score: str) -> TraceSummary | None:
    """Read the file with a progress bar; a bad file is one clear message, never a traceback."""
    bar = st.progress(0.0, text="reading the trace…")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if upload is not None:  # summarize() reads a path: copy the upload in 1 MiB chunks
                path = os.path.join(tmp, os.path.basename(upload.name) or "trace")
                with open(path, "wb") as f:
                    shutil.copyfileobj(upload, f, 1 << 20)
            elif not os.path.isfile(path):
                raise ValueError(f"no file at {quote(path)}; give the path of a trace file on the server")
            experts = n_experts if detect_format(path) == "megatron" else None
            summary = summarize(path, n_experts=experts, n_layers=n_layers, score=score,
                                progress=lambda f: bar.progress(min(f, 1.0), text=f"reading the trace… {f:.0%}"))
    except (ValueError, OSError, RuntimeError, MemoryError) as err:
        bar.empty()
        shown = quote(upload.name if upload is not None else path)
        st.error(f"This trace cannot be opened: {str(err).replace(repr(path), shown)}", icon="⚠️")
        return None
    bar.empty()
    return summary


def _draw(s: TraceSummary) -> None:
    worst = s.worst()
    cols = st.columns(4)
    cols[0].metric("Steps", len(s.steps))
    cols[1].metric("MoE layers", len(s.layers))
    cols[2].metric("Records", s.records, help=f"{s.skipped_empty} empty records skipped" if s.skipped_empty else None)
    cols[3].metric("Worst (step, layer)", f"{worst['step']}, {worst['layer']}",
                   f"max/mean {worst['max_over_mean']:.3f}", delta_color="off")
    st.caption(f"{s.source} trace · E={s.n_experts} · K={s.top_k} · logits "
               f"{'recorded' if s.has_logits else 'absent (probability-side numbers blank)'}")
    st.plotly_chart(trace_worst_figure(s.rows, s.layers), width="stretch", key="trace_worst_chart")
    st.caption(caption("trace_max_over_mean"))
    layer = st.selectbox("Layer", s.layers, index=s.layers.index(worst["layer"]), key="trace_layer")
    st.plotly_chart(trace_load_figure(s.load[layer], s.steps, layer,
                                      worst["step"] if layer == worst["layer"] else None),
                    width="stretch", key="trace_load_chart")
    st.caption(caption("trace_load") + ("" if s.has_logits else "  \n" + caption("trace_probability_side")))
    st.dataframe(s.rows[s.rows["layer"] == layer], hide_index=True, height=200)
    _plan(s, layer)


def _plan(s: TraceSummary, layer: str) -> None:
    st.markdown("**Plan from this trace**")
    c1, c2, c3 = st.columns(3)
    W = c1.slider("Ranks (W)", 2, 8, 2, key="trace_world")
    R = c2.number_input("Redundant slots (R)", 0, s.n_experts * 7, W, key="trace_slots")
    scope = c3.selectbox("Load of", ["all layers", f"layer {layer}"], key="trace_plan_scope")
    try:
        doc = s.plan(W, int(R), None if scope == "all layers" else layer)
    except ValueError as err:
        st.error(f"No plan: {err}", icon="⚠️")
        return
    if doc["kept_current"]:
        st.info(f"The planner {doc['note']}.")
    left, right = st.columns(2)
    left.plotly_chart(plan_load_figure(doc), width="stretch", key="trace_plan_chart")
    right.metric("straggler (predicted), planned", f"{doc['planned_straggler']:.3f}")
    if "contiguous_straggler" in doc:
        right.metric("straggler (predicted), contiguous", f"{doc['contiguous_straggler']:.3f}")
    right.caption("Placement: " + "; ".join(f"rank {r}: {' '.join(map(str, e))}"
                                            for r, e in enumerate(doc["placement"]["ranks"])))
    plan_file = {**doc["placement"], "load": doc["load"], "predicted_load": doc["planned_load"]}
    right.download_button("Plan (JSON, for ep-report --placement)", json.dumps(plan_file, indent=1),
                          file_name="plan.json", mime="application/json", on_click="ignore", key="trace_plan_file")
    st.caption(caption("trace_plan"))
