"""Full MoE blocks of Hugging Face transformers against MoELayer with the same weights (experts side).

Each block is built from a tiny config (no download), filled with continuous random weights, copied
into a MoELayer, and both run on the same (B, S, D) input in fp32. Routing-side equality of these
families (groups, per-sequence capacity, aux losses) lives with the routing tests.
"""
from __future__ import annotations

import pytest
import torch

from moe import MoEConfig, MoELayer

transformers = pytest.importorskip("transformers")
B, S, D, H, E, K = 2, 12, 16, 12, 6, 2
RTOL = 1e-4


def fill_random(module: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Every parameter N(0, std²): continuous, so top-k never meets an exact tie."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def engine(cfg: MoEConfig, weights: dict[str, torch.Tensor]) -> MoELayer:
    layer = MoELayer(cfg)
    state = layer.state_dict()
    assert set(weights) <= set(state), set(weights) - set(state)
    layer.load_state_dict({**state, **{k: v.detach().clone() for k, v in weights.items()}})
    return layer


def inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, S, D, generator=torch.Generator().manual_seed(seed))  # (B, S, D)


def assert_same_output(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """max |ours − theirs| ≤ 1e-4 · max |theirs| (fp32)."""
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max() / theirs.abs().max()
    assert err <= RTOL, f"relative error {err:.2e}"


def split_gate_up(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, 2H, D) concatenated [gate; up] (Mixtral-style v5 experts) → w_gate, w_up (E, H, D)."""
    return gate_up.chunk(2, dim=1)


def mlp_weights(mlp, prefix: str = "shared.") -> dict[str, torch.Tensor]:
    return {prefix + "w_gate": mlp.gate_proj.weight, prefix + "w_up": mlp.up_proj.weight,
            prefix + "w_down": mlp.down_proj.weight}


@pytest.mark.parametrize("norm", (False, True))
def test_qwen2_moe_gated_shared_expert(norm):
    from transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    hf_cfg = Qwen2MoeConfig(hidden_size=D, moe_intermediate_size=H, shared_expert_intermediate_size=20,
                            num_experts=E, num_experts_per_tok=K, norm_topk_prob=norm, hidden_act="silu",
                            experts_implementation="eager")
    block = Qwen2MoeSparseMoeBlock(hf_cfg).eval()
    fill_random(block, seed=1)
    w_gate, w_up = split_gate_up(block.experts.gate_up_proj)
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K, normalize_topk=norm,
                    shared_experts=1, d_shared=20, shared_gate=True)
    layer = engine(cfg, {"router.weight": block.gate.weight, "experts.w_gate": w_gate, "experts.w_up": w_up,
                         "experts.w_down": block.experts.down_proj, **mlp_weights(block.shared_expert),
                         "shared.gate.weight": block.shared_expert_gate.weight})
    x = inputs()
    with torch.no_grad():
        theirs = block(x)
        ours, trace = layer(x)
    assert_same_output(ours, theirs)
    assert 0 < trace.summary()["shared_fraction"] < 1


def test_deepseek_v3_shared_experts():
    from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    hf_cfg = DeepseekV3Config(hidden_size=D, moe_intermediate_size=H, n_routed_experts=E, num_experts_per_tok=K,
                              n_shared_experts=2, n_group=1, topk_group=1, norm_topk_prob=True,
                              routed_scaling_factor=2.5, hidden_act="silu", experts_implementation="eager")
    block = DeepseekV3MoE(hf_cfg).eval()
    fill_random(block, seed=2)
    bias = torch.randn(E, generator=torch.Generator().manual_seed(3)) * 0.2
    block.gate.e_score_correction_bias.copy_(bias)
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K, score="sigmoid", normalize_topk=True,
                    routed_scaling_factor=2.5, expert_bias=tuple(bias.tolist()), shared_experts=2)
    assert cfg.shared_hidden == 2 * H  # DeepSeek: moe_intermediate_size × n_shared_experts
    _same_as_block_with_shared_experts(block, cfg, seed=1)


def _same_as_block_with_shared_experts(block, cfg: MoEConfig, seed: int) -> None:
    """The engine on the block's router, fused experts and shared MLP gives the block's output."""
    w_gate, w_up = split_gate_up(block.experts.gate_up_proj)
    layer = engine(cfg, {"router.weight": block.gate.weight, "experts.w_gate": w_gate, "experts.w_up": w_up,
                         "experts.w_down": block.experts.down_proj, **mlp_weights(block.shared_experts)})
    x = inputs(seed)
    with torch.no_grad():
        theirs = block(x)
        ours, _ = layer(x)
    assert_same_output(ours, theirs)


def test_ernie_4_5_moe_shared_experts():
    from transformers.models.ernie4_5_moe.configuration_ernie4_5_moe import Ernie4_5_MoeConfig
    from transformers.models.ernie4_5_moe.modeling_ernie4_5_moe import Ernie4_5_MoeSparseMoeBlock
    hf_cfg = Ernie4_5_MoeConfig(hidden_size=D, moe_intermediate_size=H, moe_num_experts=E, moe_k=K,
                                moe_num_shared_experts=2, hidden_act="silu", experts_implementation="eager")
    block = Ernie4_5_MoeSparseMoeBlock(hf_cfg).eval()
    fill_random(block, seed=4)
    bias = block.gate.moe_statics.e_score_correction_bias  # (1, E), filled above
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K, expert_bias=tuple(bias[0].tolist()),
                    shared_experts=2)
    _same_as_block_with_shared_experts(block, cfg, seed=2)


@pytest.mark.parametrize("limit", (7.0, 0.5))  # 0.5: the gate and up clamps both bite
def test_gpt_oss_experts(limit):
    from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    hf_cfg = GptOssConfig(hidden_size=D, intermediate_size=H, num_local_experts=E, num_experts_per_tok=K,
                          swiglu_limit=limit, experts_implementation="eager")
    block = GptOssMLP(hf_cfg).eval()
    fill_random(block, seed=5)
    ex = block.experts
    # gate_up_proj is (E, D, 2H) in (in, out) order with gate and up interleaved: columns 0, 2, 4… are the gate.
    weights = {"router.weight": block.router.weight,
               "experts.w_gate": ex.gate_up_proj[:, :, 0::2].transpose(1, 2),  # (E, H, D)
               "experts.w_up": ex.gate_up_proj[:, :, 1::2].transpose(1, 2),    # (E, H, D)
               "experts.w_down": ex.down_proj.transpose(1, 2),                 # (E, D, H)
               "experts.b_gate": ex.gate_up_proj_bias[:, 0::2], "experts.b_up": ex.gate_up_proj_bias[:, 1::2],
               "experts.b_down": ex.down_proj_bias}
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=E, top_k=K, activation="gpt_oss", expert_biases=True,
                    swiglu_limit=limit, logit_bias=tuple(block.router.bias.tolist()))  # softmax of top-k = normalised
    layer = engine(cfg, weights)
    x = inputs(3)
    with torch.no_grad():
        theirs, _ = block(x)
        ours, _ = layer(x)
    assert_same_output(ours, theirs)
    if limit < 1:
        gate = torch.einsum("bsd,ehd->bseh", x, weights["experts.w_gate"]) + weights["experts.b_gate"]
        assert (gate > limit).float().mean() > 0.2


@pytest.mark.parametrize("act", ("relu", "gelu"))
def test_switch_transformers_ffn(act):
    """Top-1, weight = the chosen probability, capacity large enough that nothing drops."""
    from transformers.models.switch_transformers.configuration_switch_transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP
    hf_cfg = SwitchTransformersConfig(d_model=D, d_ff=H, num_experts=4, expert_capacity=S, dense_act_fn=act,
                                      router_bias=False)
    block = SwitchTransformersSparseMLP(hf_cfg).eval()
    fill_random(block, seed=6)
    experts = [block.experts[f"expert_{e}"] for e in range(4)]
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=4, top_k=1, normalize_topk=False, gated=False,
                    activation=act)
    layer = engine(cfg, {"router.weight": block.router.classifier.weight,
                         "experts.w_up": torch.stack([m.wi.weight for m in experts]),    # (E, H, D)
                         "experts.w_down": torch.stack([m.wo.weight for m in experts])})  # (E, D, H)
    x = inputs(4)
    with torch.no_grad():
        theirs = block(x)
        ours, trace = layer(x)
    assert_same_output(ours, theirs)
    assert trace.summary()["dropped"] == 0


def test_one_switch_expert_is_the_ungated_relu_engine():
    from transformers.models.switch_transformers.configuration_switch_transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersDenseActDense
    dense = SwitchTransformersDenseActDense(SwitchTransformersConfig(d_model=D, d_ff=H, dense_act_fn="relu")).eval()
    fill_random(dense, seed=7)
    cfg = MoEConfig(d_model=D, d_expert=H, n_experts=1, top_k=1, gated=False, activation="relu")
    layer = engine(cfg, {"experts.w_up": dense.wi.weight[None], "experts.w_down": dense.wo.weight[None]})
    x = inputs(5)
    with torch.no_grad():
        assert_same_output(layer(x)[0], dense(x))
