"""vLLM routing data as a `RoutingLog`: the per-token experts a server returns (`--enable-return-routed-experts`)
and an EPLB load window (the tensors of vLLM's `EplbModelState`, saved as a dict).

What vLLM's code says (vllm-project/vllm, the commits read):
- Routed experts. `fused_moe/routed_experts_capturer.py` (42fa4c09) sizes its buffer (tokens, hf_config
  .num_hidden_layers, num_experts_per_tok) int32 and writes layer `layer_id` at index layer_id; `outputs.py`
  (003d3ee2) returns `CompletionOutput.routed_experts` "[seq_len, layer_num, topk]"; later versions narrow the
  returned array (int16 `prompt_routed_experts`), so any integer dtype is read. The layer axis counts every
  hidden layer: a dense layer (DeepSeek's first ones) is never captured and stays all zero. A captured layer
  never names one expert in all K slots of a token (top-k picks distinct experts), so with K > 1 a layer whose
  ids are all 0 is dropped as uncaptured (meta "uncaptured_layers"), and so is a token whose K ids are all 0 in a
  captured layer (its slots read -1, meta "uncaptured_rows": a buffer row never written); labels stay vLLM's layer
  index. Any other token naming one expert twice is refused. With K = 1
  no such test exists: give only MoE layers. `fused_moe/router/base_router.py` (03919875) calls the capture
  hook "before EPLB mapping": the ids are logical, no map needed. E is never recorded: --n-experts is required.
- EPLB window. `distributed/eplb/eplb_state.py` (50feac95): `expert_load_window` int32 (window, layers,
  physical), `physical_to_logical_map` (layers, physical), `logical_to_physical_map` (layers, logical,
  redundant + 1; -1 padded), `logical_replica_count` (layers, logical). `step()` writes `window[step]` and then
  advances `expert_load_window_step` modulo the window, so that step is the oldest row: with it in the dict the
  rows are ordered oldest first; without it they stay in storage order (meta "window_order"). Rows not yet
  written are zeros. Each rank records the load of every physical expert from its own tokens (with naive
  all-to-all dispatch every DP rank sees the same tokens: vLLM's NOTE says the load is then dp_size times), and vLLM's
  `rearrange()` maps every row through the current map: we do the same, and keep the physical counts as one
  rank (W = 1): sum the ranks' windows first to see the whole EP group.
"""
from __future__ import annotations

import numpy as np

from moe.memory import BUDGET_ENV, describe_over
from moe.traces.log import (
    RoutingLog,
    TokenRouting,
    check_distinct,
    check_ids,
    check_map,
    counts_from_ids,
    map_to_logical,
    resolve_experts,
)
from moe.traces.records import TraceLimits

ROUTED, EPLB = "vllm-routed-experts", "vllm-eplb-window"
WINDOW, P2L, STEP = "expert_load_window", "physical_to_logical_map", "expert_load_window_step"
L2P, REPLICAS = "logical_to_physical_map", "logical_replica_count"
TOKEN_ROW_BYTES = 12  # per (token, layer): the int64 step and int32 layer of TokenRouting, besides its K int64 ids


def _integer_tensor(obj) -> bool:
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind in "iu"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.is_tensor(obj) and not (obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool)


def kind(obj) -> str | None:
    """ROUTED for a 3-D integer tensor/array, EPLB for a dict holding `expert_load_window`, else None."""
    if isinstance(obj, dict):
        return EPLB if WINDOW in obj else None
    if _integer_tensor(obj) and len(obj.shape) == 3:
        return ROUTED
    return None


def _array(value, what: str, ndim: int) -> np.ndarray:
    """A tensor or array of integers with `ndim` dimensions, as numpy; else one line naming `what`."""
    if not _integer_tensor(value):
        got = "no tensor" if not hasattr(value, "shape") else "non-integers"
        raise ValueError(f"{what} must be an integer tensor of {ndim} dimensions, got {got}; save vLLM's tensor "
                         f"as it is")
    arr = value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()
    if arr.ndim != ndim or 0 in arr.shape:
        raise ValueError(f"{what} must have {ndim} non-empty dimensions, got shape {tuple(arr.shape)}; save vLLM's "
                         f"tensor as it is")
    return arr


