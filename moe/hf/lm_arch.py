"""The two architectures `train-lm` builds, and the DeepSeek-V3 routers' aux-loss-free balancing during training.

mixtral: softmax router, top-2 of 8 experts, balanced by the Switch aux loss (router_aux_loss_coef).
deepseek_v3: sigmoid router whose selection adds the buffer e_score_correction_bias (the engine's expert_bias),
group-limited top-k, one shared expert, no aux loss; after every optimizer step each layer's bias moves by
bias_rate towards balance (moe.train.trainer.update_expert_bias, the rule of DeepSeek-V3's paper, §2.1.2).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from moe.hf.lm_config import LMTrainConfig
from moe.hf.text import EOS_ID, VOCAB_SIZE
from moe.train.trainer import update_expert_bias

# DeepSeek's multi-head latent attention at our width: per head 16 positional + 16 plain query/key dims
# and 32 value dims (the head size Mixtral's 128/4 heads has), keys and values through a rank-64 latent.
MLA = {"q_lora_rank": None, "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16}


def _common(cfg: LMTrainConfig) -> dict:
    return {"vocab_size": VOCAB_SIZE, "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.heads, "num_experts_per_tok": cfg.top_k,
            "max_position_embeddings": cfg.seq_len, "tie_word_embeddings": True, "bos_token_id": EOS_ID,
            "eos_token_id": EOS_ID, "pad_token_id": EOS_ID, "initializer_range": 0.05}


def model_config(cfg: LMTrainConfig):
    """The transformers config of cfg.arch at cfg's sizes."""
    if cfg.arch == "deepseek_v3":
        from transformers import DeepseekV3Config

        # first_k_dense_replace 0: every decoder layer is an MoE layer; routed_scaling_factor 1 with
        # norm_topk_prob: a token's routed weights sum to one, as Mixtral's do.
        return DeepseekV3Config(
            **_common(cfg), **MLA, v_head_dim=cfg.hidden // cfg.heads, intermediate_size=cfg.d_expert,
            moe_intermediate_size=cfg.d_expert, n_routed_experts=cfg.experts, n_shared_experts=cfg.shared_experts,
            n_group=cfg.n_group, topk_group=cfg.topk_group, first_k_dense_replace=0, norm_topk_prob=True,
            routed_scaling_factor=1.0)
    from transformers import MixtralConfig

    return MixtralConfig(**_common(cfg), intermediate_size=cfg.d_expert, num_local_experts=cfg.experts,
                         router_aux_loss_coef=cfg.aux_coef)


def model_class(cfg: LMTrainConfig):
    from transformers import DeepseekV3ForCausalLM, MixtralForCausalLM

    return DeepseekV3ForCausalLM if cfg.arch == "deepseek_v3" else MixtralForCausalLM


def bias_routers(model: nn.Module) -> list[nn.Module]:
    """The routers that carry an e_score_correction_bias, in decoder-layer order (empty for Mixtral)."""
    return [m for m in model.modules() if isinstance(getattr(m, "e_score_correction_bias", None), Tensor)]


@contextmanager
def capture_selection(model: nn.Module):
    """Inside: a list per bias router that receives each forward's (top_k_index, top_k_weights), both (T, K)
    (the hooks are removed on exit)."""
    routers = bias_routers(model)
    picks: list[list[Tensor]] = [[] for _ in routers]

    def hook(i):
        def record(module, inputs, output):
            picks[i].append((output[2].detach(), output[1].detach()))  # the router returns (logits, weights, index)
        return record
    handles = [r.register_forward_hook(hook(i)) for i, r in enumerate(routers)]
    try:
        yield picks
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def balance_biases(model: nn.Module, picks: list[list[Tensor]], rate: float) -> None:
    """The aux-loss-free step, in place: each router's bias moves by ±rate towards the mean load of the
    experts it selected in the forwards recorded in picks (then cleared). Touches no parameter or gradient."""
    for router, seen in zip(bias_routers(model), picks):
        E = router.e_score_correction_bias.numel()
        index = torch.cat([i for i, _ in seen])  # (T, K)
        routed = torch.zeros(index.shape[0], E).scatter_(1, index, 1.0)  # (T, E) 1 where the token went
        update_expert_bias(router.e_score_correction_bias, routed, rate)
        seen.clear()


def selected_top1(picks: list[list[Tensor]]) -> Tensor:
    """Per layer, each recorded token's highest-weighted selected expert (layers, T); clears picks."""
    rows = []
    for seen in picks:
        index, weights = torch.cat([i for i, _ in seen]), torch.cat([w for _, w in seen])  # (T, K) each
        rows.append(index.gather(1, weights.argmax(dim=1, keepdim=True)).squeeze(1))  # (T,)
        seen.clear()
    return torch.stack(rows)  # (layers, T)
