"""Shared experts: one dense FFN that every token goes through, added to the routed output.

DeepSeek-V3 and Ernie-4.5 add it as is; Qwen2-MoE scales it per token by σ(x·w) (`shared_gate`).
`shared_experts` experts of width H are one FFN of width Hs = shared_experts·H (their sum), or `d_shared`.
The FFN uses the routed experts' activation and gating, without biases.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from moe.config import MoEConfig
from moe.experts import FFNWeights, expert_ffn


class SharedExperts(nn.Module):
    """State dict: w_gate (Hs, D) when gated, w_up (Hs, D), w_down (D, Hs), gate.weight (1, D) when gated."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        Hs, D = cfg.shared_hidden, cfg.d_model
        self.w_gate = nn.Parameter(torch.empty(Hs, D)) if cfg.gated else None
        self.w_up = nn.Parameter(torch.empty(Hs, D))
        self.w_down = nn.Parameter(torch.empty(D, Hs))
        self.gate = nn.Linear(D, 1, bias=False) if cfg.shared_gate else None

    def forward(self, x: Tensor, cfg: MoEConfig) -> Tensor:
        """x (T, D) → the shared output s (T, D), gate included."""
        inplace = not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))
        w = FFNWeights(self.w_gate, self.w_up, self.w_down, None, None, None)
        _, s = expert_ffn(x, w, cfg.activation, cfg.swiglu_limit, inplace)  # (T, D)
        if self.gate is not None:
            scale = torch.sigmoid(self.gate(x))  # (T, 1)
            s = s.mul_(scale) if inplace else s * scale
        return s


def shared_sums(routed: Tensor, shared: Tensor) -> Tensor:
    """(3,) fp32 on the device: Σ_t ‖s_t‖₂, Σ_t ‖r_t‖₂, Σ_t ‖s_t‖₂²; routed r and shared s are (T, D)."""
    with torch.no_grad():
        s_norm = torch.linalg.vector_norm(shared.float(), dim=1)  # (T,)
        r_norm = torch.linalg.vector_norm(routed.float(), dim=1)  # (T,)
        return torch.stack([s_norm.sum(), r_norm.sum(), s_norm.square().sum()])
