"""The router's balancing losses, written once: on tensors (training, differentiable) and on sums (statistics).

aux_loss = E·Σ_e f_e·P_e with f_e = demand_e / (T·K) and P_e = mean_t probs[t, e] (Switch / GShard);
z_loss = mean_t (logsumexp_e router_logits[t, e])² (ST-MoE). Definitions in moe/definitions.py.
The sum forms work on numpy arrays and on tensors alike, so a forward's statistics, an accumulation
of many forwards and the training term use one formula.
"""
from __future__ import annotations

import torch
from torch import Tensor


def aux_loss_from_sums(demand, prob_sum, tokens: float, top_k: int):
    """E·Σ_e f_e·P_e from demand (E,) routed assignments and prob_sum (E,) Σ_t probs[t, e] over `tokens`."""
    f = demand / (tokens * top_k)  # (E,)
    P = prob_sum / tokens  # (E,)
    return demand.shape[0] * (f * P).sum()


def aux_loss(probs: Tensor, routed: Tensor, top_k: int) -> Tensor:
    """E·Σ_e f_e·P_e of one forward, differentiable through probs (T, E); routed (T, E) bool."""
    return aux_loss_from_sums(routed.to(probs.dtype).sum(dim=0), probs.sum(dim=0), probs.shape[0], top_k)


def lse_sq(logits: Tensor) -> Tensor:
    """(T,): (logsumexp_e logits[t, e])² per token; logits (T, E)."""
    return torch.logsumexp(logits, dim=-1).square()


def lse_sq_sum(logits: Tensor) -> Tensor:
    """Σ_t (logsumexp_e logits[t, e])², a 0-d tensor; logits (T, E)."""
    return lse_sq(logits).sum()


def z_loss_from_sums(lse_sq, tokens: float):
    """mean_t (logsumexp_e logits[t, e])² from its sum over `tokens`."""
    return lse_sq / tokens


def z_loss(logits: Tensor) -> Tensor:
    """mean_t (logsumexp_e logits[t, e])², differentiable; logits (T, E)."""
    return z_loss_from_sums(lse_sq_sum(logits), logits.shape[0])
