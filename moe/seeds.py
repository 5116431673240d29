"""Seeding, written once: every random stream of the engine's data comes from one mixer of integers.

A stream is named by a tag (below, one per use) followed by its integers, e.g. (CLUSTERS, seed) or
(TASK_MAPS, seed): different tags never share a stream, and (seed, step) streams never overlap.
The layer's own weights and routing noise are seeded by cfg.seed directly (moe.layer).
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15

# Stream tags, the first part of every mix (their values fix the drawn data: never renumber them).
CENTRES, CLUSTERS, DRIFT, GAUSS, IDENTICAL = range(5)   # moe.scenarios
TASK_MAPS, TASK_OFFSET = 5, 6                           # moe.train.task
LOGIT_BIAS, EXPERT_BIAS = 7, 8                          # moe.knobs


def mix(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64 over the parts), for torch's manual_seed."""
    state = _GOLDEN
    for part in parts:
        state = (state ^ (part & _MASK64)) & _MASK64
        state = (state + _GOLDEN) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1  # manual_seed wants a value that fits in a signed 64-bit integer


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by mix(*parts); draw on the CPU so every device sees the same numbers."""
    return torch.Generator(device="cpu").manual_seed(mix(*parts))
