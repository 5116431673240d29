"""MoELayer: router + experts + dispatch, returning the output and an explicit Trace."""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from .config import MoEConfig
from .experts import Experts, dispatch
from .router import TopKRouter
from .stats import gather_sums
from .trace import Trace


class MoELayer(nn.Module):
    """A sparse SwiGLU Mixture-of-Experts layer that reports what every expert did."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = TopKRouter(cfg)
        self.experts = Experts(cfg)
        self.reset_parameters()
        self.router.to(cfg.device)
        self.experts.to(device=cfg.device, dtype=cfg.torch_dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the weights on the CPU from cfg.seed, so every device starts from the same numbers."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        scale_in, scale_h = cfg.d_model ** -0.5, cfg.d_expert ** -0.5
        for param, scale in ((self.router.weight, scale_in), (self.experts.w_gate, scale_in),
                             (self.experts.w_up, scale_in), (self.experts.w_down, scale_h)):
            draw = torch.randn(param.shape, generator=g) * scale
            param.copy_(draw.to(device=param.device, dtype=param.dtype))

    def reconfigured(self, cfg: MoEConfig) -> "MoELayer":
        """A layer with new routing settings that shares this layer's weights (no copy).

        Only the routing may change: d_model, d_expert, n_experts, seed, device and dtype fix the
        weights. The new layer gets its own router.expert_bias buffer, from cfg.expert_bias.
        """
        fixed = ("d_model", "d_expert", "n_experts", "seed", "device", "dtype")
        changed = [f"{name}: {getattr(self.cfg, name)!r} -> {getattr(cfg, name)!r}"
                   for name in fixed if getattr(self.cfg, name) != getattr(cfg, name)]
        if changed:
            raise ValueError("reconfigured() keeps the weights, so these must not change: " + "; ".join(changed)
                             + ". Build a new MoELayer instead")
        layer = MoELayer.__new__(MoELayer)
        nn.Module.__init__(layer)
        layer.cfg = cfg
        layer.router = TopKRouter(cfg).to(cfg.device)
        layer.router.weight = self.router.weight  # shared Parameter
        layer.experts = self.experts              # shared module
        return layer

    @property
    def device(self) -> torch.device:
        return self.router.weight.device

    def new_generator(self, seed: int | None = None) -> torch.Generator:
        """A generator on the layer's device for noise and random routing (default seed: cfg.seed)."""
        return torch.Generator(device=self.device).manual_seed(self.cfg.seed if seed is None else seed)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None,
                stats: bool = True) -> tuple[Tensor, Trace | None]:
        """x (T, D) or (B, S, D) → y of x's shape and dtype, and the Trace (None when stats=False)."""
        cfg = self.cfg
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be (T, D) or (B, S, D); got shape {tuple(x.shape)}")
        if x.shape[-1] != cfg.d_model:
            raise ValueError(f"input width {x.shape[-1]} does not match d_model={cfg.d_model}; "
                             f"give tokens of width {cfg.d_model} or set d_model={x.shape[-1]}")
        if x.numel() == 0:
            raise ValueError(f"input has no tokens (shape {tuple(x.shape)}); give at least one token")
        start = time.perf_counter()
        xt = x.reshape(-1, cfg.d_model).to(device=self.device, dtype=cfg.torch_dtype)  # (T, D)
        seq_len = x.shape[1] if x.dim() == 3 else None  # S: capacity_scope="sequence" counts per sequence
        routing = self.router(xt, cfg, generator if generator is not None else self.new_generator(), seq_len)
        result = dispatch(xt, routing.served, routing.gates, self.experts, cfg.sparsity_eps, stats)
        y = result.out.reshape(x.shape).to(x.dtype)  # x's shape
        if not stats:
            return y, None

        served = routing.served.float()
        coactivation = served.t() @ served  # (E, E)
        sums = gather_sums(routing.probs, routing.router_logits, routing.routed, routing.served,
                           routing.gates, result.contributions, coactivation, result.near_zero,
                           result.sum_sq, result.sum_y, result.out, top_k=cfg.top_k, d_expert=cfg.d_expert,
                           capacity=routing.capacity,
                           overlap=routing.top_k_index is not None and cfg.router != "hash")
        sums.forward_ms = (time.perf_counter() - start) * 1e3  # gather_sums synchronised the device
        trace = Trace(
            config=cfg, router_logits=routing.router_logits, probs=routing.probs, routed=routing.routed,
            served=routing.served, gates=routing.gates, contributions=result.contributions,
            coactivation=coactivation, top_k_index=routing.top_k_index,
            top_k_weights=routing.top_k_weights, capacity=routing.capacity, device=str(self.device),
            sums=sums)
        return y, trace
