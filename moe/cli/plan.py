"""`python -m moe plan PATH --world-size W --redundant-slots R`: should this run enable EPLB? Replays each layer of a
routing log window by window under the run's placement, our planner and DeepSeek's EPLB (moe.parallel.judge), for
each R given, says what it found in one line, and plans one placement per layer (with the largest R) to export for
SGLang, vLLM or moe-scope. Each number of a layer's summary follows the definition SUMMARY_DEFINITIONS
names (moe/definitions.py)."""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from moe.cli.args import check_paths_given, non_negative_ints, positive_int
from moe.jsonio import dumps
from moe.metrics import balancedness_vllm
from moe.parallel.eplb import check_eplb_sizes
from moe.parallel.export import (FORMATS, check_out, check_serving, layer_plans, plan_document, sglang_layer_ids,
                                 write_plan)
from moe.parallel.judge import (DEFAULT_WINDOWS, ReplaySettings, balance_rows, current_name, default_window,
                                replay_log)
from moe.parallel.replay import check_replay_cost, replay_bytes
from moe.parallel.verdict import best_gain, verdict
from moe.traces.formats import read_log



def add_command(commands) -> None:
    p = commands.add_parser("plan", help="should I enable EPLB? replay a routing log under each placement; export a "
                                         "plan for SGLang, vLLM or moe-scope")
    p.add_argument("file", help="routing log (any format moe.traces reads: Parquet, Megatron-LM JSONL, ...)")
    p.add_argument("--world-size", type=positive_int, required=True, help="W expert-parallel ranks (GPUs)")
    p.add_argument("--redundant-slots", type=non_negative_ints, default=(0,),
                   help="R extra expert slots (replicas), or several, comma-separated (e.g. 0,8,32): each is replayed; "
                        "the plan and --export use the largest")
    p.add_argument("--nodes", type=positive_int, default=1, help="nodes for DeepSeek's hierarchical EPLB")
    p.add_argument("--groups", type=positive_int, default=None, help="expert groups for DeepSeek's EPLB "
                                                                      "(default: --nodes)")
    p.add_argument("--window", type=positive_int, default=None,
                   help=f"steps per window (default: the log cut into at most {DEFAULT_WINDOWS} windows); with it, the "
                        f"exported plan comes from the last full window instead of the whole log")
    p.add_argument("--layer", action="append", default=None, help="only this layer (repeatable; default: all)")
    p.add_argument("--n-experts", type=positive_int, default=None, help="E, for logs that do not record it")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="csv: one row per (layer, window, "
                                                                            "placement)")
    p.add_argument("--export", choices=FORMATS, default=None, help="write the plan in this format to --out")
    p.add_argument("--out", default=None, help="where --export writes the plan")
    p.add_argument("--num-layers", type=positive_int, default=None,
                   help="the model's number of layers, for --export sglang (its map has one row per layer id; "
                        "default: the log's largest layer id + 1)")
    p.set_defaults(run=run)


# The definition (moe/definitions.py) of each number in a layer's summary, per R.
SUMMARY_DEFINITIONS = {"next_window_p50": "replay_next_window", "intervals_p50": "replay_rebalance_interval",
                       "rest_p50": "replay_rebalance_interval", "own_window_p50": "replay_own_window",
                       "kept_current_windows": "replay_own_window", "absorbed_p50": "hot_expert_persistence"}
# ... and of each number of a layer's summary beside its per-R summaries (`notes` are words).
LAYER_DEFINITIONS = {"recorded_next_window_p50": "replay_recorded", "hot_top": "hot_expert_persistence",
                     "hot_windows": "hot_expert_persistence", "persistence": "hot_expert_persistence"}


