"""Download buttons; the files are built only when clicked."""
from __future__ import annotations

import streamlit as st

from dashboard import exports
from dashboard.result import RunResult


def render(result: RunResult) -> None:
    st.subheader("Downloads")
    row = st.container(horizontal=True)  # one flex row: fewer page updates per redraw than st.columns
    row.download_button("Per-expert table (CSV)", lambda: exports.per_expert_csv(result),
                        file_name="moe_per_expert.csv", mime="text/csv", on_click="ignore")
    row.download_button("Summary + config (JSON)", lambda: exports.summary_json(result),
                        file_name="moe_summary.json", mime="application/json", on_click="ignore")
    row.download_button("Trace (Parquet)", lambda: exports.trace_parquet(result),
                        file_name="moe_trace.parquet", mime="application/octet-stream", on_click="ignore",
                        help="One row per (token, expert): step, layer, token, (topic,) expert, router_logit, prob, "
                             "routed, served, gate, contribution. Opens on the Runs page and in `python -m moe "
                             "trace-report`, which read the router's choice (routed) and logits: a top-k trace's "
                             "routing numbers, not its drops (served) or its router (the same K for every token: "
                             "an expert_choice trace is refused).")
    row.download_button("Per-token table (CSV)", lambda: exports.token_csv(result),
                        file_name="moe_tokens.csv", mime="text/csv", on_click="ignore",
                        help="One row per token: its experts, weights, drops, max prob, entropy and confidence.")
