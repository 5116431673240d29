"""`python -m moe trace-report FILE`: statistics of a routing trace file (moe.traces.summary), optionally a placement
plan, as JSON or CSV."""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from moe.cli.args import integer, positive_int
from moe.config import SCORES
from moe.jsonio import dumps
from moe.traces.summary import summarize


def add_command(commands) -> None:
    p = commands.add_parser("trace-report", help="a routing trace file (moe-scope Parquet or Megatron-LM JSONL): "
                                                 "load per layer over steps, the worst (step, layer), a plan")
    p.add_argument("file", help="trace file: the page's Trace (Parquet) download, a TraceWriter file, or "
                                "Megatron-LM's router_trace_rank{R}.jsonl")
    p.add_argument("--n-experts", type=positive_int, default=None, help="needed for Megatron traces")
    p.add_argument("--layers", type=positive_int, default=None, help="expected number of MoE layers (checked)")
    p.add_argument("--score", choices=SCORES, default="softmax", help="how logits became probs")
    p.add_argument("--world-size", type=positive_int, default=None, help="plan a placement for W ranks")
    p.add_argument("--redundant-slots", type=integer, default=0, help="R replicas for the plan")
    p.add_argument("--layer", default=None, help="plan from this layer's load (default: all layers summed)")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="csv: one row per (step, layer)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> str:
    s = summarize(args.file, n_experts=args.n_experts, n_layers=args.layers, score=args.score)
    planned = s.plan(args.world_size, args.redundant_slots, args.layer) if args.world_size else None
    if args.format == "csv":
        pos = {step: i for i, step in enumerate(s.steps)}  # every step holds every layer (checked)
        load = np.stack([s.load[name][pos[step]] for step, name in zip(s.rows["step"], s.rows["layer"])])  # (rows, E)
        columns = pd.DataFrame(load, columns=[f"load_{e}" for e in range(s.n_experts)])
        return pd.concat([s.rows.reset_index(drop=True), columns], axis=1).to_csv(index=False)
    doc = {"source": s.source, "n_experts": s.n_experts, "n_experts_source": s.n_experts_source,
           "max_expert_id": s.max_expert_id, "top_k": s.top_k, "has_logits": s.has_logits,
           "records": s.records, "skipped_empty": s.skipped_empty, "layers": s.layers, "steps": len(s.steps),
           "worst": s.worst(), "per_layer": s.pooled, "rows": s.rows.to_dict(orient="records"),
           "load": {name: s.load[name].tolist() for name in s.layers}}
    if planned is not None:
        doc["plan"] = planned
    return dumps(doc, indent=1)
