"""Runs: open the routing data a training or serving run wrote (every format moe.traces.formats reads: a file, a
directory of rank files or a routing log directory), follow a log still being written, and the run's views."""
from __future__ import annotations

import os
import shutil
import tempfile

import streamlit as st

from moe.config import SCORES
from moe.jsonio import dumps
from moe.memory import BUDGET_ENV, budget_bytes, describe_bytes, describe_over
from moe.roots import OutsideRoots, resolve_allowed
from moe.traces.formats import FORMATS, detect
from moe.traces.opener import MEGATRON, PARTIAL_LOGITS, open_trace
from moe.traces.records import MAX_EXPERTS, TraceLimits
from moe.traces.store import is_log_dir
from moe.traces.log import ExpertsNeeded
from moe.traces.summary import N_EXPERTS_SOURCES, TraceSummary

from dashboard import state, trace_room
from dashboard.definitions import caption
from dashboard.exports import routing_log_zip
from dashboard.figures.parallel import plan_load_figure, trace_load_figure, trace_worst_figure
from dashboard.quoting import md_text, quote
from dashboard.result import RunResult
from dashboard.views import placement
from dashboard.views.run_charts import render_run
from dashboard.views.run_follow import follow

UPLOAD_TYPES = ["parquet", "jsonl", "json", "csv", "npz", "npy", "pt"]
INTRO = ("Open the routing a training or serving run recorded, without running the model: any format below, "
         "detected from the content. A file is read in a stream: a large one is best opened by its path on the "
         "server, and a directory (rank files read together, or a routing log) only by its path (an upload is one "
         "file, held in memory by Streamlit, 200 MB at most; a path only under the directories the server may "
         "open, see the README's *Files on the server*). A routing log still being written can be followed live. "
         "Headless: `python -m moe trace-report PATH` (`--follow` for a log being written).")
EXPERTS_HELP = ("The model's expert count, for a source that does not record it (a Megatron-LM trace without "
                "logits, per-token ids, plain counts). Leave this empty for a source that records it (a different "
                "count is refused). Never below the largest expert index in the file + 1.")
FOLLOW_HELP = ("Poll the routing log every second: a new step appears without a reload, and only the part files "
               "not read before are read. Per-token views need the log opened without Follow (the follower reads "
               "counts only).")
IDLE_HELP = "The run is marked idle when no new step arrived for this many seconds."
# Where the count came from: the engine's words, and for a typed count the page's own.
SOURCE_TEXT = {**N_EXPERTS_SOURCES, "given": "typed in **Experts (E)** above (the file does not record it)"}
# summarize() names the per-(token, expert) Parquet trace "parquet" (trace-report's JSON keeps that name).
FORMAT_ALIASES = {"parquet": "moe-scope-parquet"}


def render(result: RunResult | None) -> None:
    """The view reads its own expert count: the sidebar's configures the synthetic layer, not a file."""
    state.ensure(state.TRACE_DEFAULTS)  # drawn on its own (a test), the app's state.init() has not run
    st.subheader("Routing traces")
    st.caption(INTRO)
    with st.expander("Formats"):
        st.markdown("\n".join(f"- {md_text(text)}" for text in FORMATS.values()))
    source = st.radio("Source", ["Upload", "Path on the server"], horizontal=True, key="trace_source")
    c1, c2, c3 = st.columns(3)
    n_experts = c1.number_input("Experts (E)", 1, MAX_EXPERTS, step=1, key="trace_experts",
                                placeholder="from the file", help=EXPERTS_HELP)
    n_layers = c2.number_input("Expected MoE layers (0: no check)", 0, 10000, key="trace_layers")
    score = c3.selectbox("Router score", list(SCORES), key="trace_score",
                         help="how the recorded logits became probabilities (aux loss, confidence)")
    experts = None if n_experts is None else int(n_experts)
    if source == "Upload":
        upload = st.file_uploader("Trace file", type=UPLOAD_TYPES, key="trace_file")
        if upload is None:
            st.caption("Choose a file to open.")
            st.session_state.pop(state.TRACE_VIEW, None)  # a trace no longer shown is not kept (trace_room)
            return
        key = ("upload", upload.file_id, experts, int(n_layers), score)
    else:
        path = st.text_input("Path of the trace file or directory on the server", key="trace_path").strip()
        if not path:
            st.caption("Type a path to open.")
            st.session_state.pop(state.TRACE_VIEW, None)
            return
        if _followed(path, experts, int(n_layers) or None):
            return
        upload, key = None, ("path", path, experts, int(n_layers), score)
    if st.session_state.get(state.TRACE_VIEW, {}).get("key") != key:
        st.session_state.pop(state.TRACE_VIEW, None)  # the trace shown before is let go before this read
        opened = _open(upload, key[1], experts, int(n_layers) or None, score)
        if opened is None:
            return
        st.session_state[state.TRACE_VIEW] = {"key": key, "summary": opened}
    _draw(st.session_state[state.TRACE_VIEW]["summary"])


