"""How each Hugging Face sparse MoE family maps onto the engine: config, expert views, shared experts.

An `Adapter` names the family's block class and reads, from the block and the HF config, the MoEConfig
fields that reproduce it (routing score, groups, biases, activation, shared experts). The engine layer
it builds shares every weight with the block: the router weight is the block's Parameter, the experts
and the shared FFN are views into the block's tensors (no copy), and DeepSeek-V3 / Ernie-4.5's
e_score_correction_bias is the engine's expert_bias buffer itself.
GPT-OSS's router bias (E numbers) is the one thing copied: it becomes cfg.logit_bias.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from moe.config import MoEConfig
from moe.experts import FFNWeights
from moe.layer import MoELayer
from moe.router import TopKRouter
from moe.shared import SharedExperts

_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


@dataclass(frozen=True)
class Adapter:
    """How one model family's sparse MoE block maps onto the engine."""
    family: str                                # config.model_type
    block_class: str                           # class name of the family's sparse MoE block
    settings: Callable[[nn.Module, object], dict]  # (block, HF config) -> routing/expert MoEConfig fields
    sizes: tuple[str, str, str]                # config.json keys of (n_experts, d_expert, top_k), read before loading
    exact: bool = True                         # False: routing statistics only (trace_from_routing)
    router: str = "gate"                       # attribute of the block holding the router
    layout: str = "concat"                     # "concat": gate_up (E, 2H, D) gate rows first; "gpt_oss": (E, D, 2H) interleaved
    shared: tuple[str, str | None] | None = None  # (shared MLP attribute, its sigmoid gate attribute or None)
    returns_tuple: bool = False                # the block returns (hidden, router_scores) (GPT-OSS)
    notes: str = field(default="")             # shown on the page: what the adapter maps and how


def _norm(c) -> dict:
    return {"normalize_topk": bool(c.norm_topk_prob)}


def _deepseek(block, c) -> dict:
    return {"score": "sigmoid", "normalize_topk": bool(c.norm_topk_prob), "router_dtype": "float32",
            "routed_scaling_factor": float(c.routed_scaling_factor), "n_group": int(c.n_group),
            "topk_group": int(c.topk_group)}


def _gpt_oss(block, c) -> dict:
    # softmax over the top-k logits = the normalised top-k of the full softmax
    return {"normalize_topk": True, "activation": "gpt_oss", "expert_biases": True,
            "swiglu_limit": float(c.swiglu_limit), "logit_bias": tuple(block.router.bias.detach().float().tolist())}


ADAPTERS: dict[str, Adapter] = {
    "mixtral": Adapter("mixtral", "MixtralSparseMoeBlock", lambda b, c: {"normalize_topk": True},
                       ("num_local_experts", "intermediate_size", "num_experts_per_tok")),
    "qwen3_moe": Adapter("qwen3_moe", "Qwen3MoeSparseMoeBlock", lambda b, c: _norm(c),
                         ("num_experts", "moe_intermediate_size", "num_experts_per_tok")),
    "olmoe": Adapter("olmoe", "OlmoeSparseMoeBlock", lambda b, c: _norm(c),
                     ("num_experts", "intermediate_size", "num_experts_per_tok")),
    "qwen2_moe": Adapter("qwen2_moe", "Qwen2MoeSparseMoeBlock", lambda b, c: _norm(c),
                         ("num_experts", "moe_intermediate_size", "num_experts_per_tok"),
                         shared=("shared_expert", "shared_expert_gate"),
                         notes="shared expert scaled by σ(x·w_gate) per token"),
    "deepseek_v3": Adapter("deepseek_v3", "DeepseekV3MoE", _deepseek,
                           ("n_routed_experts", "moe_intermediate_size", "num_experts_per_tok"),
                           shared=("shared_experts", None),
                           notes="sigmoid scores, e_score_correction_bias as the selection bias, group-limited "
                                 "top-k, routed_scaling_factor, shared experts; the first dense layers are not MoE"),
    "gpt_oss": Adapter("gpt_oss", "GptOssMLP", _gpt_oss,
                       ("num_local_experts", "intermediate_size", "num_experts_per_tok"), router="router",
                       layout="gpt_oss", returns_tuple=True,
                       notes="expert biases, clamped gpt_oss SwiGLU, router bias as logit bias"),
    "ernie4_5_moe": Adapter("ernie4_5_moe", "Ernie4_5_MoeSparseMoeBlock",
                            lambda b, c: {"normalize_topk": True, "router_dtype": "float32"},
                            ("moe_num_experts", "moe_intermediate_size", "moe_k"), shared=("shared_experts", None),
                            notes="e_score_correction_bias steers selection only; shared experts"),
}


def supported_message(model_type: str) -> str:
    """Why `model_type` is refused, naming the supported families."""
    return (f"model_type {model_type!r} is not a supported sparse MoE family; supported families: "
            f"{', '.join(ADAPTERS)}")


def adapter_for(model_type: str) -> Adapter:
    if model_type not in ADAPTERS:
        raise ValueError(supported_message(model_type))
    return ADAPTERS[model_type]


