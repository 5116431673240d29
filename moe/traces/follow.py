"""Follow a routing log that is still being written: each poll reads only the part files it has not read before.

A writer (`LogWriter`, the recorder) adds whole part files by renaming them into place, so a poll never sees a
half-written file; a run that adds nothing for `idle_after_s` seconds is idle.
"""
from __future__ import annotations

import os
import time

import numpy as np

from moe.metrics import max_over_mean
from moe.traces.log import GIVEN, INFERRED, RECORDED, RoutingLog
from moe.traces.records import TraceLimits
from moe.traces.store import parts, read_meta
from moe.traces.store_read import CountsAccumulator, counts_batches

IDLE_AFTER_S = 30.0


class LogFollower:
    """poll() → the steps that arrived since the last poll; log() → everything read so far as a RoutingLog."""

    def __init__(self, path: str, limits: TraceLimits | None = None, clock=time.monotonic) -> None:
        self.path, self.clock = path, clock
        self.limits = limits or TraceLimits.from_env()
        self.doc = read_meta(path)
        self.acc = CountsAccumulator(self.doc["layers"], self.doc["n_experts"], self.limits)
        self.seen: set[str] = set()
        self.parts_read = 0
        self.last_change = clock()

    def poll(self) -> list[int]:
        """Read the new part files only; the steps they hold, ascending."""
        new = [p for p in parts(self.path, "counts") if os.path.basename(p) not in self.seen]
        steps: set[int] = set()
        for part in new:
            steps.update(self.acc.add(counts_batches(part, self.limits)))
            self.seen.add(os.path.basename(part))
            self.parts_read += 1
        if new:
            self.last_change = self.clock()
        return sorted(steps)

    def idle(self, after_s: float = IDLE_AFTER_S) -> bool:
        """True when no new part arrived for `after_s` seconds (the run stopped writing, or is between flushes)."""
        return self.clock() - self.last_change > after_s

    def log(self) -> RoutingLog | None:
        """The counts read so far (None before the first step)."""
        if not self.acc.cells:
            return None
        steps, counts = self.acc.arrays()
        doc = self.doc
        return RoutingLog(source=str(doc.get("source", "moe-scope")), layers=doc["layers"], steps=steps,
                          counts=counts, top_k=doc["top_k"], meta=doc.get("meta") or {},
                          n_experts_source=doc["n_experts_source"] if doc.get("n_experts_source") in (GIVEN, INFERRED)
                          else RECORDED,
                          physical_to_logical=doc.get("physical_to_logical_map"))

    def step_line(self, step: int) -> str:
        """One line for `trace-report --follow`: the step's tokens and its worst layer's max/mean."""
        counts = self.acc.cells[step]  # (L, E)
        ratio = np.array([max_over_mean(row) for row in counts])  # (L,) NaN for a layer without tokens
        worst = int(np.nanargmax(ratio)) if np.isfinite(ratio).any() else 0
        dead = int((counts[worst] == 0).sum())
        return (f"step {step}: {int(counts.sum())} assignments over {counts.shape[0]} layers; worst layer "
                f"{self.doc['layers'][worst]} max/mean {ratio[worst]:.3f}, dead experts {dead}")
