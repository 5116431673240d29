"""Routing proven equal to Hugging Face transformers' own MoE blocks (random continuous weights, no downloads).

Each block is built from a tiny config, its weights are copied into a MoELayer, and the router logits,
chosen experts, weights (and the routed output where the engine's experts are the same SwiGLU) must
match in fp32 within 1e-4 relative. Hugging Face's `torch.topk` breaks exact ties arbitrarily and ours
deterministically, so weights are continuous random draws (ties have probability zero).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from moe import MoEConfig, MoELayer, StatsAccumulator, trace_from_routing  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
B, S, D, H = 3, 16, 16, 24


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.4) -> None:
    """Continuous random weights everywhere (HF initialises some router weights to zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * scale)


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, S, D, generator=torch.Generator().manual_seed(seed))  # (B, S, D)


def _engine(cfg: MoEConfig, router_weight, gate_up=None, down=None, expert_bias=None) -> MoELayer:
    """A MoELayer holding HF's weights: gate_up (E, 2H, D) = [w_gate; w_up], down (E, D, H)."""
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.weight.copy_(router_weight)
        if gate_up is not None:
            layer.experts.w_gate.copy_(gate_up[:, : cfg.d_expert])
            layer.experts.w_up.copy_(gate_up[:, cfg.d_expert:])
            layer.experts.w_down.copy_(down)
        if expert_bias is not None:
            layer.router.expert_bias.copy_(expert_bias.reshape(-1))
    return layer


def _by_expert(idx: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each token's (index, weight) pairs by expert index (some HF routers return them unsorted)."""
    order = idx.argsort(dim=-1)
    return idx.gather(-1, order), w.gather(-1, order)


def _compare_routing(hf_logits, hf_w, hf_idx, trace, *, sort=False) -> None:
    torch.testing.assert_close(trace.router_logits, hf_logits.float().reshape(-1, trace.probs.shape[1]),
                               rtol=RTOL, atol=ATOL)
    idx, w = trace.top_k_index, trace.top_k_weights
    hf_idx, hf_w = hf_idx.reshape(idx.shape), hf_w.float().reshape(w.shape)
    if sort:
        (idx, w), (hf_idx, hf_w) = _by_expert(idx, w), _by_expert(hf_idx, hf_w)
    assert torch.equal(idx, hf_idx.long()), "chosen experts differ"
    torch.testing.assert_close(w, hf_w, rtol=RTOL, atol=ATOL)


def _run_block(block, gate, x):
    """Run an HF block and record what its router returned (logits, weights, indices)."""
    seen = {}
    handle = gate.register_forward_hook(lambda m, i, out: seen.setdefault("out", out))
    with torch.no_grad():
        y = block(x)
    handle.remove()
    return (y[0] if isinstance(y, tuple) else y), seen["out"]


def _mixtral_block(seed=1, E=8, K=2):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    hf_cfg = MixtralConfig(hidden_size=D, intermediate_size=H, num_local_experts=E, num_experts_per_tok=K,
                           experts_implementation="eager")
    block = MixtralSparseMoeBlock(hf_cfg).eval()
    _randomise(block, seed)
    return block, MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K)


def test_mixtral():
    block, cfg = _mixtral_block()
    x = _x()
    y_hf, (logits, w, idx) = _run_block(block, block.gate, x)
    layer = _engine(cfg, block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj)
    y, trace = layer(x)
    _compare_routing(logits, w, idx, trace)
    torch.testing.assert_close(y, y_hf, rtol=RTOL, atol=ATOL)


def _qwen3_block(norm_topk_prob):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    hf_cfg = Qwen3MoeConfig(hidden_size=D, moe_intermediate_size=H, num_experts=8, num_experts_per_tok=3,
                            norm_topk_prob=norm_topk_prob, experts_implementation="eager")
    return Qwen3MoeSparseMoeBlock(hf_cfg), 2, MoEConfig(d_model=D, d_expert=H, n_experts=8, top_k=3,
                                                        normalize_topk=norm_topk_prob)


def _olmoe_block():
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
    hf_cfg = OlmoeConfig(hidden_size=D, intermediate_size=H, num_experts=8, num_experts_per_tok=2,
                         norm_topk_prob=False, experts_implementation="eager")
    return OlmoeSparseMoeBlock(hf_cfg), 3, MoEConfig(d_model=D, d_expert=H, n_experts=8, top_k=2,
                                                     normalize_topk=False)


