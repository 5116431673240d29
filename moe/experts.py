"""Experts: stacked FFN weights, the activation registry, and the vectorised dispatch that runs them.

Dispatch sorts the served (token, expert) assignments by expert, gathers the tokens once, runs
each expert on its contiguous slice, and adds the gate-weighted outputs back with index_add_.
The per-expert statistics come out of the same pass, still on the device: per slice while it is hot
in cache for large layers, in a few batched ops after the loop for small ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe.config import MoEConfig

GPT_OSS_ALPHA = 1.702  # gpt_oss: g·σ(1.702·g), a sigmoid approximation of GELU on the clamped gate


def _silu(t: Tensor, limit: float, inplace: bool) -> Tensor:
    return F.silu(t, inplace=inplace)


def _gelu(t: Tensor, limit: float, inplace: bool) -> Tensor:
    return F.gelu(t)  # exact (erf) GELU, transformers' "gelu"; no in-place kernel


def _relu(t: Tensor, limit: float, inplace: bool) -> Tensor:
    return F.relu(t, inplace=inplace)


def _gpt_oss(t: Tensor, limit: float, inplace: bool) -> Tensor:
    g = t.clamp_(max=limit) if inplace else t.clamp(max=limit)  # g = min(gate, limit)
    s = torch.sigmoid(g * GPT_OSS_ALPHA)
    return g.mul_(s) if inplace else g * s


# name -> act(t, swiglu_limit, inplace); the keys are moe.config.ACTIVATIONS
ACTIVATION_FNS: dict[str, Callable[[Tensor, float, bool], Tensor]] = {
    "silu": _silu, "gelu": _gelu, "relu": _relu, "gpt_oss": _gpt_oss}


class FFNWeights(NamedTuple):
    """One FFN in nn.Linear's (out, in) convention; None where the config has no such tensor."""
    w_gate: Tensor | None  # (H, D), None when not gated
    w_up: Tensor           # (H, D)
    w_down: Tensor         # (D, H)
    b_gate: Tensor | None  # (H,)
    b_up: Tensor | None    # (H,)
    b_down: Tensor | None  # (D,)


def _optional(shape: tuple[int, ...], present: bool, kw: dict) -> nn.Parameter | None:
    return nn.Parameter(torch.empty(shape, **kw)) if present else None


class Experts(nn.Module):
    """E experts, weights stacked in nn.Linear's (out, in) convention; w_gate only when gated."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        E, H, D = cfg.n_experts, cfg.d_expert, cfg.d_model
        # Allocated in the target dtype and device: no float32 copy of the weights ever exists.
        kw = dict(dtype=cfg.torch_dtype, device=cfg.device)
        self.w_gate = _optional((E, H, D), cfg.gated, kw)
        self.w_up = nn.Parameter(torch.empty(E, H, D, **kw))
        self.w_down = nn.Parameter(torch.empty(E, D, H, **kw))
        self.b_gate = _optional((E, H), cfg.expert_biases and cfg.gated, kw)
        self.b_up = _optional((E, H), cfg.expert_biases, kw)
        self.b_down = _optional((E, D), cfg.expert_biases, kw)

    def weights(self, e: int) -> FFNWeights:
        """Expert e's tensors (views, no copy)."""
        def pick(p):
            return None if p is None else p[e]
        return FFNWeights(pick(self.w_gate), self.w_up[e], self.w_down[e], pick(self.b_gate), pick(self.b_up),
                          pick(self.b_down))


def expert_ffn(x: Tensor, w: FFNWeights, activation: str, limit: float,
               inplace: bool = False) -> tuple[Tensor, Tensor]:
    """One FFN on x (n, D): returns the hidden h (n, H) and y = W_down h + b_down (n, D).

    Gated: h = act(W_gate x + b_gate)·(W_up x + b_up) ("gpt_oss": the up factor is clamp(up, ±limit) + 1).
    Not gated: h = act(W_up x + b_up). inplace=True reuses the fresh projection buffers (no autograd).
    """
    act = ACTIVATION_FNS[activation]
    up = F.linear(x, w.w_up, w.b_up)  # (n, H)
    if w.w_gate is None:
        h = act(up, limit, inplace)  # (n, H)
    else:
        if activation == "gpt_oss":
            up = up.clamp_(-limit, limit).add_(1.0) if inplace else up.clamp(-limit, limit) + 1.0
        h = act(F.linear(x, w.w_gate, w.b_gate), limit, inplace)  # (n, H)
        h = h.mul_(up) if inplace else h * up
    return h, F.linear(h, w.w_down, w.b_down)  # (n, H), (n, D)


