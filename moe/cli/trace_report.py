"""`python -m moe trace-report PATH`: statistics of any routing source (moe.traces.opener), optionally a placement
plan, as JSON or CSV; `--out DIR` converts it into a routing log; `--follow` prints one line per new step of a
routing log that is still being written."""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from moe.cli.args import check_paths_given, integer, positive_float, positive_int
from moe.config import SCORES
from moe.jsonio import dumps
from moe.traces.follow import IDLE_AFTER_S, LogFollower
from moe.traces.formats import FORMATS
from moe.traces.opener import open_trace
from moe.traces.store import check_new_log_dir, is_log_dir, write_log

POLL_S = 0.5


def add_command(commands) -> None:
    p = commands.add_parser("trace-report", help="routing data of any stack (SGLang, vLLM, Megatron, plain counts, "
                                                 "moe-scope): load per layer over steps, the worst (step, layer), "
                                                 "a plan")
    p.add_argument("file", metavar="PATH", help="a routing file or a directory of rank files; formats: "
                                                + "; ".join(FORMATS.values()))
    p.add_argument("--n-experts", type=positive_int, default=None,
                   help="the model's expert count, for sources that do not record it (never below the largest id + 1)")
    p.add_argument("--layers", type=positive_int, default=None, help="expected number of MoE layers (checked)")
    p.add_argument("--score", choices=SCORES, default="softmax", help="how logits became probs")
    p.add_argument("--world-size", type=positive_int, default=None, help="plan a placement for W ranks")
    p.add_argument("--redundant-slots", type=integer, default=0, help="R replicas for the plan")
    p.add_argument("--layer", default=None, help="plan from this layer's load (default: all layers summed)")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="csv: one row per (step, layer)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write the routing as a routing log directory")
    p.add_argument("--follow", action="store_true", help="follow a routing log directory being written: one line "
                                                         "per new step, until it is idle")
    p.add_argument("--idle-after", type=positive_float, default=IDLE_AFTER_S,
                   help="--follow: seconds without a new step after which the run is idle and the command ends")
    p.set_defaults(run=run)


def _check_ignored(args: argparse.Namespace) -> None:
    """ValueError for an option that would be accepted and ignored: the plan's without --world-size, a whole read's
    with --follow."""
    plan = [flag for flag, value in (("--redundant-slots", args.redundant_slots), ("--layer", args.layer))
            if value not in (None, 0)]
    if plan and not args.world_size:
        raise ValueError(f"{plan[0]} shapes the plan, which --world-size asks for; give --world-size W too")
    whole = [flag for flag, value in (("--out", args.out), ("--n-experts", args.n_experts), ("--layers", args.layers),
                                      ("--world-size", args.world_size), ("--format csv", args.format == "csv"))
             if value]
    if args.follow and whole:
        raise ValueError(f"--follow prints one line per new step of a routing log (its own expert count); "
                         f"{whole[0]} is for reading a whole source: drop it, or drop --follow")


def run(args: argparse.Namespace) -> str:
    check_paths_given(out=args.out)
    _check_ignored(args)
    if args.follow:
        return follow(args.file, args.idle_after)
    if args.out is not None:
        check_new_log_dir(args.out)  # before the source is read: a wrong path is refused at once
    s = open_trace(args.file, n_experts=args.n_experts, n_layers=args.layers, score=args.score)
    if args.out:
        write_log(s.log(), args.out)
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
    if idle := s.idle_layers():
        doc["layers_without_tokens"] = idle
    if s.routing_log is not None and s.routing_log.meta:
        doc["meta"] = s.routing_log.meta
    if planned is not None:
        doc["plan"] = planned
    return dumps(doc, indent=1)


def follow(path: str, idle_after: float) -> str:
    """Print one line per new step as it arrives; return the idle note once nothing arrives for idle_after s."""
    if not is_log_dir(path):
        raise ValueError(f"--follow reads a routing log directory (meta.json, counts/); {path!r} is not one — "
                         f"convert a file first with --out DIR, or record with moe.record.RoutingRecorder")
    follower = LogFollower(path)
    while not follower.idle(idle_after):
        for step in follower.poll():
            print(follower.step_line(step), flush=True)
        time.sleep(POLL_S)
    return f"idle: no new step for {idle_after:g} s ({len(follower.acc.cells)} steps read)"
