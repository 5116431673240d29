"""RunResult: everything one forward produced, on the host, ready for tables and figures."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pandas as pd
from torch import Tensor

from moe import MoEConfig, Trace


@dataclass(frozen=True)
class RunResult:
    config: MoEConfig
    scenario: str                     # name in moe.scenarios.SCENARIOS
    scenario_params: dict             # the parameters the batch was drawn with
    trace: Trace                      # tensors on the CPU
    per_expert: pd.DataFrame          # trace.per_expert()
    summary: dict[str, float]         # trace.summary()
    labels: Tensor | None = None      # (T,) int64 topic of each token, when the scenario has labels
    label_names: list[str] | None = None
    device: str = "cpu"               # the device that actually ran
    warnings: list[str] = field(default_factory=list)
    threads: int = 0                  # torch's intra-op threads when the forward ran (read, never set per run)
    seq_len: int | None = None        # S when the forward ran on (B, S, D) sequences (capacity_scope="sequence")
    warm_times_ms: tuple[float, ...] = ()  # wall times of the repeats after the first forward (loaders.run)

    @property
    def forward_ms(self) -> float:
        """The warm forward time (DEFINITIONS["warm_forward_ms"]): the repeats' median, else the one forward's."""
        return statistics.median(self.warm_times_ms) if self.warm_times_ms else self.summary["forward_ms"]

    @property
    def n_experts(self) -> int:
        return self.config.n_experts
