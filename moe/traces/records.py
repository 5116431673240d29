"""What a routing trace reader yields, and what one trace may cost: caps derived from the memory budget.

A trace file is untrusted input: a few bytes can name 65536 experts, one JSON line can hold millions of
tokens and a 290 KB Parquet file can expand into gigabytes. Every cap below is checked before the bytes
it guards are read or materialised, so a file is refused in one line rather than read past the budget.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from moe import roots
from moe.memory import BUDGET_ENV, budget_bytes, describe_bytes, describe_over

Progress = Callable[[float], None]  # fraction of the file read, 0..1
MAX_EXPERTS = 16384        # far above any released MoE (hundreds of experts); a larger count is a typo or an attack
MAX_NAME = 32              # characters of a layer name (shown on the page and in messages)
LAYER_NAME = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_NAME}}}")  # every source's layer labels, routing logs included
MAX_LAYERS = 16384         # layer labels one file may name: far above any released MoE (tens of layers)
INT64_MAX = 2 ** 63 - 1
# Bytes of Python objects json.loads builds per byte of a line, at most (measured: 25 for "[0],", 19 for "[1000],").
LINE_EXPANSION = 32
# Bytes one (token, expert) entry of a record costs while it is read and summarised (Parquet: five columns,
# their sort and reshape; logits: float32 copies and the statistics' (T, E) temporaries of one chunk).
ENTRY_BYTES = 96
# Bytes one (step, layer, expert) count costs in the summary and in its JSON/CSV output; per layer the
# accumulators hold ~20 (E,) float64 arrays; per (step, layer) one row of statistics.
LOAD_ENTRY_BYTES = 48
LAYER_EXPERT_BYTES = 2 * 20 * 8
ROW_BYTES = 2048


@dataclass
class RoutingRecord:
    step: int
    layer: str                       # "3" for decoder layer 3; "mtp0.1" for MTP head 0, layer 1
    top_k_index: np.ndarray          # (T, K) int64
    router_logits: np.ndarray | None  # (T, E) float32, None when the file has no logits
    where: str                       # "line 12" / "step 3, layer 0": for error messages
    n_experts: int | None = None     # E when the file records it (logits, one Parquet row per expert)
    parts: int = 1                   # the file's records this one joins (micro-batches written back to back)


@dataclass(frozen=True)
class TraceLimits:
    """The caps of one trace read under `budget` bytes: a quarter for one line, a quarter for one record's
    entries, half for the per-(step, layer) summary that grows with the file."""
    budget: int

    @classmethod
    def from_env(cls) -> "TraceLimits":
        return cls(budget_bytes())

    @property
    def line_bytes(self) -> int:
        return self.budget // (4 * LINE_EXPANSION)

    @property
    def entries(self) -> int:
        """tokens × experts (logits, Parquet rows) or tokens × top_k of one record."""
        return self.budget // (4 * ENTRY_BYTES)

    def check_entries(self, entries: int, where: str, what: str) -> None:
        if entries > self.entries:
            raise ValueError(f"{where}: {what} make {entries:,} entries in one record, over the {self.entries:,} "
                             f"that the memory budget of {describe_bytes(self.budget)} allows; split the record or "
                             f"raise {BUDGET_ENV}")

    def check_summary(self, steps: int, layers: int, n_experts: int) -> None:
        """The per-(step, layer) load and statistics kept for the whole file."""
        need = layers * (steps * (n_experts * LOAD_ENTRY_BYTES + ROW_BYTES) + n_experts * LAYER_EXPERT_BYTES)
        if need > self.budget // 2:
            need_text, _, budget_text = describe_over(need, self.budget // 2, self.budget)
            raise ValueError(f"the trace's {steps:,} steps × {layers:,} layers × {n_experts:,} experts need about "
                             f"{need_text} of statistics, over half the memory budget of "
                             f"{budget_text}; give fewer steps (cut the file) or raise {BUDGET_ENV}")


def check_experts(n_experts, what: str) -> int:
    """An expert count 1..MAX_EXPERTS (given, or recorded in a file); else one line saying so."""
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)) or not 1 <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"{what} must be an expert count from 1 to {MAX_EXPERTS}; give the model's number of "
                         f"experts")
    return int(n_experts)


def open_regular(path: str):
    """Open a trace file for reading only if it is a regular file (a FIFO or a device would block or never end)."""
    return roots.open_regular(path, "trace file", "give a trace file (not a pipe, device or directory)")


def shown(value) -> str:
    """A file's value in a message: a number as written (bounded), anything else by its JSON type only."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value) if abs(value) <= INT64_MAX else "an integer beyond 64 bits"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "a non-finite number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), "a value of another type")


def as_int(value, where: str, name: str, low: int = 0) -> int:
    """A JSON integer in low..2^63-1 (not a bool, float or string); else one line naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= INT64_MAX:
        raise ValueError(f"{where}: field {name!r} must be an integer >= {low}, got {shown(value)}")
    return value