@pytest.mark.parametrize("make", [lambda: _qwen3_block(True), lambda: _qwen3_block(False), _olmoe_block],
                         ids=["qwen3_moe-norm", "qwen3_moe-raw", "olmoe"])
def test_qwen3_moe_and_olmoe(make):
    """Qwen3-MoE (normalised or raw top-k) and OLMoE: a gate Linear and fused expert tensors, like Mixtral's."""
    block, seed, cfg = make()
    block = block.eval()
    _randomise(block, seed)
    y_hf, (logits, w, idx) = _run_block(block, block.gate, _x())
    y, trace = _engine(cfg, block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj)(_x())
    _compare_routing(logits, w, idx, trace)
    torch.testing.assert_close(y, y_hf, rtol=RTOL, atol=ATOL)


def _deepseek_block(n_group=4, topk_group=2, E=16, K=4, seed=4):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    hf_cfg = DeepseekV3Config(hidden_size=D, moe_intermediate_size=H, n_routed_experts=E, num_experts_per_tok=K,
                              n_group=n_group, topk_group=topk_group, n_shared_experts=1, norm_topk_prob=True,
                              routed_scaling_factor=2.5, experts_implementation="eager")
    block = DeepseekV3MoE(hf_cfg).eval()
    _randomise(block, seed)
    with torch.no_grad():  # a small positive correction bias: it reorders close scores, never swamps them
        block.gate.e_score_correction_bias.copy_(0.05 * torch.rand(E, generator=torch.Generator().manual_seed(9)))
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K, score="sigmoid", n_group=n_group,
                    topk_group=topk_group, routed_scaling_factor=2.5)
    layer = _engine(cfg, block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj,
                    block.gate.e_score_correction_bias)
    return block, layer


@pytest.mark.parametrize("n_group,topk_group", [(4, 2), (8, 3), (2, 1)])
def test_deepseek_v3_group_limited(n_group, topk_group):
    """Routing decisions and the routed experts' output (the shared expert is not part of this check)."""
    block, layer = _deepseek_block(n_group, topk_group)
    x = _x()
    with torch.no_grad():
        logits, w, idx = block.gate(x)
        routed_hf = block.experts(x.reshape(-1, D), idx, w).reshape(x.shape)
    y, trace = layer(x)
    _compare_routing(logits, w, idx, trace, sort=True)
    torch.testing.assert_close(y, routed_hf, rtol=RTOL, atol=ATOL)
    # the group limit mattered: without it the engine would choose differently for some tokens
    _, ungrouped = layer.reconfigured(layer.cfg.replace(n_group=1, topk_group=1))(x)
    assert not torch.equal(ungrouped.routed, trace.routed)


def test_ernie_4_5_moe():
    from transformers import Ernie4_5_MoeConfig
    from transformers.models.ernie4_5_moe.modeling_ernie4_5_moe import Ernie4_5_MoeSparseMoeBlock
    hf_cfg = Ernie4_5_MoeConfig(hidden_size=D, moe_intermediate_size=H, moe_num_experts=8, moe_k=2,
                                moe_num_shared_experts=0, experts_implementation="eager")
    block = Ernie4_5_MoeSparseMoeBlock(hf_cfg).eval()
    _randomise(block, 5)
    with torch.no_grad():
        block.gate.moe_statics.e_score_correction_bias.mul_(0.05)  # selection bias on softmax probs
    bias = block.gate.moe_statics.e_score_correction_bias
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=8, top_k=2)
    x = _x().reshape(-1, D)  # (T, D): this block's router takes flat tokens
    y_hf, (logits, w, idx) = _run_block(block, block.gate, x.reshape(B, S, D))
    layer = _engine(cfg, block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj, bias)
    y, trace = layer(x.reshape(B, S, D))
    _compare_routing(logits, w, idx, trace)
    torch.testing.assert_close(y, y_hf, rtol=RTOL, atol=ATOL)
    assert trace.summary()["bias_overlap"] < 1.0  # the bias moved some choices


def test_gpt_oss_router_bias_is_a_logit_bias():
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter
    hf_cfg = GptOssConfig(hidden_size=D, intermediate_size=H, num_local_experts=8, num_experts_per_tok=4)
    router = GptOssTopKRouter(hf_cfg).eval()
    _randomise(router, 6)
    x = _x().reshape(-1, D)  # (T, D)
    with torch.no_grad():
        logits, w, idx = router(x)
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=8, top_k=4, logit_bias=tuple(router.bias.tolist()))
    _, trace = _engine(cfg, router.weight)(x)
    _compare_routing(logits, w, idx, trace)