def run(args: argparse.Namespace) -> str:
    check_paths_given(out=args.out)
    if (args.export is None) != (args.out is None):
        raise ValueError("--export and --out go together: give both (e.g. --export sglang --out plan.json) or neither")
    _check_sglang_args(args)
    if args.out is not None:
        check_out(args.out)  # before the replay: a wrong path is refused at once
    log = read_log(args.file, n_experts=args.n_experts)
    E, W, R = log.n_experts, args.world_size, max(args.redundant_slots)
    check_eplb_sizes(E, args.groups or args.nodes, args.nodes, W)  # else EPLB is skipped for every R (layer notes)
    slots = tuple(sorted(set(args.redundant_slots)))
    only = None if args.layer is None else list(dict.fromkeys(args.layer))  # a layer named twice is replayed once
    if args.export in ("sglang", "vllm"):
        check_serving(E, R, W)  # before the replay: a wrong R is refused at once
    if args.export == "sglang":
        sglang_layer_ids(log.layers, args.num_layers, log.layer_base, E + R)
    steps = args.window or default_window(len(log.steps))
    layers, windows = len(log.layers) if only is None else len(only), -(-len(log.steps) // steps)
    P = 0 if log.physical_to_logical is None else log.physical_to_logical.shape[1]
    check_replay_cost(replay_bytes(layers, windows, len(slots), E, R, P),
                      f"{layers:,} layers × {windows:,} windows of {E:,} experts for {len(slots)} R",
                      "give fewer layers (--layer NAME) or longer windows (--window STEPS)")
    settings = ReplaySettings(W, slots, window=steps, num_nodes=args.nodes, num_groups=args.groups)
    results = replay_log(log.counts, log.layers, settings, log.physical_to_logical, only,
                         slot_counts=lambda i: log.slot_counts(i, W))
    current = current_name(log.physical_to_logical is not None, W, log.recorded_world_size())
    plans = layer_plans(log.counts, log.layers, W, R, log.physical_to_logical, args.window,
                        args.export in ("sglang", "vllm"), only)
    if args.export:
        doc = plan_document(args.export, list(plans), [p.layout for p in plans.values()], E,
                            [p.note for p in plans.values()], args.num_layers, log.layer_base)
        write_plan(args.out, doc)
    rows = [row for r in results for row in balance_rows(r)]
    if args.format == "csv":
        return pd.DataFrame(rows).to_csv(index=False)
    doc = {"source": log.source, "n_experts": E, "world_size": W, "redundant_slots": R, "replayed_slots": list(slots),
           "window_steps": steps, "windows_per_layer": int(len(results[0].windows)), "current": current,
           "verdict": _verdict(results, current, R), "layers": {r.layer: _layer_summary(r) for r in results},
           "windows": {r.layer: [row for row in rows if row["layer"] == r.layer] for r in results},
           "plan": {name: p.to_dict() for name, p in plans.items()}}
    if args.export:
        doc["export"] = {"format": args.export, "path": args.out}
    return dumps(doc, indent=1)


def _verdict(results, current: str, R: int) -> str:
    """verdict (moe.parallel.verdict), which names the best R replayed; with several, it says which R the plan (and
    --export) took."""
    text = verdict(results, current)
    if len(results[0].redundant_slots) > 1 and min(len(r.windows) for r in results) > 1:
        gain, *_, best_r, _, _ = best_gain(results)
        if np.isfinite(gain) and best_r != R:  # "nothing to judge" names no R
            text += f"; the plan below (and --export) has R={R}, the largest given"
    return text


def _check_sglang_args(args: argparse.Namespace) -> None:
    """SGLang's map holds every layer of the model (row i = layer i): not one --layer; --num-layers is only for it."""
    if args.export == "sglang" and args.layer:
        raise ValueError("--export sglang writes every layer of the model (row i = layer i); drop --layer, or use "
                         "--export vllm or moe-scope for chosen layers")
    if args.num_layers is not None and args.export != "sglang":
        raise ValueError("--num-layers is the row count of SGLang's map; give it with --export sglang")


def _layer_summary(r) -> dict:
    """Per R replayed (SUMMARY_DEFINITIONS): p50 balancedness on the windows after planning, per interval and on the
    rest, on the planned window itself, windows whose plan kept the current placement, the share replicas absorbed;
    then the hot experts and notes."""
    return {"slots": {str(R): _slot_summary(r, R) for R in r.redundant_slots},
            "recorded_next_window_p50": r.recorded_p50(),
            "hot_top": r.hot_top, "hot_windows": r.hot_windows.tolist(), "persistence": r.persistence,
            "notes": r.notes}


def _slot_summary(r, R: int) -> dict:
    names = [name for name, rr in r.loads if rr == R]
    return {"next_window_p50": {n: float(np.median(r.next_window(n, R))) if len(r.windows) > 1 else None
                                for n in names},
            "intervals_p50": {n: {str(k): v for k, v in r.intervals[(n, R)].items()} for n in names},
            "rest_p50": {n: r.rest[(n, R)] for n in names},
            "own_window_p50": {n: float(np.median(balancedness_vllm(r.own_window[(n, R)]))) for n in names
                               if (n, R) in r.own_window},
            "kept_current_windows": int(r.kept[R].sum()), "absorbed_p50": r.absorbed[R]}
