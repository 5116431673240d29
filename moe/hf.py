"""Run every sparse MoE block of a local Hugging Face causal LM through the engine.

`instrument(model)` replaces each sparse MoE block by an `EngineBlock` that holds the original block
and an engine `MoELayer` sharing the block's weights (views, no copy). Outside `run_model` the
EngineBlock calls the original block, so the model behaves exactly as before; inside, the engine
runs the block and one `Trace` per MoE layer is returned with the logits.

Families are adapters in `ADAPTERS`. A family the engine cannot reproduce exactly would fall back to
routing statistics from the router's output (`moe.trace_from_routing`, issue #9): `Adapter.exact=False`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import MoEConfig
from .layer import MoELayer
from .router import TopKRouter
from .stats import StatsAccumulator
from .trace import Trace

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True)
class Adapter:
    """How one model family's sparse MoE block maps onto the engine."""
    family: str                                # config.model_type
    block_class: str                           # class name of the family's sparse MoE block
    normalize_topk: Callable[[object], bool]   # from the HF config
    sizes: tuple[str, str]                     # config keys of (n_experts, d_expert), read before loading
    exact: bool = True                         # False: routing statistics only (trace_from_routing)


ADAPTERS: dict[str, Adapter] = {
    "mixtral": Adapter("mixtral", "MixtralSparseMoeBlock", lambda c: True,
                       ("num_local_experts", "intermediate_size")),
    "qwen3_moe": Adapter("qwen3_moe", "Qwen3MoeSparseMoeBlock", lambda c: bool(c.norm_topk_prob),
                         ("num_experts", "moe_intermediate_size")),
    "olmoe": Adapter("olmoe", "OlmoeSparseMoeBlock", lambda c: bool(c.norm_topk_prob),
                     ("num_experts", "intermediate_size")),
}
# Families that plug in once the engine has shared experts, expert variants and group-limited
# routing (issue #9): their adapters go into ADAPTERS then.
PLANNED = ("qwen2_moe", "deepseek_v3", "gpt_oss", "ernie4_5_moe")


def supported_message(model_type: str) -> str:
    """Why `model_type` is refused, naming the supported families."""
    names = ", ".join(ADAPTERS)
    if model_type in PLANNED:
        return (f"model family {model_type!r} is not supported yet (its MoE block needs engine features "
                f"still in progress); supported families: {names}")
    return f"model_type {model_type!r} is not a supported sparse MoE family; supported families: {names}"


def adapter_for(model_type: str) -> Adapter:
    if model_type not in ADAPTERS:
        raise ValueError(supported_message(model_type))
    return ADAPTERS[model_type]


class ExpertViews(nn.Module):
    """The engine's expert interface (w_gate, w_up, w_down) as views into HF's fused 3D tensors.

    HF v5 stores gate_up_proj (E, 2H, D) with the gate rows first, down_proj (E, D, H). The views are
    taken on every access, so they follow the parameters through .to() and in-place updates.
    """

    def __init__(self, experts: nn.Module):
        super().__init__()
        self.source = experts
        self.h = experts.intermediate_dim

    @property
    def w_gate(self) -> Tensor:
        return self.source.gate_up_proj[:, : self.h]  # (E, H, D) view

    @property
    def w_up(self) -> Tensor:
        return self.source.gate_up_proj[:, self.h:]  # (E, H, D) view

    @property
    def w_down(self) -> Tensor:
        return self.source.down_proj  # (E, D, H), the parameter itself


