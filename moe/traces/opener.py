"""Open any routing source as a `TraceSummary` (trace-report, the Runs page, plan): the one entry point.

Sources that carry router logits (a moe-scope per-(token, expert) Parquet trace, a Megatron-LM rank file with its
logits sidecar) go through the full statistics path (`summarize`: aux loss, confidence, z-loss); every other source
holds counts, and is read into a RoutingLog (`moe.traces.formats.read_log`) whose load-side numbers are computed
vectorised (`TraceSummary.from_log`).
"""
from __future__ import annotations

import json
import os

from moe.config import SCORES
from moe.traces.formats import detect, read_log
from moe.traces.megatron import RANK_FILE, SOURCE as MEGATRON
from moe.traces.megatron_state import read_router_states
from moe.traces.readers import LOGIT_FIELDS
from moe.traces.records import Progress, TraceLimits, open_regular
from moe.traces.safeload import parquet_file
from moe.traces.summary import MixedLogits, TraceSummary, summarize

FIRST_LINE_BYTES = 1 << 20
PARTIAL_LOGITS = "logits"  # meta key of a Megatron-LM log (MEGATRON): why, with logits on some records only, it is
                           # read as counts


def open_trace(path: str, n_experts: int | None = None, n_layers: int | None = None, score: str = "softmax",
               progress: Progress | None = None, limits: TraceLimits | None = None) -> TraceSummary:
    """A file or directory of any supported format, summarised within `limits` (default: the environment's budget);
    every problem is one ValueError line."""
    limits = limits or TraceLimits.from_env()  # a bad MOE_SCOPE_MEMORY_GB is refused before the file is opened
    mixed = None
    if _has_logits(path, limits):
        try:
            summary = summarize(path, n_experts=n_experts, n_layers=n_layers, score=score, progress=progress,
                                limits=limits)
        except MixedLogits as err:  # valid (Megatron skips a record's logits where capturing them failed)
            mixed = str(err)
        else:
            check_score(path, summary, score, limits)
            return summary
    log = read_log(path, n_experts, progress=progress, limits=limits)
    some, records = log.meta.get("records_with_logits"), log.meta.get("records")  # the Megatron reader's counts
    if not mixed and log.source == MEGATRON and type(some) is type(records) is int and 0 < some < records:
        mixed = f"{some:,} of {records:,} records carry logits"  # the first had none: read as counts at once
    if mixed:
        log.meta[PARTIAL_LOGITS] = (f"{mixed} (Megatron-LM writes none where capturing them failed): the loads count "
                                    f"every record; the logits' numbers (aux loss, z-loss, confidence) are not shown")
    return check_layers(TraceSummary.from_log(log), n_layers)


def check_score(path: str, summary: TraceSummary, score: str, limits: TraceLimits) -> None:
    """A Megatron-LM file's router_state_rank{R}.pt beside it (--moe-routing-trace-dump-weights) names the score
    function of each layer's router: probabilities from the logits with another function would be wrong numbers, so
    that is one ValueError line naming the score to give (--score; the Runs page's Router score)."""
    rank = RANK_FILE.search(os.path.basename(path))
    if summary.source != "megatron" or rank is None:
        return
    try:
        states = read_router_states([path], [int(rank.group(1))], summary.n_experts, summary.top_k, limits,
                                    summary.layers)
    except ValueError:  # a side file that cannot be read does not block the trace (its directory's reader says why)
        return
    named = sorted({entry["score_function"] for entry in states.get("router_state", {}).values()} & set(SCORES))
    if named and named != [score]:
        raise ValueError(f"router_state_rank{rank.group(1)}.pt says the router scores with {' and '.join(named)}, "
                         f"but the probabilities were asked with {score}; give the router's score (--score "
                         f"{named[0]}, the Runs page's Router score)")


def check_layers(summary: TraceSummary, n_layers: int | None) -> TraceSummary:
    """The expected MoE layer count (--layers; the Runs page's Expected MoE layers), when one is given."""
    if n_layers is not None and len(summary.layers) != n_layers:
        raise ValueError(f"the trace has {len(summary.layers)} MoE layers ({summary.layers[:8]}) but {n_layers} were "
                         f"expected; pass the model's MoE layer count or the right file")
    return summary


def _has_logits(path: str, limits: TraceLimits) -> bool:
    """A per-(token, expert) Parquet trace, or a Megatron-LM file whose first record points into a logits sidecar."""
    if os.path.isdir(path):
        return False
    kind = detect(path)
    if kind == "parquet":
        with open_regular(path) as f:
            try:
                names = set(parquet_file(f, repr(path), limits).schema_arrow.names)
            except ValueError:  # damaged, or a footer over the budget: summarize says so in one line
                return True
        return "router_logit" in names
    if kind != "megatron":
        return False
    with open_regular(path) as f:
        line = f.readline(FIRST_LINE_BYTES)
    try:
        first = json.loads(line)
    except (ValueError, RecursionError):
        return True  # the exact line reader reports where and why
    return isinstance(first, dict) and any(k in first for k in LOGIT_FIELDS)
