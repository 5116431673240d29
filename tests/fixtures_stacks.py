"""Fixture writers for the routing data of other stacks, built as each producer builds it (see the module comments
of moe/traces/vllm.py and mcore.py for the files and commits followed): vLLM's routed experts and EPLB state,
Megatron-Core's EP load dumps, and plain counts tables."""
from __future__ import annotations

import csv

import numpy as np
import torch

MAX_EXPERT_REDUNDANCY = 1023  # vLLM's EplbState: logical_to_physical_map has 1023 + 1 slots per logical expert


def vllm_routed(tokens: int, layers: int, top_k: int, n_experts: int, seed: int = 0, dense=(),
                dtype=np.int16) -> np.ndarray:
    """CompletionOutput.routed_experts: (tokens, num_hidden_layers, top_k), distinct experts per token in every
    MoE layer, zeros in the dense layers the capturer never writes."""
    rng = np.random.default_rng(seed)
    out = np.zeros((tokens, layers, top_k), dtype=dtype)                     # the capturer's zeroed buffer
    for layer in range(layers):
        if layer in dense:
            continue
        hot = np.ones(n_experts)
        hot[layer % n_experts] = 5.0
        for t in range(tokens):
            out[t, layer] = rng.choice(n_experts, top_k, replace=False, p=hot / hot.sum())
    return out


def _vllm_maps(p2l: np.ndarray, n_logical: int):
    """EplbState.add_model's inverse maps of a physical → logical map (L, P)."""
    L, P = p2l.shape
    l2p = torch.full((L, n_logical, MAX_EXPERT_REDUNDANCY + 1), -1)
    replicas = torch.zeros((L, n_logical), dtype=torch.long)
    for layer in range(L):
        for i in range(P):
            e = int(p2l[layer, i])
            l2p[layer, e, replicas[layer, e]] = i
            replicas[layer, e] += 1
    return l2p, replicas


def vllm_eplb_state(window: int, layers: int, n_logical: int, n_redundant: int, passes: int, tokens: int = 40,
                    top_k: int = 2, seed: int = 0, shuffle: bool = True):
    """The EPLB tensors after `passes` calls of EplbState.step(), as a dict of vLLM's names, and every pass's
    expert_load_pass (L, P) in time order. The map is vLLM's initial one ([0..N-1] + redundant i % N), each
    layer's slots permuted when `shuffle` (a rearranged placement)."""
    rng = np.random.default_rng(seed)
    initial = list(range(n_logical)) + [i % n_logical for i in range(n_redundant)]
    p2l = np.stack([rng.permutation(initial) if shuffle else np.array(initial) for _ in range(layers)])  # (L, P)
    l2p, replicas = _vllm_maps(p2l, n_logical)
    P = len(initial)
    load_window = torch.zeros((window, layers, P), dtype=torch.int32)
    step, history = 0, []
    for _ in range(passes):
        load_pass = torch.zeros((layers, P), dtype=torch.int32)
        for layer in range(layers):
            ids = np.stack([rng.choice(n_logical, top_k, replace=False) for _ in range(tokens)]).ravel()
            for offs, e in enumerate(ids):  # the triton kernel: replica = flattened position % replica count
                load_pass[layer, l2p[layer, e, offs % int(replicas[layer, e])]] += 1
        history.append(load_pass.numpy().copy())
        load_window[step] = load_pass.clone()
        step = (step + 1) % window
    state = {"expert_load_window": load_window, "physical_to_logical_map": torch.tensor(p2l),
             "logical_to_physical_map": l2p, "logical_replica_count": replicas, "expert_load_window_step": step}
    return state, history


def mcore_dumps(folder, ep_size: int, layer_numbers, n_experts: int, max_forwards: int, tokens: int = 16,
                top_k: int = 2, seed: int = 0, forwards=None, first_rank: int = 0):
    """ExpertLoadRecorder's files of one EP group: rank g's mcore_ep_loads_rank{g}_{time}_pid{pid}.npz, its loads
    the uninitialised (torch.empty) host buffer with `forward_counts[layer]` rows written per layer. Returns the
    paths and each rank's true loads {(rank, layer_slot): (forwards, P)}."""
    rng = np.random.default_rng(seed)
    layers = sorted(layer_numbers)
    forwards = forwards or {}
    paths, truth = [], {}
    group = np.asarray(range(first_rank, first_rank + ep_size), dtype=np.int32)
    for ep_rank in range(ep_size):
        counts = [forwards.get((ep_rank, slot), max_forwards) for slot in range(len(layers))]
        host = rng.integers(-2 ** 31, 2 ** 31 - 1, (len(layers), max_forwards, n_experts), dtype=np.int64)
        host = host.astype(np.int32)  # torch.empty's leftovers
        for slot, count in enumerate(counts):
            for f in range(count):
                routing_map = np.zeros((tokens, n_experts), dtype=bool)
                for t in range(tokens):
                    routing_map[t, rng.choice(n_experts, top_k, replace=False)] = True
                host[slot, f] = routing_map.sum(axis=0, dtype=np.int32)
            truth[(ep_rank, slot)] = host[slot, :count].copy()
        global_rank = int(group[ep_rank])
        capture_id = f"20261206_130000_pid{4000 + global_rank}"  # one process per rank: the ids differ
        path = f"{folder}/mcore_ep_loads_rank{global_rank}_{capture_id}.npz"
        np.savez(path, dump_version=np.asarray("mcore_ep_load_dump_v1"), capture_id=np.asarray(capture_id),
                 loads=host[:, :max(counts), :], layer_numbers=np.asarray(layers, dtype=np.int32),
                 forward_counts=np.asarray(counts, dtype=np.int32), ep_group_ranks=group,
                 ep_rank=np.int32(ep_rank), ep_size=np.int32(ep_size), global_rank=np.int32(global_rank),
                 num_global_physical_experts=np.int32(n_experts),
                 num_local_physical_experts=np.int32(n_experts // ep_size))
        paths.append(path)
    return paths, truth


def write_counts_csv(path, rows, header=("step", "layer", "expert", "count")) -> None:
    """A plain counts CSV, one row per (step, layer, expert) that got tokens."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_counts_parquet(path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(columns), path)


def counts_rows(steps, layers, n_experts: int, seed: int = 0, keep: float = 0.6):
    """Sparse (step, layer, expert, count) rows: each cell kept with probability `keep`, in a shuffled order."""
    rng = np.random.default_rng(seed)
    rows = [(s, layer, e, int(rng.integers(1, 500))) for s in steps for layer in layers for e in range(n_experts)
            if rng.random() < keep]
    return [rows[i] for i in rng.permutation(len(rows))]
