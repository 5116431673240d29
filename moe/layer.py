"""MoELayer: router + experts + dispatch, returning the output and an explicit Trace."""
from __future__ import annotations

import dataclasses
import time

import torch
from torch import Tensor, nn

from moe.config import WEIGHT_FIELDS, MoEConfig
from moe.experts import Experts, dispatch
from moe.router import TopKRouter, chose_from_scores
from moe.shared import SharedExperts, shared_sums
from moe.stats import StatsInputs, gather_sums
from moe.trace import Trace


# Elements per weight draw: a multiple of 16, so drawing chunk by chunk gives exactly the numbers of one
# whole-tensor torch.randn (CPU normal fill works in blocks of 16), and set-up peaks at the weights plus
# one 4 MiB float32 chunk instead of a float32 copy of every weight.
DRAW_CHUNK = 1 << 20


@torch.no_grad()
def _draw_(param: Tensor, scale: float, g: torch.Generator) -> None:
    """Fill `param` in place with N(0, scale²) drawn on the CPU from `g`, chunk by chunk."""
    flat = param.view(-1)  # (numel,) the parameter's own storage
    n, start = flat.numel(), 0
    while start < n:
        size = n - start if n - start < 2 * DRAW_CHUNK else DRAW_CHUNK  # the last chunk takes the remainder
        flat[start:start + size].copy_(torch.randn(size, generator=g).mul_(scale))
        start += size


