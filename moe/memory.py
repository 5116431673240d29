"""Memory estimates of a forward and of a training run, so callers can refuse a config before building it.

Each estimate is an upper bound in bytes, computed from sizes alone (nothing is allocated). When a
config is over the budget, `fit` finds the sizes that bring it under: it halves the widths that are
above their defaults (the furthest first) until it fits; if the model alone still does not fit, any
width until the model takes at most half the budget (beyond the runtime overhead); then it lowers
the tokens to the largest count that fits. The advice names every change, so following it passes
the same check.
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Callable

from moe.config import MoEConfig, expert_capacity
from moe.scenarios import clusters

GiB = 1024 ** 3
DEFAULT_BUDGET_GB = 4.0
BUDGET_ENV = "MOE_SCOPE_MEMORY_GB"
# What a first forward adds besides its tensors (allocator slack, kernel workspaces, thread pools):
# measured at ~20 MiB by benchmarks/bench_memory_guard.py.
RUNTIME_BYTES = 32 * 1024 ** 2
# Defaults the widths are compared with when choosing which one to halve first: MoEConfig's own, and the
# topic count of the clusters scenario.
_DEFAULTS = {**{k: getattr(MoEConfig, k) for k in ("d_model", "d_expert", "n_experts")},
             "n_clusters": inspect.signature(clusters).parameters["n_clusters"].default}
_MODEL_KNOBS = ("d_expert", "d_model", "n_experts", "n_clusters")


class BudgetError(ValueError):
    """Over the memory budget; `changes` maps each size that must shrink to its largest fitting value."""

    def __init__(self, what: str, parts: dict[str, int], budget: int, changes: dict[str, int], sizes: dict,
                 names: dict[str, str] | None = None):
        self.what, self.parts, self.budget, self.changes, self.sizes = what, parts, budget, changes, sizes
        names = names or {}
        detail = ", ".join(f"{k} {describe_bytes(v)}" for k, v in parts.items())
        advice = "to fit, set " + ", ".join(f"{names.get(k, k)} ≤ {v:,} (now {sizes[k]:,})"
                                            for k, v in changes.items())
        if not changes:
            advice = f"the smallest sizes do not fit either; raise {BUDGET_ENV}"
        need, limit = describe_over(sum(parts.values()), budget)
        super().__init__(f"{what} needs about {need} ({detail}), over the budget of {limit}; {advice}")

    def renamed(self, names: dict[str, str]) -> "BudgetError":
        """The same refusal with the sizes named as the caller's user knows them (e.g. CLI flags)."""
        return BudgetError(self.what, self.parts, self.budget, self.changes, self.sizes, names)


def budget_bytes() -> int:
    """The memory budget: MOE_SCOPE_MEMORY_GB GiB (default 4); a bad value is a ValueError."""
    text = os.environ.get(BUDGET_ENV)
    if text is None or text.strip() == "":
        return int(DEFAULT_BUDGET_GB * GiB)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{BUDGET_ENV}={text!r} is not a memory budget; set it to a positive number of GiB "
                         f"(e.g. {BUDGET_ENV}=4) or unset it for the default {DEFAULT_BUDGET_GB:g}")
    return int(value * GiB)


def out_of_memory(what: str) -> str:
    """The one line for a MemoryError (whose own message is empty): what ran out, and the budget to set."""
    try:
        budget = f"the memory budget is {describe_bytes(budget_bytes())}"
    except ValueError as err:
        budget = str(err)
    return (f"out of memory while {what}; {budget} ({BUDGET_ENV}): set it below the memory this machine has "
            f"free, or use a smaller model or fewer tokens")


def _sizes(cfg: MoEConfig, tokens: int) -> dict:
    return {"tokens": tokens, "d_model": cfg.d_model, "d_expert": cfg.d_expert, "n_experts": cfg.n_experts,
            "top_k": cfg.top_k, "item": cfg.torch_dtype.itemsize, "expert_choice": cfg.router == "expert_choice",
            "capacity_factor": cfg.capacity_factor, "gated": cfg.gated, "expert_biases": cfg.expert_biases,
            "shared_hidden": cfg.shared_hidden, "shared_gate": cfg.shared_gate}


