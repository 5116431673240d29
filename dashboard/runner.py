"""Runs the engine for the page: a cached, read-only base layer per weight shape, one forward per spec."""
from __future__ import annotations

import os

import streamlit as st
import torch

from moe import MoEConfig, MoELayer
from moe.memory import GiB, check_budget
from moe.scenarios import make_batch

from .result import RunResult
from .state import RunSpec

# Forwards above this estimate are refused with advice (override with MOE_SCOPE_MEMORY_GB).
MEMORY_BUDGET = int(float(os.environ.get("MOE_SCOPE_MEMORY_GB", "4")) * GiB)


@st.cache_resource(max_entries=4, show_spinner=False)
def base_layer(d_model: int, d_expert: int, n_experts: int, seed: int, device: str, dtype: str) -> MoELayer:
    """Weights shared by every session: never mutated (inference only, gradients off)."""
    cfg = MoEConfig(d_model=d_model, d_expert=d_expert, n_experts=n_experts, top_k=1, seed=seed,
                    device=device, dtype=dtype)
    layer = MoELayer(cfg).requires_grad_(False).eval()
    with torch.inference_mode():  # warm-up: the first forward in a process pays one-off set-up costs
        layer(torch.randn(8, d_model))
    return layer


def run(spec: RunSpec) -> RunResult:
    """Check the memory budget, draw the batch, run one forward, bring the trace to the host."""
    cfg = spec.config
    check_budget(cfg, spec.tokens, MEMORY_BUDGET)
    base = base_layer(cfg.d_model, cfg.d_expert, cfg.n_experts, cfg.seed, cfg.device, cfg.dtype)
    layer = base.reconfigured(cfg)  # per-run routing settings; weights shared read-only
    batch = make_batch(spec.scenario, cfg.d_model, spec.tokens, seed=cfg.seed, **spec.params)
    threads = torch.get_num_threads()  # read only: the thread count is process-wide, never set per request
    with torch.inference_mode():
        _, trace = layer(batch.x)
    trace = trace.cpu()
    summary = trace.summary()
    warnings = []
    if summary["nonfinite"] > 0 or summary["nonfinite_output"] > 0:
        warnings.append(f"{summary['nonfinite']:.0f} router logits and {summary['nonfinite_output']:.0f} output "
                        "values are not finite (NaN/inf): the numbers below are not meaningful; check the input "
                        "and the dtype (float16 overflows above 65504).")
    return RunResult(config=cfg, scenario=spec.scenario, scenario_params=spec.params, trace=trace,
                     per_expert=trace.per_expert(), summary=summary, labels=batch.labels,
                     label_names=batch.label_names, device=trace.device, warnings=warnings, threads=threads)
