"""Presets: named sets of control values, each with what to look for and why."""
from __future__ import annotations

from dataclasses import dataclass, field

from moe.knobs import DEFAULTS as KNOB_DEFAULTS

# Every sidebar control and its default: the engine's knobs (moe.knobs), read-only here. The keys double as
# widget keys and query parameters.
CONTROL_DEFAULTS: dict[str, object] = KNOB_DEFAULTS


@dataclass(frozen=True)
class Preset:
    name: str
    look_for: str   # what to look for
    why: str        # why it happens
    values: dict = field(default_factory=dict)  # overrides of CONTROL_DEFAULTS


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("Balanced top-2 (Mixtral-like)",
           "Demand bars sit close to the ideal line T·K/E; aux loss ≈ 1, CV small, no dead experts.",
           "A softmax router with random weights spreads tokens evenly; top-2 weights are renormalised.",
           {}),
    Preset("Switch top-1 with capacity",
           "Served bars are cut at the capacity line; the lighter demand bar above it and the dropped % KPI show the lost tokens.",
           "Switch routes each token to one expert with capacity C = ceil(cf·T/E); skewed topics overflow it.",
           {"top_k": 1, "normalize_topk": False, "dropless": False, "capacity_factor": 1.0,
            "scenario": "clusters", "skew": 1.0}),
    Preset("DeepSeek-like sigmoid with aux-free bias",
           "Expert 0 is made hot by a logit bias (+1.7: alone it would take ~3× its share); the expert_bias "
           "−0.25 on it steers selection back to near the ideal line T·K/E, while its gate values (mean_gate) "
           "stay those of the unbiased scores, higher than the other experts'.",
           "DeepSeek-V3 selects on sigmoid score + bias and weights by the unbiased, normalised scores × 2.5.",
           {"score": "sigmoid", "n_experts": 16, "top_k": 4, "routed_scaling_factor": 2.5,
            "hot_expert": 0, "hot_bias": 1.7, "expert_bias_hot": -0.25}),
    Preset("DeepSeek-V3-like (group-limited, shared expert, sigmoid + bias)",
           "bias overlap ≈ 0.75: a quarter of each token's unbiased top-4 choices are swapped, by the group limit "
           "(alone ≈ 0.88: set expert_bias spread to 0) and by the small expert_bias (alone ≈ 0.79: set n_group "
           "to 1). top-k margin ≈ 0.04: sigmoid scores sit close together, so small biases flip choices. The "
           "shared expert carries ≈ 44% of the output norm (shared share KPI, and the bar under the Overview).",
           "DeepSeek-V3 scores experts with sigmoids, keeps the topk_group = 4 of n_group = 8 groups (4 neighbouring "
           "experts each) with the best top-2 sums (score + expert_bias), picks top-k inside them, so a token's "
           "experts come from at most 4 groups; it weights by the unbiased normalised scores × 2.5 and adds one "
           "always-on shared expert of an expert's width.",
           {"score": "sigmoid", "n_experts": 32, "top_k": 4, "d_expert": 64, "n_group": 8, "topk_group": 4,
            "routed_scaling_factor": 2.5, "expert_bias_spread": 0.05, "shared_experts": 1}),
    Preset("Qwen2-MoE (gated shared expert)",
           "shared share ≈ 0.59: the shared FFN (4 experts wide, 256 units) carries more of the output norm than "
           "the routed experts, though its gate σ(x·w) ≈ 0.5 halves it (shared_gate off: ≈ 0.74, shared RMS 0.33 "
           "→ 0.61). Mean gate ≈ 0.15, not 1/K = 0.25: the routed weights are the raw top-4 probabilities.",
           "Qwen2-MoE adds a wide shared expert scaled per token by a learned sigmoid gate, and does not "
           "renormalise the top-k probabilities (norm_topk_prob = False), so the routed part sums to less than 1.",
           {"n_experts": 16, "top_k": 4, "d_expert": 64, "normalize_topk": False, "shared_experts": 4,
            "shared_gate": True}),
    Preset("GPT-OSS-like",
           "Expert output RMS ≈ 0.94, about 1.5× the same experts with activation silu (≈ 0.62). Lower "
           "swiglu_limit to 1: the clamp cuts the output RMS to ≈ 0.53 and activation sparsity rises from ≈ 5% "
           "to ≈ 19%.",
           "GPT-OSS experts compute (clamp(up, ±7) + 1) · g·σ(1.702·g), g = clamp(gate, max = 7), with biases: "
           "the +1 lets the gate's activation through even where up ≈ 0. 32 experts, top-4, softmax over the "
           "chosen four.",
           {"n_experts": 32, "top_k": 4, "activation": "gpt_oss", "expert_biases": True, "swiglu_limit": 7.0}),
    Preset("Expert choice",
           "Every expert serves exactly C tokens (flat load, aux loss ≈ 1 by construction); the experts "
           "per token vary around K (Pathways' experts-per-token chart): some tokens get fewer, some more.",
           "In expert choice (Zhou et al. 2022) experts pick their top-C tokens instead of tokens picking experts.",
           {"router": "expert_choice", "dropless": False, "capacity_factor": 1.0}),
    Preset("Router collapse: identical tokens",
           "All demand lands on top_k experts; the rest are dead; max/mean load = E/K exactly. The aux loss "
           "rises above 1 but stays below E/K: it weights each expert's load by its mean probability, and the "
           "router's probabilities stay spread over all experts.",
           "Identical tokens get identical logits, so every token picks the same experts; aux = E·Σ f·P reaches "
           "E/K only when the chosen experts also hold all of the probability.",
           {"scenario": "identical"}),
    Preset("Router collapse: hot expert",
           "Expert 0 takes nearly every token; its bar towers over the ideal line, aux loss rises above 2.",
           "A large logit bias on one expert shifts every token's probabilities towards it.",
           {"hot_expert": 0, "hot_bias": 4.0}),
    Preset("High temperature",
           "Router probabilities flatten: confidence p1/p2 near 1, token entropy near log E.",
           "Dividing logits by a large temperature pushes softmax towards uniform.",
           {"temperature": 5.0}),
    Preset("Noisy gating",
           "Routing changes between seeds; the probability heatmap looks speckled; loads stay balanced.",
           "Training-style noise (N(0, σ²) on logits, multiplicative jitter on inputs) explores experts.",
           {"noise_std": 1.0, "jitter_eps": 0.05}),
    Preset("Fine-grained (64 experts, top-6)",
           "Many small experts: co-activation patterns and top-k combinations become rich; watch dead experts.",
           "DeepSeek/Qwen-style fine-grained MoE splits the FFN into many narrow experts, K of them per token.",
           {"n_experts": 64, "top_k": 6, "d_expert": 64, "seq_len": 256, "scenario": "clusters", "n_clusters": 8}),
    Preset("Custom",
           "Your own settings: every control is yours.",
           "Selecting Custom keeps the current values.",
           {}),
]}
DEFAULT_PRESET = "Balanced top-2 (Mixtral-like)"


def preset_values(name: str) -> dict:
    """The full set of control values of a preset (defaults overridden by the preset)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**CONTROL_DEFAULTS, **PRESETS[name].values}
