"""Runs the engine for the page: a cached, read-only base layer per weight shape, one forward per spec."""
from __future__ import annotations

import contextlib
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
# Expert multiply-adds (T·K·3·D·H) below which a CPU forward runs on one thread: a few milliseconds of
# work gains nothing from a second thread, and on a small machine the browser drawing the page needs that
# core (profiled during a redraw, the default forward took ~105 ms on two threads; run() alone takes ~4 ms).
# Larger forwards use every thread.
SMALL_FORWARD_MACS = 10 ** 9


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
    with torch.inference_mode(), _cpu_threads(cfg, spec.tokens):
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
                     label_names=batch.label_names, device=trace.device, warnings=warnings)


@contextlib.contextmanager
def _cpu_threads(cfg: MoEConfig, tokens: int):
    """One intra-op thread for small CPU forwards, torch's default otherwise (process-wide, restored after)."""
    macs = tokens * cfg.top_k * 3 * cfg.d_model * cfg.d_expert
    if cfg.device != "cpu" or macs >= SMALL_FORWARD_MACS or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