class MoELayer(nn.Module):
    """A sparse Mixture-of-Experts layer (plus optional shared experts) that reports what every expert did."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = TopKRouter(cfg)
        self.experts = Experts(cfg)
        self.shared = SharedExperts(cfg) if cfg.shared_experts else None
        self.reset_parameters()
        self.router.to(cfg.device)
        self.experts.to(device=cfg.device, dtype=cfg.torch_dtype)
        if self.shared is not None:
            self.shared.to(device=cfg.device, dtype=cfg.torch_dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the weights on the CPU from cfg.seed, so every device starts from the same numbers."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        scale_in, scale_h = cfg.d_model ** -0.5, cfg.d_expert ** -0.5
        ex, sh = self.experts, self.shared
        draws = [(self.router.weight, scale_in), (ex.w_gate, scale_in), (ex.w_up, scale_in), (ex.w_down, scale_h),
                 (ex.b_gate, scale_in), (ex.b_up, scale_in), (ex.b_down, scale_h)]
        if sh is not None:  # after the routed experts: a shared FFN never changes their draws
            draws += [(sh.w_gate, scale_in), (sh.w_up, scale_in), (sh.w_down, cfg.shared_hidden ** -0.5),
                      (None if sh.gate is None else sh.gate.weight, scale_in)]
        for param, scale in draws:
            if param is not None:  # absent for this config (no w_gate when not gated, no biases, ...)
                _draw_(param, scale, g)

    def reconfigured(self, cfg: MoEConfig) -> "MoELayer":
        """A layer with new routing settings that shares this layer's weights (no copy).

        Only the routing (and activation, swiglu_limit, sparsity settings) may change: moe.config.WEIGHT_FIELDS
        fix the weights. The new layer gets its own router.expert_bias buffer, from cfg.expert_bias.
        """
        changed = [f"{name}: {getattr(self.cfg, name)!r} -> {getattr(cfg, name)!r}"
                   for name in WEIGHT_FIELDS if getattr(self.cfg, name) != getattr(cfg, name)]
        if changed:
            raise ValueError("reconfigured() keeps the weights, so these must not change: " + "; ".join(changed)
                             + ". Build a new MoELayer instead")
        layer = MoELayer.__new__(MoELayer)
        nn.Module.__init__(layer)
        layer.cfg = cfg
        layer.router = TopKRouter(cfg).to(cfg.device)
        layer.router.weight = self.router.weight  # shared Parameter
        layer.experts = self.experts              # shared module
        layer.shared = self.shared                # shared module (or None)
        return layer

    @property
    def device(self) -> torch.device:
        return self.router.weight.device

    def new_generator(self, seed: int | None = None) -> torch.Generator:
        """A generator on the layer's device for noise and random routing (default seed: cfg.seed)."""
        return torch.Generator(device=self.device).manual_seed(self.cfg.seed if seed is None else seed)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None, stats: bool = True,
                stat_rows: slice | None = None, selected: Tensor | None = None) -> tuple[Tensor, Trace | None]:
        """x (T, D) or (B, S, D) → y of x's shape and dtype, and the Trace (None when stats=False).

        stat_rows (a contiguous slice of the rows of the flattened (T, D) input, one sequence): the scored rows of
        a window (moe.hf.windows). Routing, dispatch and y cover every row; capacity is ranked among these rows
        alone (C from their count; the other rows, context, are served in full), so each window's scored tokens
        face the same rule; the Trace's per-token fields and every statistic cover those rows only.
        selected (T, K): the experts each token selects (moe.router.route), for a model's own router's choice.
        """
        cfg = self.cfg
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be (T, D) or (B, S, D); got shape {tuple(x.shape)}")
        if x.shape[-1] != cfg.d_model:
            raise ValueError(f"input width {x.shape[-1]} does not match d_model={cfg.d_model}; "
                             f"give tokens of width {cfg.d_model} or set d_model={x.shape[-1]}")
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}; convert it with "
                             f"x.float() (integer tokens would be silently truncated)")
        if x.numel() == 0:
            raise ValueError(f"input has no tokens (shape {tuple(x.shape)}); give at least one token")
        start = time.perf_counter()
        xt = x.reshape(-1, cfg.d_model).to(device=self.device, dtype=cfg.torch_dtype)  # (T, D)
        seq_len = x.shape[1] if x.dim() == 3 else None  # S: capacity_scope="sequence" counts per sequence
        routing = self.router(xt, cfg, generator if generator is not None else self.new_generator(), seq_len,
                              stat_rows, selected)
        result = dispatch(xt, routing.served, routing.gates, self.experts, cfg, stats, stat_rows)
        out, shared = result.out, None  # (T, D) routed output
        rows = slice(None) if stat_rows is None else stat_rows  # the rows the statistics describe
        if self.shared is not None:
            s = self.shared(xt, cfg)  # (T, D)
            shared = shared_sums(out[rows], s[rows]) if stats else None
            out = out + s  # (T, D) routed + shared
        y = out.reshape(x.shape).to(x.dtype)  # x's shape
        if not stats:
            return y, None
        if stat_rows is not None:
            routing, result, out = _rows(routing, rows), _rows(result, rows), out[rows]

        served = routing.served.float()
        coactivation = served.t() @ served  # (E, E)
        sums = gather_sums(StatsInputs(
            probs=routing.probs, router_logits=routing.router_logits, routed=routing.routed, served=routing.served,
            gates=routing.gates, top_k=cfg.top_k, d_model=cfg.d_model, d_expert=cfg.d_expert,
            capacity=routing.capacity, overlap=chose_from_scores(routing, cfg), contributions=result.contributions,
            near_zero=result.near_zero, sum_sq=result.sum_sq, sum_y=result.sum_y, out=out,
            coactivation=coactivation, shared=shared))
        sums.forward_ms = (time.perf_counter() - start) * 1e3  # gather_sums synchronised the device
        trace = Trace(
            config=cfg, router_logits=routing.router_logits, probs=routing.probs, routed=routing.routed,
            served=routing.served, gates=routing.gates, contributions=result.contributions,
            coactivation=coactivation, top_k_index=routing.top_k_index,
            top_k_weights=routing.top_k_weights, capacity=routing.capacity, device=str(self.device),
            sums=sums)
        return y, trace


def _rows(record, rows: slice):
    """A copy of a Routing or DispatchResult with its per-token (T, ...) tensors cut to `rows`."""
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    return dataclasses.replace(record, **{name: value[rows] for name, value in fields.items()
                                          if name in PER_TOKEN and value is not None})


# The per-token fields of moe.router.Routing and moe.experts.DispatchResult (the others are per expert or scalar).
PER_TOKEN = frozenset({"router_logits", "probs", "routed", "served", "gates", "top_k_index", "top_k_weights",
                       "contributions", "out"})
