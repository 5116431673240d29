"""Statistics: additive sums gathered on the device, one host transfer, and the tables built from them.

Every reported number is derived from `ForwardSums`, which are plain sums over tokens. Sums add
across forwards, so one trace and an accumulation of many use the very same formulas.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

CONFIDENCE_CAP = 100.0
SMALL_SORT = 1 << 16  # up to this many (token, expert) probs, router_health sorts them (see there)
PER_EXPERT_COLUMNS = ["expert", "demand", "served", "dropped", "load_share", "utilization",
                      "activation_sparsity", "output_rms", "mean_gate", "contribution", "specialization",
                      "topk_margin", "bias_overlap"]
SUMMARY_KEYS = ["aux_loss", "z_loss", "cv", "max_over_mean", "load_entropy", "dead_fraction",
                "dropped_fraction", "mean_confidence", "tokens", "forward_ms", "nonfinite", "nonfinite_output",
                "demand", "served", "dropped", "active_experts", "capacity", "topk_margin", "bias_overlap",
                "shared_output_rms", "shared_fraction"]
# Columns a trace built from routing alone (moe.trace_from_routing) cannot know: NaN there.
OUTPUT_SIDE_COLUMNS = ("activation_sparsity", "output_rms", "contribution", "specialization")


@dataclass
class ForwardSums:
    """Host-side float64 sums over one or more forwards (shapes: E experts, D model width)."""
    n_experts: int
    top_k: int
    d_model: int
    d_expert: int
    forwards: int
    tokens: float
    capacity: float          # Σ over forwards of C (NaN when dropless)
    forward_ms: float        # Σ over forwards
    demand: np.ndarray       # (E,) routed assignments
    served: np.ndarray       # (E,) served assignments
    near_zero: np.ndarray    # (E,) hidden entries with |h| < eps
    sum_sq: np.ndarray       # (E,) Σ y² over served tokens and D
    gate_sum: np.ndarray     # (E,) Σ gates over served assignments
    contribution: np.ndarray # (E,) Σ ‖gate·y‖
    prob_sum: np.ndarray     # (E,) Σ_t probs[t, e]
    sum_y: np.ndarray        # (E, D) Σ y over served tokens
    coactivation: np.ndarray | None  # (E, E) tokens served by both experts; None when not gathered (trace files)
    lse_sq: float            # Σ_t logsumexp(logits_t)²
    confidence: float        # Σ_t min(p1/p2, cap)
    nonfinite: float         # non-finite router logits
    nonfinite_output: float  # non-finite entries of the layer output y
    margin: float            # Σ_t (p_(K) − p_(K+1)) / p_(K) over sorted probs (NaN when K = E)
    margin_expert: np.ndarray  # (E,) Σ_t routed[t, e] · margin_t
    unbiased: np.ndarray     # (E,) assignments of the unbiased top-K of probs (NaN: not a score router)
    overlap: np.ndarray      # (E,) unbiased top-K assignments that the router also chose
    # shared experts (0 when the layer has none): s_t the shared output, r_t the routed output of token t
    shared_tokens: float = 0.0  # tokens that went through a shared FFN
    shared_norm: float = 0.0    # Σ_t ‖s_t‖₂
    routed_norm: float = 0.0    # Σ_t ‖r_t‖₂ over the same tokens
    shared_sq: float = 0.0      # Σ_t ‖s_t‖₂²

    def __add__(self, other: "ForwardSums") -> "ForwardSums":
        shape = ("n_experts", "top_k", "d_model", "d_expert")
        mine, theirs = (tuple(getattr(s, n) for n in shape) for s in (self, other))
        if mine != theirs:
            diff = ", ".join(f"{n}={b} (accumulated: {a})" for n, a, b in zip(shape, mine, theirs) if a != b)
            raise ValueError(f"cannot merge statistics of a layer with {diff}: aux_loss and utilization "
                             f"would mix two layer shapes; reset the accumulator or keep one per layer shape")
        merged = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("n_experts", "top_k", "d_model", "d_expert"):
                merged[f.name] = a
            else:  # a co-activation not gathered on either side stays unknown
                merged[f.name] = None if a is None or b is None else a + b
        return ForwardSums(**merged)


def gather_sums(probs: Tensor, logits: Tensor, routed: Tensor, served: Tensor, gates: Tensor,
                contributions: Tensor, coactivation: Tensor | None, near_zero: Tensor, sum_sq: Tensor,
                sum_y: Tensor, out: Tensor, *, top_k: int, d_expert: int, capacity: int | None,
                overlap: bool = True, shared: Tensor | None = None) -> ForwardSums:
    """Reduce the trace on its device and move every statistic to the host in one transfer.

    overlap: whether the router chose from the scores (bias_overlap is NaN for hash and expert_choice).
    shared: moe.shared.shared_sums(routed, s), (3,), when the layer has shared experts.
    coactivation None: not gathered (its E² entries are left out of the transfer; ForwardSums holds None).
    """
    T, E = probs.shape
    D = sum_y.shape[1]
    acc = torch.float32 if probs.device.type == "mps" else torch.float64  # mps has no float64
    confidence, margin, unbiased = router_health(probs, top_k)  # (T,), (T,), (T, E)
    if not overlap:
        unbiased = torch.full((T, E), float("nan"), device=probs.device)
    # One column reduction for the (T, E) matrices: demand, served, gate, contribution, probs sums,
    # the margin of the tokens routed to each expert, unbiased top-K and its overlap with the choice.
    columns = torch.cat([routed, served, gates, contributions, probs, routed * margin[:, None],
                         unbiased, unbiased * routed], dim=1).to(acc).sum(dim=0)  # (8E,)
    per_expert = torch.cat([columns, near_zero.to(acc), sum_sq.to(acc)])  # (10E,)
    scalars = torch.stack([torch.logsumexp(logits, dim=-1).square().sum().to(acc), confidence.sum().to(acc),
                           (~torch.isfinite(logits)).sum().to(acc), (~torch.isfinite(out)).sum().to(acc),
                           margin.sum().to(acc)])  # (5,)
    extra = [] if shared is None else [shared.to(acc)]  # (3,) when the layer has shared experts
    co = [] if coactivation is None else [coactivation.to(acc).flatten()]  # (E·E,) when gathered
    packed = torch.cat([per_expert, sum_y.to(acc).flatten(), *co, scalars, *extra])
    host = packed.detach().cpu().numpy().astype(np.float64)  # the one statistics transfer
    pe, rest = host[: 10 * E].reshape(10, E), host[10 * E:]
    EE = 0 if coactivation is None else E * E
    sc = rest[E * D + EE:]  # the 5 scalars, then the 3 shared sums if any
    shared_fields = {} if shared is None else dict(shared_tokens=float(T), shared_norm=float(sc[5]),
                                                   routed_norm=float(sc[6]), shared_sq=float(sc[7]))
    return ForwardSums(
        n_experts=E, top_k=top_k, d_model=D, d_expert=d_expert, forwards=1, tokens=float(T),
        capacity=float("nan") if capacity is None else float(capacity), forward_ms=0.0,
        demand=pe[0], served=pe[1], gate_sum=pe[2], contribution=pe[3], prob_sum=pe[4],
        margin_expert=pe[5], unbiased=pe[6], overlap=pe[7], near_zero=pe[8], sum_sq=pe[9],
        sum_y=rest[: E * D].reshape(E, D), coactivation=rest[E * D: E * D + EE].reshape(E, E) if EE else None,
        lse_sq=float(sc[0]), confidence=float(sc[1]), nonfinite=float(sc[2]), nonfinite_output=float(sc[3]),
        margin=float(sc[4]), **shared_fields)


def router_health(probs: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per token, from probs (T, E): confidence min(p1/p2, cap), the top-K margin
    (p_(K) − p_(K+1)) / p_(K), and the unbiased top-K as a (T, E) float mask (lower index wins ties,
    like the router's stable sort). Confidence is NaN when E = 1, the margin when K = E."""
    T, E = probs.shape
    if T * E <= SMALL_SORT:  # per-op cost dominates: one stable sort gives the values and the members
        values, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (T, E), (T, E)
        unbiased = torch.zeros_like(probs).scatter_(1, order[:, :top_k], 1.0)  # (T, E)
    else:  # a full sort costs more than topk(K+1) and a tie-aware mask on large inputs
        values = probs.topk(min(top_k + 1, E), dim=-1).values  # (T, K+1) largest first; ties agree
        kth = values[:, top_k - 1 : top_k]  # (T, 1)
        above = probs > kth  # (T, E) surely in the top K
        tied = probs == kth  # (T, E) in it while places remain, lower index first
        places = top_k - above.sum(dim=-1, keepdim=True)  # (T, 1)
        unbiased = (above | (tied & (tied.cumsum(dim=-1) <= places))).float()  # (T, E)
    if E == 1:
        nan = torch.full((T,), float("nan"), device=probs.device)
        return nan, nan, unbiased
    confidence = (values[:, 0] / values[:, 1]).clamp(max=CONFIDENCE_CAP)  # (T,)
    if top_k >= E:
        return confidence, torch.full((T,), float("nan"), device=probs.device), unbiased
    kth, next_ = values[:, top_k - 1], values[:, top_k]  # (T,), (T,)
    margin = torch.where(kth > 0, 1 - next_ / kth, 0.0)  # (T,); p_(K) = 0 only when p_(K+1) = 0 too
    return confidence, margin, unbiased


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def per_expert_frame(s: ForwardSums) -> pd.DataFrame:
    """One row per expert; definitions in moe/definitions.py."""
    served_total = s.served.sum()
    mu = s.sum_y.sum(axis=0)  # (D,) direction of the mean over all served assignments
    norms = np.linalg.norm(s.sum_y, axis=1) * np.linalg.norm(mu)  # (E,)
    cosine = _ratio(s.sum_y @ mu, norms)
    return pd.DataFrame({
        "expert": np.arange(s.n_experts),
        "demand": s.demand.astype(np.int64),
        "served": s.served.astype(np.int64),
        "dropped": (s.demand - s.served).astype(np.int64),
        "load_share": s.served / served_total if served_total > 0 else np.full(s.n_experts, np.nan),
        "utilization": s.served / (s.tokens * s.top_k / s.n_experts),
        "activation_sparsity": _ratio(s.near_zero, s.served * s.d_expert),
        "output_rms": np.sqrt(_ratio(s.sum_sq, s.served * s.d_model)),
        "mean_gate": _ratio(s.gate_sum, s.served),
        "contribution": s.contribution,
        "specialization": np.where(s.served > 0, 1.0 - cosine, np.nan),
        "topk_margin": _ratio(s.margin_expert, s.demand),
        "bias_overlap": _ratio(s.overlap, s.unbiased),
    })


