"""Experts: stacked SwiGLU weights and the vectorised dispatch that runs them.

Dispatch sorts the served (token, expert) assignments by expert, gathers the tokens once, runs
each expert on its contiguous slice, and adds the gate-weighted outputs back with index_add_.
The per-expert statistics come out of the same pass, still on the device: per slice while it is hot
in cache for large layers, in a few batched ops after the loop for small ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MoEConfig


class Experts(nn.Module):
    """E SwiGLU experts, weights stacked in nn.Linear's (out, in) convention."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        E, H, D = cfg.n_experts, cfg.d_expert, cfg.d_model
        # Allocated in the target dtype and device: no float32 copy of the weights ever exists.
        kw = dict(dtype=cfg.torch_dtype, device=cfg.device)
        self.w_gate = nn.Parameter(torch.empty(E, H, D, **kw))
        self.w_up = nn.Parameter(torch.empty(E, H, D, **kw))
        self.w_down = nn.Parameter(torch.empty(E, D, H, **kw))


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
           inplace: bool = False) -> tuple[Tensor, Tensor]:
    """One expert on a (n, D) slice: returns the hidden h = silu(x Wg^T)·(x Wu^T) (n, H) and y (n, D).

    inplace=True reuses the gate buffer for h (only when no gradient is needed).
    """
    if inplace:
        h = F.silu(x @ w_gate.t(), inplace=True).mul_(x @ w_up.t())  # (n, H)
    else:
        h = F.silu(x @ w_gate.t()) * (x @ w_up.t())  # (n, H)
    return h, h @ w_down.t()  # (n, D)


@dataclass
class DispatchResult:
    out: Tensor                   # (T, D) Σ_e gates[t, e] · y_e(x_t)
    contributions: Tensor | None  # (T, E) ‖gates[t, e] · y_e(x_t)‖₂
    near_zero: Tensor | None      # (E,) hidden entries with |h| < eps over served tokens
    sum_sq: Tensor | None         # (E,) Σ y_e(x_t)² over served tokens and D
    sum_y: Tensor | None          # (E, D) Σ_t y_e(x_t) over served tokens


# Up to this many hidden values (N·H), outputs and hidden units are kept and finished in a few batched
# ops after the loop (per-op cost dominates small layers); above it each slice is finished in the loop
# while it is hot in cache, and nothing is kept.
SMALL_NUMEL = 1 << 18


def dispatch(x: Tensor, served: Tensor, gates: Tensor, experts: Experts,
             sparsity_eps: float, stats: bool = True) -> DispatchResult:
    """Run every served assignment through its expert; x (T, D), served/gates (T, E)."""
    T, E = served.shape
    D = x.shape[1]
    e_idx, t_idx = served.t().nonzero(as_tuple=True)  # (N,), (N,) sorted by expert, then token
    # The one host sync of the dispatch: slice sizes must be Python ints to cut contiguous slices.
    counts = served.sum(dim=0).tolist()  # E ints
    xs = x.index_select(0, t_idx)  # (N, D)
    g = gates[t_idx, e_idx].to(x.dtype)  # (N,)
    # Without autograd, buffers are reused in place (h over the gate projection, y scaled by g).
    inplace = not (torch.is_grad_enabled() and (x.requires_grad or experts.w_gate.requires_grad
                                                 or gates.requires_grad))
    small = xs.shape[0] * max(D, experts.w_gate.shape[1]) <= SMALL_NUMEL
    out = torch.zeros_like(x)  # (T, D)
    near, norms, sums, hs, ys = [], [], [], [], []
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = slice(start, start + n)
        h, y = swiglu(xs[rows], experts.w_gate[e], experts.w_up[e], experts.w_down[e], inplace)  # (n, H), (n, D)
        start += n
        if small:
            hs.append(h)
            ys.append(y)
            continue
        if stats:
            with torch.no_grad():
                near.append(torch.count_nonzero((h.abs_() if inplace else h.abs()) < sparsity_eps))  # 0-d
                yf = y.float()  # statistics in fp32 whatever the expert dtype
                norms.append(torch.linalg.vector_norm(yf, dim=1))  # (n,) ‖y_e(x_t)‖
                sums.append(yf.sum(dim=0))  # (D,)
        y = y.mul_(g[rows, None]) if inplace else y * g[rows, None]  # (n, D) weighted
        out.index_add_(0, t_idx[rows], y)
    if small:
        y = torch.cat(ys)  # (N, D)
        out.index_add_(0, t_idx, y * g[:, None])
    if not stats:
        return DispatchResult(out, None, None, None, None)

    with torch.no_grad():
        if small:
            near_rows = (torch.cat(hs).abs() < sparsity_eps).sum(dim=1)  # (N,) near-zero units per row
            near_zero = torch.zeros(E, device=x.device, dtype=torch.int64).index_add_(0, e_idx, near_rows)
            yf = y.float()  # statistics in fp32 whatever the expert dtype
            norm = torch.linalg.vector_norm(yf, dim=1)  # (N,)
            sum_y = torch.zeros(E, D, device=x.device).index_add_(0, e_idx, yf)  # (E, D)
        else:
            active = torch.tensor([e for e, n in enumerate(counts) if n > 0], device=x.device)
            near_zero = torch.zeros(E, device=x.device, dtype=torch.int64).index_copy_(0, active, torch.stack(near))
            sum_y = torch.zeros(E, D, device=x.device).index_copy_(0, active, torch.stack(sums))  # (E, D)
            norm = torch.cat(norms)  # (N,)
        sum_sq = torch.zeros(E, device=x.device).index_add_(0, e_idx, norm.square())  # (E,)
        contributions = torch.zeros(T, E, device=x.device)
        contributions[t_idx, e_idx] = g.float().abs() * norm
    return DispatchResult(out, contributions, near_zero, sum_sq, sum_y)
