"""MoEConfig: the one frozen, validated description of an MoE layer and its routing.

Shape letters used across the engine:
    B batch, S sequence, T = B·S tokens, D d_model, H d_expert, E n_experts, K top_k,
    C expert capacity, N served (token, expert) assignments.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from dataclasses import dataclass

import torch

from moe.validate import check_fields, int_at_least

ROUTERS = ("topk", "expert_choice", "hash", "random")
BIASED_ROUTERS = ("topk", "random")  # the routers whose selection reads expert_bias
SCORES = ("softmax", "sigmoid")
DROP_POLICIES = ("position", "probs")
CAPACITY_SCOPES = ("batch", "sequence")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROUTER_DTYPES = ("float32", "model")
ACTIVATIONS = ("silu", "gelu", "relu", "gpt_oss")   # moe.experts.ACTIVATION_FNS implements each
SPARSITY_MODES = ("absolute", "relative")
# The fields that fix a layer's weights: MoELayer.reconfigured refuses to change them, the dashboard's
# layer cache keys on them.
WEIGHT_FIELDS = ("d_model", "d_expert", "n_experts", "seed", "device", "dtype", "gated", "expert_biases",
                 "shared_experts", "d_shared", "shared_gate")
# The fields that decide which experts a token selects (moe.router.route): a Hugging Face block's engine takes the
# family's own selection where a counterfactual leaves them all as the model has them (MoEConfig.selects_as).
SELECTION_FIELDS = ("router", "score", "top_k", "temperature", "logit_bias", "expert_bias", "router_dtype", "n_group",
                    "topk_group", "jitter_eps", "noise_std", "n_experts", "d_model")


def expert_capacity(tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """C = ceil(capacity_factor·T·K/E), at most T: the assignments one expert may serve (MoEConfig.capacity). Computed
    exactly, with the factor as written (its shortest decimal: 0.55 is 11/20): in floats 0.55·100 is
    55.00000000000001, and C came out 12 at T = 100, K = 1, E = 5 where the definition gives 11."""
    return min(tokens, math.ceil(Fraction(repr(float(capacity_factor))) * tokens * top_k / n_experts))


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


def check_device(device: str) -> None:
    """Raise ValueError unless `device` names a device this machine has."""
    if device == "cpu":
        return
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' is not available on this machine; use device='cpu'")
        return
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is present; use device='cpu'")
        index = device.partition(":")[2]
        if index:
            if not index.isdigit():
                raise ValueError(f"device {device!r} is malformed; write it as 'cuda:0'")
            if int(index) >= torch.cuda.device_count():
                raise ValueError(f"device {device!r} does not exist: this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:<i>' or 'mps'")


def available_devices() -> list[str]:
    """The device strings this machine can run: 'cpu', each 'cuda:i', and 'mps'."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@dataclass(frozen=True)
