"""The rank side of `torchrun --standalone --nproc-per-node W -m moe ep-report ...` (the command: moe/cli/ep_report.py).

Every rank draws the same global batch (the `report` flags), keeps its contiguous share, runs the
expert-parallel forward, and rank 0 prints one document: the `report` document (config, summary,
per_expert) plus world_size, placement, per_rank, traffic (W×W tokens and bytes), straggler_factor (the
median over the repeats) and straggler_spread (min, quartiles, max and every repeat's factor).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from moe.config import MoEConfig
from moe.document import document, render
from moe.jsonio import dumps
from moe.layer import MoELayer
from moe.parallel.forward import (PER_RANK_COLUMNS, ExpertShard, all_gather_rows, check_ep_config, ep_forward,
                                  init_distributed, launched_world_size, split_rows, straggler_spread)
from moe.parallel.launch import rank_progress
from moe.parallel.export import load_placement
from moe.parallel.placement import contiguous
from moe.proctree import die_with_parent
from moe.scenarios import make_batch
from moe.stats import per_expert_frame, summary_dict

_MS = ["gather_ms", "a2a_ms", "expert_ms", "expert_wall_ms", "forward_ms"]
REPEATS = 5  # one timed forward's straggler factor moved from 1.01 to 1.26 between runs: report a median


@dataclass(frozen=True)
class EPSettings:
    """How ep-report runs the layer: the placement file (None: contiguous blocks), the timed forwards after one
    warm-up, the collectives' timeout, sequences of seq_len (None: rows are tokens), where rank 0 saves y, and the
    plan file's layer to run (None: its only one)."""
    placement_file: str | None = None
    repeats: int = REPEATS
    timeout_s: float = 60.0
    seq_len: int | None = None
    save_output: str | None = None
    placement_layer: str | None = None  # the layer of a plan file holding several


def enter_rank() -> None:
    """First thing a torchrun rank does: die with torchrun (its own session: no orphan) and say it started."""
    if "RANK" in os.environ:
        die_with_parent()
        rank_progress("started")


def rank_report(cfg: MoEConfig, scenario: str, params: dict, tokens: int, settings: EPSettings, fmt: str) -> str:
    """This rank's part of the expert-parallel forward of the `report` input; rank 0 returns the document
    (json | csv), the other ranks ''. Every check runs on every rank before the process group is joined."""
    check_ep_config(cfg)
    W = launched_world_size()
    placement = (load_placement(settings.placement_file, cfg.n_experts, W, settings.placement_layer)
                 if settings.placement_file else contiguous(cfg.n_experts, W))
    if tokens < W:
        raise ValueError(f"--tokens {tokens} is fewer than the {W} ranks; give every rank a token")
    x = _sequences(make_batch(scenario, cfg.d_model, tokens, seed=cfg.seed, **params).x, cfg, settings.seq_len, W)
    rank, W, device = init_distributed(cfg.device, settings.timeout_s)
    rank_progress("joined")
    try:
        layer = MoELayer(cfg.replace(device=str(device)))
        shard = ExpertShard(layer, placement.ranks[rank])
        layer.experts = None  # this rank keeps only its shard
        mine = x[split_rows(x.shape[0], W, rank)]  # (T_r, D) or (B_r, S, D)
        with torch.inference_mode():
            runs = []  # the warm-up, then the repeats; an earlier run keeps its tables, not its output y
            for _ in range(settings.repeats + 1):
                if runs:
                    runs[-1].y = runs[-1].y[:0]
                runs.append(ep_forward(layer, shard, mine, placement))
                rank_progress("forward")
            runs = runs[1:]
            if settings.save_output:
                _save_output(runs[-1].y, x.shape[0], W, rank, settings.save_output)  # rows: tokens or sequences
        if rank != 0:
            return ""
        return _render(cfg, fmt, placement, runs, {"scenario": scenario, "tokens": tokens, **params})
    finally:
        dist.destroy_process_group()


