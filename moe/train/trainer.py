"""Live training: a Trainer that owns an MoELayer, its optimiser and a bounded history of steps.

Each step draws a batch (moe.train.task), runs the layer, takes an Adam step on the task loss plus the
chosen balancing term, and records one row: the task loss, the engine's summary keys, per-expert
load shares and expert biases, and the router saturation on a fixed probe batch. Nothing lives at
module level: two Trainers never share a model, an optimiser, a generator or a history.
Shape letters: T tokens, D d_model, E n_experts, K top_k, P probe tokens.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from moe.config import BIASED_ROUTERS, MoEConfig
from moe.layer import MoELayer
from moe.losses import aux_loss, z_loss
from moe.memory import budget_bytes, check_training_budget
from moe.metrics import safe_ratio
from moe.scenarios import SCENARIOS
from moe.stats import SUMMARY_KEYS
from moe.train.task import SyntheticTask, draw, takes_step
from moe.validate import check_fields, finite_number, int_at_least

BALANCES = ("none", "aux", "zloss", "bias", "capacity")
BALANCE_HELP = {
    "none": "task loss only: nothing pushes the router towards even load",
    "aux": "adds aux_coef · E·Σ f_e·P_e (Switch/GShard load-balancing loss)",
    "zloss": "adds z_coef · mean_t logsumexp(logits_t)² (ST-MoE router z-loss): keeps logits small",
    "bias": "after each step b_e += bias_rate·sign(mean load − load_e); b steers selection only (DeepSeek-V3)",
    "capacity": "each expert serves at most ceil(capacity_factor·T·K/E) tokens; the rest are dropped",
}
MAX_LR = 1.0  # Adam moves every weight by about lr per step: above 1 the run only diverges
# Fields that fix the weights or the starting point: changing them needs reset(config).
RESET_FIELDS = ("model", "seed", "router_init_scale")
# Fields that change the data: the task and the probe are rebuilt, the weights kept.
DATA_FIELDS = ("scenario", "scenario_params", "tokens", "task_shared", "input_offset",
               "pool_batches", "probe_tokens")


@dataclass(frozen=True)
class TrainConfig:
    # --- the layer (its seed is replaced by `seed`)
    model: MoEConfig = MoEConfig(d_model=16, d_expert=32, n_experts=8, top_k=2)
    router_init_scale: float = 1.0   # multiplies the router's initial weights (small = near-uniform)

    # --- data and task (moe.train.task)
    scenario: str = "clusters"
    scenario_params: tuple = ()      # ((name, value), ...); a dict is accepted and normalised
    tokens: int = 256                # T per step
    task_shared: float = 0.0         # share of the target map common to every topic, in [0, 1]
    input_offset: float = 0.0        # norm (in units of √D) of a direction added to every token
    pool_batches: int = 16           # static scenarios: batches in the cycled pool
    probe_tokens: int = 256          # P, the fixed batch that router saturation is measured on

    # --- optimisation and balancing
    steps: int = 300                 # default length of a headless run
    lr: float = 1e-2                 # Adam
    balance: str = "none"            # one of BALANCES
    aux_coef: float = 1e-2
    z_coef: float = 1e-3
    bias_rate: float = 1e-3
    capacity_factor: float = 1.25    # used when balance == "capacity"

    # --- bookkeeping
    history: int = 500               # rows kept (a ring buffer)
    seed: int = 0                    # weights, data, task maps and routing noise

    def __post_init__(self) -> None:
        if not isinstance(self.model, MoEConfig):
            raise ValueError(f"model must be a MoEConfig, got {type(self.model).__name__}")
        params = self.scenario_params
        if isinstance(params, dict) or (isinstance(params, (tuple, list)) and not isinstance(params, str)):
            try:
                params = tuple(sorted(params.items() if isinstance(params, dict) else (tuple(p) for p in params)))
            except (TypeError, ValueError):
                raise ValueError(f"scenario_params must be a dict or (name, value) pairs, got {params!r}") from None
            object.__setattr__(self, "scenario_params", params)  # hashable, order-independent
        check_fields(self)  # types (numpy numbers coerced), then the ranges below
        if self.balance not in BALANCES:
            raise ValueError(f"unknown balance {self.balance!r}; choose one of {', '.join(map(repr, BALANCES))}")
        if self.balance == "bias" and self.model.router not in BIASED_ROUTERS:
            raise ValueError(f"balance 'bias' steers top-k selection, but router {self.model.router!r} "
                             f"ignores the expert bias; use router 'topk' or another balance")
        for name in ("tokens", "pool_batches", "probe_tokens", "steps", "history"):
            int_at_least(name, getattr(self, name), 1)
        int_at_least("seed", self.seed, 0)
        for name in ("lr", "router_init_scale", "capacity_factor"):
            finite_number(name, getattr(self, name), positive=True)
        for name in ("aux_coef", "z_coef", "bias_rate", "input_offset"):
            finite_number(name, getattr(self, name), minimum=0)
        if self.lr > MAX_LR:
            raise ValueError(f"lr must be in (0, {MAX_LR:g}], got {self.lr!r}: larger Adam steps diverge to NaN")
        finite_number("task_shared", self.task_shared, minimum=0)
        if self.task_shared > 1:
            raise ValueError(f"task_shared is a share and must be in [0, 1], got {self.task_shared!r}")
        if self.scenario in SCENARIOS and isinstance(self.params.get("n_clusters", 1), int):
            try:
                budget = budget_bytes()
            except ValueError:  # a bad MOE_SCOPE_MEMORY_GB is reported when a Trainer is built, not at import
                budget = None
            if budget is not None:
                self.check_memory(budget)  # before the validation draw, which builds every topic centre
        # Validate the scenario and its parameters with the scenario's own messages (a 1-token draw).
        draw(self.scenario, self.params, self.model.d_model, 1, seed=self.seed, step=0)

    @property
    def params(self) -> dict:
        """scenario_params as a dict."""
        return dict(self.scenario_params)

    def layer_config(self) -> MoEConfig:
        """The MoEConfig the layer runs: the model, seeded by `seed`, with capacity when balancing by it."""
        cap = self.capacity_factor if self.balance == "capacity" else self.model.capacity_factor
        return self.model.replace(seed=self.seed, capacity_factor=cap)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def check_memory(self, budget: int | None = None, names: dict[str, str] | None = None) -> None:
        """Raise BudgetError (a ValueError) with advice when training would exceed the memory budget
        (default moe.memory.budget_bytes()): Adam state, autograd activations, task maps and pool."""
        topics = _default_clusters(self.scenario)
        n_maps = 1 if topics is None else self.params.get("n_clusters", topics)  # the task's (D, D) maps
        pool = 0 if takes_step(self.scenario) else self.pool_batches
        check_training_budget(self.layer_config(), self.tokens, budget, n_maps=n_maps, pool_batches=pool,
                              probe_tokens=self.probe_tokens, history=self.history, names=names)


def _default_clusters(scenario: str) -> int | None:
    """The scenario's default n_clusters, or None when it has no topics (and the task one map)."""
    spec = inspect.signature(SCENARIOS[scenario]).parameters.get("n_clusters")
    return None if spec is None else spec.default


