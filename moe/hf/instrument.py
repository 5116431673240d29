"""Run every sparse MoE block of a local Hugging Face causal LM through the engine.

`instrument(model)` replaces each sparse MoE block by an `EngineBlock` that holds the original block
and an engine `MoELayer` sharing the block's weights (views, no copy). Outside `run_model` the
EngineBlock calls the original block, so the model behaves exactly as before; inside, the engine
runs the block and one `Trace` per MoE layer is returned with the logits.

Families are adapters in `moe.hf.adapters.ADAPTERS`. A family the engine cannot reproduce exactly falls back
to routing statistics from the router's output (`moe.trace_from_routing`): `Adapter.exact=False`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from moe.config import MoEConfig
from moe.from_routing import trace_from_routing
from moe.hf.adapters import (ADAPTERS, Adapter, ExpertViews, adapter_for, engine_config, engine_layer,  # noqa: F401
                          routing_config, supported_message)
from moe.hf.windows import BatchRows, batch_rows, batches, merge_traces, model_context, plan_windows
from moe.metrics import nats_to_bits
from moe.losses import aux_loss_from_sums
from moe.trace import Trace

# The traces of the forward in progress: set only inside `collect()`, per thread / task.
_SINK: ContextVar[list | None] = ContextVar("moe_scope_model_traces", default=None)
# Counterfactual engine layers by decoder-layer index, for one forward (moe.hf.counterfactual).
OVERRIDES: ContextVar[dict | None] = ContextVar("moe_scope_model_overrides", default=None)
# The rows of the forward in progress whose statistics are kept (the window's scored tokens, or a batch of windows'
# BatchRows; None = all).
STAT_ROWS: ContextVar[slice | BatchRows | None] = ContextVar("moe_scope_model_stat_rows", default=None)


@dataclass
class LayerRouting:
    """What a routing-only layer's router returned (for trace_from_routing): host tensors."""
    router_logits: Tensor    # (T, E) float32
    top_k_index: Tensor      # (T, K)
    top_k_weights: Tensor    # (T, K) float32
    config: MoEConfig        # dimensions only (the experts are not run by the engine)


class EngineBlock(nn.Module):
    """Stands in for one sparse MoE block: the engine inside `collect()`, the original block outside.

    For a routing-only adapter (exact=False) the original block always runs; a hook on its router
    records the routing inside `collect()`, and run_model turns it into a Trace with trace_from_routing.
    """

    def __init__(self, block: nn.Module, layer_index: int, adapter: Adapter, hf_config):
        super().__init__()
        self.block = block
        self.layer_index = layer_index
        self.adapter = adapter
        if adapter.exact:
            self.engine = engine_layer(block, engine_config(block, adapter, hf_config), adapter)
            self.selects = self.engine.cfg  # the model's own selection settings (an engine swapped in has others)
        else:
            self.engine = None
            self.routing_cfg = routing_config(block, adapter)
            getattr(block, adapter.router).register_forward_hook(self._record_routing)

    def _record_routing(self, module, inputs, output) -> None:
        sink = _SINK.get()
        if sink is not None:
            logits, weights, index = output[:3]  # HF routers return (router_logits, top_k_weights, top_k_index)
            sink.append((self.layer_index, LayerRouting(logits.detach().float().cpu(), index.detach().cpu(),
                                                         weights.detach().float().cpu(), self.routing_cfg)))

    def forward(self, hidden_states: Tensor) -> Tensor:
        sink = _SINK.get()
        if sink is None or self.training or self.engine is None:  # training-time jitter: the block's own
            return self.block(hidden_states)
        engine = (OVERRIDES.get() or {}).get(self.layer_index, self.engine)
        rows = STAT_ROWS.get()
        if isinstance(rows, BatchRows):  # a batch of windows: their scored rows first, as one slice, then put back
            flat = hidden_states.reshape(-1, hidden_states.shape[-1])
            flat = flat.index_select(0, rows.order.to(flat.device))
            y, trace = engine(flat, stat_rows=slice(0, rows.scored), selected=self._selected(flat, engine))
            y = y.index_select(0, rows.back.to(y.device)).reshape(hidden_states.shape)
        else:  # (B, S, D), Trace
            y, trace = engine(hidden_states, stat_rows=rows, selected=self._selected(hidden_states, engine))
        sink.append((self.layer_index, trace))
        if self.adapter.returns_tuple:  # GPT-OSS: (hidden, router scores); the decoder layer drops the scores
            return y, trace.top_k_weights
        return y

    def _selected(self, hidden_states: Tensor, engine) -> Tensor | None:
        """(T, K) the experts the block's own router selects for these tokens (every family's router returns
        (logits, weights, indices)), where `engine` selects as the model does (MoEConfig.selects_as the config the
        model's engine was built with: a counterfactual of capacity, or of temperature without a bias, too). The
        engine breaks ties at the K-th score by logit, then index, the families' torch.topk otherwise (bfloat16 scores
        tie often: 2-3% of the tokens of a 64-expert top-8 layer), so the model's numbers would not be its routing.
        None where the engine's settings differ."""
        if not engine.cfg.selects_as(self.selects):
            return None
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])  # (T, D), as the blocks call their routers (Ernie's
        return getattr(self.block, self.adapter.router)(flat)[2]    # softmax is over dim 1: tokens, given (B, S, D))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no decoder layers at model.layers; not a causal LM we can read")
    return layers


