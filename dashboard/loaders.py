"""Runs the engine for the page: cached, read-only base layers (bounded in bytes across sessions), one
forward per spec, all within the memory budget (moe.memory.budget_bytes, env MOE_SCOPE_MEMORY_GB)."""
from __future__ import annotations

import dataclasses
import threading
import weakref
from collections import OrderedDict

import torch

from moe import MoEConfig, MoELayer
from moe.config import WEIGHT_FIELDS  # the fields that fix a layer's weights: the cache key
from moe.memory import budget_bytes, check_budget, describe_bytes, estimate_bytes
from moe.scenarios import make_batch

from dashboard.result import RunResult
from dashboard.links import RunSpec


def weight_key(cfg: MoEConfig) -> tuple:
    """The cache key: two configs with the same key have the same weights."""
    return tuple(getattr(cfg, name) for name in WEIGHT_FIELDS)


class LayerCache:
    """Base layers shared by every session, bounded in bytes: the least recently used go first.

    A cached layer is read-only (inference only, gradients off). One lock guards the table and the
    building, so two sessions asking for the same new weights build them once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layers: OrderedDict[tuple, tuple[MoELayer, int]] = OrderedDict()  # key -> (layer, bytes)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(n for _, n in self._layers.values())

    def get(self, cfg: MoEConfig, room: int) -> MoELayer:
        """The base layer for cfg's weights; evicts until its weights fit in `room` bytes (ValueError if never)."""
        key = weight_key(cfg)
        weights = estimate_bytes(cfg, 1)["weights"]
        with self._lock:
            if key in self._layers:
                self._layers.move_to_end(key)
                return self._layers[key][0]
            while self._layers and sum(n for _, n in self._layers.values()) + weights > room:
                self._layers.popitem(last=False)
            if weights > room:
                raise ValueError(f"the weights ({describe_bytes(weights)}) do not fit in the memory left now "
                                 f"({describe_bytes(max(room, 0))}): results kept by open sessions take the rest "
                                 f"of the budget; try again later or lower n_experts, d_expert or d_model")
            layer = _build(cfg)
            self._layers[key] = (layer, weights)
            return layer


def _build(cfg: MoEConfig) -> MoELayer:
    base = MoEConfig(top_k=1, **{name: getattr(cfg, name) for name in WEIGHT_FIELDS})
    layer = MoELayer(base).requires_grad_(False).eval()
    with torch.inference_mode():  # warm-up: the first forward in a process pays one-off set-up costs
        layer(torch.randn(8, cfg.d_model))
    return layer


LAYERS = LayerCache()
# Results that sessions keep (st.session_state holds them); they leave this set when no session does.
# Keyed by id(): a RunResult is not hashable (it holds dicts); a dead result's entry leaves with it.
_KEPT: weakref.WeakValueDictionary[int, RunResult] = weakref.WeakValueDictionary()
_KEPT_LOCK = threading.Lock()


def result_bytes(result: RunResult) -> int:
    """Bytes of the tensors a kept result holds (its trace and labels)."""
    tensors = [getattr(result.trace, f.name) for f in dataclasses.fields(result.trace)] + [result.labels]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def kept_bytes() -> int:
    with _KEPT_LOCK:
        return sum(result_bytes(r) for r in list(_KEPT.values()))


def run(spec: RunSpec) -> RunResult:
    """Check the memory budget, draw the batch, run one forward, bring the trace to the host.

    The budget (MOE_SCOPE_MEMORY_GB) covers this forward, the cached weights and every session's kept result.
    """
    cfg = spec.config
    budget = budget_bytes()
    check_budget(cfg, spec.tokens, budget)
    est = estimate_bytes(cfg, spec.tokens)
    base = LAYERS.get(cfg, room=budget - est["activations"] - est["trace"] - kept_bytes())
    layer = base.reconfigured(cfg)  # per-run routing settings; weights shared read-only
    batch = make_batch(spec.scenario, cfg.d_model, spec.tokens, seed=cfg.seed, **spec.params)
    x = batch.x if spec.seq_len is None else batch.x.reshape(-1, spec.seq_len, cfg.d_model)  # (B, S, D)
    threads = torch.get_num_threads()  # read only: the thread count is process-wide, never set per request
    with torch.inference_mode():
        _, trace = layer(x)
    trace = trace.cpu()
    summary = trace.summary()
    warnings = []
    if summary["nonfinite"] > 0 or summary["nonfinite_output"] > 0:
        warnings.append(f"{summary['nonfinite']:.0f} router logits and {summary['nonfinite_output']:.0f} output "
                        "values are not finite (NaN/inf): the numbers below are not meaningful; check the input "
                        "and the dtype (float16 overflows above 65504).")
    result = RunResult(config=cfg, scenario=spec.scenario, scenario_params=spec.params, trace=trace,
                       per_expert=trace.per_expert(), summary=summary, labels=batch.labels,
                       label_names=batch.label_names, device=trace.device, warnings=warnings,
                       threads=threads, seq_len=spec.seq_len)
    with _KEPT_LOCK:
        _KEPT[id(result)] = result
    return result