def summary_dict(s: ForwardSums) -> dict[str, float]:
    """Scalar health numbers of the routing; definitions in moe/definitions.py."""
    E, T = s.n_experts, s.tokens
    demand = s.demand
    mean = demand.mean()
    share = demand / demand.sum() if demand.sum() > 0 else np.zeros(E)
    nz = share[share > 0]
    f = demand / (T * s.top_k)
    P = s.prob_sum / T
    return {
        "aux_loss": float(E * np.sum(f * P)),
        "z_loss": s.lse_sq / T,
        "cv": float(demand.std() / mean) if mean > 0 else float("nan"),
        "max_over_mean": float(demand.max() / mean) if mean > 0 else float("nan"),
        "load_entropy": float(np.exp(-np.sum(nz * np.log(nz))) / E) if nz.size else float("nan"),
        "dead_fraction": float(np.mean(s.served == 0)),
        "dropped_fraction": float((demand.sum() - s.served.sum()) / demand.sum()) if demand.sum() > 0 else 0.0,
        "mean_confidence": s.confidence / T,
        "tokens": float(T),
        "forward_ms": s.forward_ms,
        "nonfinite": s.nonfinite,
        "nonfinite_output": s.nonfinite_output,
        "demand": float(demand.sum()),
        "served": float(s.served.sum()),
        "dropped": float(demand.sum() - s.served.sum()),
        "active_experts": float(np.sum(s.served > 0)),
        "capacity": s.capacity / s.forwards,
        "topk_margin": s.margin / T,
        "bias_overlap": float(s.overlap.sum() / s.unbiased.sum()) if s.unbiased.sum() > 0 else float("nan"),
        **shared_summary(s),
    }