def instrument(model: nn.Module, adapter: Adapter | None = None) -> list[int]:
    """Replace every sparse MoE block by an EngineBlock (idempotent); returns the MoE layer indices."""
    adapter = adapter or adapter_for(getattr(model.config, "model_type", ""))
    indices = []
    for i, layer in enumerate(decoder_layers(model)):
        mlp = getattr(layer, "mlp", None)
        if isinstance(mlp, EngineBlock):
            indices.append(i)
        elif type(mlp).__name__ == adapter.block_class:
            layer.mlp = EngineBlock(mlp, i, adapter, model.config).train(mlp.training)
            indices.append(i)
    if not indices:
        raise ValueError(f"no {adapter.block_class} found in the model: it has no sparse MoE layer to watch")
    return indices


def engine_blocks(model: nn.Module) -> Iterator[EngineBlock]:
    for layer in decoder_layers(model):
        if isinstance(getattr(layer, "mlp", None), EngineBlock):
            yield layer.mlp


@contextmanager
def collect() -> Iterator[list]:
    """Inside, every EngineBlock runs the engine and appends (layer_index, trace) to the yielded list."""
    sink: list = []
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


@dataclass
class ModelRun:
    """One instrumented forward of one sequence (all tensors on the host)."""
    input_ids: Tensor        # (S,)
    logits: Tensor           # (S, V) float32
    layers: list[int]        # decoder-layer index of each MoE layer, in order
    traces: list[Trace]      # one per MoE layer
    routing_only: list[int] = field(default_factory=list)  # layers traced from routing alone (no output side)
    context: int = 0         # the most positions one forward was given (moe.hf.windows)
    windows: int = 1         # forwards: sliding windows over a text longer than the context

    def token_loss(self) -> Tensor:
        """Next-token loss in nats of token s+1 given tokens ≤ s (S-1,)."""
        return nn.functional.cross_entropy(self.logits[:-1], self.input_ids[1:], reduction="none")

    def mean_loss_bits(self) -> float:
        """Mean next-token loss in bits per token (NaN for a one-token text: the mean of nothing)."""
        return nats_to_bits(float(self.token_loss().mean()))

    def top1(self) -> Tensor:
        """Top-1 expert of every token at every MoE layer (L, S): its selected expert with the largest combine weight
        (equal weights: the one the model's router lists first).
        For a softmax router that is the highest probability; a biased router (DeepSeek-V3) selects by score + bias
        and weighs by the score, so its first selected expert is not always the heaviest (lm_arch.selected_top1, the
        cards' NMI, reads the same)."""
        return torch.stack([t.top_k_index.gather(1, t.top_k_weights.argmax(dim=1, keepdim=True)).squeeze(1)
                            for t in self.traces])

    def pooled_aux(self) -> float:
        """The Switch aux (`E·Σ f̄_e·P̄_e`, the per-layer rows' scale) of all layers' routing pooled together: f̄ the
        layers' assignments over their Σ T·K (each layer's own K: a counterfactual may change it at one layer), P̄
        the layers' probabilities summed over their Σ T."""
        return self._pooled(lambda s: s.demand)

    def pooled_hf_aux(self) -> float:
        """Hugging Face's load_balancing_loss over all layers: K·E·Σ f̄_e·P̄_e, its f̄ counting each token's top-K of
        the probabilities alone, as transformers does (a router's correction bias, Ernie 4.5's, changes what the
        router chose, not this count), so top_k × pooled_aux() wherever the router chooses from its probabilities."""
        return self.traces[0].config.top_k * self._pooled(lambda s: s.unbiased)

    def _pooled(self, counts) -> float:
        sums = [trace.sums for trace in self.traces]
        widths = {s.n_experts for s in sums}
        if len(widths) > 1:
            raise ValueError(f"the MoE layers have {sorted(widths)} experts: one aux over them all is not defined")
        tokens = sum(s.tokens for s in sums)
        assignments = sum(s.tokens * s.top_k for s in sums)  # Σ T·K: = tokens × K when every layer has K
        return float(aux_loss_from_sums(sum(counts(s) for s in sums), sum(s.prob_sum for s in sums), tokens,
                                        assignments / tokens))