def near_zero_mask(h: Tensor, eps: float, mode: str, inplace: bool = False) -> Tensor:
    """(n, H) bool: "absolute" |h| < eps; "relative" |h| ≤ eps·rms(h_t), rms over the H units of row t."""
    a = h.abs_() if inplace else h.abs()  # (n, H)
    if mode == "absolute":
        return a < eps
    rms = a.float().square().mean(dim=1, keepdim=True).sqrt()  # (n, 1)
    return a <= eps * rms


def count_dtype(numel: int) -> torch.dtype:
    """The cheapest dtype that counts up to numel exactly on every device: float32 below 2²⁴, else int64."""
    return torch.float32 if numel <= 1 << 24 else torch.int64


def near_zero_count(h: Tensor, eps: float, mode: str, inplace: bool = False, acc: torch.dtype | None = None) -> Tensor:
    """0-d: near_zero_mask(h, eps, mode).sum(), the near-zero hidden units of h (n, H), counted exactly in acc
    (default count_dtype(h.numel())).

    The comparison writes 1.0 / 0.0 into the |h| buffer (h's own with inplace=True): on the CPU a bool mask
    costs several times the comparison itself.
    """
    a = h.abs_() if inplace else h.abs()  # (n, H)
    acc = count_dtype(a.numel()) if acc is None else acc
    if mode == "absolute":
        return a.lt_(eps).sum(dtype=acc)
    rms = a.float().square().mean(dim=1, keepdim=True).sqrt()  # (n, 1)
    return a.le_(eps * rms).sum(dtype=acc)


def sparsity_rule(cfg: MoEConfig) -> str:
    """The near-zero test activation_sparsity uses for this config, in words (the page shows it)."""
    eps = f"{cfg.sparsity_eps:g}"
    if cfg.sparsity_mode == "absolute":
        return f"absolute: `|h| < {eps}`"
    return (f"relative: `|h| ≤ {eps}·rms(h_t)`, rms over the H hidden units of the same token and expert")


@dataclass
class DispatchResult:
    out: Tensor                   # (T, D) Σ_e gates[t, e] · y_e(x_t)
    contributions: Tensor | None  # (T, E) ‖gates[t, e] · y_e(x_t)‖₂
    near_zero: Tensor | None      # (E,) float near-zero hidden entries (near_zero_mask) over served tokens
    sum_sq: Tensor | None         # (E,) Σ y_e(x_t)² over served tokens and D
    sum_y: Tensor | None          # (E, D) Σ_t y_e(x_t) over served tokens


# Up to this many hidden values (N·H), the outputs are kept and finished in a few batched ops after the loop
# (per-op cost dominates small layers); above it each slice is finished in the loop while it is hot in cache,
# and nothing is kept. Near-zero hidden units are counted in the loop either way.
SMALL_NUMEL = 1 << 18


def dispatch(x: Tensor, served: Tensor, gates: Tensor, experts: Experts, cfg: MoEConfig,
             stats: bool = True, stat_rows: slice | None = None) -> DispatchResult:
    """Run every served assignment through its expert; x (T, D), served/gates (T, E).

    stat_rows: near_zero, sum_sq and sum_y count only the assignments of those tokens (rows of x); out and
    contributions always cover every token.
    """
    T, E = served.shape
    eps, mode = cfg.sparsity_eps, cfg.sparsity_mode
    D = x.shape[1]
    e_idx, t_idx = served.t().nonzero(as_tuple=True)  # (N,), (N,) sorted by expert, then token
    # The one host sync of the dispatch: slice sizes must be Python ints to cut contiguous slices. With stat_rows
    # (a, b) it also counts each expert's assignments before a and before b: within an expert's slice the tokens
    # are sorted, so the counted pairs are the sub-slice [before_a, before_b) (a view: no mask, no sync).
    a, b = _row_bounds(stat_rows, T)
    counts, before_a, before_b = torch.stack([served.sum(dim=0), served[:a].sum(dim=0),
                                              served[:b].sum(dim=0)]).tolist() if stat_rows is not None else (
        served.sum(dim=0).tolist(), None, None)  # E ints each
    xs = x.index_select(0, t_idx)  # (N, D)
    g = gates[t_idx, e_idx].to(x.dtype)  # (N,)
    # Without autograd, buffers are reused in place (h over the gate projection, y scaled by g).
    inplace = not (torch.is_grad_enabled() and (x.requires_grad or gates.requires_grad
                                                 or any(p.requires_grad for p in experts.parameters())))
    small = xs.shape[0] * max(D, experts.w_up.shape[1]) <= SMALL_NUMEL
    out = torch.zeros_like(x)  # (T, D)
    near, norms, sums, ys = [], [], [], []
    exact = count_dtype(max(counts) * experts.w_up.shape[1])  # one dtype that counts every slice exactly
    keep = None if stat_rows is None else ((t_idx >= a) & (t_idx < b))  # (N,) bool: the pair's token is counted
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = slice(start, start + n)
        h, y = expert_ffn(xs[rows], experts.weights(e), cfg.activation, cfg.swiglu_limit, inplace)  # (n, H), (n, D)
        start += n
        counted = slice(None) if keep is None else slice(before_a[e], before_b[e])  # this expert's counted pairs
        if stats:  # counted while h is hot in cache, in h's own buffer when allowed (no (N, H) copy)
            with torch.no_grad():
                near.append(near_zero_count(h[counted], eps, mode, inplace, exact))  # 0-d
        if small:
            ys.append(y)
            continue
        if stats:
            with torch.no_grad():
                yf = y.float()  # statistics in fp32 whatever the expert dtype
                norms.append(torch.linalg.vector_norm(yf, dim=1))  # (n,) ‖y_e(x_t)‖
                sums.append(yf[counted].sum(dim=0))  # (D,)
        y = y.mul_(g[rows, None]) if inplace else y * g[rows, None]  # (n, D) weighted
        out.index_add_(0, t_idx[rows], y)
    if small:
        y = torch.cat(ys)  # (N, D)
        out.index_add_(0, t_idx, y * g[:, None])
    if not stats:
        return DispatchResult(out, None, None, None, None)
    return _finish(out, e_idx, t_idx, counts, g, near, norms, sums, y if small else None, keep)