@torch.no_grad()
def update_expert_bias(bias: Tensor, routed: Tensor, rate: float) -> None:
    """Aux-loss-free balancing, in place: b_e += rate·sign(mean_e' load − load_e); routed (T, E)."""
    load = routed.sum(dim=0).float()  # (E,) tokens routed to each expert
    bias.add_(rate * torch.sign(load.mean() - load))


class Trainer:
    """One live training run: its own layer, Adam optimiser, noise generator, step counter and history."""

    def __init__(self, config: TrainConfig | None = None):
        self.reset(config if config is not None else TrainConfig())

    # --- state
    @property
    def config(self) -> TrainConfig:
        return self._config

    @property
    def step_count(self) -> int:
        """Optimiser steps taken since the last reset."""
        return self._step

    @property
    def last_row(self) -> dict | None:
        return self._history[-1] if self._history else None

    def history_frame(self) -> pd.DataFrame:
        """The kept rows (at most config.history, oldest first) as a new DataFrame."""
        return pd.DataFrame(list(self._history), columns=self.columns())

    def columns(self) -> list[str]:
        """Row keys, in order."""
        E = self._config.model.n_experts
        return (["step", "balance", "task_loss", "total_loss", *SUMMARY_KEYS, "router_saturation"]
                + [f"load_share_{e}" for e in range(E)] + [f"expert_bias_{e}" for e in range(E)])

    def reset(self, config: TrainConfig | None = None) -> None:
        """Back to step 0: initial weights, a fresh optimiser and generator, an empty history."""
        if config is not None:
            if not isinstance(config, TrainConfig):
                raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
            self._config = config
        cfg = self._config
        cfg.check_memory()  # before anything is built
        self.layer = MoELayer(cfg.layer_config())
        with torch.no_grad():
            self.layer.router.weight.mul_(cfg.router_init_scale)
        self.optimizer = torch.optim.Adam(self.layer.parameters(), lr=cfg.lr)
        self.generator = self.layer.new_generator(cfg.seed)
        self._step = 0
        self._history: deque[dict] = deque(maxlen=cfg.history)
        self._build_task()

    def update(self, **changes) -> TrainConfig:
        """Change settings while running (balance, coefficients, lr, data); the weights are kept."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"TrainConfig has no field {', '.join(unknown)}; fields: {', '.join(sorted(names))}")
        fixed = sorted(f for f in set(changes) & set(RESET_FIELDS) if changes[f] != getattr(self._config, f))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} fix the weights and cannot change while running; "
                             f"call reset(config) with the new value")
        old, new = self._config, self._config.replace(**changes)
        new.check_memory()  # more tokens or topics may not fit
        self._config = new
        self.layer.cfg = new.layer_config()  # capacity on/off; the weights do not depend on it
        for group in self.optimizer.param_groups:
            group["lr"] = new.lr
        if new.history != old.history:
            self._history = deque(self._history, maxlen=new.history)  # keeps the newest rows
        if any(getattr(new, f) != getattr(old, f) for f in DATA_FIELDS):
            self._build_task()
        return new

    def set_balance(self, balance: str, **coefficients) -> TrainConfig:
        """Switch the balancing method (and optionally aux_coef, z_coef, bias_rate, capacity_factor).

        The expert bias is router state: leaving "bias" freezes it where it is rather than clearing it.
        """
        return self.update(balance=balance, **coefficients)

    # --- running
    def step(self) -> dict:
        """One optimiser step on a fresh batch; returns (and records) its row."""
        cfg, layer = self._config, self.layer
        x, target, _ = self.task.batch(self._step)                 # (T, D), (T, D) on the CPU
        x, target = x.to(layer.device), target.to(layer.device)
        y, trace = layer(x, generator=self.generator)              # (T, D)
        task_loss = F.mse_loss(y, target)
        loss = task_loss
        if cfg.balance == "aux":
            loss = loss + cfg.aux_coef * aux_loss(trace.probs, trace.routed, layer.cfg.top_k)
        elif cfg.balance == "zloss":
            loss = loss + cfg.z_coef * z_loss(trace.router_logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if cfg.balance == "bias":
            update_expert_bias(layer.router.expert_bias, trace.routed, cfg.bias_rate)
        self._step += 1
        saturation = self._saturation()
        # One host transfer for the scalars the trace's statistics do not already hold.
        host = torch.cat([torch.stack([task_loss.detach(), loss.detach(), saturation]),
                          layer.router.expert_bias.detach().float()]).cpu().tolist()
        if not (math.isfinite(host[0]) and math.isfinite(host[1])):
            model = layer.cfg
            raise ValueError(f"training diverged at step {self._step}: the loss is {host[1]!r}; reset and "
                             f"lower lr (now {cfg.lr:g}) or the balancing coefficient, or bring the router's "
                             f"temperature (now {model.temperature:g}) and noise_std (now {model.noise_std:g}) "
                             f"to ordinary values: a temperature near 0 or a large noise overflows the router")
        row = self._row(trace.summary(), trace.sums.served, host)
        self._history.append(row)
        return row

    def run(self, n: int, callback: Callable[[dict], object] | None = None) -> dict | None:
        """Take n steps, calling callback(row) after each (returning False stops early); the last row."""
        int_at_least("n", n, 0)
        row = None
        for _ in range(n):
            row = self.step()
            if callback is not None and callback(row) is False:
                break
        return row

    # --- internals
    def _build_task(self) -> None:
        cfg = self._config
        self.task = SyntheticTask(cfg.scenario, cfg.params, d_model=cfg.model.d_model, tokens=cfg.tokens,
                                  seed=cfg.seed, task_shared=cfg.task_shared, input_offset=cfg.input_offset,
                                  pool_batches=cfg.pool_batches, probe_tokens=cfg.probe_tokens)
        self._probe_routed = self._probe_routing()  # (P, E) the baseline for the next step

    @torch.no_grad()
    def _probe_routing(self) -> Tensor:
        """The router's noiseless top-k choice on the probe batch; (P, E) bool."""
        cfg = self.layer.cfg.replace(noise_std=0.0, jitter_eps=0.0)
        x = self.task.probe_x.to(self.layer.device)  # (P, D)
        return self.layer.router(x, cfg, self.layer.new_generator()).routed

    def _saturation(self) -> Tensor:
        """Share of probe tokens whose top-k set equals the previous step's (a 0-d tensor); NaN for the random
        router, whose routing is drawn afresh every forward, not learned (the probe's fixed draw would read 1)."""
        if self.layer.cfg.router == "random":
            return torch.tensor(float("nan"), device=self.layer.device)
        routed = self._probe_routing()  # (P, E)
        same = (routed == self._probe_routed).all(dim=1).float().mean()
        self._probe_routed = routed
        return same

    def _row(self, summary: dict, served, host: list[float]) -> dict:
        E = self._config.model.n_experts
        shares = safe_ratio(served, served.sum())  # (E,) load share, as per_expert's load_share (NaN: nothing served)
        row = {"step": self._step, "balance": self._config.balance, "task_loss": host[0],
               "total_loss": host[1], **summary, "router_saturation": host[2]}
        row.update({f"load_share_{e}": float(shares[e]) for e in range(E)})
        row.update({f"expert_bias_{e}": host[3 + e] for e in range(E)})
        return row


def per_expert_series(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Tidy (step, expert, <prefix>) rows from a history frame's `<prefix>_<e>` columns."""
    cols = [c for c in frame.columns if c.startswith(prefix + "_") and c[len(prefix) + 1:].isdigit()]
    if not cols:
        raise ValueError(f"history has no {prefix}_<e> columns; use 'load_share' or 'expert_bias'")
    long = frame[["step", *cols]].melt(id_vars="step", var_name="expert", value_name=prefix)
    long["expert"] = long["expert"].str[len(prefix) + 1:].astype(int)
    return long.sort_values(["step", "expert"], ignore_index=True)


def tail_mean(frame: pd.DataFrame, column: str, last: int = 20) -> float:
    """Mean of `column` over the last `last` rows: a less noisy "where it ended" than one step."""
    return float(frame[column].tail(last).mean())
