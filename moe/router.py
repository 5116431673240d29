"""Routing: the router module (parameters only) and the pure functions that decide who serves whom.

Every function here is vectorised over tokens: selection uses stable sorts so that ties break
deterministically (lower expert index first, earlier token first) on every device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moe.config import MoEConfig

_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash


@dataclass
class Routing:
    """The router's decision for T tokens over E experts (all on the layer's device)."""
    router_logits: Tensor          # (T, E) float32
    probs: Tensor                  # (T, E) float32, rows sum to 1
    routed: Tensor                 # (T, E) bool, before capacity
    served: Tensor                 # (T, E) bool, after capacity
    gates: Tensor                  # (T, E) float32, 0 where not served
    top_k_index: Tensor | None     # (T, K) int64; None for expert_choice
    top_k_weights: Tensor | None   # (T, K) float32; None for expert_choice
    capacity: int | None


class TopKRouter(nn.Module):
    """Owns the router weight (E, D) and the selection-only bias buffer (E,)."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model))  # (E, D)
        bias = torch.tensor(cfg.expert_bias or [0.0] * cfg.n_experts, dtype=torch.float32)
        self.register_buffer("expert_bias", bias)  # (E,)

    def forward(self, x: Tensor, cfg: MoEConfig, generator: torch.Generator,
                seq_len: int | None = None, capacity_rows: slice | None = None,
                selected: Tensor | None = None) -> Routing:
        logits = router_logits(x, self.weight, cfg, generator)  # (T, E)
        return route(logits, self.expert_bias, cfg, seq_len, capacity_rows, selected)


def router_logits(x: Tensor, weight: Tensor, cfg: MoEConfig, generator: torch.Generator) -> Tensor:
    """(x @ W.T + logit_bias) / temperature, plus the configured noise; returned in float32."""
    T = x.shape[0]
    rdtype = cfg.router_torch_dtype
    if cfg.router == "random":
        logits = torch.rand(T, cfg.n_experts, generator=generator, device=x.device)  # (T, E)
    else:
        xr = x.to(rdtype)  # (T, D)
        if cfg.jitter_eps > 0:
            u = torch.rand(xr.shape, generator=generator, device=x.device, dtype=torch.float32)
            xr = xr * (1 - cfg.jitter_eps + 2 * cfg.jitter_eps * u).to(rdtype)
        logits = (xr @ weight.to(rdtype).t()).float()  # (T, E)
    if cfg.logit_bias is not None:
        logits = logits + torch.tensor(cfg.logit_bias, device=x.device)
    logits = logits / cfg.temperature
    if cfg.noise_std > 0:
        logits = logits + cfg.noise_std * torch.randn(logits.shape, generator=generator, device=x.device)
    return logits


def scores_and_probs(logits: Tensor, cfg: MoEConfig) -> tuple[Tensor, Tensor]:
    """The selection score (softmax p or sigmoid s) and the trace's probs (rows summing to 1)."""
    if cfg.score == "softmax":
        p = logits.softmax(dim=-1)  # (T, E)
        return p, p
    s = logits.sigmoid()  # (T, E)
    # s / Σ s, computed from log s: sigmoid underflows to 0 in float32 below about −88.7, and a token whose every
    # logit is that low made 0 / 0 (NaN), which blanked its (step, layer)'s aux loss and confidence
    return s, torch.nn.functional.logsigmoid(logits).softmax(dim=-1)