@torch.inference_mode()
def run_model(model: nn.Module, input_ids: Tensor, context: int | None = None) -> ModelRun:
    """Logits and one Trace per MoE layer of `input_ids` (S,) through an instrumented model, never running a
    forward past `context` positions (None: moe.hf.windows.model_context of the model's config and the directory
    it was loaded from, so a trained length recorded there counts): a longer text is read in
    sliding windows (moe.hf.windows.plan_windows), each token's logits and routing from its scoring window; the
    windows run as batches of at most moe.hf.windows.BATCH_TOKENS tokens when `batchable`, else one by one."""
    if not any(True for _ in engine_blocks(model)):
        raise ValueError("the model is not instrumented; call moe.hf.instrument.instrument(model) first")
    if input_ids.dim() != 1 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty 1-D tensor of token ids, got shape {tuple(input_ids.shape)}")
    vocab = model.get_input_embeddings().num_embeddings
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        bad = int(input_ids.max()) if int(input_ids.max()) >= vocab else int(input_ids.min())
        raise ValueError(f"the text's token id {bad} is outside the model's vocabulary 0..{vocab - 1}: the tokenizer "
                         f"has more ids than the model's embedding; give the tokenizer saved with this model")
    if context is None:
        context = model_context(model.config, getattr(model.config, "name_or_path", None) or None)
    windows = plan_windows(input_ids.numel(), context)
    device = next(model.parameters()).device
    groups = batches(windows) if len(windows) > 1 and batchable(model) else [[w] for w in windows]
    logits, per_layer, routing_only = [], {}, set()
    for group in groups:
        one = len(group) == 1
        rows = (None if group[0].score_from == group[0].start else group[0].scored_rows()) if one else batch_rows(group)
        token = STAT_ROWS.set(rows)
        try:
            with collect() as sink:
                batch = torch.stack([input_ids[w.start:w.end] for w in group]).to(device)  # (B, context)
                out = model(input_ids=batch, use_cache=False)
        finally:
            STAT_ROWS.reset(token)
        scored = group[0].scored_rows() if one else rows.order[: rows.scored]  # rows of the flattened batch
        logits.append(out.logits.reshape(-1, out.logits.shape[-1])[scored].float().cpu())
        for i, t in sink:
            if isinstance(t, LayerRouting):
                routing_only.add(i)
                t = _routing_trace(i, t, scored)
            per_layer.setdefault(i, []).append(t.cpu())
    layers = sorted(per_layer)
    return ModelRun(input_ids=input_ids.cpu(), logits=torch.cat(logits), layers=layers,
                    traces=[merge_traces(per_layer[i]) for i in layers], routing_only=sorted(routing_only),
                    context=context, windows=len(windows))


def batchable(model: nn.Module) -> bool:
    """True when no engine layer's routing depends on the other tokens of its forward (dropless top-k routing
    without noise), so windows may run as one batch (moe.hf.windows.BatchRows)."""
    engines = [b.engine for b in engine_blocks(model) if b.engine is not None] + list((OVERRIDES.get() or {}).values())
    return all(e.cfg.capacity_factor is None and e.cfg.router == "topk" and e.cfg.noise_std == 0
               and e.cfg.jitter_eps == 0 for e in engines)


def _routing_trace(layer: int, record: LayerRouting, rows: slice | Tensor) -> Trace:
    return trace_from_routing(record.config, record.router_logits[rows], record.top_k_index[rows],
                              record.top_k_weights[rows])
