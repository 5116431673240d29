"""Fixture writers for routing trace files: Megatron-LM's JSONL, exactly as its RouterTracer writes it (router_trace.py
at 059f0f5c, `_record`: from TopKRouter's boolean routing map, a token's ids are its nonzero() columns, so they are in
ascending expert order, not by score)."""
from __future__ import annotations

import json

import numpy as np


def megatron_records(steps: int, layers: int, tokens: int, n_experts: int, top_k: int, seed: int = 0,
                     hot: int | None = None, microbatches: int = 1):
    """Records in Megatron's order (step-major, then micro-batch, then layer); `hot` biases one expert."""
    rng = np.random.default_rng(seed)
    for step in range(steps):
        for _ in range(microbatches):
            for layer in range(layers):
                weights = np.ones(n_experts)
                if hot is not None:
                    weights[hot] = 4.0 + layer + step  # a layer/step dependent hot spot
                idx = np.sort(np.stack([rng.choice(n_experts, top_k, replace=False, p=weights / weights.sum())
                                        for _ in range(tokens)]), axis=1).astype(np.int32)  # (T, K) ascending
                yield {"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer, "rank": 0,
                       "num_tokens": tokens, "topk": top_k, "top_indices": idx.tolist()}


def write_megatron(path, records) -> None:
    """router_trace.py's _flush_records_to_disk: json.dumps(rec) + "\\n" per record."""
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def megatron_run(folder, ranks: int, steps: int, layers: int, tokens: int, n_experts: int, top_k: int,
                 microbatches: int = 1, mtp_heads: int = 0, seed: int = 0) -> list[str]:
    """router_trace_rank{r}.jsonl for every rank, each record as RouterTracer._make_index_record builds it
    ("mtp_idx" after "topk", "top_indices" added last at flush); MTP heads after the decoder layers of a pass."""
    paths = []
    for rank in range(ranks):
        rng = np.random.default_rng(seed * 1000 + rank)
        records = []
        for step in range(steps):
            for _ in range(microbatches):
                names = [("decoder", None, layer) for layer in range(layers)]
                names += [("mtp", head, 0) for head in range(mtp_heads)]
                for block, head, layer in names:
                    T = int(rng.integers(0, tokens + 1))  # empty micro-batches happen (a rank with no tokens)
                    idx = np.sort(np.argsort(rng.random((T, n_experts)), axis=1)[:, :top_k], axis=1).astype(np.int32)
                    rec = {"step": step, "stage": "pre_dispatch", "block": block, "layer": layer, "rank": rank,
                           "num_tokens": T, "topk": top_k}
                    if head is not None:
                        rec["mtp_idx"] = head
                    rec["top_indices"] = idx.tolist()
                    records.append(rec)
        path = f"{folder}/router_trace_rank{rank}.jsonl"
        write_megatron(path, records)
        paths.append(path)
    return paths


def write_router_state(folder, rank: int, layers, n_experts: int, top_k: int, hidden: int = 4, seed: int = 0,
                       score_function: str = "sigmoid", bias: bool = True) -> None:
    """router_state_rank{rank}.pt as RouterTracer.flush saves it: {layer: {weight, expert_bias, score_function, topk}}."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    state = {layer: {"weight": torch.randn(n_experts, hidden, generator=gen, dtype=torch.float32),
                     "expert_bias": torch.randn(n_experts, generator=gen) if bias else None,
                     "score_function": score_function, "topk": top_k} for layer in layers}
    torch.save(state, f"{folder}/router_state_rank{rank}.pt")


PLACEMENT_CHARTS = ["runs_place_balance_chart", "runs_place_heat_chart", "runs_place_interval_chart",
                    "runs_place_hot_chart"]  # the Placement section (dashboard/views/placement.py)


def traces_app() -> None:
    from dashboard.views import traces
    traces.render(None)


def swap_link_on_open(monkeypatch, name: str, target) -> None:
    """Every later open of a file called `name` (through moe.roots.open_regular) first replaces it with a link to
    `target`: a writer inside the folder swapping a link in between a reader's check and its open."""
    import os

    import moe.roots
    opened = moe.roots.open_regular

    def racing(path, *args):
        if os.path.basename(path) == name and not os.path.islink(path):
            os.unlink(path)
            os.symlink(target, path)
        return opened(path, *args)
    monkeypatch.setattr(moe.roots, "open_regular", racing)
