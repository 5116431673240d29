"""Expert parallelism over torch.distributed: E experts on W ranks, tokens data-parallel, two all-to-alls.

Every rank holds a contiguous share of the tokens (rank order = global token order). One forward:
  1. router logits for the rank's own tokens; an all-gather gives every rank the (T, E) logits, and
     every rank runs the engine's `route` on them. Routing is therefore decided in global token order,
     exactly as a single-process MoELayer decides it: capacity (C from the global T, both drop
     policies), expert choice and the hash router are exact under EP. Nothing random is drawn
     (no router noise, no jitter, no random router): `check_ep_config` refuses those.
  2. each served (token, expert) gets a destination rank from the placement (replicated experts
     split their assignments in token order, see moe/parallel/placement.py); a token travels ONCE to every
     rank that serves it, whatever the number of its experts there (counts, then all_to_all_single).
  3. the receiver runs its local experts with the engine's `dispatch`, and sends back, per token,
     the partial output (D) and its contributions (E) in one all_to_all_single.
Shared experts are dense: every rank holds the shared FFN and runs it on its own tokens (no traffic).
capacity_scope="sequence": give x as (B_r, S, D) whole sequences per rank; routing uses seq_len=S.
Statistics are the engine's ForwardSums, gathered per rank on its own rows and summed (all_reduce),
the shared-expert sums included.
Shape letters as in moe/config.py, plus W ranks, T_r tokens of rank r, N tokens received, L local experts.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn

from moe.config import MoEConfig
from moe.experts import DispatchResult, Experts, dispatch
from moe.layer import MoELayer
from moe.metrics import max_over_mean
from moe.parallel.placement import Placement, chunk_sizes
from moe.router import chose_from_scores, route, router_logits
from moe.shared import shared_sums
from moe.stats import ForwardSums, StatsInputs, gather_sums

PER_RANK_COLUMNS = ["rank", "experts", "tokens_in", "tokens_out", "recv_tokens", "assignments",
                    "gather_ms", "a2a_ms", "expert_ms", "expert_wall_ms", "forward_ms"]
_NUMERIC = [c for c in PER_RANK_COLUMNS if c != "experts"]
_FIXED = ("n_experts", "top_k", "d_model", "d_expert")


def check_ep_config(cfg: MoEConfig) -> None:
    """ValueError for settings the expert-parallel forward cannot reproduce exactly (it draws no noise)."""
    if cfg.router == "random":
        raise ValueError("router='random' draws its logits from one generator over all tokens; expert "
                         "parallelism supports router='topk', 'expert_choice' or 'hash'")
    for name in ("noise_std", "jitter_eps"):
        if getattr(cfg, name) > 0:
            raise ValueError(f"{name}={getattr(cfg, name)} draws training noise over all tokens; expert "
                             f"parallelism runs inference routing: set {name}=0")


def launched_world_size() -> int:
    """The world size torchrun set (WORLD_SIZE); ValueError saying how to launch when it is absent."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("not launched by torchrun (RANK/WORLD_SIZE unset); run: torchrun --standalone "
                         "--nproc-per-node W -m moe ep-report ...")
    return int(os.environ["WORLD_SIZE"])


def init_distributed(device: str = "cpu", timeout_s: float = 60.0) -> tuple[int, int, torch.device]:
    """Join the torchrun job (env://): gloo on CPU, NCCL on CUDA (device cuda:LOCAL_RANK); collectives time out."""
    launched_world_size()
    use_cuda = device.startswith("cuda")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if use_cuda else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if use_cuda else {}))
    return dist.get_rank(), dist.get_world_size(), device


class ExpertShard(nn.Module):
    """The L experts one rank hosts: their weights sliced from a full layer (same layout as Experts)."""

    def __init__(self, layer: MoELayer, experts: tuple[int, ...]):
        super().__init__()
        self.experts = tuple(dict.fromkeys(experts))  # two slots of one expert on this rank: one copy serves both
        idx = torch.tensor(self.experts, device=layer.device)
        for name in ("w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down"):
            full = getattr(layer.experts, name)
            part = None if full is None else nn.Parameter(full.detach().index_select(0, idx).clone(),
                                                          requires_grad=False)
            self.register_parameter(name, part)

    weights = Experts.weights  # expert i's tensors, as for the full pool (i indexes the local experts)


