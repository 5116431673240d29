"""Experts: stacked SwiGLU weights and the vectorised dispatch that runs them.

Dispatch sorts the served (token, expert) assignments by expert, gathers the tokens once, runs
each expert on its contiguous slice, and scatters the weighted outputs back with one index_add_.
The per-expert statistics come out of the same pass, still on the device.
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
        self.w_gate = nn.Parameter(torch.empty(E, H, D))
        self.w_up = nn.Parameter(torch.empty(E, H, D))
        self.w_down = nn.Parameter(torch.empty(E, D, H))


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> tuple[Tensor, Tensor]:
    """One expert on a (n, D) slice: returns the hidden h = silu(x Wg^T)·(x Wu^T) (n, H) and y (n, D)."""
    h = F.silu(x @ w_gate.t()) * (x @ w_up.t())  # (n, H)
    return h, h @ w_down.t()  # (n, D)


@dataclass
class DispatchResult:
    out: Tensor                   # (T, D) Σ_e gates[t, e] · y_e(x_t)
    contributions: Tensor | None  # (T, E) ‖gates[t, e] · y_e(x_t)‖₂
    near_zero: Tensor | None      # (E,) hidden entries with |h| < eps over served tokens
    sum_sq: Tensor | None         # (E,) Σ y_e(x_t)² over served tokens and D
    sum_y: Tensor | None          # (E, D) Σ_t y_e(x_t) over served tokens


def dispatch(x: Tensor, served: Tensor, gates: Tensor, experts: Experts,
             sparsity_eps: float, stats: bool = True) -> DispatchResult:
    """Run every served assignment through its expert; x (T, D), served/gates (T, E)."""
    T, E = served.shape
    e_idx, t_idx = served.t().nonzero(as_tuple=True)  # (N,), (N,) sorted by expert, then token
    # The one host sync of the dispatch: slice sizes must be Python ints to cut contiguous slices.
    counts = served.sum(dim=0).tolist()  # E ints
    xs = x.index_select(0, t_idx)  # (N, D)
    g = gates[t_idx, e_idx].to(x.dtype)  # (N,)

    ys, near = [], []
    idle = x.new_zeros((), dtype=torch.int64)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            near.append(idle)
            continue
        h, y = swiglu(xs[start:start + n], experts.w_gate[e], experts.w_up[e], experts.w_down[e])
        ys.append(y)  # (n, D)
        if stats:
            near.append((h.abs() < sparsity_eps).sum())  # 0-d, stays on the device
        start += n
    D = x.shape[1]
    y_all = torch.cat(ys) if ys else x.new_zeros(0, D)  # (N, D)
    out = torch.zeros_like(x).index_add_(0, t_idx, y_all * g[:, None])  # (T, D)
    if not stats:
        return DispatchResult(out, None, None, None, None)

    near_zero = torch.stack(near)  # (E,)
    y32 = y_all.float()  # statistics in fp32 whatever the expert dtype
    row_sq = y32.square().sum(dim=1)  # (N,)
    sum_sq = torch.zeros(E, device=x.device).index_add_(0, e_idx, row_sq)  # (E,)
    sum_y = torch.zeros(E, D, device=x.device).index_add_(0, e_idx, y32)  # (E, D)
    contributions = torch.zeros(T, E, device=x.device)
    contributions[t_idx, e_idx] = g.float().abs() * row_sq.sqrt()
    return DispatchResult(out, contributions, near_zero, sum_sq, sum_y)