def _followed(path: str, n_experts: int | None, n_layers: int | None) -> bool:
    """A routing log directory offers Follow; when on, the follower's fragment draws the page (True)."""
    try:
        real = str(resolve_allowed(path, "dir"))
    except OutsideRoots:
        real = None  # a file, or refused: _open says why
    if real is None or not is_log_dir(real):
        st.session_state.pop(state.TRACE_FOLLOWER, None)  # a log followed before keeps nothing in the session
        return False
    c1, c2 = st.columns([1, 2])
    on = c1.toggle("Follow", key=state.TRACE_FOLLOW, help=FOLLOW_HELP)
    if not on:
        st.session_state.pop(state.TRACE_FOLLOWER, None)
        return False
    c2.number_input("Idle after (s)", 1.0, 86400.0, step=1.0, key=state.TRACE_IDLE_AFTER, help=IDLE_HELP)
    st.session_state.pop(state.TRACE_VIEW, None)  # the log as a file is let go before the follower reads it
    follow(real, n_experts, n_layers, lambda s: _draw(s, live=True))
    return True


def show() -> None:
    """The Runs page: recorded routing (a file, rank files or a routing log, followed live). Its link holds nothing:
    a file is opened by hand, never from a link."""
    st.query_params.clear()
    render(None)


def upload_limits(size: int, room: int | None = None) -> TraceLimits:
    """The caps of reading an upload of `size` bytes: Streamlit holds the upload in memory while it is read, so the
    read gets the memory budget (or the `room` trace_room leaves in it) less that size; ValueError when the upload
    takes over half the budget, or all the room."""
    budget = budget_bytes()
    if size > budget // 2:
        size_text, _, budget_text = describe_over(size, budget // 2, budget)
        raise ValueError(f"the upload takes {size_text}, over half the memory budget of "
                         f"{budget_text}, and Streamlit holds it in memory while it is read; open the file "
                         f"by its path on the server, or raise {BUDGET_ENV}")
    if room is not None and room <= size:
        raise ValueError(f"the upload takes {describe_bytes(size)}, and the pages open on this server leave "
                         f"{describe_bytes(room)} of the memory budget of {describe_bytes(budget)}; try again once "
                         f"some close, or raise {BUDGET_ENV}")
    return TraceLimits((budget if room is None else room) - size)


def _open(upload, path: str, n_experts: int | None, n_layers: int | None, score: str) -> TraceSummary | None:
    """Read the file with a progress bar; a bad file is one clear message, never a traceback."""
    bar = st.progress(0.0, text="reading the trace…")
    shown = quote(upload.name if upload is not None else path)  # as the visitor named it, never resolved
    key_path, limits, kept = path, None, 0
    try:
        with (trace_room.one_read(lambda: bar.progress(0.0, text=trace_room.WAITING)),
              tempfile.TemporaryDirectory() as tmp):
            space, kept = trace_room.room()  # the budget less what open pages keep
            if upload is not None:  # summarize() reads a path: copy the upload in 1 MiB chunks
                limits = upload_limits(upload.size, space)
                path = os.path.join(tmp, "upload")
                with open(path, "wb") as f:
                    shutil.copyfileobj(upload, f, 1 << 20)
            else:  # only under the server's roots; one message for outside and missing, the path not repeated
                path = str(resolve_allowed(path, "any"))
                limits = TraceLimits(space)
            summary = open_trace(path, n_experts=n_experts, n_layers=n_layers, score=score, limits=limits,
                                 progress=lambda f: bar.progress(min(f, 1.0), text=f"reading the trace… {f:.0%}"))
            summary.extra["format"] = detect(path)
            trace_room.hold(summary)  # before the next read starts: counted while a session keeps it
    except OutsideRoots as err:
        bar.empty()
        st.error(f"This trace cannot be opened: {err}", icon="⚠️")
        return None
    except ExpertsNeeded as err:
        bar.empty()
        st.warning(f"This file does not record how many experts the model has (a Megatron-LM trace without logits, "
                   f"vLLM's routed experts, …): type the model's expert count (Megatron's num_moe_experts, at least "
                   f"{err.at_least}) in **Experts (E)** above.", icon="✏️")
        return None
    except (ValueError, OSError, RuntimeError, MemoryError, ArithmeticError) as err:
        bar.empty()
        named = md_text(upload.name if upload is not None else key_path)  # a file inside: its path as typed
        # every other part as plain text: a message may name a file inside a directory (a rank file named
        # "**x** [a](http:…)" rendered as a link and an image the browser fetched)
        raw = str(err).replace(repr(path), "\0").replace(path, "\1")
        detail = md_text(raw).replace("\1", named).replace("\0", shown)
        if upload is not None and limits is not None and "budget" in detail:  # the budget less the upload
            detail += (f" (an upload is read within the budget less its own {describe_bytes(upload.size)}, which "
                       f"Streamlit holds in memory meanwhile; a file opened by its path on the server is not)")
        if kept and limits is not None and "budget" in detail:  # a read given the room
            detail += (f" (the pages open on this server keep {describe_bytes(kept)} of the budget: a read gets the "
                       f"rest)")
        st.error(f"This trace cannot be opened: {detail}", icon="⚠️")
        return None
    bar.empty()
    return summary


def _count_note(s: TraceSummary) -> None:
    """The source's format and metadata, which expert count the numbers use and where it came from; a hint when
    the file never reaches it."""
    st.caption(f"{_format_text(s)} · **E = {s.n_experts}**, {SOURCE_TEXT[s.n_experts_source]} · K={s.top_k} · "
               f"logits {'recorded' if s.has_logits else 'absent (probability-side numbers blank)'}")
    meta = dict(s.routing_log.meta) if s.routing_log is not None else {}
    partial = meta.get(PARTIAL_LOGITS) if s.source == MEGATRON else None  # our words on a Megatron-LM file with
    if isinstance(partial, str):                                          # logits on some records only; another
        st.info(md_text(meta.pop(PARTIAL_LOGITS)[:600]), icon="ℹ️")       # file's own "logits" stays its metadata
    if meta:  # values from the file: quoted, shortened
        st.caption("Metadata: " + "; ".join(f"{quote(k)} {_meta_value(v)}" for k, v in list(meta.items())[:12]))
    if s.n_experts_source == "given" and s.max_expert_id + 1 < s.n_experts:
        st.warning(f"The file's expert indices reach only {s.max_expert_id}: experts {s.max_expert_id + 1}..."
                   f"{s.n_experts - 1} never receive a token, and max/mean is measured over all E = {s.n_experts}. "
                   f"Check **Experts (E)** against the model's expert count.", icon="🔎")


def _idle_note(s: TraceSummary) -> None:
    idle = s.idle_layers()
    if idle:
        named = ", ".join(quote(name) for name in idle[:8]) + (f" and {len(idle) - 8} more" if len(idle) > 8 else "")
        st.info(f"{len(idle)} of {len(s.layers)} layers routed no token in this source ({named}): their dead "
                f"fraction of 1 means no tokens, not dead experts. SGLang's recorder keeps a row for every hidden "
                f"layer, so a dense layer (DeepSeek's first_k_dense_replace) reads this way.", icon="ℹ️")


def _format_text(s: TraceSummary) -> str:
    """The format's name (FORMATS, one source of truth); a routing log also names who wrote it (quoted if unknown)."""
    source = FORMAT_ALIASES.get(s.source, s.source)
    named = f"*{FORMATS[source]}*" if source in FORMATS else quote(s.source)
    if s.extra.get("format") == "moe-scope-log":
        return f"**{FORMATS['moe-scope-log']}**, written from {named}"
    return f"**{FORMATS[source]}**" if source in FORMATS else f"routing data from {named}"


def _meta_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{len(value)} items" + (f", first {quote(value[0])}" if value else "")
    return quote(value)


def _draw(s: TraceSummary, live: bool = False) -> None:
    worst = s.worst()
    cols = st.columns(4)
    cols[0].metric("Steps", len(s.steps))
    cols[1].metric("MoE layers", len(s.layers))
    cols[2].metric("Records", s.records, help=f"{s.skipped_empty} empty records skipped" if s.skipped_empty else None)
    cols[3].metric("Worst (step, layer)", f"{worst['step']}, {worst['layer']}",
                   f"max/mean {worst['max_over_mean']:.3f}", delta_color="off")
    _count_note(s)
    _idle_note(s)
    _nonfinite_note(s)
    st.plotly_chart(trace_worst_figure(s.rows, s.layers), width="stretch", key="trace_worst_chart")
    st.caption(caption("trace_max_over_mean"))
    layer = st.selectbox("Layer", s.layers, index=s.layers.index(worst["layer"]), key="trace_layer")
    st.plotly_chart(trace_load_figure(s.load[layer], s.steps, layer,
                                      worst["step"] if layer == worst["layer"] else None),
                    width="stretch", key="trace_load_chart")
    st.caption(caption("trace_load") + ("" if s.has_logits else "  \n" + caption("trace_probability_side")))
    st.dataframe(s.rows[s.rows["layer"] == layer], hide_index=True, height=200)
    render_run(s.log(), layer)
    st.download_button("Routing log (zip)", lambda: routing_log_zip(s.log()), file_name="routing-log.zip",
                       mime="application/zip", on_click="ignore", key="trace_log_file",
                       help="This run converted into a routing log directory (what trace-report --out DIR writes), "
                            "zipped: unzip it and open the directory here, or read it with pandas or DuckDB.")
    _plan(s, layer)
    if live:  # a replay per new step would hold the live view back
        st.info("**Placement** (should I enable EPLB?) is paused while following: switch Follow off to replay this "
                "run under each placement.", icon="⏸️")
    else:
        placement.render(s.log(), "runs")  # should I enable EPLB? this run replayed under each placement


def _nonfinite_note(s: TraceSummary) -> None:
    """Router logits that are not finite, per layer (definition "nonfinite"): reported, never hidden."""
    bad = {name: int(row["nonfinite"]) for name, row in s.pooled.items()
           if row.get("nonfinite") is not None and row["nonfinite"] > 0}  # NaN (no logits) compares False
    if bad:
        named = ", ".join(f"{quote(name)}: {n:,}" for name, n in list(bad.items())[:8])
        named += " …" if len(bad) > 8 else ""
        n = sum(bad.values())
        st.warning(f"{n:,} router logit{'' if n == 1 else 's'} of this trace {'is' if n == 1 else 'are'} not "
                   f"finite, in {len(bad)} "
                   f"layer{'s' if len(bad) > 1 else ''} ({named}). A −inf logit masks an expert and is handled; a "
                   f"NaN or +inf one leaves the aux loss and confidence of its (step, layer) blank, and its z-loss NaN "
                   f"or +inf (the mean of logsumexp², whatever the other logits).  \n"
                   f"{caption('nonfinite')}", icon="⚠️")


QUICK_MAX_W = 8  # the quick plan's largest W


def _plan(s: TraceSummary, layer: str) -> None:
    st.markdown("**Quick plan: one placement for the summed load** (moe.parallel.placement.plan, contiguous blocks as "
                "the current placement; the **Placement** section below replays each layer window by window)")
    c1, c2, c3 = st.columns(3)
    W = c1.slider("Ranks (W)", 2, QUICK_MAX_W, 2, key="trace_world")
    R = c2.number_input("Redundant slots (R)", 0, max(s.n_experts * 7, QUICK_MAX_W), W,  # the default W fits for
                        key="trace_slots")                                                # any E (E = 1: at W = 8)
    scope = c3.selectbox("Load of", ["all layers", f"layer {layer}"], key="trace_plan_scope")
    try:
        doc = s.plan(W, int(R), None if scope == "all layers" else layer)
    except ValueError as err:
        st.error(f"No plan: {err}", icon="⚠️")
        return
    if doc["kept_current"]:
        st.info(f"The planner {doc['note']}.")
    if s.recorded_map():
        st.caption(f"Compared with {doc['compared_with']}.")
    left, right = st.columns(2)
    left.plotly_chart(plan_load_figure(doc), width="stretch", key="trace_plan_chart")
    right.metric("straggler (predicted), planned", f"{doc['planned_straggler']:.3f}")
    if "contiguous_straggler" in doc:
        right.metric("straggler (predicted), contiguous", f"{doc['contiguous_straggler']:.3f}")
    right.caption("Placement: " + "; ".join(f"rank {r}: {' '.join(map(str, e))}"
                                            for r, e in enumerate(doc["placement"]["ranks"])))
    plan_file = {**doc["placement"], "load": doc["load"], "predicted_load": doc["planned_load"]}
    right.download_button("Plan (JSON, for ep-report --placement)", dumps(plan_file, indent=1),
                          file_name="plan.json", mime="application/json", on_click="ignore", key="trace_plan_file")
    st.caption(caption("trace_plan"))
