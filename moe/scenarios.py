"""Seeded input generators ("scenarios") that make routing behaviour visible.

Every generator returns a `Batch` of T tokens of width D, float32 on the CPU, drawn from a
`torch.Generator` seeded from its arguments only, so the same call always gives the same tensor.
Shape letters: T tokens, D d_model, C clusters ("topics").
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from moe.seeds import CENTRES, CLUSTERS, DRIFT, GAUSS, IDENTICAL, generator
from moe.validate import finite_number, int_at_least


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor                      # (T, D) float32, CPU
    labels: torch.Tensor | None          # (T,) int64 topic of each token, or None
    label_names: list[str] | None        # name of each label value, or None
    description: str                     # one line saying what was drawn


# --- validation -------------------------------------------------------------------------------

def _check_common(d_model, tokens, seed) -> None:
    int_at_least("d_model", d_model, 1)
    int_at_least("tokens", tokens, 1)
    int_at_least("seed", seed, 0)


def _check_clusters(n_clusters, spread) -> None:
    int_at_least("n_clusters", n_clusters, 1)
    finite_number("spread", spread, minimum=0)


# --- shared pieces ----------------------------------------------------------------------------

def cluster_centres(d_model: int, n_clusters: int, *, seed: int) -> torch.Tensor:
    """The C topic centres used by `clusters` and `drifting`: random directions of norm sqrt(D)."""
    _check_common(d_model, 1, seed)
    int_at_least("n_clusters", n_clusters, 1)
    g = generator(CENTRES, seed)
    directions = torch.randn(n_clusters, d_model, generator=g)            # (C, D)
    # Norm sqrt(D) matches an N(0, 1) token's norm; noise of norm spread·sqrt(D) (spread < 1)
    # then stays well inside the ~sqrt(2D) distance between two random centres.
    norms = directions.norm(dim=1, keepdim=True).clamp_min(1e-12)          # (C, 1)
    return directions / norms * math.sqrt(d_model)                         # (C, D)


def _counts(weights: torch.Tensor, tokens: int) -> torch.Tensor:
    """Split `tokens` in proportion to `weights` exactly (largest remainder), not by sampling,
    so a skew setting always shows the same sizes."""
    share = weights.double() / weights.double().sum() * tokens             # (C,)
    counts = share.floor().long()                                          # (C,)
    remainder = tokens - int(counts.sum())
    if remainder:
        # stable sort: on equal remainders the lower cluster index gets the extra token
        order = torch.sort(share - counts, descending=True, stable=True).indices
        counts[order[:remainder]] += 1
    return counts


def _mixture(centres: torch.Tensor, weights: torch.Tensor, tokens: int, spread: float,
             g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens around `centres` with cluster sizes ∝ `weights`, in shuffled order."""
    counts = _counts(weights, tokens)                                      # (C,)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts)    # (T,)
    # Shuffle so token position says nothing about topic (position-based dropping would notice).
    labels = labels[torch.randperm(tokens, generator=g)]                   # (T,)
    noise = torch.randn(tokens, centres.shape[1], generator=g)             # (T, D)
    x = centres[labels] + spread * noise                                   # (T, D)
    return x.float().contiguous(), labels


def _sizes(labels: torch.Tensor, n_clusters: int) -> str:
    return "/".join(str(int(c)) for c in torch.bincount(labels, minlength=n_clusters))


# --- scenarios --------------------------------------------------------------------------------

def gaussian(d_model: int, tokens: int, *, seed: int, scale: float = 1.0) -> Batch:
    """iid N(0, scale²) tokens: no structure, so a fresh router spreads load roughly evenly."""
    _check_common(d_model, tokens, seed)
    finite_number("scale", scale, minimum=0)
    x = torch.randn(tokens, d_model, generator=generator(GAUSS, seed)) * scale  # (T, D)
    return Batch(x, None, None, f"{tokens} iid Gaussian tokens, D={d_model}, scale {scale:g}")