def _assignments(s: dict) -> int:
    T, E, K = s["tokens"], s["n_experts"], s["top_k"]
    if not s["expert_choice"]:
        return T * K
    return E * expert_capacity(T, K, E, s["capacity_factor"] or 1.0)  # expert choice: always a capacity


def _forward_parts(s: dict) -> dict[str, int]:
    T, D, H, E, K, item = s["tokens"], s["d_model"], s["d_expert"], s["n_experts"], s["top_k"], s["item"]
    mats = 3 if s.get("gated", True) else 2                       # w_gate (when gated), w_up, w_down
    biases = E * ((2 if s.get("gated", True) else 1) * H + D) if s.get("expert_biases") else 0
    Hs = s.get("shared_hidden", 0)                                # shared FFN (0 = none) and its gate
    shared = mats * Hs * D + (D if s.get("shared_gate") else 0)
    weights = (mats * E * H * D + biases + shared) * item + E * D * 4 + E * 4  # + router (fp32) + bias
    N = _assignments(s)
    # Gathered tokens and outputs for all assignments, plus the hidden (gate, up, h) of the largest slice,
    # which is at most every assignment (a collapsed router sends every token to one expert).
    # The input batch is drawn in float32 by a scenario (with up to two (T, D) temporaries).
    activations = (3 * N * D + T * D) * item + 3 * min(N, T) * H * item + 4 * N * 8 + 3 * T * D * 4
    if Hs:  # the shared FFN's (T, Hs) projections and hidden, its output and routed + shared
        activations += (3 * T * Hs + 2 * T * D) * item
    trace = 10 * T * E * 4 + 2 * E * E * 8 + E * D * 8 + 2 * T * K * 8
    return {"weights": weights, "activations": activations, "trace": trace, "runtime": RUNTIME_BYTES}


def _training_parts(s: dict) -> dict[str, int]:
    T, D, H, E, item = s["tokens"], s["d_model"], s["d_expert"], s["n_experts"], s["item"]
    f = _forward_parts(s)
    N = _assignments(s)
    # Adam keeps a gradient and two moments per weight: 4× the weights in all.
    optimizer = 3 * f["weights"]
    # Autograd keeps every slice's hidden tensors until backward, and backward makes as many again.
    activations = 2 * ((5 * N * H + 5 * N * D + 2 * T * D) * item + 12 * T * E * 4 + 4 * N * 8)
    M, P = s.get("n_maps", 1), s.get("probe_tokens", 0)
    pool = s.get("pool_batches", 0) * T
    # Task maps (M, D, D) built with two temporaries, targets einsum (T, M, D), data pool and probe.
    task = 3 * M * D * D * 4 + 2 * T * M * D * 4 + 4 * (pool + P + 2 * T) * D * 4 + P * E * 8
    history = s.get("history", 0) * (40 + 2 * E) * 120   # row dicts of Python floats
    return {"weights": f["weights"], "optimizer": optimizer, "activations": activations, "trace": f["trace"],
            "task": task, "history": history, "runtime": RUNTIME_BYTES}


def _total(parts: Callable[[dict], dict[str, int]]) -> Callable[[dict], int]:
    return lambda s: sum(parts(s).values())


def estimate_bytes(cfg: MoEConfig, tokens: int) -> dict[str, int]:
    """Bytes of weights, peak activations, trace and runtime overhead for one forward of `tokens` tokens
    (an upper bound)."""
    parts = _forward_parts(_sizes(cfg, tokens))
    return {**parts, "total": sum(parts.values())}


def estimate_training_bytes(cfg: MoEConfig, tokens: int, *, n_maps: int = 1, pool_batches: int = 0,
                            probe_tokens: int = 0, history: int = 0) -> dict[str, int]:
    """Bytes of one Adam training step on `tokens` tokens: weights, optimiser state, autograd activations,
    trace, the synthetic task (n_maps topic maps, a pool of pool_batches·tokens, the probe) and history."""
    s = {**_sizes(cfg, tokens), "n_maps": n_maps, "pool_batches": pool_batches, "probe_tokens": probe_tokens,
         "history": history}
    parts = _training_parts(s)
    return {**parts, "total": sum(parts.values())}


