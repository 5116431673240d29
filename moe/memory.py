"""Memory estimate of a forward, so that callers can refuse a config before building it."""
from __future__ import annotations

from .config import MoEConfig

GiB = 1024 ** 3


def estimate_bytes(cfg: MoEConfig, tokens: int) -> dict[str, int]:
    """Bytes of weights, peak activations and trace for one forward of `tokens` tokens (an upper bound)."""
    T, D, H, E, K = tokens, cfg.d_model, cfg.d_expert, cfg.n_experts, cfg.top_k
    item = cfg.torch_dtype.itemsize
    mats = 3 if cfg.gated else 2                                    # w_gate (when gated), w_up, w_down
    biases = E * ((2 if cfg.gated else 1) * H + D) if cfg.expert_biases else 0
    Hs = cfg.shared_hidden                                          # shared FFN (0 = none) and its gate
    shared = mats * Hs * D + (D if cfg.shared_gate else 0)
    weights = (mats * E * H * D + biases + shared) * item + E * D * 4 + E * 4  # + router (fp32) + bias
    N = T * K if cfg.router != "expert_choice" else E * (cfg.capacity(T) or T)  # assignments
    # Gathered tokens and outputs for all assignments, plus the hidden (gate, up, h) of the largest slice,
    # which is at most every assignment (a collapsed router sends every token to one expert).
    activations = (3 * N * D + T * D) * item + 3 * min(N, T) * H * item + 4 * N * 8
    if Hs:  # the shared FFN's (T, Hs) projections and hidden, its output and routed + shared
        activations += (3 * T * Hs + 2 * T * D) * item
    trace = 10 * T * E * 4 + 2 * E * E * 8 + E * D * 8 + 2 * T * K * 8
    return {"weights": weights, "activations": activations, "trace": trace,
            "total": weights + activations + trace}


def describe_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_budget(cfg: MoEConfig, tokens: int, budget_bytes: int) -> None:
    """Raise ValueError with advice when a forward would need more than `budget_bytes`."""
    est = estimate_bytes(cfg, tokens)
    if est["total"] <= budget_bytes:
        return
    biggest = max(("weights", "activations", "trace"), key=est.__getitem__)
    advice = {"weights": "lower n_experts, d_expert or d_model",
              "activations": "lower the tokens (batch × seq), top_k or d_expert",
              "trace": "lower the tokens or n_experts"}[biggest]
    raise ValueError(f"this configuration needs about {describe_bytes(est['total'])} "
                     f"(weights {describe_bytes(est['weights'])}, activations {describe_bytes(est['activations'])}, "
                     f"trace {describe_bytes(est['trace'])}), over the budget of {describe_bytes(budget_bytes)}: "
                     f"{advice}")
