"""`torchrun --standalone --nproc-per-node W -m moe ep-report ...`: the expert-parallel forward, headless.

Every rank draws the same global batch (the `report` flags), keeps its contiguous share, runs the
expert-parallel forward, and rank 0 prints one document: the `report` document (config, summary,
per_expert) plus world_size, placement, per_rank, traffic (W×W tokens and bytes), straggler_factor.
"""
from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from . import cli as _cli
from .layer import MoELayer
from .parallel import (PER_RANK_COLUMNS, ExpertShard, all_gather_rows, check_ep_config, ep_forward, init_distributed,
                       launched_world_size, split_rows, straggler_factor)
from .placement import contiguous, load_file
from .scenarios import SCENARIOS, make_batch
from .stats import per_expert_frame, summary_dict

_MS = ["gather_ms", "a2a_ms", "expert_ms", "expert_wall_ms", "forward_ms"]


def add_ep_command(commands) -> None:
    """Register `ep-report`: the `report` flags plus --placement, --repeats, --timeout, --save-output."""
    p = commands.add_parser("ep-report", help="expert-parallel forward under torchrun: per-rank load and traffic")
    _cli.add_config_arguments(p)
    p.add_argument("--scenario", choices=list(SCENARIOS), default="gaussian")
    p.add_argument("--tokens", type=_cli._positive_int, default=512, help="total tokens, split over the ranks")
    p.add_argument("--clusters", type=_cli._positive_int, default=4)
    p.add_argument("--skew", type=_cli._float, default=0.0)
    p.add_argument("--placement", default=None, help="JSON plan from moe.placement (default: contiguous blocks)")
    p.add_argument("--repeats", type=_cli._positive_int, default=1, help="timed forwards after one warm-up (medians)")
    p.add_argument("--timeout", type=_cli._float, default=60.0, help="seconds any collective may wait")
    p.add_argument("--save-output", default=None, help="rank 0 saves the combined output y (T, D) here (torch.save)")
    p.set_defaults(run=run_ep_report)


def _batch(args: argparse.Namespace, d_model: int) -> torch.Tensor:
    """The same tokens `python -m moe report` draws for these flags."""
    params = {"n_clusters": args.clusters, "skew": args.skew} if args.scenario in ("clusters", "drifting") else {}
    if args.scenario == "drifting":
        params["step"] = 0
    return make_batch(args.scenario, d_model, args.tokens, seed=args.seed, **params).x  # (T, D)


def run_ep_report(args: argparse.Namespace) -> str:
    cfg = _cli.config_from_args(args)
    check_ep_config(cfg)
    W = launched_world_size()
    placement = load_file(args.placement, cfg.n_experts, W) if args.placement else contiguous(cfg.n_experts, W)
    if args.tokens < W:
        raise ValueError(f"--tokens {args.tokens} is fewer than the {W} ranks; give every rank a token")
    x = _batch(args, cfg.d_model)
    rank, W, device = init_distributed(cfg.device, args.timeout)  # every check above ran on every rank
    try:
        layer = MoELayer(cfg.replace(device=str(device)))
        shard = ExpertShard(layer, placement.ranks[rank])
        layer.experts = None  # this rank keeps only its shard
        mine = x[split_rows(x.shape[0], W, rank)]  # (T_r, D)
        with torch.inference_mode():
            runs = [ep_forward(layer, shard, mine, placement) for _ in range(args.repeats + 1)][1:]
            if args.save_output:
                _save_output(runs[-1].y, x.shape[0], W, rank, args.save_output)
        if rank != 0:
            return ""
        return _render(cfg, args, placement, runs)
    finally:
        dist.destroy_process_group()


def _save_output(y: torch.Tensor, T: int, W: int, rank: int, path: str) -> None:
    sizes = [split_rows(T, W, r).stop - split_rows(T, W, r).start for r in range(W)]
    full = all_gather_rows(y, sizes)  # (T, D)
    if rank == 0:
        torch.save(full.cpu(), path)


def _render(cfg, args, placement, runs) -> str:
    """The `report` document of the last run, plus the per-rank table (median times over the runs)."""
    per_rank = runs[-1].per_rank.copy()
    per_rank[_MS] = np.median(np.stack([r.per_rank[_MS].to_numpy() for r in runs]), axis=0)
    sums = runs[-1].sums
    sums.forward_ms = float(per_rank["forward_ms"].max())
    traffic = runs[-1].traffic
    token_bytes = cfg.d_model * torch.empty((), dtype=cfg.torch_dtype).element_size()
    extra = {"world_size": len(placement.ranks), "placement": placement.to_dict(), "per_rank": per_rank,
             "traffic": traffic, "traffic_bytes": traffic * token_bytes,
             "straggler_factor": straggler_factor(per_rank)}
    base = _cli.render(cfg.to_dict(), summary_dict(sums), per_expert_frame(sums), args.format,
                       extra={"scenario": args.scenario, "tokens": args.tokens})
    return _json(base, extra) if args.format == "json" else _csv(base, extra)


def _json(base: str, extra: dict) -> str:
    doc = json.loads(base)
    out = {"config": doc.pop("config"), "world_size": extra["world_size"], "placement": extra["placement"],
           "per_rank": json.loads(extra["per_rank"][PER_RANK_COLUMNS].to_json(orient="records")),
           "traffic": extra["traffic"].tolist(), "traffic_bytes": extra["traffic_bytes"].tolist(),
           "straggler_factor": extra["straggler_factor"], **doc}
    return json.dumps(out, indent=2)


def _csv(base: str, extra: dict) -> str:
    out = io.StringIO(base if base.endswith("\n") else base + "\n")
    out.seek(0, io.SEEK_END)
    out.write("# ep\n")
    pd.Series({"world_size": extra["world_size"], "straggler_factor": extra["straggler_factor"]}).rename(
        "value").to_csv(out, header=["value"], index_label="key")
    out.write("# per_rank\n")
    extra["per_rank"][PER_RANK_COLUMNS].to_csv(out, index=False)
    for name in ("traffic", "traffic_bytes"):
        out.write(f"# {name} (rows sender, columns receiver)\n")
        W = extra["world_size"]
        pd.DataFrame(extra[name], columns=[f"to_{r}" for r in range(W)]).rename_axis("from").to_csv(out)
    return out.getvalue()