def _row_bounds(rows: slice | None, T: int) -> tuple[int, int]:
    """(a, b): the tokens a..b-1 that `rows` (a slice of the T tokens, step 1; None = all) selects."""
    if rows is None:
        return 0, T
    start, stop, step = rows.indices(T)
    if step != 1:
        raise ValueError(f"stat_rows must be a contiguous slice of the tokens (step 1), got step {step}")
    return start, max(start, stop)


def _finish(out: Tensor, e_idx: Tensor, t_idx: Tensor, counts: list[int], g: Tensor, near: list, norms: list,
            sums: list, y: Tensor | None, keep: Tensor | None) -> DispatchResult:
    """The per-expert statistics after the loop, with the layer output out (T, D); y (N, D) the kept outputs of a
    small layer (None: finished in the loop); keep (N,) the assignments that count (None: all)."""
    x = out  # shape and device
    T, D, E = x.shape[0], x.shape[1], len(counts)
    small = y is not None
    with torch.no_grad():
        active = torch.tensor([e for e, n in enumerate(counts) if n > 0], device=x.device)
        near = torch.stack(near).to(torch.float64 if x.device.type != "mps" else torch.float32)  # (active,)
        near_zero = torch.zeros(E, device=x.device, dtype=near.dtype).index_copy_(0, active, near)  # (E,)
        if small:
            yf = y.float()  # statistics in fp32 whatever the expert dtype
            norm = torch.linalg.vector_norm(yf, dim=1)  # (N,)
            counted = yf if keep is None else torch.where(keep[:, None], yf, 0.0)  # (N, D): others add 0, no sync
            sum_y = torch.zeros(E, D, device=x.device).index_add_(0, e_idx, counted)  # (E, D)
        else:
            sum_y = torch.zeros(E, D, device=x.device).index_copy_(0, active, torch.stack(sums))  # (E, D)
            norm = torch.cat(norms)  # (N,)
        sq = norm.square() if keep is None else torch.where(keep, norm.square(), 0.0)  # (N,) (a NaN elsewhere stays out)
        sum_sq = torch.zeros(E, device=x.device).index_add_(0, e_idx, sq)  # (E,)
        contributions = torch.zeros(T, E, device=x.device)
        contributions[t_idx, e_idx] = g.float().abs() * norm
    return DispatchResult(out, contributions, near_zero, sum_sq, sum_y)


def dispatch_eager(x: Tensor, served: Tensor, gates: Tensor, experts: Experts, cfg: MoEConfig) -> Tensor:
    """The readable reference (Hugging Face Mixtral's loop): each expert that got tokens, then index_add_."""
    out = torch.zeros_like(x)  # (T, D)
    for e in served.any(dim=0).nonzero().flatten().tolist():
        tokens = served[:, e].nonzero().flatten()  # (n,)
        _, y = expert_ffn(x[tokens], experts.weights(e), cfg.activation, cfg.swiglu_limit)  # (n, D)
        out.index_add_(0, tokens, y * gates[tokens, e, None].to(x.dtype))
    return out
