"""Statistics: additive sums gathered on the device, one host transfer, and the tables built from them.

Every reported number is derived from `ForwardSums`, which are plain sums over tokens. Sums add
across forwards, so one trace and an accumulation of many use the very same formulas.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from moe.losses import aux_loss_from_sums, lse_sq, z_loss_from_sums
from moe.metrics import entropy, max_over_mean, safe_ratio

CONFIDENCE_CAP = 100.0
SMALL_SORT = 1 << 16  # up to this many (token, expert) probs, router_health sorts them (see there)
PER_EXPERT_COLUMNS = ["expert", "demand", "served", "dropped", "load_share", "utilization",
                      "activation_sparsity", "output_rms", "mean_gate", "contribution", "specialization",
                      "topk_margin", "bias_overlap"]
SUMMARY_KEYS = ["aux_loss", "z_loss", "cv", "max_over_mean", "load_entropy", "dead_fraction",
                "dropped_fraction", "mean_confidence", "tokens", "forward_ms", "nonfinite", "nonfinite_output",
                "demand", "served", "dropped", "active_experts", "capacity", "topk_margin", "bias_overlap",
                "shared_output_rms", "shared_fraction"]
# ForwardSums' (E,) sums over tokens of a (T, E) block (kept arrays even when E = 1).
PER_EXPERT_SUMS = ("demand", "served", "gate_sum", "prob_sum", "margin_expert", "unbiased", "overlap", "contribution")
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
    near_zero: np.ndarray    # (E,) near-zero hidden entries (moe.experts.near_zero_mask: absolute or relative)
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


@dataclass
class StatsInputs:
    """What one forward hands to gather_sums, on the forward's device (T tokens, E experts, D d_model).

    The output side is None where the experts did not run here (trace_from_routing): its sums are NaN.
    """
    probs: Tensor                        # (T, E) rows sum to 1
    router_logits: Tensor                # (T, E)
    routed: Tensor                       # (T, E) bool, the router's choice before capacity
    served: Tensor                       # (T, E) bool, kept by capacity
    gates: Tensor                        # (T, E) combine weights, 0 where not served
    top_k: int
    d_model: int
    d_expert: int
    capacity: int | None                 # C, None when dropless
    overlap: bool = True                 # the router chose from the scores (else bias_overlap is NaN)
    contributions: Tensor | None = None  # (T, E) ‖gates[t, e]·y_e(x_t)‖₂
    near_zero: Tensor | None = None      # (E,) near-zero hidden entries
    sum_sq: Tensor | None = None         # (E,) Σ y² over served tokens and D
    sum_y: Tensor | None = None          # (E, D) Σ y over served tokens
    out: Tensor | None = None            # (T, D) the layer output (for nonfinite_output)
    coactivation: Tensor | None = None   # (E, E); None: not gathered, left out of the transfer
    shared: Tensor | None = None         # (3,) moe.shared.shared_sums, when the layer has shared experts


def gather_sums(inputs: StatsInputs) -> ForwardSums:
    """Reduce one forward on its device and move every statistic to the host in one transfer."""
    s = inputs
    T, E = s.probs.shape
    acc = torch.float32 if s.probs.device.type == "mps" else torch.float64  # mps has no float64
    confidence, margin, unbiased = router_health(s.probs, s.top_k, s.router_logits)  # (T,), (T,), (T, E)
    # One sum over tokens for everything that is per token: (T, E) blocks give the per-expert sums, (T, 1)
    # columns the scalars (bools and integer counts are promoted by cat; few ops matter on small layers).
    blocks = {"demand": s.routed, "served": s.served, "gate_sum": s.gates, "prob_sum": s.probs,
              "margin_expert": s.routed * margin[:, None]}
    if s.overlap:
        blocks.update(unbiased=unbiased, overlap=unbiased * s.routed)
    if s.contributions is not None:
        blocks["contribution"] = s.contributions
    blocks.update(lse_sq=lse_sq(s.router_logits)[:, None], confidence=confidence[:, None], margin=margin[:, None],
                  nonfinite=nonfinite_rows(s.router_logits))
    if s.out is not None:
        blocks["nonfinite_output"] = nonfinite_rows(s.out)
    columns = torch.cat(list(blocks.values()), dim=1).sum(dim=0, dtype=acc)  # (Σ widths,)
    extra = [t.reshape(-1) for t in (s.near_zero, s.sum_sq, s.sum_y, s.coactivation, s.shared) if t is not None]
    host = torch.cat([columns, *extra]).detach().cpu().numpy().astype(np.float64)  # the one statistics transfer
    return _unpack(s, host, {name: b.shape[1] for name, b in blocks.items()})


def nonfinite_rows(t: Tensor) -> Tensor:
    """(T, 1) int64: entries of each row of t (T, n) that are ±inf or NaN (t − t is NaN exactly there; cheaper
    than ~isfinite on the CPU)."""
    return torch.isnan(t - t).sum(dim=1, keepdim=True)


def _unpack(s: StatsInputs, host: np.ndarray, widths: dict[str, int]) -> ForwardSums:
    """ForwardSums from gather_sums' packed host vector; what was not gathered is NaN (coactivation None)."""
    T, E = s.probs.shape
    D, nan = s.d_model, float("nan")
    fields, start = {}, 0
    for name, width in widths.items():  # the column sums: (E,) arrays and scalars
        fields[name] = host[start: start + width] if width > 1 or name in PER_EXPERT_SUMS else float(host[start])
        start += width
    for name, shape in (("near_zero", (E,)), ("sum_sq", (E,)), ("sum_y", (E, D)), ("coactivation", (E, E)),
                        ("shared", (3,))):
        if getattr(s, name) is None:
            fields[name] = None if name in ("coactivation", "shared") else np.full(shape, np.nan)
        else:
            n = math.prod(shape)
            fields[name], start = host[start: start + n].reshape(shape), start + n
    shared = fields.pop("shared")
    if shared is not None:
        fields.update(shared_tokens=float(T), shared_norm=float(shared[0]), routed_norm=float(shared[1]),
                      shared_sq=float(shared[2]))
    for name in ("unbiased", "overlap", "contribution"):
        fields.setdefault(name, np.full(E, np.nan))
    return ForwardSums(n_experts=E, top_k=s.top_k, d_model=D, d_expert=s.d_expert, forwards=1, tokens=float(T),
                       capacity=nan if s.capacity is None else float(s.capacity), forward_ms=0.0,
                       nonfinite_output=fields.pop("nonfinite_output", nan), **fields)