class ExpertViews(nn.Module):
    """The engine's Experts interface (w_gate, w_up, w_down, biases, weights(e)) as views into HF's tensors.

    "concat" (Mixtral, Qwen, OLMoE, DeepSeek, Ernie): gate_up_proj (E, 2H, D) gate rows first, down_proj (E, D, H).
    "gpt_oss": gate_up_proj (E, D, 2H) in (in, out) order, gate and up interleaved (columns 0, 2, 4… are the
    gate), gate_up_proj_bias (E, 2H) likewise, down_proj (E, H, D), down_proj_bias (E, D).
    Views are taken on every access, so they follow the parameters through .to() and in-place updates.
    """

    def __init__(self, experts: nn.Module, layout: str):
        super().__init__()
        self.source = experts
        self.layout = layout
        self.h = experts.down_proj.shape[2 if layout == "concat" else 1]

    @property
    def w_gate(self) -> Tensor:
        g = self.source.gate_up_proj
        return g[:, : self.h] if self.layout == "concat" else g[:, :, 0::2].transpose(1, 2)  # (E, H, D)

    @property
    def w_up(self) -> Tensor:
        g = self.source.gate_up_proj
        return g[:, self.h:] if self.layout == "concat" else g[:, :, 1::2].transpose(1, 2)  # (E, H, D)

    @property
    def w_down(self) -> Tensor:
        d = self.source.down_proj
        return d if self.layout == "concat" else d.transpose(1, 2)  # (E, D, H)

    def _bias(self, name: str, cols: slice | None) -> Tensor | None:
        b = getattr(self.source, name, None) if self.layout == "gpt_oss" else None
        return None if b is None else (b if cols is None else b[:, cols])

    @property
    def b_gate(self) -> Tensor | None:
        return self._bias("gate_up_proj_bias", slice(0, None, 2))  # (E, H)

    @property
    def b_up(self) -> Tensor | None:
        return self._bias("gate_up_proj_bias", slice(1, None, 2))  # (E, H)

    @property
    def b_down(self) -> Tensor | None:
        return self._bias("down_proj_bias", None)  # (E, D)

    def weights(self, e: int) -> FFNWeights:
        """Expert e's tensors (views, no copy)."""
        def pick(t):
            return None if t is None else t[e]
        return FFNWeights(self.w_gate[e], self.w_up[e], self.w_down[e], pick(self.b_gate), pick(self.b_up),
                          pick(self.b_down))


def shared_views(block: nn.Module, adapter: Adapter) -> tuple[SharedExperts | None, dict]:
    """An engine SharedExperts whose parameters are the block's shared MLP Parameters, and its config fields."""
    if adapter.shared is None or getattr(block, adapter.shared[0], None) is None:
        return None, {}
    mlp = getattr(block, adapter.shared[0])
    gate = getattr(block, adapter.shared[1]) if adapter.shared[1] else None
    shared = SharedExperts.__new__(SharedExperts)
    nn.Module.__init__(shared)
    shared.w_gate, shared.w_up, shared.w_down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    shared.gate = gate  # nn.Linear(D, 1) or None: the module itself
    return shared, {"shared_experts": 1, "d_shared": mlp.up_proj.weight.shape[0], "shared_gate": gate is not None}


def _selection_bias(block: nn.Module, adapter: Adapter) -> Tensor | None:
    """DeepSeek-V3's buffer (E,) / Ernie-4.5's (1, E) e_score_correction_bias, as an (E,) view."""
    router = getattr(block, adapter.router)
    bias = getattr(router, "e_score_correction_bias", None)
    if bias is None and hasattr(router, "moe_statics"):
        bias = router.moe_statics.e_score_correction_bias
    return None if bias is None else bias.detach().reshape(-1)


def engine_config(block: nn.Module, adapter: Adapter, hf_config) -> MoEConfig:
    """The MoEConfig that reproduces `block` (refuses layouts the engine does not run)."""
    experts, router = block.experts, getattr(block, adapter.router)
    act = getattr(hf_config, "hidden_act", "silu")
    if adapter.layout == "concat" and act != "silu":
        raise ValueError(f"{adapter.family}: experts use activation {act!r}; the engine runs this family with silu only")
    weight = experts.gate_up_proj
    dtype = _DTYPE_NAMES.get(str(weight.dtype))
    if dtype is None:
        raise ValueError(f"{adapter.family}: weights in {weight.dtype} are not supported; load in float32 or bfloat16")
    views = ExpertViews(experts, adapter.layout)
    E, D = router.weight.shape
    bias = _selection_bias(block, adapter)
    _, shared = shared_views(block, adapter)
    fields = {"router_dtype": "model", **adapter.settings(block, hf_config), **shared}
    if bias is not None:
        fields["expert_bias"] = tuple(bias.float().tolist())
    return MoEConfig(d_model=D, d_expert=views.h, n_experts=E, top_k=router.top_k, dtype=dtype,
                     device=str(weight.device), **fields)


def engine_layer(block: nn.Module, cfg: MoEConfig, adapter: Adapter) -> MoELayer:
    """An engine MoELayer whose router weight, experts, shared FFN and selection bias are the block's own."""
    layer = MoELayer.__new__(MoELayer)
    nn.Module.__init__(layer)
    layer.cfg = cfg
    router = getattr(block, adapter.router)
    layer.router = TopKRouter(cfg).to(cfg.device)  # its (E, D) placeholder is replaced just below
    layer.router.weight = router.weight            # the model's Parameter: shared, not copied
    bias = _selection_bias(block, adapter)
    if bias is not None:
        layer.router.expert_bias = bias            # the model's buffer (a view): shared, not copied
    layer.experts = ExpertViews(block.experts, adapter.layout)
    layer.shared, _ = shared_views(block, adapter)
    return layer


def routing_config(block: nn.Module, adapter: Adapter) -> MoEConfig:
    """Dimensions of a block the engine does not run: (E, D) from the router, H when the experts say."""
    router = getattr(block, adapter.router)
    E, D = router.weight.shape
    return MoEConfig(d_model=D, d_expert=getattr(block.experts, "intermediate_dim", 1), n_experts=E,
                     top_k=router.top_k)