def shared_summary(s: ForwardSums) -> dict[str, float]:
    """shared_output_rms = sqrt(Σ_t ‖s_t‖² / (T·D)); shared_fraction = Σ_t ‖s_t‖ / (Σ_t ‖s_t‖ + Σ_t ‖r_t‖).

    Both NaN without shared experts (shared_fraction also when both outputs are zero).
    """
    if s.shared_tokens == 0:
        return {"shared_output_rms": float("nan"), "shared_fraction": float("nan")}
    total = s.shared_norm + s.routed_norm
    return {"shared_output_rms": float(np.sqrt(s.shared_sq / (s.shared_tokens * s.d_model))),
            "shared_fraction": float(s.shared_norm / total) if total > 0 else float("nan")}


class StatsAccumulator:
    """Merges the statistics of many forwards; owned by the caller, never hidden in the layer."""

    def __init__(self) -> None:
        self.sums: ForwardSums | None = None

    def update(self, trace) -> "StatsAccumulator":
        return self.add(trace.sums)

    def add(self, sums: ForwardSums) -> "StatsAccumulator":
        """Merge sums directly (a trace file's records carry sums, not Traces)."""
        self.sums = sums if self.sums is None else self.sums + sums
        return self

    def reset(self) -> None:
        self.sums = None

    @property
    def forwards(self) -> int:
        return 0 if self.sums is None else self.sums.forwards

    def per_expert(self) -> pd.DataFrame:
        if self.sums is None:
            raise ValueError("no forward recorded yet: call update(trace) first")
        return per_expert_frame(self.sums)

    def summary(self) -> dict[str, float]:
        if self.sums is None:
            raise ValueError("no forward recorded yet: call update(trace) first")
        return summary_dict(self.sums)