def describe_bytes(n: float) -> str:
    """n bytes in B, KiB, MiB or GiB, one decimal."""
    return _in_units(n, 1)


def describe_over(n: float, limit: float, *also: float) -> tuple[str, ...]:
    """n and the limit it is over (then `also`, e.g. the budget the limit is a share of), as describe_bytes writes
    them, with as many more decimals (all the same) as make n and the limit read differently, so that a refusal
    never reads "1.1 MiB, over the 1.1 MiB" or "1.0 GiB, over a quarter of 4.0 GiB" (exact bytes at most)."""
    for digits in range(1, 10):
        texts = tuple(_in_units(v, digits) for v in (n, limit, *also))
        if texts[0] != texts[1] or n == limit:
            return texts
    return tuple(f"{v:,.0f} B" for v in (n, limit, *also))


def _in_units(n: float, digits: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return f"{n:.{digits}f} GiB"


def fit(cost: Callable[[dict], int], sizes: dict, budget: int) -> dict[str, int]:
    """The sizes to change so that cost(sizes) <= budget: {name: new value}, empty when it already fits."""
    s = dict(sizes)
    if cost(s) <= budget or budget <= RUNTIME_BYTES:
        return {}  # fits, or nothing can fit
    knobs = [k for k in _MODEL_KNOBS if k in s and not (k == "n_clusters" and s.get("n_maps", 1) == 1)]

    def halve(done: Callable[[], bool], above_default: bool) -> None:
        while not done():
            shrinkable = [k for k in knobs if s[k] > _minimum(k, s) and (s[k] > _DEFAULTS[k] or not above_default)]
            if not shrinkable:
                return
            k = max(shrinkable, key=lambda k: s[k] / _DEFAULTS[k])  # the width furthest above its default
            s[k] = max(_minimum(k, s), s[k] // 2)
            if k == "n_clusters":
                s["n_maps"] = s[k]

    # Widths above their defaults come down first, then (if the model alone still does not fit) any
    # width until the model takes at most half the budget (beyond the runtime overhead); the tokens take what is left.
    halve(lambda: cost(s) <= budget, above_default=True)
    if cost({**s, "tokens": 1}) > budget:
        half = RUNTIME_BYTES + (budget - RUNTIME_BYTES) // 2
        halve(lambda: cost({**s, "tokens": 1}) <= half, above_default=False)
    if cost(s) > budget:
        lo, hi = 1, s["tokens"]  # largest tokens that fit: cost grows with tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost({**s, "tokens": mid}) <= budget else (lo, mid - 1)
        s["tokens"] = lo
    return {k: s[k] for k in ("tokens", *knobs) if s[k] != sizes[k]}


def _minimum(knob: str, s: dict) -> int:
    return s["top_k"] if knob == "n_experts" else 1


def check_budget(cfg: MoEConfig, tokens: int, budget: int | None = None, *,
                 names: dict[str, str] | None = None) -> None:
    """Raise BudgetError (a ValueError) with advice when a forward would need more than `budget` bytes
    (default budget_bytes()); `names` renames sizes in the advice (e.g. {"tokens": "--tokens"})."""
    budget = budget_bytes() if budget is None else budget
    s = _sizes(cfg, tokens)
    parts = _forward_parts(s)
    if sum(parts.values()) <= budget:
        return
    raise BudgetError("this configuration", parts, budget, fit(_total(_forward_parts), s, budget), s, names)


def check_training_budget(cfg: MoEConfig, tokens: int, budget: int | None = None, *, n_maps: int = 1,
                          pool_batches: int = 0, probe_tokens: int = 0, history: int = 0,
                          names: dict[str, str] | None = None) -> None:
    """Raise BudgetError with advice when training (see estimate_training_bytes) would exceed `budget`."""
    budget = budget_bytes() if budget is None else budget
    s = {**_sizes(cfg, tokens), "n_maps": n_maps, "n_clusters": n_maps, "pool_batches": pool_batches,
         "probe_tokens": probe_tokens, "history": history}
    parts = _training_parts(s)
    if sum(parts.values()) <= budget:
        return
    raise BudgetError("training this configuration", parts, budget, fit(_total(_training_parts), s, budget), s,
                      names)