def router_health(probs: Tensor, top_k: int, rank: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per token, from probs (T, E): confidence min(p1/p2, cap), the top-K margin
    (p_(K) − p_(K+1)) / p_(K), and the unbiased top-K as a (T, E) float mask (lower index wins ties,
    like the router's stable sort). The top-K ranks by `rank` (default probs): the router's logits, in whose order
    the probs are as numbers (float32 probs of saturated sigmoid scores tie where the logits, and the router's
    choice, do not). Confidence is NaN when E = 1, the margin when K = E."""
    T, E = probs.shape
    rank = probs if rank is None else rank
    if T * E <= SMALL_SORT:  # per-op cost dominates: one stable sort gives the values and the members
        order = torch.sort(rank, dim=-1, descending=True, stable=True).indices  # (T, E)
        values = probs.gather(1, order)  # (T, E) descending: probs are monotone in the logits
        unbiased = torch.zeros_like(probs).scatter_(1, order[:, :top_k], 1.0)  # (T, E)
    else:  # a full sort costs more than topk(K+1) and a tie-aware mask on large inputs
        values = probs.topk(min(top_k + 1, E), dim=-1).values  # (T, K+1) largest first; ties agree
        kth = rank.topk(top_k, dim=-1).values[:, -1:]  # (T, 1)
        above = rank > kth  # (T, E) surely in the top K
        tied = rank == kth  # (T, E) in it while places remain, lower index first
        places = top_k - above.sum(dim=-1, keepdim=True)  # (T, 1)
        unbiased = (above | (tied & (tied.cumsum(dim=-1) <= places))).float()  # (T, E)
    if E == 1:
        nan = torch.full((T,), float("nan"), device=probs.device)
        return nan, nan, unbiased
    confidence = (values[:, 0] / values[:, 1]).clamp(max=CONFIDENCE_CAP)  # (T,)
    if top_k >= E:
        return confidence, torch.full((T,), float("nan"), device=probs.device), unbiased
    kth, next_ = values[:, top_k - 1], values[:, top_k]  # (T,), (T,)
    # (p_(K) − p_(K+1)) / p_(K): the difference first keeps a tiny margin exact to float32 precision (1 − ratio
    # would leave it an absolute error of one float32 step of 1)
    margin = torch.where(kth > 0, (kth - next_) / kth, 0.0)  # (T,); p_(K) = 0 only when p_(K+1) = 0 too
    return confidence, margin, unbiased


def per_expert_frame(s: ForwardSums) -> pd.DataFrame:
    """One row per expert; definitions in moe/definitions.py."""
    served_total = s.served.sum()
    mu = s.sum_y.sum(axis=0)  # (D,) direction of the mean over all served assignments
    norms = np.linalg.norm(s.sum_y, axis=1) * np.linalg.norm(mu)  # (E,)
    cosine = safe_ratio(s.sum_y @ mu, norms)
    return pd.DataFrame({
        "expert": np.arange(s.n_experts),
        "demand": s.demand.astype(np.int64),
        "served": s.served.astype(np.int64),
        "dropped": (s.demand - s.served).astype(np.int64),
        "load_share": safe_ratio(s.served, served_total),
        "utilization": s.served / (s.tokens * s.top_k / s.n_experts),
        "activation_sparsity": safe_ratio(s.near_zero, s.served * s.d_expert),
        "output_rms": np.sqrt(safe_ratio(s.sum_sq, s.served * s.d_model)),
        "mean_gate": safe_ratio(s.gate_sum, s.served),
        "contribution": s.contribution,
        "specialization": np.where(s.served > 0, 1.0 - cosine, np.nan),
        "topk_margin": safe_ratio(s.margin_expert, s.demand),
        "bias_overlap": safe_ratio(s.overlap, s.unbiased),
    })


def summary_dict(s: ForwardSums) -> dict[str, float]:
    """Scalar health numbers of the routing; definitions in moe/definitions.py."""
    E, T = s.n_experts, s.tokens
    demand = s.demand
    mean = demand.mean()
    return {
        "aux_loss": float(aux_loss_from_sums(demand, s.prob_sum, T, s.top_k)),
        "z_loss": float(z_loss_from_sums(s.lse_sq, T)),
        "cv": safe_ratio(demand.std(), mean),
        "max_over_mean": max_over_mean(demand),
        "load_entropy": float(np.exp(entropy(demand / demand.sum())) / E) if demand.sum() > 0 else float("nan"),
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
        "bias_overlap": safe_ratio(s.overlap.sum(), s.unbiased.sum()),
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
            "shared_fraction": safe_ratio(s.shared_norm, total)}


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
