"""The statistics of a routing trace file, per (step, layer), streamed (`python -m moe trace-report`, moe/cli).

Each record becomes `ForwardSums` (`moe.sums_from_routing` in token chunks when it has logits, else
`sums_from_choices`: no (E, E) co-activation, so memory is linear in E); records of one (step, layer)
(micro-batches) and all steps of a layer (pooled) merge with `StatsAccumulator`. Memory holds one record
plus the (S, E) load of each layer, both capped by `TraceLimits` (the memory budget), never the file.
Without logits (a Megatron trace without its sidecar) the probability-side numbers are unknown and
reported as NaN; the load-side ones are exact. The expert count is the file's when it records it (logits,
Parquet rows), else the caller's; `n_experts_source` says which.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from moe.config import MoEConfig
from moe.from_routing import sums_from_choices, sums_from_routing
from moe.metrics import max_over_mean
from moe.parallel.placement import Placement, contiguous, plan, predicted_load
from moe.stats import StatsAccumulator, summary_dict
from moe.traces.loadrows import load_rows, pooled
from moe.traces.log import GIVEN, RECORDED, ExpertsNeeded, RoutingLog
from moe.traces.readers import detect_format, iter_records
from moe.traces.records import Progress, RoutingRecord, TraceLimits, check_experts

ROW_KEYS = ["aux_loss", "max_over_mean", "cv", "load_entropy", "dead_fraction", "z_loss", "mean_confidence",
            "tokens"]
# Where the expert count came from: the caller, or the file itself.
N_EXPERTS_SOURCES = {"given": "given by the caller (--n-experts; the Runs page's Experts (E))",
                     "logit_shape": "recorded in the file: each record's logit_shape [tokens, experts]",
                     "parquet_rows": "recorded in the file: one Parquet row per (token, expert)",
                     "recorded": "recorded in the file: its array shapes, map or metadata",
                     "inferred": "not recorded in the file: its largest expert index + 1 (an expert above it that "
                                 "got no token is missing: give the model's count, --n-experts)"}
CHUNK_ENTRIES = 1 << 20  # tokens × experts summarised at once: the (T, E) temporaries of one chunk


@dataclass
class TraceSummary:
    source: str                           # "parquet" | "megatron"
    n_experts: int
    n_experts_source: str                 # a key of N_EXPERTS_SOURCES
    max_expert_id: int                    # the largest expert index the file routes to
    top_k: int
    has_logits: bool
    layers: list[str]                     # first-seen order
    steps: list[int]                      # ascending
    load: dict[str, np.ndarray]           # layer -> (S, E) assignments per step and expert
    rows: pd.DataFrame                    # one row per (step, layer): ROW_KEYS
    pooled: dict[str, dict]               # layer -> summary over all its steps
    records: int = 0
    skipped_empty: int = 0
    extra: dict = field(default_factory=dict)
    routing_log: RoutingLog | None = None  # the counts as a RoutingLog, when read through one

    @classmethod
    def from_log(cls, log: RoutingLog) -> "TraceSummary":
        """The statistics of a routing log (counts only: load-side numbers exact, probability-side NaN)."""
        used = np.flatnonzero(log.counts.sum((0, 1)))
        if not len(used):
            raise ValueError(f"the {log.source} data holds no routed tokens (every count is 0); give a run that "
                             f"routed at least one token")
        rows = load_rows(log.steps, log.layers, log.counts, log.top_k)
        records = log.meta.get("records")  # the reader's own record count (Megatron: lines), else non-empty cells
        return cls(source=log.source, n_experts=log.n_experts, n_experts_source=log.n_experts_source,
                   max_expert_id=int(used[-1]) if len(used) else -1, top_k=log.top_k, has_logits=False,
                   layers=list(log.layers), steps=[int(s) for s in log.steps],
                   load={name: log.counts[:, i, :] for i, name in enumerate(log.layers)}, rows=rows,
                   pooled=pooled(log.layers, log.counts, log.top_k),
                   records=records if isinstance(records, int) else int((log.counts.sum(-1) > 0).sum()),
                   skipped_empty=int((log.counts.sum(-1) == 0).sum()), routing_log=log)

    def log(self) -> RoutingLog:
        """These counts as a RoutingLog (trace-report --out DIR writes it)."""
        if self.routing_log is None:
            counts = np.stack([self.load[name] for name in self.layers], axis=1)  # (S, L, E)
            self.routing_log = RoutingLog(source=self.source, layers=list(self.layers), steps=np.asarray(self.steps),
                                          counts=counts, top_k=self.top_k,
                                          n_experts_source=GIVEN if self.n_experts_source == GIVEN else RECORDED)
        return self.routing_log

    def idle_layers(self) -> list[str]:
        """Layers that routed no token in the whole source (every count 0): SGLang's recorder keeps a row for every
        hidden layer, so a dense layer (DeepSeek's first_k_dense_replace) reads as one."""
        return [name for name in self.layers if not self.load[name].any()]

    def worst(self) -> dict:
        """The (step, layer) whose busiest expert is furthest above the mean (max_over_mean; first on ties)."""
        row = self.rows.loc[self.rows["max_over_mean"].idxmax()]
        return {"step": int(row["step"]), "layer": str(row["layer"]), "max_over_mean": float(row["max_over_mean"]),
                "aux_loss": float(row["aux_loss"])}

    def expert_load(self, layer: str | None = None) -> np.ndarray:
        """(E,) assignments summed over steps, for one layer or (None) all layers."""
        chosen = self.layers if layer is None else [self._layer(layer)]
        return sum(self.load[name].sum(0) for name in chosen)

    def plan(self, world_size: int, redundant_slots: int = 0, layer: str | None = None) -> dict:
        """The planner fed with this trace's load, next to the contiguous default (predicted per-rank load)."""
        load = self.expert_load(layer)
        result = plan(load, world_size, redundant_slots, current_name="contiguous blocks")  # not the run's own map
        planned = result.placement
        out = {"layer": "all" if layer is None else str(layer), "load": [int(v) for v in load],
               "placement": planned.to_dict(), "kept_current": result.kept_current, "note": result.note,
               "compared_with": "contiguous blocks" + (RUN_MAP_NOTE if self.recorded_map() else "")}
        for name, placement in (("planned", planned), ("contiguous", _contiguous_or_none(len(load), world_size))):
            if placement is not None:
                ranks = predicted_load(placement, load)
                out[f"{name}_load"] = [int(v) for v in ranks]
                out[f"{name}_straggler"] = max_over_mean(ranks)
        return out

    def recorded_map(self) -> bool:
        """The run recorded its own placement (a physical → logical map: SGLang's and vLLM's EPLB dumps)."""
        return self.routing_log is not None and self.routing_log.physical_to_logical is not None

    def _layer(self, layer) -> str:
        if str(layer) not in self.load:
            raise ValueError(f"layer {layer!r} is not in the trace; choose one of {self.layers}")
        return str(layer)


RUN_MAP_NOTE = ("; this run recorded its own placement (a physical → logical map), which this plan is not compared "
                "with: `python -m moe plan` (the Placement section) replays the run under it")


def _contiguous_or_none(n_experts: int, world_size: int) -> Placement | None:
    return contiguous(n_experts, world_size) if world_size <= n_experts else None


class MixedLogits(ValueError):
    """summarize: some records carry logits and others not. Megatron-LM's RouterTracer writes a record's logit_*
    fields only where capturing them worked (router_trace.py: no hidden state of the record's token count, or the
    gating call failed), so such a file is valid: open_trace reads its counts alone."""


def summarize(path: str, n_experts: int | None = None, n_layers: int | None = None, score: str = "softmax",
              progress: Progress | None = None, limits: TraceLimits | None = None) -> TraceSummary:
    """Stream `path` (either format) into per-(step, layer) statistics within `limits` (default: the environment's
    budget); every problem is a ValueError."""
    if n_experts is not None:
        n_experts = check_experts(n_experts, "n_experts")
    limits = limits or TraceLimits.from_env()  # a bad MOE_SCOPE_MEMORY_GB is refused before the file is opened
    source = detect_format(path)
    state = _State(n_experts, score, limits, "logit_shape" if source == "megatron" else "parquet_rows")
    for rec in iter_records(path, progress, limits):
        state.add(rec)
    state.finish_step()
    if not state.rows:
        raise ValueError(f"{path!r} holds no routed tokens; give a trace with at least one record")
    if n_layers is not None and len(state.layer_order) != n_layers:
        raise ValueError(f"the trace has {len(state.layer_order)} MoE layers ({state.layer_order}) but "
                         f"{n_layers} were expected; pass the model's MoE layer count or the right file")
    return state.summary(source)


class _State:
    """What summarize() keeps while streaming: the current step's accumulators and the finished rows."""

    def __init__(self, n_experts: int | None, score: str, limits: TraceLimits, recorded: str) -> None:
        self.given, self.score, self.limits, self.recorded = n_experts, score, limits, recorded
        self.config: MoEConfig | None = None
        self.source = "given"
        self.step: int | None = None
        self.current: dict[str, StatsAccumulator] = {}
        self.layer_order: list[str] = []
        self.pooled: dict[str, StatsAccumulator] = {}
        self.load: dict[str, list[np.ndarray]] = {}
        self.rows: list[dict] = []
        self.steps: list[int] = []
        self.records = self.skipped = self.max_id = 0
        self.has_logits: bool | None = None

    def add(self, rec: RoutingRecord) -> None:
        if self.step is not None and rec.step < self.step:
            raise ValueError(f"{rec.where}: step {rec.step} comes after step {self.step}; give one rank's file "
                             f"as written (steps ascending), not several files joined")
        if rec.step != self.step:
            self.finish_step()
            self.step = rec.step
        if rec.top_k_index.shape[0] == 0:
            self.skipped += 1
            return
        cfg = self._config(rec)
        if rec.layer not in self.current:  # one more (E,) load row and accumulator: within the budget?
            layers = max(len(self.layer_order), len(self.current) + 1)
            self.limits.check_summary(len(self.steps) + 1, layers, cfg.n_experts)
        acc = self.current.setdefault(rec.layer, StatsAccumulator())
        if self._logits(rec):
            logits, idx = torch.from_numpy(rec.router_logits), torch.from_numpy(rec.top_k_index)  # (T, E), (T, K)
            chunk = max(1, CHUNK_ENTRIES // cfg.n_experts)
            for lo in range(0, len(idx), chunk):  # sums add over tokens: chunks bound the (T, E) temporaries
                acc.add(sums_from_routing(cfg, logits[lo:lo + chunk], idx[lo:lo + chunk]))
        else:
            acc.add(sums_from_choices(cfg.n_experts, rec.top_k_index))
        self.records += rec.parts

    def _config(self, rec: RoutingRecord) -> MoEConfig:
        K, high = rec.top_k_index.shape[1], int(rec.top_k_index.max())
        if self.config is None:
            E = self._experts(rec)
            self.config = MoEConfig(d_model=1, d_expert=1, n_experts=E, top_k=K, score=self.score)
        E = self.config.n_experts
        if rec.n_experts is not None and rec.n_experts != E:
            raise ValueError(f"{rec.where}: the record has {rec.n_experts} experts but earlier records (or "
                             f"n_experts) have {E}; give a trace of one model")
        if K != self.config.top_k:
            raise ValueError(f"{rec.where}: top_k={K} but earlier records have {self.config.top_k}; "
                             f"give a trace of one model")
        if high >= E:
            raise ValueError(f"{rec.where}: expert index {high} but n_experts={E}; the count must be at least the "
                             f"largest expert index + 1: pass the model's expert count (--n-experts)")
        self.max_id = max(self.max_id, high)
        return self.config

    def _experts(self, rec: RoutingRecord) -> int:
        """The file's count when it records one (checked against the caller's), else the caller's."""
        if rec.n_experts is None:
            if self.given is None:
                raise ExpertsNeeded(int(rec.top_k_index.max()) + 1, "this Megatron-LM trace has no logits, so it")
            return self.given
        self.source = self.recorded
        if self.given is not None and self.given != rec.n_experts:
            raise ValueError(f"the file records {rec.n_experts} experts ({N_EXPERTS_SOURCES[self.source]}) but "
                             f"n_experts={self.given} was given; give {rec.n_experts} or leave the count out")
        return rec.n_experts

    def _logits(self, rec: RoutingRecord) -> bool:
        has = rec.router_logits is not None
        if self.has_logits is None:
            self.has_logits = has
        elif has != self.has_logits:
            raise MixedLogits(f"{rec.where}: some records carry logits and others not")
        return has

    def finish_step(self) -> None:
        """Close the current step: its layers must be the first step's; rows and pooled sums follow."""
        if not self.current:
            return
        names = list(self.current)
        if not self.layer_order:
            self.layer_order = names
        elif set(names) != set(self.layer_order):
            raise ValueError(f"step {self.step} has MoE layers {sorted(names)} but step {self.steps[0]} has "
                             f"{sorted(self.layer_order)}; the file is inconsistent (a cut or mixed trace)")
        for name in self.layer_order:  # rows step-major in the layers' order, however the step's records came
            acc = self.current[name]
            summary = acc.summary()
            self.rows.append({"step": self.step, "layer": name, **{k: summary[k] for k in ROW_KEYS}})
            self.load.setdefault(name, []).append(acc.sums.demand.astype(np.int64))  # (E,)
            self.pooled.setdefault(name, StatsAccumulator()).update(acc)
        self.steps.append(self.step)
        self.current = {}

    def summary(self, source: str) -> TraceSummary:
        cfg = self.config
        return TraceSummary(source=source, n_experts=cfg.n_experts, n_experts_source=self.source,
                            max_expert_id=self.max_id, top_k=cfg.top_k, has_logits=bool(self.has_logits),
                            layers=self.layer_order, steps=self.steps,
                            load={k: np.stack(v) for k, v in self.load.items()},  # (S, E) each
                            rows=pd.DataFrame(self.rows),
                            pooled={k: summary_dict(a.sums) for k, a in self.pooled.items()},
                            records=self.records, skipped_empty=self.skipped)
