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
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                torch.nn.init.normal_(p, std=0.5)  # spread routing so top-2 is decided, not tied
    return model.float().eval()