def _sequences(x: torch.Tensor, cfg, seq_len: int | None, W: int) -> torch.Tensor:
    """x (T, D), or (B, S, D) with --seq-len: ranks then split whole sequences."""
    cfg.check_seq_len(seq_len)
    if seq_len is None:
        return x
    T = x.shape[0]
    if T % seq_len or T // seq_len < W:
        raise ValueError(f"--tokens {T} must be a multiple of --seq-len {seq_len} with at least {W} sequences "
                         f"(one per rank); give --tokens {max(W, -(-T // seq_len)) * seq_len}")
    return x.reshape(T // seq_len, seq_len, cfg.d_model)  # (B, S, D)


def _save_output(y: torch.Tensor, rows: int, W: int, rank: int, path: str) -> None:
    y = y.reshape(-1, y.shape[-1])  # (T_r, D)
    per_row = y.shape[0] // max(split_rows(rows, W, rank).stop - split_rows(rows, W, rank).start, 1)
    sizes = [(split_rows(rows, W, r).stop - split_rows(rows, W, r).start) * per_row for r in range(W)]
    full = all_gather_rows(y, sizes)  # (T, D)
    if rank == 0:
        torch.save(full.cpu(), path)


def _render(cfg, fmt: str, placement, runs, input_: dict) -> str:
    """The `report` document of the last run, plus the per-rank table (median times over the runs)."""
    per_rank = runs[-1].per_rank.copy()
    per_rank[_MS] = np.median(np.stack([r.per_rank[_MS].to_numpy() for r in runs]), axis=0)
    sums = runs[-1].sums
    sums.forward_ms = float(per_rank["forward_ms"].max())
    traffic = runs[-1].traffic
    token_bytes = cfg.d_model * torch.empty((), dtype=cfg.torch_dtype).element_size()
    extra = {"world_size": len(placement.ranks), "placement": placement.to_dict(), "per_rank": per_rank,
             "traffic": traffic, "traffic_bytes": traffic * token_bytes,
             "straggler": straggler_spread([r.per_rank for r in runs])}
    parts = (cfg.to_dict(), summary_dict(sums), per_expert_frame(sums))
    if fmt == "json":
        return _json(document(*parts, extra=input_), extra)
    return _csv(render(*parts, fmt, extra=input_), extra)


def _json(doc: dict, extra: dict) -> str:
    """The report document with the expert-parallel sections after the config (one strict dumps: NaN → null)."""
    per_rank = extra["per_rank"][PER_RANK_COLUMNS].to_dict(orient="records")
    for row, experts in zip(per_rank, extra["placement"]["ranks"]):
        row["experts"] = [int(e) for e in experts]  # a list of integers (the CSV keeps "0 1 2")
    out = {"config": doc.pop("config"), "world_size": extra["world_size"], "placement": extra["placement"],
           "per_rank": per_rank,
           "traffic": extra["traffic"], "traffic_bytes": extra["traffic_bytes"],
           "straggler_factor": extra["straggler"]["median"], "straggler_spread": extra["straggler"], **doc}
    return dumps(out, indent=2)


def _csv(base: str, extra: dict) -> str:
    out = io.StringIO(base if base.endswith("\n") else base + "\n")
    out.seek(0, io.SEEK_END)
    out.write("# ep\n")
    spread = {f"straggler_{k}": v for k, v in extra["straggler"].items() if k not in ("median", "per_repeat")}
    values = {"world_size": extra["world_size"], "straggler_factor": extra["straggler"]["median"], **spread}
    pd.Series(values, dtype=object).rename("value").to_csv(out, header=["value"], index_label="key")  # ints stay ints
    out.write("# per_rank\n")
    extra["per_rank"][PER_RANK_COLUMNS].to_csv(out, index=False)
    for name in ("traffic", "traffic_bytes"):
        out.write(f"# {name} (rows sender, columns receiver)\n")
        W = extra["world_size"]
        pd.DataFrame(extra[name], columns=[f"to_{r}" for r in range(W)]).rename_axis("from").to_csv(out)
    return out.getvalue()