def clusters(d_model: int, tokens: int, *, seed: int, n_clusters: int = 4, skew: float = 0.0,
             spread: float = 0.3) -> Batch:
    """C well-separated topics with sizes ∝ exp(-skew·i): shows whether experts specialise by topic."""
    _check_common(d_model, tokens, seed)
    _check_clusters(n_clusters, spread)
    finite_number("skew", skew, minimum=0)
    centres = cluster_centres(d_model, n_clusters, seed=seed)              # (C, D)
    weights = torch.exp(-skew * torch.arange(n_clusters, dtype=torch.float64))  # (C,)
    x, labels = _mixture(centres, weights, tokens, spread, generator(CLUSTERS, seed))
    names = [f"topic {i}" for i in range(n_clusters)]
    desc = (f"{tokens} tokens in {n_clusters} topics, skew {skew:g}, spread {spread:g}: "
            f"sizes {_sizes(labels, n_clusters)}")
    return Batch(x, labels, names, desc)


def identical(d_model: int, tokens: int, *, seed: int) -> Batch:
    """Every token the same vector: all routing decisions agree, so load collapses and ties are real."""
    _check_common(d_model, tokens, seed)
    row = torch.randn(1, d_model, generator=generator(IDENTICAL, seed))  # (1, D)
    x = row.expand(tokens, d_model).contiguous()                           # (T, D)
    return Batch(x, None, None, f"{tokens} identical tokens, D={d_model}")


def drifting(d_model: int, tokens: int, *, seed: int, step: int, n_clusters: int = 4,
             period: int = 200, spread: float = 0.3) -> Batch:
    """Fixed topics whose mixture rotates with `step`: shows load following a shifting workload."""
    _check_common(d_model, tokens, seed)
    _check_clusters(n_clusters, spread)
    int_at_least("step", step, 0)
    int_at_least("period", period, 1)
    centres = cluster_centres(d_model, n_clusters, seed=seed)              # (C, D): seed only
    phase = step / period - torch.arange(n_clusters, dtype=torch.float64) / n_clusters  # (C,)
    # Topic i peaks when step/period ≡ i/C (mod 1); the weight ratio peak/trough is e⁴.
    weights = torch.exp(2.0 * torch.cos(2 * math.pi * phase))              # (C,)
    x, labels = _mixture(centres, weights, tokens, spread, generator(DRIFT, seed, step))
    names = [f"topic {i}" for i in range(n_clusters)]
    desc = (f"{tokens} tokens, step {step} of period {period}, {n_clusters} topics, "
            f"spread {spread:g}: sizes {_sizes(labels, n_clusters)}")
    return Batch(x, labels, names, desc)


SCENARIOS: dict[str, Callable[..., Batch]] = {
    "gaussian": gaussian,
    "clusters": clusters,
    "identical": identical,
    "drifting": drifting,
}

SCENARIO_HELP: dict[str, str] = {name: fn.__doc__.strip() for name, fn in SCENARIOS.items()}


def make_batch(name: str, d_model: int, tokens: int, *, seed: int, **params) -> Batch:
    """Draw scenario `name`; unknown names or parameters and bad values raise ValueError."""
    if name not in SCENARIOS:
        choices = ", ".join(repr(n) for n in SCENARIOS)
        raise ValueError(f"unknown scenario {name!r}; choose one of {choices}")
    fn = SCENARIOS[name]
    accepted = [p for p, spec in inspect.signature(fn).parameters.items()
                if spec.kind is inspect.Parameter.KEYWORD_ONLY and p != "seed"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise ValueError(f"scenario {name!r} does not take {', '.join(unknown)}; "
                         f"its parameters are: {allowed}")
    missing = [p for p in accepted
               if inspect.signature(fn).parameters[p].default is inspect.Parameter.empty
               and p not in params]
    if missing:
        raise ValueError(f"scenario {name!r} needs {', '.join(missing)}; pass it as a keyword")
    return fn(d_model, tokens, seed=seed, **params)
