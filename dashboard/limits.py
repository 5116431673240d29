"""What each sidebar control accepts (options, ranges) and `sanitize`, which brings values from a link or a preset
into it, naming every change."""
from __future__ import annotations

import math

from moe.config import (ACTIVATIONS, CAPACITY_SCOPES, DROP_POLICIES, DTYPES, ROUTER_DTYPES, ROUTERS, SCORES,
                        SPARSITY_MODES)
from moe.scenarios import SCENARIOS

from dashboard.presets import CONTROL_DEFAULTS
from dashboard.quoting import quote

D_MODEL_OPTIONS = [8, 16, 32, 64, 128, 256, 512, 768, 1024, 2048, 4096]
D_EXPERT_OPTIONS = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3072, 4096, 8192]
SEQ_OPTIONS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
OPTIONS: dict[str, list] = {
    "d_model": D_MODEL_OPTIONS, "d_expert": D_EXPERT_OPTIONS, "seq_len": SEQ_OPTIONS,
    "router": list(ROUTERS), "score": list(SCORES), "drop_policy": list(DROP_POLICIES),
    "scenario": list(SCENARIOS), "dtype": list(DTYPES), "router_dtype": list(ROUTER_DTYPES),
    "capacity_scope": list(CAPACITY_SCOPES), "activation": list(ACTIVATIONS), "sparsity_mode": list(SPARSITY_MODES),
}
RANGES: dict[str, tuple[float, float]] = {
    "n_experts": (1, 256), "batch": (1, 64), "temperature": (0.05, 10.0), "capacity_factor": (0.1, 4.0),
    "noise_std": (0.0, 3.0), "jitter_eps": (0.0, 0.5), "hot_bias": (-10.0, 10.0), "bias_spread": (0.0, 5.0),
    "expert_bias_hot": (-2.0, 2.0), "expert_bias_spread": (0.0, 1.0), "n_clusters": (1, 32), "skew": (0.0, 3.0),
    "spread": (0.0, 2.0), "drift_step": (0, 1000), "seed": (0, 2 ** 31 - 1), "routed_scaling_factor": (0.1, 10.0),
    "n_group": (1, 256), "topk_group": (1, 256), "shared_experts": (0, 8), "d_shared": (0, 8192),
    "swiglu_limit": (0.5, 20.0),
}


def sanitize(values: dict, devices: list[str]) -> tuple[dict, list[str]]:
    """Bring values into what the widgets accept (options, ranges, top_k ≤ n_experts); say every change."""
    fixed, notes = dict(values), []
    for key, options in {**OPTIONS, "device": devices}.items():
        if fixed[key] not in options:
            notes.append(f"{key}={quote(fixed[key])} is not available here; using {quote(CONTROL_DEFAULTS[key])}")
            fixed[key] = CONTROL_DEFAULTS[key]
    for key, (lo, hi) in RANGES.items():
        value = fixed[key]
        if not math.isfinite(value):  # min/max would keep a NaN
            notes.append(f"{key}={quote(value)} is not a finite number; using {quote(CONTROL_DEFAULTS[key])}")
            fixed[key] = CONTROL_DEFAULTS[key]
        elif not lo <= value <= hi:
            clamped = type(CONTROL_DEFAULTS[key])(min(max(value, lo), hi))
            notes.append(f"{key}={quote(value)} is outside {lo}..{hi}; using {quote(clamped)}")
            fixed[key] = clamped
    top_k = max(1, min(int(fixed["top_k"]), int(fixed["n_experts"])))
    if top_k != fixed["top_k"]:
        notes.append(f"top_k={quote(fixed['top_k'])} must be in 1..n_experts={fixed['n_experts']}; using {top_k}")
        fixed["top_k"] = top_k
    if not -1 <= fixed["hot_expert"] < fixed["n_experts"]:
        notes.append(f"hot_expert={quote(fixed['hot_expert'])} is not an expert of {fixed['n_experts']} "
                     f"(0..{fixed['n_experts'] - 1}, or -1 for none); using none")
        fixed["hot_expert"] = -1
    _sanitize_groups(fixed, notes)
    _sanitize_shared(fixed, notes)
    return fixed, notes


def divisors(n: int) -> list[int]:
    """The n_group values n_experts = n allows: its divisors."""
    return [g for g in range(1, n + 1) if n % g == 0]


def _sanitize_groups(fixed: dict, notes: list[str]) -> None:
    """n_group must divide n_experts (its widget lists the divisors); topk_group at most n_group."""
    E, G = fixed["n_experts"], fixed["n_group"]
    if E % G:
        g = max(d for d in divisors(E) if d <= G)
        notes.append(f"n_group={quote(G)} does not divide n_experts={E}; using {g} (the largest divisor below it)")
        fixed["n_group"] = G = g
    if fixed["topk_group"] > G:
        notes.append(f"topk_group={quote(fixed['topk_group'])} exceeds n_group={G}; using {G}")
        fixed["topk_group"] = G


def _sanitize_shared(fixed: dict, notes: list[str]) -> None:
    """d_shared and shared_gate describe shared experts: without any they go back to their defaults."""
    if fixed["shared_experts"] > 0:
        return
    for key in ("d_shared", "shared_gate"):
        if fixed[key] != CONTROL_DEFAULTS[key]:
            notes.append(f"{key}={quote(fixed[key])} needs shared_experts ≥ 1 (it is 0); "
                         f"using {quote(CONTROL_DEFAULTS[key])}")
            fixed[key] = CONTROL_DEFAULTS[key]
