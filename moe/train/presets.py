"""Named live-training setups (TrainConfig presets) and what each one shows; the page and the CLI list these."""
from __future__ import annotations

from moe.config import MoEConfig
from moe.train.trainer import TrainConfig

# The collapse-and-cure setup. Why balance "none" collapses: tokens share a common direction
# (input_offset) and most of the target map is shared by every topic (task_shared), so the experts
# that happen to get more tokens early learn faster, help more, and the router (un-normalised
# top-k weights, sharp temperature) learns a preference for them that every token shares: the
# rich get richer. The tiny router init and routing noise make the start near-uniform.
# Each preset's TrainConfig fields: a TrainConfig checks the memory budget when it is built, so presets are built
# when asked for (`preset`), never at import: under a budget too small for them, importing the CLI or the page
# failed with a traceback before either could say so in one line.
PRESETS: dict[str, dict] = {
    "collapse": dict(
        model=MoEConfig(d_model=16, d_expert=32, n_experts=8, top_k=2, normalize_topk=False,
                        temperature=0.5, noise_std=0.2),
        router_init_scale=0.01, scenario="clusters",
        scenario_params=(("n_clusters", 16), ("spread", 0.6)), tokens=512, task_shared=0.8,
        input_offset=0.5, steps=300, lr=1e-2, aux_coef=0.1, bias_rate=2e-3),
}
PRESET_HELP = {
    "collapse": ("Collapse and cure: with balancing off, experts that get more tokens early learn faster, "
                 "and the router learns to send them every token: max/mean load climbs from 1.2 towards "
                 "E/K = 4 within tens of steps. With aux loss or the expert bias on from the start the first "
                 "steps spike as well (max/mean ≈ 2.4–2.6 in the first ten), then the load evens out and stays "
                 "there (≈ 1.2–1.3 after ~100 steps). Switched on after the collapse, aux loss brings the load "
                 "back towards 1.4 within ~100–200 steps; the expert bias only steers selection, so against a "
                 "router whose scores have saturated it undoes the collapse only partly."),
}


def preset_value(name: str, field: str):
    """One field of a preset, without building it (no budget check, no validation draw: the page reads these on
    every run)."""
    return PRESETS[name].get(field, getattr(TrainConfig, field))


def preset(name: str, **changes) -> TrainConfig:
    """A named TrainConfig, with optional field changes."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}")
    return TrainConfig(**{**PRESETS[name], **changes})