def route(logits: Tensor, expert_bias: Tensor, cfg: MoEConfig, seq_len: int | None = None,
          capacity_rows: slice | None = None, selected: Tensor | None = None) -> Routing:
    """Select experts for every token, apply capacity, and build the (T, E) gate matrix.

    seq_len: tokens per sequence S (T = B·S); with capacity_scope="sequence" capacity applies to
    each sequence separately. None means one sequence of T tokens.
    capacity_rows (a contiguous slice of one sequence's rows; top-k and hash routers): capacity is ranked among
    these rows alone, C from their count, and the other rows are served in full (a window's scored tokens and
    its context: moe.hf.windows).
    selected (T, K) (top-k router): the experts each token selects, as a model's own router chose them (moe.hf:
    ties at the K-th score go as its torch.topk breaks them); the weights, capacity and statistics follow from them.
    """
    T, E = logits.shape
    score, probs = scores_and_probs(logits, cfg)
    S = seq_len if cfg.capacity_scope == "sequence" and seq_len is not None else T
    if T % S:
        raise ValueError(f"{T} tokens do not split into sequences of seq_len={S}; give a (B, S, D) input")
    C = cfg.capacity(S)
    if cfg.router == "expert_choice":
        keep = _top_rows(probs.view(-1, S, E), C).view(T, E)  # (T, E) bool: each expert's C best tokens
        gates = torch.where(keep, probs * cfg.routed_scaling_factor, 0.0)
        return Routing(logits, probs, keep, keep, gates, None, None, C)

    if cfg.router == "hash":
        idx = _hash_experts(T, cfg.n_experts, cfg.top_k, logits.device)  # (T, K)
        w = torch.full(idx.shape, 1.0 / cfg.top_k if cfg.normalize_topk else 1.0, device=logits.device)
    else:
        selection = score + expert_bias  # (T, E) the bias steers the choice, never the weights
        if cfg.n_group > 1:
            selection = selection.masked_fill(~group_mask(selection, cfg.n_group, cfg.topk_group), float("-inf"))
        idx = (selection_order(selection, logits)[:, : cfg.top_k] if selected is None
               else _checked(selected, T, cfg).to(logits.device))  # (T, K)
        w = topk_weights(logits, score, idx, cfg)  # (T, K)
    if cfg.router == "hash" and cfg.routed_scaling_factor != 1.0:
        w = w * cfg.routed_scaling_factor

    routed = torch.zeros(T, E, dtype=torch.bool, device=logits.device).scatter_(1, idx, True)  # (T, E)
    gates = torch.zeros(T, E, device=logits.device).scatter_(1, idx, w)  # (T, E)
    if C is None:
        return Routing(logits, probs, routed, routed, gates, idx, w, C)
    if capacity_rows is not None:
        if S != T:
            raise ValueError(f"capacity_rows rank capacity within one sequence; got {T // S} sequences of {S}: "
                             "give one sequence (B = 1)")
        return _capacity_among(logits, probs, routed, gates, idx, w, cfg, capacity_rows)
    served = _apply_capacity(routed.view(-1, S, E), probs.view(-1, S, E), C, cfg.drop_policy).view(T, E)
    return Routing(logits, probs, routed, served, torch.where(served, gates, 0.0), idx, w, C)


def _capacity_among(logits, probs, routed, gates, idx, w, cfg: MoEConfig, rows: slice) -> Routing:
    """Capacity over `rows` alone (C from their count); every other row keeps all its experts."""
    T, E = routed.shape
    C = cfg.capacity(len(range(T)[rows]))
    served = routed.clone()  # (T, E)
    served[rows] = _apply_capacity(routed[rows][None], probs[rows][None], C, cfg.drop_policy)[0]
    return Routing(logits, probs, routed, served, torch.where(served, gates, 0.0), idx, w, C)


def _checked(selected: Tensor, T: int, cfg: MoEConfig) -> Tensor:
    """A given selection (T, K) as int64 (a model's router's: its shape checked, its ids as the model chose them)."""
    if selected.shape != (T, cfg.top_k):
        raise ValueError(f"the given selection has shape {tuple(selected.shape)}; expected (tokens={T}, "
                         f"top_k={cfg.top_k})")
    return selected.long()


def selection_order(selection: Tensor, logits: Tensor) -> Tensor:
    """(T, E) experts by selection, best first; equal selections by logit, then the lower expert. In float32 a
    sigmoid score rounds to exactly 1 above a logit of about 16.6 and to 0 far below (softmax probs to 0 far below
    the best), so scores that differ as numbers tie: ordered by index, 76 of 512 tokens at temperature 0.05 went to
    other experts than their top-K by score. The logit keeps the order the scores have as numbers."""
    by_logit = torch.sort(logits, dim=-1, descending=True, stable=True).indices  # (T, E)
    return by_logit.gather(1, torch.sort(selection.gather(1, by_logit), dim=-1, descending=True, stable=True).indices)


