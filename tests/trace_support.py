"""Fixture writers for routing trace files: Megatron-LM's JSONL, exactly as its RouterTracer writes it."""
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
                idx = np.stack([rng.choice(n_experts, top_k, replace=False, p=weights / weights.sum())
                                for _ in range(tokens)]).astype(np.int32)  # (T, K)
                yield {"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer, "rank": 0,
                       "num_tokens": tokens, "topk": top_k, "top_indices": idx.tolist()}


def write_megatron(path, records) -> None:
    """router_trace.py's _flush_records_to_disk: json.dumps(rec) + "\\n" per record."""
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
