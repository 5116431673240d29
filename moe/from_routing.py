"""trace_from_routing: the routing statistics of choices made elsewhere (a real model, a training run).

The router logits and top-k choices come in; the probabilities, gates, sums and tables go through
the very functions a forward uses (`scores_and_probs`, `topk_weights`, `gather_sums`), so every
routing-side number is the one an engine forward with the same weights would report. The experts
never ran, so the output-side numbers are NaN.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from moe.config import MoEConfig
from moe.router import scores_and_probs, topk_weights
from moe.stats import ForwardSums, StatsInputs, gather_sums
from moe.trace import Trace
from moe.traces.log import repeated_expert


def trace_from_routing(config: MoEConfig, router_logits: Tensor, top_k_index: Tensor,
                       top_k_weights: Tensor | None = None) -> Trace:
    """A Trace from router logits (T, E) or (B, S, E) and the chosen experts (T, K) or (B, S, K).

    Logits are taken as final (after any logit bias, temperature, noise); probs follow config.score.
    top_k_weights None: the weights the engine would give (config.normalize_topk, routed_scaling_factor).
    There is no capacity: served = routed. NaN (the experts did not run here): activation_sparsity,
    output_rms, contribution, specialization and nonfinite_output.
    """
    r = _routing(config, router_logits, top_k_index, top_k_weights)
    served = r["routed"].float()  # (T, E)
    coactivation = served.t() @ served  # (E, E)
    sums = _sums(config, r, coactivation)
    return Trace(config=config, router_logits=r["logits"], probs=r["probs"], routed=r["routed"], served=r["routed"],
                 gates=r["gates"], contributions=r["contributions"], coactivation=coactivation,
                 top_k_index=r["idx"], top_k_weights=r["w"], capacity=None, device=str(r["logits"].device), sums=sums)


def sums_from_routing(config: MoEConfig, router_logits: Tensor, top_k_index: Tensor,
                      top_k_weights: Tensor | None = None) -> ForwardSums:
    """trace_from_routing's sums without the Trace and without its (E, E) co-activation (sums.coactivation
    is None): what a trace file's statistics need, in memory linear in E."""
    return _sums(config, _routing(config, router_logits, top_k_index, top_k_weights), None)


def sums_from_choices(n_experts: int, top_k_index: np.ndarray) -> ForwardSums:
    """The sums of routing known only by its choices (T, K), e.g. a Megatron-LM trace without logits:
    the load side (demand = served) is exact; every probability- and output-side sum is NaN."""
    T, K = top_k_index.shape
    if T == 0 or K == 0 or int(top_k_index.min()) < 0 or int(top_k_index.max()) >= n_experts:
        raise ValueError(f"top_k_index must hold at least one token of expert indices in 0..{n_experts - 1}")
    if repeated_expert(top_k_index) is not None:
        raise ValueError("top_k_index names an expert twice for one token; give K distinct experts per token")
    demand = np.bincount(top_k_index.ravel(), minlength=n_experts).astype(np.float64)  # (E,)
    nan, unknown = float("nan"), np.full(n_experts, np.nan)  # (E,)
    return ForwardSums(n_experts=n_experts, top_k=K, d_model=1, d_expert=1, forwards=1, tokens=float(T),
                       capacity=nan, forward_ms=0.0, demand=demand, served=demand.copy(), near_zero=unknown,
                       sum_sq=unknown, gate_sum=unknown, contribution=unknown, prob_sum=unknown,
                       sum_y=np.full((n_experts, 1), np.nan), coactivation=None, lse_sq=nan, confidence=nan,
                       nonfinite=nan, nonfinite_output=nan, margin=nan, margin_expert=unknown, unbiased=unknown,
                       overlap=unknown)



def sums_from_counts(demand: np.ndarray, tokens: float, top_k: int | None, forwards: int = 1) -> ForwardSums:
    """The sums of routing known only by its token counts per expert (E,) (a routing log): the load side is exact;
    tokens is NaN when the source does not record top_k; every probability- and output-side sum is NaN."""
    demand = np.asarray(demand, dtype=np.float64)
    E = len(demand)
    nan, unknown = float("nan"), np.full(E, np.nan)  # (E,)
    return ForwardSums(n_experts=E, top_k=top_k or 0, d_model=1, d_expert=1, forwards=forwards, tokens=tokens,
                       capacity=nan, forward_ms=0.0, demand=demand, served=demand.copy(), near_zero=unknown,
                       sum_sq=unknown, gate_sum=unknown, contribution=unknown, prob_sum=unknown,
                       sum_y=np.full((E, 1), np.nan), coactivation=None, lse_sq=nan, confidence=nan,
                       nonfinite=nan, nonfinite_output=nan, margin=nan, margin_expert=unknown, unbiased=unknown,
                       overlap=unknown)

