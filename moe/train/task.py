"""The synthetic regression task the live trainer optimises: it rewards experts that specialise.

Tokens come from a scenario (moe.scenarios); the target of a token of topic c is A_c·x, where
A_c = √s·A_shared + √(1−s)·B_c mixes one map shared by every topic (share s = `task_shared`)
with a map private to the topic. Experts that specialise on topics can fit the B_c; a generalist
can only fit A_shared. Shape letters: T tokens, D d_model, M hidden maps (topics, or 1).
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from moe.scenarios import SCENARIOS, Batch, make_batch
from moe.seeds import TASK_MAPS, TASK_OFFSET, generator

def takes_step(scenario: str) -> bool:
    """True when the scenario changes with the step (drifting): each step then draws a fresh batch."""
    return "step" in inspect.signature(SCENARIOS[scenario]).parameters


def draw(scenario: str, params: dict, d_model: int, tokens: int, *, seed: int, step: int) -> Batch:
    """One scenario batch; `step` is passed only to the scenarios that take it."""
    if "step" in params:
        raise ValueError("scenario parameter 'step' is set by the trainer; remove it from scenario_params")
    extra = {"step": step} if takes_step(scenario) else {}
    return make_batch(scenario, d_model, tokens, seed=seed, **params, **extra)


class SyntheticTask:
    """Batches (x, target) for every step, plus a fixed probe batch, all seeded from `seed`."""

    def __init__(self, scenario: str, params: dict, *, d_model: int, tokens: int, seed: int,
                 task_shared: float = 0.0, input_offset: float = 0.0, pool_batches: int = 16,
                 probe_tokens: int = 256):
        self.scenario, self.params, self.seed = scenario, dict(params), seed
        self.d_model, self.tokens, self.pool_batches = d_model, tokens, pool_batches
        D = d_model
        # The probe is a fixed draw (step 0 for drifting): router saturation compares its routing.
        probe = draw(scenario, self.params, D, probe_tokens, seed=seed, step=0)
        self.n_maps = len(probe.label_names) if probe.labels is not None else 1
        g = generator(TASK_MAPS, seed)
        shared = torch.randn(D, D, generator=g) / math.sqrt(D)                     # (D, D)
        private = torch.randn(self.n_maps, D, D, generator=g) / math.sqrt(D)       # (M, D, D)
        self.maps = math.sqrt(task_shared) * shared + math.sqrt(1 - task_shared) * private  # (M, D, D)
        # A direction common to every token, like the mean component of real hidden states: the
        # router's response to it is a preference shared by all tokens.
        u = torch.randn(D, generator=generator(TASK_OFFSET, seed))                    # (D,)
        self.offset = u / u.norm().clamp_min(1e-12) * math.sqrt(D) * input_offset  # (D,)
        self.probe_x = probe.x + self.offset                                       # (P, D)
        self._pool = None
        if not takes_step(scenario):
            # Static scenarios: one seeded draw of pool_batches·T tokens, cycled in T-sized slices,
            # so consecutive steps see different tokens from the same topics.
            self._pool = draw(scenario, self.params, D, tokens * pool_batches, seed=seed, step=0)

    def targets(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """A_label·x for every token; x (T, D) → (T, D)."""
        if labels is None:
            return x @ self.maps[0].t()                                            # (T, D)
        per_map = torch.einsum("mij,tj->tmi", self.maps, x)                        # (T, M, D)
        return per_map[torch.arange(x.shape[0]), labels]                           # (T, D)

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The inputs, targets and topic labels of training step `step` (0-based)."""
        if self._pool is None:
            b = draw(self.scenario, self.params, self.d_model, self.tokens, seed=self.seed, step=step)
            x, labels = b.x, b.labels                                              # (T, D), (T,)
        else:
            lo = (step % self.pool_batches) * self.tokens
            x = self._pool.x[lo:lo + self.tokens]                                  # (T, D)
            labels = None if self._pool.labels is None else self._pool.labels[lo:lo + self.tokens]
        x = x + self.offset                                                        # (T, D)
        return x, self.targets(x, labels), labels