def test_switch_top1_with_per_sequence_capacity_drops_the_same_tokens():
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersTop1Router
    E, capacity = 4, 3
    hf_cfg = SwitchTransformersConfig(d_model=D, d_ff=H, num_experts=E, expert_capacity=capacity)
    router = SwitchTransformersTop1Router(hf_cfg).eval()
    _randomise(router, 7)
    x = _x()
    with torch.no_grad():
        expert_index, probs, logits = router(x)  # (B, S, E) one-hot after capacity, (B, S, 1), (B, S, E)
    # C = ceil(capacity_factor · S · K / E) = expert_capacity
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=1, normalize_topk=False,
                    capacity_factor=capacity * E / S, capacity_scope="sequence")
    _, trace = _engine(cfg, router.classifier.weight)(x)
    assert trace.capacity == capacity
    torch.testing.assert_close(trace.router_logits, logits.reshape(-1, E), rtol=RTOL, atol=ATOL)
    assert torch.equal(trace.served, expert_index.reshape(-1, E).bool())
    kept = trace.served.any(dim=1)  # (T,)
    assert (~kept).sum() > 0, "the test must drop tokens"
    torch.testing.assert_close(trace.top_k_weights.squeeze(1), probs.reshape(-1), rtol=RTOL, atol=ATOL)
    # counting capacity over the whole batch drops other tokens
    _, batch = _engine(cfg.replace(capacity_scope="batch"), router.classifier.weight)(x)
    assert not torch.equal(batch.served, trace.served)


def _routing_numbers(trace) -> dict:
    keep = ("demand", "served", "load_share", "utilization", "mean_gate", "topk_margin", "bias_overlap")
    table = trace.per_expert()
    summary = {k: v for k, v in trace.summary().items() if k not in ("forward_ms", "nonfinite_output")}
    return {**{c: table[c].to_numpy(float) for c in keep}, **summary}


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_trace_from_routing_on_hf_logits_equals_the_engine_forward(family):
    x = _x()
    if family == "mixtral":
        block, cfg = _mixtral_block()
        _, (logits, w, idx) = _run_block(block, block.gate, x)
        layer = _engine(cfg, block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj)
    else:
        block, layer = _deepseek_block()
        with torch.no_grad():
            logits, w, idx = block.gate(x)
    _, engine = layer(x)
    ours = trace_from_routing(layer.cfg, logits, idx, w)
    a, b = _routing_numbers(ours), _routing_numbers(engine)
    assert set(a) == set(b)
    for key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert ours.per_expert()["output_rms"].isna().all()


def test_hf_load_balancing_loss_is_top_k_times_aux_loss_for_one_layer():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    block, cfg = _mixtral_block(E=8, K=3)
    x = _x()
    _, (logits, _, _) = _run_block(block, block.gate, x)
    _, trace = _engine(cfg, block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj)(x)
    hf = float(load_balancing_loss_func((logits,), cfg.n_experts, cfg.top_k))
    assert hf == pytest.approx(cfg.top_k * trace.summary()["aux_loss"], rel=1e-5)


def test_hf_load_balancing_loss_over_a_model_is_top_k_times_the_accumulated_aux_loss():
    """A tiny 3-layer MixtralForCausalLM: its aux_loss over all layers equals top_k × our accumulator."""
    from transformers import MixtralConfig, MixtralForCausalLM
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    E, K = 6, 2
    hf_cfg = MixtralConfig(vocab_size=50, hidden_size=D, intermediate_size=H, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=E,
                           num_experts_per_tok=K, output_router_logits=True, attn_implementation="eager",
                           experts_implementation="eager")
    torch.manual_seed(0)  # the model's own initialisation (std 0.02, continuous)
    model = MixtralForCausalLM(hf_cfg).eval()
    chosen = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, out: chosen.append(out))
             for layer in model.model.layers]
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids)
    for h in hooks:
        h.remove()
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K)
    acc = StatsAccumulator()
    for logits, w, idx in chosen:
        acc.update(trace_from_routing(cfg, logits, idx, w))
    assert acc.forwards == 3
    ours = K * acc.summary()["aux_loss"]
    assert float(out.aux_loss) == pytest.approx(ours, rel=1e-5)
    assert float(load_balancing_loss_func(out.router_logits, E, K)) == pytest.approx(ours, rel=1e-5)