def _routing(config: MoEConfig, router_logits: Tensor, top_k_index: Tensor, top_k_weights: Tensor | None) -> dict:
    """The (T, E) tensors every routing-side number comes from (served = routed: no capacity)."""
    logits, idx, w = _checked(config, router_logits, top_k_index, top_k_weights)
    T, E = logits.shape
    score, probs = scores_and_probs(logits, config)
    if w is None:
        w = topk_weights(logits, score, idx, config)  # (T, K)
    routed = torch.zeros(T, E, dtype=torch.bool, device=logits.device).scatter_(1, idx, True)  # (T, E)
    gates = torch.zeros(T, E, device=logits.device).scatter_(1, idx, w)  # (T, E)
    contributions = torch.full((T, E), float("nan"), device=logits.device)  # (T, E): no expert outputs
    return dict(logits=logits, probs=probs, idx=idx, w=w, routed=routed, gates=gates, contributions=contributions)


def _sums(config: MoEConfig, r: dict, coactivation: Tensor | None) -> ForwardSums:
    """The routing side only: the experts did not run, so the output-side sums are NaN."""
    return gather_sums(StatsInputs(probs=r["probs"], router_logits=r["logits"], routed=r["routed"], served=r["routed"],
                                   gates=r["gates"], top_k=config.top_k, d_model=config.d_model,
                                   d_expert=config.d_expert, capacity=None, overlap=True, coactivation=coactivation))


def _checked(cfg: MoEConfig, logits: Tensor, idx: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate the inputs; return logits (T, E) float32, idx (T, K) int64 and w (T, K) float32 or None."""
    if cfg.router in ("expert_choice", "hash"):
        raise ValueError(f"trace_from_routing needs a token-choice config with router='topk' (got "
                         f"{cfg.router!r}); pass config.replace(router='topk')")
    for name, value in (("router_logits", logits), ("top_k_index", idx), ("top_k_weights", w)):
        if value is not None and not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if logits.dim() not in (2, 3) or logits.shape[-1] != cfg.n_experts:
        raise ValueError(f"router_logits must be (T, E) or (B, S, E) with E = n_experts = {cfg.n_experts}; "
                         f"got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"router_logits must be floating point, got {logits.dtype}")
    lead = tuple(logits.shape[:-1])
    if tuple(idx.shape) != lead + (cfg.top_k,):
        raise ValueError(f"top_k_index must have shape {lead + (cfg.top_k,)} (the logits' tokens × top_k="
                         f"{cfg.top_k}); got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"top_k_index must hold integer expert indices, got {idx.dtype}")
    logits = logits.detach().reshape(-1, cfg.n_experts).float()  # (T, E)
    if logits.shape[0] == 0:
        raise ValueError("router_logits has no tokens; give at least one token")
    idx = idx.detach().reshape(-1, cfg.top_k).to(device=logits.device, dtype=torch.int64)  # (T, K)
    # one host check for range and duplicates (validation, not a per-token loop)
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= cfg.n_experts:
        raise ValueError(f"top_k_index holds {low if low < 0 else high}, outside 0..{cfg.n_experts - 1}; "
                         f"give expert indices below n_experts={cfg.n_experts}")
    ordered = idx.sort(dim=-1).values  # (T, K)
    if cfg.top_k > 1 and bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError("top_k_index names an expert twice for one token; give K distinct experts per token")
    if w is None:
        return logits, idx, None
    if tuple(w.shape) != lead + (cfg.top_k,) or not w.is_floating_point():
        raise ValueError(f"top_k_weights must be floating point of shape {lead + (cfg.top_k,)} like top_k_index; "
                         f"got {w.dtype} {tuple(w.shape)}")
    return logits, idx, w.detach().reshape(-1, cfg.top_k).to(device=logits.device, dtype=torch.float32)