@dataclass
class EPResult:
    y: Tensor                # (T_r, D) this rank's outputs, x's dtype
    sums: ForwardSums        # the whole job's statistics (identical on every rank)
    per_rank: pd.DataFrame   # W rows, PER_RANK_COLUMNS
    traffic: np.ndarray      # (W, W) token rows sent, rows sender, columns receiver


def destinations(served: Tensor, placement: Placement) -> Tensor:
    """(T, E) int64: the rank that runs each served assignment, -1 where not served."""
    T, E = served.shape
    dev = served.device
    holders = [placement.replicas(e) for e in range(E)]
    R = max(len(h) for h in holders)
    table = torch.tensor([h + [h[-1]] * (R - len(h)) for h in holders], device=dev)  # (E, R)
    if R == 1:
        return torch.where(served, table[:, 0], -1)
    n = served.sum(dim=0).tolist()  # E ints: the split needs chunk boundaries on the host
    # boundary i of expert e: where its chunk i starts (cumulative chunk sizes); unused slots never reached
    bounds = [np.cumsum(chunk_sizes(n[e], len(h)))[:-1].tolist() + [T + 1] * (R - len(h))
              for e, h in enumerate(holders)]  # (E, R-1)
    position = served.long().cumsum(dim=0) - 1  # (T, E) 0-based arrival order per expert
    slot = torch.searchsorted(torch.tensor(bounds, device=dev), position.t().contiguous(), right=True)  # (E, T)
    rank = table.gather(1, slot).t()  # (T, E)
    return torch.where(served, rank, -1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_gather_rows(local: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's rows in rank order (padded to the largest share for the collective)."""
    pad = max(sizes)
    buf = torch.zeros((pad,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    buf[: local.shape[0]] = local
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _exchange(send: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
    """all_to_all_single of rows: send_counts[d] rows to rank d, recv_counts[s] rows from rank s."""
    out = send.new_empty((sum(recv_counts),) + tuple(send.shape[1:]))
    dist.all_to_all_single(out, send.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts)
    return out


def _reduce_sums(sums: ForwardSums, capacity: int | None, device: torch.device) -> ForwardSums:
    """Sum every rank's ForwardSums (one float64 all_reduce); counters that are per forward stay per forward."""
    fields = [f.name for f in dataclasses.fields(sums) if f.name not in _FIXED]
    flat = [np.atleast_1d(np.asarray(getattr(sums, f), dtype=np.float64)) for f in fields]
    packed = torch.from_numpy(np.concatenate([a.ravel() for a in flat])).to(device)
    dist.all_reduce(packed)
    host, start, merged = packed.cpu().numpy(), 0, {}
    for name, a in zip(fields, flat):
        value = host[start: start + a.size].reshape(np.shape(getattr(sums, name)))
        merged[name] = value if isinstance(getattr(sums, name), np.ndarray) else float(value)
        start += a.size
    merged.update(forwards=1, capacity=float("nan") if capacity is None else float(capacity))
    return ForwardSums(**{f: getattr(sums, f) for f in _FIXED}, **merged)


def ep_forward(layer: MoELayer, shard: ExpertShard, x: Tensor, placement: Placement) -> EPResult:
    """One expert-parallel forward of this rank's tokens x (T_r, D) or whole sequences (B_r, S, D);
    a collective call on every rank."""
    cfg, dev = layer.cfg, layer.device
    rank, W = dist.get_rank(), dist.get_world_size()
    start = time.perf_counter()
    xt = x.reshape(-1, cfg.d_model).to(device=dev, dtype=cfg.torch_dtype)  # (T_r, D)
    seq_len = x.shape[1] if x.dim() == 3 else None  # S: capacity_scope="sequence" counts per sequence
    routing, logits, mine, gather_ms = _route_globally(layer, xt, seq_len)
    dest = destinations(routing.served, placement)  # (T, E)

    # --- dispatch: each token once to every rank that serves it
    goes = torch.stack([(dest[mine] == d).any(dim=1) for d in range(W)])  # (W, T_r)
    send_rows = torch.cat([g.nonzero().flatten() for g in goes])  # (Σ n_d,) grouped by destination
    send_counts = goes.sum(dim=1).tolist()  # W ints
    t0 = time.perf_counter()
    recv_counts = _exchange(torch.tensor(send_counts, device=dev), [1] * W, [1] * W).tolist()
    recv_x = _exchange(xt.index_select(0, send_rows), send_counts, recv_counts)  # (N, D)
    _sync(dev)
    a2a_ms = (time.perf_counter() - t0) * 1e3

    local, res, back, expert = _local_experts(shard, recv_x, dest, routing.gates, rank, cfg)  # back: (N, D+E)

    # --- combine: partial outputs and contributions travel back the way the tokens came
    t0 = time.perf_counter()
    back = _exchange(back, recv_counts, send_counts)  # (Σ n_d, D+E)
    _sync(dev)
    a2a_ms += (time.perf_counter() - t0) * 1e3
    combined = torch.zeros(xt.shape[0], cfg.d_model + cfg.n_experts, device=dev).index_add_(0, send_rows, back)
    y_local, contributions = combined[:, : cfg.d_model].to(cfg.torch_dtype), combined[:, cfg.d_model:]
    shared = None
    if layer.shared is not None:  # dense: this rank's own tokens, no traffic
        s = layer.shared(xt, cfg)  # (T_r, D)
        shared = shared_sums(y_local, s)  # (3,): summed over ranks with the other sums
        y_local = y_local + s  # (T_r, D) routed + shared

    served = routing.served[mine]
    E = cfg.n_experts
    sums = gather_sums(StatsInputs(
        probs=routing.probs[mine], router_logits=logits[mine], routed=routing.routed[mine], served=served,
        gates=routing.gates[mine], top_k=cfg.top_k, d_model=cfg.d_model, d_expert=cfg.d_expert,
        capacity=routing.capacity, overlap=chose_from_scores(routing, cfg), contributions=contributions,
        near_zero=_per_expert(res.near_zero, local, E), sum_sq=_per_expert(res.sum_sq, local, E),
        sum_y=_per_expert(res.sum_y, local, E), out=y_local, coactivation=served.float().t() @ served.float(),
        shared=shared))
    sums = _reduce_sums(sums, routing.capacity, dev)
    forward_ms = (time.perf_counter() - start) * 1e3
    mine_row = [rank, xt.shape[0], sum(send_counts), sum(recv_counts), expert["assignments"],
                gather_ms, a2a_ms, expert["ms"], expert["wall_ms"], forward_ms]
    table = all_gather_rows(torch.tensor([mine_row + send_counts], dtype=torch.float64, device=dev), [1] * W)
    table = table.cpu().numpy()
    sums.forward_ms = float(table[:, _NUMERIC.index("forward_ms")].max())  # as long as the slowest rank
    return EPResult(y_local.reshape(x.shape).to(x.dtype), sums, _per_rank_frame(table, placement),
                    table[:, len(_NUMERIC):].astype(np.int64))


def _route_globally(layer: MoELayer, xt: Tensor, seq_len: int | None = None):
    """All-gather the (T, E) router logits and run the engine's `route` on them (same decision on every rank)."""
    cfg, dev, W = layer.cfg, layer.device, dist.get_world_size()
    local_logits = router_logits(xt, layer.router.weight, cfg, layer.new_generator())  # (T_r, E)
    t0 = time.perf_counter()
    sizes = all_gather_rows(torch.tensor([[xt.shape[0]]], device=dev), [1] * W).flatten().tolist()  # W ints
    logits = all_gather_rows(local_logits, sizes)  # (T, E) global token order
    gather_ms = (time.perf_counter() - t0) * 1e3
    lo = sum(sizes[: dist.get_rank()])
    return route(logits, layer.router.expert_bias, cfg, seq_len), logits, slice(lo, lo + xt.shape[0]), gather_ms


def _local_experts(shard: ExpertShard, recv_x: Tensor, dest: Tensor, gates: Tensor, rank: int, cfg: MoEConfig):
    """Run the received tokens (global token order) through the local experts; the payload to send back.

    expert time: on CPU the process CPU time (work, immune to other processes sharing the cores), on CUDA
    the synchronised wall time; both are returned ("ms", "wall_ms").
    """
    dev = recv_x.device
    t0, c0 = time.perf_counter(), time.process_time()
    local = torch.tensor(shard.experts, device=dev)  # (L,)
    recv_rows = (dest == rank).any(dim=1).nonzero().flatten()  # (N,) global token index
    served_here = dest.index_select(0, recv_rows).index_select(1, local) == rank  # (N, L)
    gates_here = torch.where(served_here, gates.index_select(0, recv_rows).index_select(1, local), 0.0)
    res = _run_local(recv_x, served_here, gates_here, shard, cfg)
    contrib = torch.zeros(recv_rows.shape[0], cfg.n_experts, device=dev).index_copy_(1, local, res.contributions)
    back = torch.cat([res.out.float(), contrib], dim=1)  # (N, D+E)
    _sync(dev)
    wall_ms, cpu_ms = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
    timing = {"ms": wall_ms if dev.type == "cuda" else cpu_ms, "wall_ms": wall_ms,
              "assignments": int(served_here.sum())}
    return local, res, back, timing


def _run_local(x: Tensor, served: Tensor, gates: Tensor, shard: ExpertShard, cfg: MoEConfig):
    """The engine's dispatch over the local experts; a rank that received nothing returns zeros."""
    if x.shape[0] > 0:
        return dispatch(x, served, gates, shard, cfg, True)
    L, dev = served.shape[1], x.device
    return DispatchResult(torch.zeros_like(x), torch.zeros(0, L, device=dev),
                          torch.zeros(L, dtype=torch.int64, device=dev), torch.zeros(L, device=dev),
                          torch.zeros(L, cfg.d_model, device=dev))


def _per_expert(values: Tensor, local: Tensor, E: int) -> Tensor:
    """Scatter L local-expert values into E slots (zeros elsewhere), so ranks' sums add up."""
    out = torch.zeros((E,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)  # (E, ...)
    return out.index_add_(0, local, values)


def _per_rank_frame(table: np.ndarray, placement: Placement) -> pd.DataFrame:
    frame = pd.DataFrame(table[:, : len(_NUMERIC)], columns=_NUMERIC)
    for c in ("rank", "tokens_in", "tokens_out", "recv_tokens", "assignments"):
        frame[c] = frame[c].astype(np.int64)
    frame.insert(1, "experts", [" ".join(map(str, r)) for r in placement.ranks])
    return frame[PER_RANK_COLUMNS]


def straggler_factor(per_rank: pd.DataFrame, column: str = "expert_ms") -> float:
    """max over ranks / mean over ranks of `column` (1.0 = perfectly even; expert time by default)."""
    return max_over_mean(per_rank[column].to_numpy(dtype=np.float64))


def straggler_spread(per_ranks: list[pd.DataFrame], column: str = "expert_ms") -> dict:
    """The straggler factor of each repeated forward and their spread: the reported factor is the median;
    min, quartiles (q1, q3) and max show how much one measurement can be trusted."""
    factors = [straggler_factor(p, column) for p in per_ranks]
    finite = np.array([f for f in factors if np.isfinite(f)])
    q = np.percentile(finite, [0, 25, 50, 75, 100]) if finite.size else [float("nan")] * 5
    return {"repeats": len(factors), "median": float(q[2]), "min": float(q[0]), "q1": float(q[1]),
            "q3": float(q[3]), "max": float(q[4]), "per_repeat": factors}


def split_rows(T: int, W: int, rank: int) -> slice:
    """Rank r's contiguous share of T tokens: [r·T/W, (r+1)·T/W)."""
    return slice(rank * T // W, (rank + 1) * T // W)