def topk_weights(logits: Tensor, score: Tensor, idx: Tensor, cfg: MoEConfig) -> Tensor:
    """The combine weights of the chosen experts idx (T, K): their unbiased scores, divided by their
    sum if normalize_topk, times routed_scaling_factor. Normalised sigmoid scores come from log-sigmoid (s / Σ s as
    a softmax of log s): sigmoid underflows to 0 in float32 below about −88.7, and 0 / 0 made the gates NaN."""
    w = score.gather(1, idx)  # (T, K)
    if cfg.normalize_topk:
        if cfg.score == "sigmoid":
            w = torch.nn.functional.logsigmoid(logits.gather(1, idx)).softmax(dim=-1)
        else:
            w = w / w.sum(dim=-1, keepdim=True)
    if cfg.routed_scaling_factor != 1.0:
        w = w * cfg.routed_scaling_factor
    return w


def group_mask(selection: Tensor, n_group: int, topk_group: int) -> Tensor:
    """(T, E) bool: experts of the topk_group best of n_group contiguous groups (DeepSeek-V3).

    A group's score is the sum of its two best selection scores; equal group scores keep the lower group.
    """
    T, E = selection.shape
    per_group = E // n_group
    grouped = selection.view(T, n_group, per_group)  # (T, G, E/G)
    best1, at = grouped.max(dim=-1, keepdim=True)  # (T, G, 1): max is much cheaper than topk(2) on CPU
    group_score = best1.squeeze(-1)  # (T, G)
    if per_group > 1:
        group_score = group_score + grouped.scatter(-1, at, float("-inf")).amax(dim=-1)  # + second best
    best = torch.sort(group_score, dim=-1, descending=True, stable=True).indices[:, :topk_group]  # (T, topk_group)
    keep = torch.zeros(T, n_group, dtype=torch.bool, device=selection.device).scatter_(1, best, True)  # (T, G)
    return keep.repeat_interleave(per_group, dim=1)  # (T, E)


def _hash_experts(T: int, E: int, K: int, device) -> Tensor:
    """K distinct experts per token from a multiplicative hash of the token index."""
    t = torch.arange(T, device=device, dtype=torch.int64)
    h = (t * _HASH_MULTIPLIER) % (2 ** 32)  # (T,)
    return (h[:, None] + torch.arange(K, device=device)) % E  # (T, K)


def _top_rows(values: Tensor, C: int, mask: Tensor | None = None) -> Tensor:
    """Per sequence and column of (B, S, E), mark the C largest rows (earlier row wins ties);
    masked-out rows never count."""
    if mask is not None:
        values = values.masked_fill(~mask, float("-inf"))
    order = torch.sort(values, dim=1, descending=True, stable=True).indices  # (B, S, E)
    arange = torch.arange(values.shape[1], device=values.device).unsqueeze(1).expand_as(order)  # (B, S, E)
    rank = torch.empty_like(order).scatter_(1, order, arange)  # (B, S, E) rank of each row
    keep = rank < C
    return keep if mask is None else keep & mask


def _apply_capacity(routed: Tensor, probs: Tensor, C: int, policy: str) -> Tensor:
    """routed, probs (B, S, E): keep at most C routed tokens per expert and sequence, the first C
    in token order or the C most probable."""
    if policy == "position":
        position = routed.long().cumsum(dim=1)  # (B, S, E): 1-based arrival order per expert
        return routed & (position <= C)
    return _top_rows(probs, C, mask=routed)


def chose_from_scores(routing: Routing, cfg: MoEConfig) -> bool:
    """Whether the router picked each token's experts from its scores (top-k, random), so that the unbiased
    top-K of probs is comparable with its choice (bias_overlap); not for hash or expert_choice."""
    return routing.top_k_index is not None and cfg.router != "hash"
