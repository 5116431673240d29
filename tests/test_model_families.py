"""The round-2 families (Qwen2-MoE, DeepSeek-V3, GPT-OSS, Ernie-4.5): views not copies, the model's settings read."""
import copy

import pytest
import torch

from moe.hf.instrument import EngineBlock, instrument, run_model
from tests.model_support import VOCAB, tiny_model


def _block(model, family: str) -> EngineBlock:
    layer = 1 if family == "deepseek_v3" else 0
    block = model.model.layers[layer].mlp
    assert isinstance(block, EngineBlock)
    return block


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3", "ernie4_5_moe"])
def test_concatenated_experts_and_shared_ffn_are_views(family):
    model = tiny_model(family, layers=3 if family == "deepseek_v3" else 2)
    instrument(model)
    block = _block(model, family)
    hf, engine = block.block, block.engine
    H = engine.cfg.d_expert
    base = hf.experts.gate_up_proj
    assert engine.experts.w_gate.data_ptr() == base.data_ptr()
    assert engine.experts.w_up.data_ptr() == base.data_ptr() + H * base.stride(1) * base.element_size()
    assert engine.experts.w_down.data_ptr() == hf.experts.down_proj.data_ptr()
    mlp = getattr(hf, "shared_expert", None) or hf.shared_experts
    assert engine.shared.w_up is mlp.up_proj.weight and engine.shared.w_down is mlp.down_proj.weight
    assert engine.cfg.d_shared == mlp.up_proj.weight.shape[0]
    if family == "qwen2_moe":
        assert engine.shared.gate is hf.shared_expert_gate and engine.cfg.shared_gate
    else:  # the selection bias is the model's own tensor: an in-place change is seen
        with torch.no_grad():
            (hf.gate.e_score_correction_bias if family == "deepseek_v3"
             else hf.gate.moe_statics.e_score_correction_bias).view(-1)[3] = 9.0
        assert engine.router.expert_bias[3].item() == 9.0


def test_deepseek_v3_reads_sigmoid_groups_and_scaling():
    model = tiny_model("deepseek_v3", layers=3)
    assert instrument(model) == [1, 2]  # the first dense layer is left alone
    cfg = _block(model, "deepseek_v3").engine.cfg
    assert (cfg.score, cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor) == ("sigmoid", 4, 2, 2.5)
    assert cfg.shared_experts == 1 and not cfg.shared_gate


def test_gpt_oss_interleaved_experts_are_strided_views_with_biases():
    model = tiny_model("gpt_oss")
    instrument(model)
    block = _block(model, "gpt_oss")
    ex, engine = block.block.experts, block.engine
    item = ex.gate_up_proj.element_size()
    assert engine.experts.w_gate.data_ptr() == ex.gate_up_proj.data_ptr()         # column 0
    assert engine.experts.w_up.data_ptr() == ex.gate_up_proj.data_ptr() + item    # column 1
    assert engine.experts.b_up.data_ptr() == ex.gate_up_proj_bias.data_ptr() + item
    assert engine.experts.w_down.data_ptr() == ex.down_proj.data_ptr()
    assert engine.experts.b_down.data_ptr() == ex.down_proj_bias.data_ptr()
    cfg = engine.cfg
    assert cfg.activation == "gpt_oss" and cfg.expert_biases and cfg.swiglu_limit == 1.0
    assert cfg.logit_bias == pytest.approx(block.block.router.bias.tolist())


def test_gpt_oss_routing_matches_the_hf_router():
    plain = tiny_model("gpt_oss")
    model = copy.deepcopy(plain)
    instrument(model)
    ids = torch.randint(0, VOCAB, (30,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = plain(input_ids=ids[None], output_router_logits=True)
    run = run_model(model, ids)
    for hf_logits, trace in zip(out.router_logits, run.traces):
        assert torch.allclose(trace.router_logits, hf_logits.float(), atol=1e-5)
        hf_top = torch.topk(hf_logits.float(), 2, dim=-1).indices
        assert torch.equal(trace.top_k_index.sort(dim=1).values, hf_top.sort(dim=1).values)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "ernie4_5_moe",
                                    "gpt_oss"])
def test_ties_at_the_kth_score_go_as_the_model_s_own_router_breaks_them(family):
    """An auditor's models with two experts of one router row (and bfloat16 OLMoE, where scores tie on 2-3% of
    tokens): the engine broke ties by logit, then the lower expert, where every family's router calls torch.topk,
    so model-report counted other experts than the model routed to (a saturated DeepSeek-V3: 132 of 272 tokens).
    The engine now takes the block's own selection: the ids equal those the uninstrumented model's routers return.
    DeepSeek-V3 is saturated (sigmoid scores of 1.0 tie) as the auditor's was: with duplicated rows its
    sorted=False topk happened to agree with the engine's rule."""
    plain = tiny_model(family, layers=3 if family == "deepseek_v3" else 2)
    with torch.no_grad():
        for name, p in [*plain.named_parameters(), *plain.named_buffers()]:
            if family == "deepseek_v3" and name.endswith((".mlp.gate.weight", "e_score_correction_bias")):
                p.mul_(200.0 if p.dim() == 2 else 0.0)                                # logits past 16.6, no bias
            elif name.endswith((".mlp.gate.weight", ".mlp.router.weight")):
                p[5] = p[3]                                                           # experts 3 and 5 tie exactly
            elif name.endswith(("router.bias", "e_score_correction_bias")):
                p[..., 5] = p[..., 3]                                                 # (E,) or Ernie's (1, E)
    model = copy.deepcopy(plain)
    instrument(model)
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(3))
    chosen = []
    hooks = [getattr(layer.mlp, "gate", None) or layer.mlp.router for layer in plain.model.layers
             if hasattr(layer.mlp, "experts")]
    handles = [h.register_forward_hook(lambda m, i, o: chosen.append(o[2].sort(dim=-1).values)) for h in hooks]
    with torch.inference_mode():
        plain(input_ids=ids[None])
    for h in handles:
        h.remove()
    run = run_model(model, ids)
    assert len(run.traces) == len(chosen)
    tied = 0
    for hf_ids, trace in zip(chosen, run.traces):
        ours = trace.top_k_index.sort(dim=-1).values
        assert torch.equal(ours, hf_ids), (family, (ours != hf_ids).any(dim=-1).sum())
        tied += int(((hf_ids == 3) | (hf_ids == 5)).any(dim=-1).sum() if family != "deepseek_v3" else
                    (trace.probs.max(dim=-1).values == trace.probs.topk(3, dim=-1).values[:, -1]).sum())
    assert tied > 0  # the tie was in play
    from moe.hf.counterfactual import Counterfactual, run_counterfactual
    same = run_counterfactual(model, ids, Counterfactual(capacity_factor=8.0, temperature=1.0))  # selects as the model
    hotter = run_counterfactual(model, ids, Counterfactual(temperature=0.5))
    for base, cf in zip(run.traces, same.traces):
        assert torch.equal(cf.top_k_index, base.top_k_index)
    if family not in ("deepseek_v3", "ernie4_5_moe"):  # no selection bias: the temperature keeps the logits' order,
        assert torch.equal(hotter.traces[0].top_k_index, run.traces[0].top_k_index)  # at the first layer (its weights
                                                                                     # change the layers after it)
