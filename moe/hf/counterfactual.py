"""Counterfactual routing on a real model: rerun the text with changed routing settings at chosen MoE layers.

The model is never modified (it is shared, read-only): the changed layers are `MoELayer.reconfigured`
copies that share the model's weights, handed to the EngineBlocks through a context variable for one
forward. Settings left at None keep the layer's own value, so `Counterfactual()` reproduces the model.
`sweep_layers` applies one counterfactual to each MoE layer alone (one forward per layer).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
from torch import Tensor

from moe.config import MoEConfig
from moe.hf.instrument import OVERRIDES, ModelRun, engine_blocks, run_model

# On the selection score: where the scores alone select, each in [0, 1] (a softmax router without a correction bias),
# +1 always selects the expert and -1 never does; a router's own correction bias (DeepSeek-V3, Ernie) or group limit
# (a group's score is the sum of its best experts') can outweigh ±1, so there it only pushes (BIAS_NOTE).
BIAS_HOT, BIAS_COLD = 1.0, -1.0
BIAS_NOTE = ("always or never chosen where the scores alone select (a softmax router); a router's correction bias or "
             "group limit (DeepSeek-V3) can outweigh it: the load shows how often it was chosen")
BIASES = {"hot": BIAS_HOT, "cold": BIAS_COLD}  # the page's choice and the CLI's --cf-<name>-expert: name -> bias
SWEEP_COLUMNS = ["layer", "delta_loss_bits", "dropped_fraction"]


@dataclass(frozen=True)
class Counterfactual:
    """What to change, and where. layers: decoder-layer indices (None = every MoE layer)."""
    layers: tuple[int, ...] | None = None
    top_k: int | None = None
    capacity_factor: float | None = None  # None = keep the layer's (dropless for every HF family)
    drop_policy: str | None = None        # "position" | "probs"
    temperature: float | None = None
    bias_expert: int | None = None        # add `bias` to this expert's selection bias
    bias: float = 0.0

    def changed(self) -> bool:
        return any(v is not None for v in (self.top_k, self.capacity_factor, self.drop_policy, self.temperature,
                                           self.bias_expert))


def counterfactual_config(cfg: MoEConfig, cf: Counterfactual) -> MoEConfig:
    """cfg with the counterfactual's settings; a bad value raises MoEConfig's ValueError naming the field."""
    changes = {name: getattr(cf, name) for name in ("top_k", "capacity_factor", "drop_policy", "temperature")
               if getattr(cf, name) is not None}
    kept = cfg.group_limited_experts
    if cf.top_k is not None and cfg.n_group > 1 and cf.top_k > kept:  # the model's groups are not a counterfactual's
        raise ValueError(f"top_k={cf.top_k}: this layer's group-limited routing (the {cfg.topk_group} best of "
                         f"{cfg.n_group} expert groups) leaves {kept} experts to choose from; choose top_k ≤ {kept}")
    if cf.bias_expert is not None:
        if not 0 <= cf.bias_expert < cfg.n_experts:
            raise ValueError(f"bias_expert={cf.bias_expert} is not an expert of this layer; choose 0..{cfg.n_experts - 1}")
        bias = list(cfg.expert_bias or [0.0] * cfg.n_experts)
        bias[cf.bias_expert] += cf.bias
        changes["expert_bias"] = tuple(bias)
    return cfg.replace(**changes)


def run_counterfactual(model, input_ids: Tensor, cf: Counterfactual, context: int | None = None) -> ModelRun:
    """run_model of `input_ids` (S,) with the counterfactual routing at the chosen layers (windowed past
    `context` like run_model: each window's routing over the whole window, a capacity ranked among its scored
    tokens)."""
    blocks = {b.layer_index: b for b in engine_blocks(model)}
    chosen = sorted(blocks) if cf.layers is None else list(cf.layers)
    unknown = [i for i in chosen if i not in blocks]
    if unknown:
        raise ValueError(f"layers {unknown} are not MoE layers of this model; choose among {sorted(blocks)}")
    overrides = {}
    for i in chosen:
        if blocks[i].engine is None:
            raise ValueError(f"layer {i} is traced from its routing alone; counterfactual routing needs a layer "
                             f"the engine runs")
        overrides[i] = blocks[i].engine.reconfigured(counterfactual_config(blocks[i].engine.cfg, cf))
    token = OVERRIDES.set(overrides)
    try:
        return run_model(model, input_ids, context)
    finally:
        OVERRIDES.reset(token)


def sweep_layers(model, input_ids: Tensor, cf: Counterfactual, context: int | None = None) -> pd.DataFrame:
    """`cf` at each MoE layer alone (its `layers` ignored), one forward per layer: a row per layer with
    delta_loss_bits (counterfactual minus own mean next-token loss) and that layer's dropped_fraction."""
    own = run_model(model, input_ids, context).mean_loss_bits()
    rows = []
    for block in engine_blocks(model):
        if block.engine is None:  # traced from its routing alone: nothing to rerun there
            continue
        i = block.layer_index
        run = run_counterfactual(model, input_ids, replace(cf, layers=(i,)), context)
        changed = run.traces[run.layers.index(i)]
        rows.append((i, run.mean_loss_bits() - own, changed.summary()["dropped_fraction"]))
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS).sort_values("layer", ignore_index=True)
