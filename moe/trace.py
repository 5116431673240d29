"""Trace: what one forward decided and measured, returned explicitly by MoELayer."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
from torch import Tensor

from moe.config import MoEConfig
from moe.stats import ForwardSums, per_expert_frame, summary_dict


@dataclass
class Trace:
    config: MoEConfig
    router_logits: Tensor         # (T, E) float32
    probs: Tensor                 # (T, E) softmax, or sigmoid scores normalised to sum 1
    routed: Tensor                # (T, E) bool, the router's choice before capacity
    served: Tensor                # (T, E) bool, kept by capacity
    gates: Tensor                 # (T, E) combine weight, 0 where not served
    contributions: Tensor         # (T, E) ‖gates[t, e] · y_e(x_t)‖₂
    coactivation: Tensor          # (E, E) tokens served by both; diagonal = served count
    top_k_index: Tensor | None    # (T, K); None for expert_choice
    top_k_weights: Tensor | None  # (T, K); None for expert_choice
    capacity: int | None          # C, None when dropless
    device: str                   # the device that ran the forward
    sums: ForwardSums             # host-side statistics (one transfer)

    @property
    def tokens(self) -> int:
        return self.probs.shape[0]

    @property
    def forward_ms(self) -> float:
        return self.sums.forward_ms

    def per_expert(self) -> pd.DataFrame:
        """One row per expert: demand, served, dropped, load_share, utilization, sparsity, ... ."""
        return per_expert_frame(self.sums)

    def summary(self) -> dict[str, float]:
        """aux_loss, z_loss, cv, max_over_mean, load_entropy, dead/dropped fractions, confidence, ... ."""
        return summary_dict(self.sums)

    def cpu(self) -> "Trace":
        """A copy whose tensors live on the host (the dashboard reads these)."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.detach().cpu()
        return Trace(**moved)