class MoEConfig:
    # --- dimensions
    d_model: int = 64            # D: token width
    d_expert: int = 256          # H: expert hidden width
    n_experts: int = 8           # E
    top_k: int = 2               # K: experts per token (the average, for expert_choice)

    # --- routing
    router: str = "topk"         # "topk" | "expert_choice" | "hash" | "random"
    score: str = "softmax"       # "softmax" | "sigmoid"
    temperature: float = 1.0     # logits are divided by it
    normalize_topk: bool = True  # divide the chosen scores by their sum (Mixtral)
    routed_scaling_factor: float = 1.0
    logit_bias: tuple[float, ...] | None = None   # (E,) added to logits: changes probabilities
    expert_bias: tuple[float, ...] | None = None  # (E,) initial router.expert_bias: steers selection only
    router_dtype: str = "float32"                 # "float32" | "model"
    n_group: int = 1             # experts split into n_group contiguous groups (DeepSeek-V3)
    topk_group: int = 1          # only the topk_group best groups may be chosen (group score: top-2 sum)

    # --- capacity
    capacity_factor: float | None = None  # None = dropless
    drop_policy: str = "position"         # "position" | "probs"
    capacity_scope: str = "batch"         # "batch": C over all T tokens | "sequence": C per sequence of S

    # --- training-style noise (seeded by `seed`)
    jitter_eps: float = 0.0
    noise_std: float = 0.0

    # --- experts (the routed experts; the shared FFN uses the same activation and gating, no biases)
    activation: str = "silu"         # "silu" | "gelu" | "relu" | "gpt_oss"
    gated: bool = True               # h = act(W_gate x)·(W_up x); False: h = act(W_up x), no w_gate
    expert_biases: bool = False      # experts.b_gate (E, H), b_up (E, H), b_down (E, D)
    swiglu_limit: float = 7.0        # gpt_oss clamp: gate ≤ limit, |up| ≤ limit
    shared_experts: int = 0          # always-on shared FFN of d_shared hidden units; 0 = none
    d_shared: int | None = None      # Hs; default shared_experts × d_expert
    shared_gate: bool = False        # Qwen2-MoE: σ(x·w) scales the shared output

    # --- statistics
    sparsity_eps: float = 0.01
    sparsity_mode: str = "absolute"  # "absolute": |h| < eps; "relative": |h| ≤ eps · rms of h's row

    # --- execution
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types first (coerces numpy numbers), so the checks below compare numbers
        for name in ("d_model", "d_expert", "n_experts", "top_k"):
            int_at_least(name, getattr(self, name), 1)
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} exceeds n_experts={self.n_experts}; "
                             f"lower top_k to at most {self.n_experts} or add experts")
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose one of {_choices(ROUTERS)}")
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {_choices(SCORES)}")
        if self.drop_policy not in DROP_POLICIES:
            raise ValueError(f"unknown drop_policy {self.drop_policy!r}; choose one of {_choices(DROP_POLICIES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {_choices(DTYPES)}")
        if self.router_dtype not in ROUTER_DTYPES:
            raise ValueError(f"unknown router_dtype {self.router_dtype!r}; choose one of {_choices(ROUTER_DTYPES)}")
        if not _finite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not _finite(self.routed_scaling_factor) or self.routed_scaling_factor <= 0:
            raise ValueError(f"routed_scaling_factor must be finite and > 0 (it multiplies every gate), "
                             f"got {self.routed_scaling_factor!r}")
        if self.capacity_factor is not None and (not _finite(self.capacity_factor) or self.capacity_factor <= 0):
            raise ValueError(f"capacity_factor must be > 0 (or None for dropless), got {self.capacity_factor!r}")
        if not _finite(self.jitter_eps) or not 0 <= self.jitter_eps < 1:
            raise ValueError(f"jitter_eps must be in [0, 1), got {self.jitter_eps!r}")
        if not _finite(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")
        if not _finite(self.sparsity_eps) or self.sparsity_eps < 0:
            raise ValueError(f"sparsity_eps must be >= 0, got {self.sparsity_eps!r}")
        self._check_experts()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("logit_bias", "expert_bias"):
            bias = getattr(self, name)
            if bias is None:
                continue
            bias = tuple(float(b) for b in bias)
            if len(bias) != self.n_experts:
                raise ValueError(f"{name} has {len(bias)} values but n_experts={self.n_experts}; "
                                 f"give one value per expert")
            if not all(_finite(b) for b in bias):
                raise ValueError(f"{name} values must be finite, got {bias!r}")
            object.__setattr__(self, name, bias)  # normalise lists to tuples: the config stays hashable
        self._check_routing_groups()
        if self.capacity_scope not in CAPACITY_SCOPES:
            raise ValueError(f"unknown capacity_scope {self.capacity_scope!r}; choose one of {_choices(CAPACITY_SCOPES)}")
        check_device(self.device)

    def _check_experts(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {_choices(ACTIVATIONS)}")
        if self.sparsity_mode not in SPARSITY_MODES:
            raise ValueError(f"unknown sparsity_mode {self.sparsity_mode!r}; choose one of {_choices(SPARSITY_MODES)}")
        for name in ("gated", "expert_biases", "shared_gate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.activation == "gpt_oss" and not self.gated:
            raise ValueError("activation='gpt_oss' multiplies the gate by (up + 1), so it needs gated=True; "
                             "set gated=True or choose activation 'silu', 'gelu' or 'relu'")
        if not _finite(self.swiglu_limit) or self.swiglu_limit <= 0:
            raise ValueError(f"swiglu_limit must be a finite number > 0, got {self.swiglu_limit!r}")
        shared = self.shared_experts
        if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
            raise ValueError(f"shared_experts must be a non-negative integer (0 = none), got {shared!r}")
        if self.d_shared is not None:
            if isinstance(self.d_shared, bool) or not isinstance(self.d_shared, int) or self.d_shared <= 0:
                raise ValueError(f"d_shared must be a positive integer (or None for shared_experts × d_expert), "
                                 f"got {self.d_shared!r}")
            if shared == 0:
                raise ValueError(f"d_shared={self.d_shared} sizes the shared FFN but shared_experts=0; "
                                 f"set shared_experts >= 1 or leave d_shared=None")
        if self.shared_gate and shared == 0:
            raise ValueError("shared_gate=True gates the shared FFN but shared_experts=0; "
                             "set shared_experts >= 1 or shared_gate=False")

    def _check_routing_groups(self) -> None:
        """n_group / topk_group: DeepSeek-V3 group-limited routing must leave at least top_k experts."""
        for name in ("n_group", "topk_group"):
            int_at_least(name, getattr(self, name), 1)
        G, E = self.n_group, self.n_experts
        if E % G:
            divisors = [g for g in range(1, E + 1) if E % g == 0]
            raise ValueError(f"n_experts={E} is not divisible by n_group={G}; choose n_group among {divisors}")
        if self.topk_group > G:
            raise ValueError(f"topk_group={self.topk_group} exceeds n_group={G}; lower topk_group to at most {G}")
        if G > 1 and self.router != "topk":
            raise ValueError(f"n_group={G} needs router='topk' (got {self.router!r}); set n_group=1 or router='topk'")
        kept = self.group_limited_experts
        if kept < self.top_k:
            raise ValueError(f"topk_group={self.topk_group} of n_group={G} keeps {kept} experts, fewer than "
                             f"top_k={self.top_k}; raise topk_group to at least {-(-self.top_k // (E // G))} "
                             f"or lower top_k to {kept}")

    # --- derived values
    @property
    def shared_hidden(self) -> int:
        """Hs, the hidden width of the shared FFN: d_shared, else shared_experts × d_expert (0 = none)."""
        if self.shared_experts == 0:
            return 0
        return self.d_shared if self.d_shared is not None else self.shared_experts * self.d_expert

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def router_torch_dtype(self) -> torch.dtype:
        return torch.float32 if self.router_dtype == "float32" else self.torch_dtype

    @property
    def group_limited_experts(self) -> int:
        """The experts a token may choose from under group-limited routing: topk_group groups of E / n_group (E with
        one group)."""
        return self.topk_group * (self.n_experts // self.n_group)

    @property
    def capacity_per_sequence(self) -> bool:
        """Whether capacity is counted per sequence: capacity_scope="sequence" on a layer with a capacity (a
        capacity_factor, or expert choice, which always has one)."""
        has_capacity = self.capacity_factor is not None or self.router == "expert_choice"
        return self.capacity_scope == "sequence" and has_capacity

    def selects_as(self, other: "MoEConfig") -> bool:
        """Whether this config selects the experts `other` selects for every input: SELECTION_FIELDS equal, the
        temperature aside where it cannot change the order (no expert bias, no groups: softmax and sigmoid keep the
        order of the logits)."""
        order_free = not any(other.expert_bias or ()) and other.n_group <= 1 and self.router == other.router == "topk"
        return all(getattr(self, f) == getattr(other, f) for f in SELECTION_FIELDS
                   if not (f == "temperature" and order_free))

    def check_seq_len(self, seq_len: int | None) -> None:
        """ValueError where capacity is counted per sequence but the tokens are not split into sequences (the CLI's
        --seq-len): capacity would silently apply to all of them, as one batch."""
        if seq_len is None and self.capacity_per_sequence:
            raise ValueError("--capacity-scope sequence needs --seq-len S: without it the tokens are one batch and "
                             "capacity would silently apply to all of them")

    def capacity(self, tokens: int) -> int | None:
        """Per-expert capacity C = ceil(capacity_factor·T·K/E), at most T; None when dropless.

        With capacity_scope="sequence" pass the sequence length S: C then applies to each sequence.
        """
        factor = self.capacity_factor
        if factor is None:
            if self.router != "expert_choice":
                return None
            factor = 1.0  # expert choice always has a capacity
        return expert_capacity(tokens, self.top_k, self.n_experts, factor)

    def replace(self, **changes) -> "MoEConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