def from_routed(arr: np.ndarray, path: str, n_experts: int | None, limits: TraceLimits | None = None) -> RoutingLog:
    """vLLM's routed experts (tokens, layers, top_k) as one step: every token of every captured layer."""
    what = f"the vLLM routed experts {path!r}"
    ids = _array(arr, what, 3)                                                       # (T, L, K)
    T, L, K = ids.shape
    limits = limits or TraceLimits.from_env()
    need = T * L * (K * 8 + TOKEN_ROW_BYTES)
    if need > limits.budget // 4:
        need_text, _, budget_text = describe_over(need, limits.budget // 4, limits.budget)
        raise ValueError(f"{what} holds {T:,} tokens × {L:,} layers × top-{K}, {need_text} as a routing "
                         f"log, over a quarter of the memory budget of {budget_text}; give fewer "
                         f"tokens or raise {BUDGET_ENV}")
    max_id = check_ids(ids, what)
    E, source = resolve_experts(n_experts, None, max_id, what)
    captured = np.ones(L, dtype=bool) if K == 1 else ids.any(axis=(0, 2))  # (L,)
    if not captured.any():
        raise ValueError(f"{what} names expert 0 in every slot of every layer, which vLLM writes only for layers it "
                         f"never captured; give the routed experts of a MoE model's request")
    kept = np.flatnonzero(captured)
    limits.check_summary(1, len(kept), E)
    layer_ids = ids[:, kept, :].astype(np.int64)                                     # (T, L', K)
    blank = (layer_ids == 0).all(axis=2) if K > 1 else np.zeros(layer_ids.shape[:2], dtype=bool)  # (T, L')
    layer_ids[blank] = -1                                                            # never written: no routing
    check_distinct(layer_ids, what)                                                  # the captured layers' tokens
    flat = layer_ids.transpose(1, 0, 2).reshape(-1, K)                               # (L'·T, K) layer-major
    layer = np.repeat(np.arange(len(kept), dtype=np.int32), T)                       # (L'·T,)
    step = np.zeros(len(layer), dtype=np.int64)                                      # (L'·T,)
    counts = counts_from_ids(step, layer, flat, 1, len(kept), E)                     # (1, L', E)
    meta = {"tokens": T, "uncaptured_layers": [int(i) for i in np.flatnonzero(~captured)], "ids": "logical",
            "uncaptured_rows": int(blank.sum())}
    return RoutingLog(source=ROUTED, layers=[str(int(i)) for i in kept], steps=np.zeros(1, np.int64), counts=counts,
                      n_experts_source=source, top_k=K, meta=meta, tokens=TokenRouting(step, layer, flat))


def _window_step(obj: dict, window: int, what: str) -> int | None:
    """`expert_load_window_step` (an int or a 0-d integer tensor) in 0..window-1, or None when absent."""
    if STEP not in obj:
        return None
    value = obj[STEP]
    if isinstance(value, np.integer) or (_integer_tensor(value) and len(value.shape) == 0):
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < window:
        raise ValueError(f"{what}: '{STEP}' must be an integer from 0 to {window - 1} (the window's next row); save "
                         f"EplbState.expert_load_window_step as it is")
    return value


def _check_inverse(obj: dict, p2l: np.ndarray, E: int, what: str) -> None:
    """vLLM's logical → physical map and replica count, when the dict has them, must describe the same placement."""
    L, P = p2l.shape
    replicas = np.zeros((L, E), dtype=np.int64)
    np.add.at(replicas, (np.arange(L)[:, None], p2l), 1)                               # (L, E) slots per expert
    if REPLICAS in obj:
        given = _array(obj[REPLICAS], f"{what}: '{REPLICAS}'", 2)
        if given.shape != (L, E) or not np.array_equal(given, replicas):
            raise ValueError(f"{what}: '{REPLICAS}' does not count the slots of '{P2L}' per logical expert; save the "
                             f"maps of one EPLB state")
    if L2P in obj:
        l2p = _array(obj[L2P], f"{what}: '{L2P}'", 3).astype(np.int64)                # (L, E, R+1), -1 padded
        if l2p.shape[:2] != (L, E) or int(l2p.min()) < -1 or int(l2p.max()) >= P:
            raise ValueError(f"{what}: '{L2P}' must be [layers={L}, logical experts={E}, slots] of physical ids "
                             f"below {P} (or -1); save the maps of one EPLB state")
        inverse = ValueError(f"{what}: '{L2P}' is not the inverse of '{P2L}' (every physical slot once, under its "
                             f"logical expert); save the maps of one EPLB state")
        placed = l2p >= 0
        if int(placed.sum()) != L * P:  # before np.nonzero builds three int64 arrays of every entry found
            raise inverse
        layer, expert, _ = np.nonzero(placed)
        slots = l2p[placed]
        back = np.bincount(layer * P + slots, minlength=L * P)
        if (back != 1).any() or not np.array_equal(p2l[layer, slots], expert):
            raise inverse


def from_eplb(obj: dict, path: str, n_experts: int | None, limits: TraceLimits | None = None) -> RoutingLog:
    """An EPLB load window: one step per window row (oldest first when the step is saved), mapped to logical."""
    what = f"the vLLM EPLB window {path!r}"
    if P2L not in obj:
        raise ValueError(f"{what} has no '{P2L}'; save it with '{WINDOW}' (the window's counts are per physical "
                         f"expert)")
    window = _array(obj[WINDOW], f"{what}: '{WINDOW}'", 3)                            # (W, L, P)
    p2l = _array(obj[P2L], f"{what}: '{P2L}'", 2)                                     # (L, P)
    if p2l.shape != window.shape[1:]:
        raise ValueError(f"{what}: '{WINDOW}' has {window.shape[1]} layers × {window.shape[2]} physical experts but "
                         f"'{P2L}' is {list(p2l.shape)}; save the map of the same EPLB state")
    if int(window.min()) < 0:
        raise ValueError(f"{what}: '{WINDOW}' holds a negative load; save vLLM's window as it is")
    p2l = check_map(p2l, None, f"{what}: '{P2L}'")
    E, source = resolve_experts(n_experts, int(p2l.max()) + 1, int(p2l.max()), what)
    _check_inverse(obj, p2l, E, what)
    W, L, P = window.shape
    (limits or TraceLimits.from_env()).check_summary(W, L, E)
    step = _window_step(obj, W, what)
    physical = window.astype(np.int64) if step is None else np.roll(window, -step, axis=0).astype(np.int64)
    written = physical.reshape(W, -1).any(axis=1)  # a row vLLM has not written yet is all zeros: not a step
    if not written.any():
        raise ValueError(f"{what}: '{WINDOW}' holds no load yet (every row is zero); save it after some forwards")
    meta = {"window_size": W, "window_step": step, "window_order": "storage" if step is None else "oldest first",
            "ranks": 1, "empty_rows_dropped": int(W - written.sum())}
    physical = physical[written]
    return RoutingLog(source=EPLB, layers=[str(i) for i in range(L)],
                      steps=np.flatnonzero(written).astype(np.int64),  # window rows (oldest first when ordered)
                      counts=map_to_logical(physical, p2l, E), n_experts_source=source, meta=meta,
                      physical_to_logical=p2l, rank_counts=physical[:, None])           # (S, 1, L, P)