def engine_config(block: nn.Module, adapter: Adapter, hf_config) -> MoEConfig:
    """The MoEConfig that reproduces `block` (refuses layouts the engine does not run)."""
    experts, gate = block.experts, block.gate
    act = getattr(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{adapter.family}: experts use activation {act!r}; the engine runs SwiGLU (silu) only")
    for flag, want in (("is_concatenated", True), ("is_transposed", False), ("has_bias", False), ("has_gate", True)):
        if getattr(experts, flag, want) != want:
            raise ValueError(f"{adapter.family}: expert weight layout {flag}={not want} is not supported")
    weight = experts.gate_up_proj
    if weight.dtype not in _DTYPE_NAMES:
        raise ValueError(f"{adapter.family}: weights in {weight.dtype} are not supported; load in float32 or bfloat16")
    return MoEConfig(d_model=experts.hidden_dim, d_expert=experts.intermediate_dim, n_experts=experts.num_experts,
                     top_k=gate.top_k, normalize_topk=adapter.normalize_topk(hf_config), router_dtype="model",
                     dtype=_DTYPE_NAMES[weight.dtype], device=str(weight.device))


def engine_layer(block: nn.Module, cfg: MoEConfig) -> MoELayer:
    """An engine MoELayer whose router weight is the block's Parameter and whose experts are views."""
    layer = MoELayer.__new__(MoELayer)
    nn.Module.__init__(layer)
    layer.cfg = cfg
    layer.router = TopKRouter(cfg).to(cfg.device)  # its (E, D) placeholder is replaced just below
    layer.router.weight = block.gate.weight        # the model's Parameter: shared, not copied
    layer.experts = ExpertViews(block.experts)
    return layer


# The traces of the forward in progress: set only inside `collect()`, per thread / task.
_SINK: ContextVar[list | None] = ContextVar("moe_scope_model_traces", default=None)


@dataclass
class RoutingRecord:
    """What a routing-only layer's router returned (for trace_from_routing): host tensors."""
    router_logits: Tensor    # (T, E) float32
    top_k_index: Tensor      # (T, K)
    top_k_weights: Tensor    # (T, K) float32
    config: MoEConfig        # dimensions only (the experts are not run by the engine)


def routing_config(block: nn.Module) -> MoEConfig:
    """Dimensions of a block the engine does not run: (E, D) from the router, H when the experts say."""
    E, D = block.gate.weight.shape
    return MoEConfig(d_model=D, d_expert=getattr(block.experts, "intermediate_dim", 1), n_experts=E,
                     top_k=block.gate.top_k)


class EngineBlock(nn.Module):
    """Stands in for one sparse MoE block: the engine inside `collect()`, the original block outside.

    For a routing-only adapter (exact=False) the original block always runs; a hook on its router
    records the routing inside `collect()`, and run_model turns it into a Trace with trace_from_routing.
    """

    def __init__(self, block: nn.Module, layer_index: int, adapter: Adapter, hf_config):
        super().__init__()
        self.block = block
        self.layer_index = layer_index
        if adapter.exact:
            self.engine = engine_layer(block, engine_config(block, adapter, hf_config))
        else:
            self.engine = None
            self.routing_cfg = routing_config(block)
            block.gate.register_forward_hook(self._record_routing)

    def _record_routing(self, module, inputs, output) -> None:
        sink = _SINK.get()
        if sink is not None:
            logits, weights, index = output[:3]  # HF routers return (router_logits, top_k_weights, top_k_index)
            sink.append((self.layer_index, RoutingRecord(logits.detach().float().cpu(), index.detach().cpu(),
                                                         weights.detach().float().cpu(), self.routing_cfg)))

    def forward(self, hidden_states: Tensor) -> Tensor:
        sink = _SINK.get()
        if sink is None or self.training or self.engine is None:  # training-time jitter: the block's own
            return self.block(hidden_states)
        y, trace = self.engine(hidden_states)  # (B, S, D), Trace
        sink.append((self.layer_index, trace))
        return y


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

    def token_loss(self) -> Tensor:
        """Next-token loss in nats of token s+1 given tokens ≤ s (S-1,)."""
        return nn.functional.cross_entropy(self.logits[:-1], self.input_ids[1:], reduction="none")

    def top1(self) -> Tensor:
        """Top-1 expert of every token at every MoE layer (L, S)."""
        return torch.stack([t.top_k_index[:, 0] for t in self.traces])

    def pooled_hf_aux(self) -> float:
        """Hugging Face's load_balancing_loss over all layers pooled: top_k × the Switch aux of the pooled sums."""
        acc = StatsAccumulator()
        for trace in self.traces:
            acc.update(trace)
        return self.traces[0].config.top_k * acc.summary()["aux_loss"]


@torch.inference_mode()
def run_model(model: nn.Module, input_ids: Tensor) -> ModelRun:
    """One forward of `input_ids` (S,) through an instrumented model: logits and one Trace per MoE layer."""
    if not any(True for _ in engine_blocks(model)):
        raise ValueError("the model is not instrumented; call moe.hf.instrument(model) first")
    if input_ids.dim() != 1 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty 1-D tensor of token ids, got shape {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    with collect() as sink:
        out = model(input_ids=input_ids[None].to(device), use_cache=False)
    sink.sort(key=lambda item: item[0])
    traces = [_routing_trace(i, t) if isinstance(t, RoutingRecord) else t.cpu() for i, t in sink]
    return ModelRun(input_ids=input_ids.cpu(), logits=out.logits[0].float().cpu(), layers=[i for i, _ in sink],
                    traces=traces, routing_only=[i for i, t in sink if isinstance(t, RoutingRecord)])


def _routing_trace(layer: int, record: RoutingRecord) -> Trace:
    try:
        from .from_routing import trace_from_routing  # issue #9
    except ImportError:
        raise ValueError(f"layer {layer} can only be traced from its routing, which needs moe.trace_from_routing "
                         f"(issue #9), not in this build") from None
    return trace_from_routing(record.config, record.router_logits, record.top_k_index, record.top_k_weights)
