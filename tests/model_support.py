"""Tiny random Hugging Face MoE models built from configs (no downloads), shared by the model tests."""
from __future__ import annotations

import torch

VOCAB = 257  # the byte tokenizer's vocabulary, so saved tiny models load with it


def tiny_config(family: str, layers: int = 2, norm_topk: bool = True):
    """A 2–4 layer config of `family` with 8 experts, top-2, hidden 32."""
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, num_experts_per_tok=2, max_position_embeddings=128)
    if family == "mixtral":
        from transformers import MixtralConfig
        return MixtralConfig(intermediate_size=48, num_local_experts=8, **common)
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        return Qwen3MoeConfig(moe_intermediate_size=48, intermediate_size=64, num_experts=8,
                              norm_topk_prob=norm_topk, head_dim=8, **common)
    if family == "olmoe":
        from transformers import OlmoeConfig
        return OlmoeConfig(intermediate_size=48, num_experts=8, norm_topk_prob=norm_topk, **common)
    if family == "qwen2_moe":
        from transformers import Qwen2MoeConfig
        return Qwen2MoeConfig(moe_intermediate_size=48, shared_expert_intermediate_size=40, intermediate_size=64,
                              num_experts=8, norm_topk_prob=norm_topk, **common)
    if family == "deepseek_v3":  # layer 0 dense (first_k_dense_replace=1), the rest MoE; 4 groups, 2 kept
        from transformers import DeepseekV3Config
        return DeepseekV3Config(moe_intermediate_size=24, intermediate_size=64, n_routed_experts=8, n_shared_experts=1,
                                n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.5,
                                norm_topk_prob=norm_topk, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                                qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                **{**common, "num_key_value_heads": 4})
    if family == "gpt_oss":
        from transformers import GptOssConfig
        return GptOssConfig(intermediate_size=48, num_local_experts=8, head_dim=8, swiglu_limit=1.0,
                            sliding_window=16, **common)
    if family == "ernie4_5_moe":
        from transformers import Ernie4_5_MoeConfig
        return Ernie4_5_MoeConfig(moe_intermediate_size=48, intermediate_size=64, moe_num_experts=8,
                                  moe_num_shared_experts=1, moe_layer_start_index=0, **common)
    if family == "llama":
        from transformers import LlamaConfig
        return LlamaConfig(intermediate_size=48, **common)
    raise ValueError(family)


def tiny_model(family: str, layers: int = 2, norm_topk: bool = True, seed: int = 0):
    """A tiny causal LM with random weights (router weights drawn too: HF zero-inits some routers)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(family, layers, norm_topk))
        for name, p in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("gate.weight", "router.weight")):
                torch.nn.init.normal_(p, std=0.5)  # spread routing so top-2 is decided, not tied
            elif name.endswith(("router.bias", "e_score_correction_bias")):
                with torch.no_grad():
                    p.normal_(std=0.3)  # zero in HF's init: draw it, so the biases are exercised
    return model.float().eval()


def saved_model(path, family: str = "mixtral", layers: int = 2) -> str:
    """A tiny model saved as a Hugging Face directory with the byte tokenizer: what the Model view opens."""
    from moe.hf.text import save_tokenizer

    tiny_model(family, layers=layers).save_pretrained(path)
    save_tokenizer(str(path))
    return str(path)
