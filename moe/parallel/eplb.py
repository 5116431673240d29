"""DeepSeek's expert-parallel load balancer (EPLB), reimplemented from its published description for many rows
(windows, layers) at once with the compiled greedy steps (moe.parallel.greedy): the reference our planner is compared
with.

The rule (deepseek-ai/EPLB, eplb.py, commit 5791971, `rebalance_experts`): with G expert groups (E/G consecutive
experts each), `num_nodes` nodes and `num_gpus` GPUs, P = E + R physical slots, P a multiple of num_gpus:
1. hierarchical when G is a multiple of num_nodes (else the same steps with one group and one node: global):
   groups are packed onto nodes, G / num_nodes each, heaviest group first to the lightest node with room;
2. within each node its E / num_nodes experts get P / num_nodes slots: each extra slot goes to the expert with
   the most load per slot (no cap: an expert may get more slots than there are GPUs);
3. each node's slots, weighing load / slots of their expert, are packed onto its GPUs, P / num_gpus each,
   heaviest first to the lightest GPU with room (one slot per GPU: slot i on GPU i). Two slots of one
   expert may share a GPU. Slot p of the result is on GPU p // (P / num_gpus).
Ties: here the lowest index (expert, group, slot or GPU) wins, and loads are float64. That is our choice, not
DeepSeek's: its code converts the load to float32 (`weight.float()`) and orders with `torch.sort(descending=True)`,
which leaves the order of equal values to the implementation, so on tied loads (idle experts, equal counts) or loads
past 2**24 tokens its layout may differ from this one, and either may be the lighter. Our own tests hold a loop-based
version of the rule.
"""
from __future__ import annotations

import numpy as np

from moe.parallel import greedy
from moe.parallel.replay import Layout


def is_global(num_groups: int, num_nodes: int) -> bool:
    """DeepSeek's global policy (one group, one node) applies: the groups do not split evenly over the nodes, or there
    is one of each."""
    return num_groups % num_nodes != 0 or num_groups == num_nodes == 1


def check_eplb_args(n_experts: int, n_slots: int, num_groups: int, num_nodes: int, num_gpus: int) -> None:
    """ValueError naming the fix unless DeepSeek's EPLB accepts these sizes."""
    check_eplb_sizes(n_experts, num_groups, num_nodes, num_gpus)
    if n_slots % num_gpus or n_slots < n_experts:
        raise ValueError(f"DeepSeek's EPLB needs E + R ({n_slots}) to be a multiple of the {num_gpus} GPUs; choose R "
                         f"with (E + R) % W == 0")


def check_eplb_sizes(n_experts: int, num_groups: int, num_nodes: int, num_gpus: int) -> None:
    """check_eplb_args' rules that hold whatever R: GPUs, nodes and expert groups (`plan` refuses them at once)."""
    if num_gpus < 1 or num_nodes < 1 or num_groups < 1:
        raise ValueError("DeepSeek's EPLB needs at least one GPU, node and expert group")
    if num_gpus % num_nodes:
        raise ValueError(f"{num_gpus} GPUs do not split over {num_nodes} nodes; give a world size that is a multiple "
                         f"of --nodes")
    if not is_global(num_groups, num_nodes) and n_experts % num_groups:  # only the hierarchical policy splits E
        raise ValueError(f"{n_experts} experts do not split into {num_groups} groups; give a group count that "
                         f"divides E")


def balanced_packing(weight: np.ndarray, n_packs: int, order=None) -> tuple[np.ndarray, np.ndarray]:
    """(X, n) items onto n_packs packs of n / n_packs items each, per row: heaviest first (ties: the lower item) to
    the lightest pack with room (ties: the lower pack). Returns the pack of each item and its position in the pack,
    both (X, n). `order`: the items heaviest first (greedy.heaviest_first(weight)), when the caller has it."""
    X, n = weight.shape
    if n // n_packs == 1:  # one item per pack: item i to pack i
        return np.broadcast_to(np.arange(n), (X, n)).copy(), np.zeros((X, n), dtype=np.int64)
    order = greedy.heaviest_first(weight) if order is None else order
    return greedy.pack(weight, n_packs, n // n_packs, item=order, by_item=True)


def replicate(weight: np.ndarray, n_slots: int, order=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, m) loads onto n_slots >= m slots per row: slot i < m holds expert i, each later slot the expert with the
    most load per slot so far (ties: the lower expert). Returns slot -> expert (X, n_slots), slots per expert (X, m)
    and the slots heaviest first (load / slots of their expert; ties: the lower slot), the order they are packed in.
    `order`: greedy.heaviest_first(weight), when the caller has it."""
    X, m = weight.shape
    order = greedy.heaviest_first(weight) if order is None else order
    count, won = greedy.top_up(weight, n_slots - m, None, order)
    slots = np.concatenate([np.broadcast_to(np.arange(m), (X, m)), won], axis=1)
    return slots, count, greedy.slot_order(weight, count, won, order)


def rebalance(weight, n_slots: int, num_groups: int = 1, num_nodes: int = 1, num_gpus: int = 1, order=None
              ) -> np.ndarray:
    """(X, P) logical expert of every physical slot for loads (X, E); slot p on GPU p // (P / num_gpus). `order`:
    greedy.heaviest_first(weight), when the caller has it."""
    weight = np.asarray(weight, dtype=np.float64)
    X, E = weight.shape
    check_eplb_args(E, n_slots, num_groups, num_nodes, num_gpus)
    one = is_global(num_groups, num_nodes)                                          # the order of the experts stays
    if one:
        num_groups, num_nodes = 1, 1
    group_size, per_node = E // num_groups, num_groups // num_nodes
    # 1. groups to nodes; node-major order of the logical experts ("mlog")
    group_pack, group_pos = balanced_packing(weight.reshape(X, num_groups, group_size).sum(-1), num_nodes)
    mlog_of = ((group_pack * per_node + group_pos) * group_size)[:, :, None] + np.arange(group_size)  # (X, G, gs)
    log_of_mlog = (np.broadcast_to(np.arange(E), (X, E)) if one
                   else np.argsort(mlog_of.reshape(X, E), axis=1))                   # (X, E) inverse permutation
    node_weight = (weight if one else greedy.take_rows(weight, log_of_mlog)).reshape(X * num_nodes, -1)
    # 2. slots within each node
    slot_mlog, count, heaviest = replicate(node_weight, n_slots // num_nodes, order if one else None)
    slot_weight = greedy.take_rows(node_weight / count, slot_mlog)                  # (X·nodes, P/nodes)
    # 3. slots to the node's GPUs
    gpu, pos = balanced_packing(slot_weight, num_gpus // num_nodes, heaviest)
    per_gpu = n_slots // num_gpus
    placed = greedy.put_rows(np.empty_like(slot_mlog), gpu * per_gpu + pos, slot_mlog)  # (X·nodes, P/nodes)
    if one:  # the logical experts are in their own order
        return placed
    placed = (placed.reshape(X, num_nodes, -1) + (np.arange(num_nodes) * (E // num_nodes))[None, :, None])
    return greedy.take_rows(log_of_mlog, placed.reshape(X, n_slots))                # (X, P)


def eplb_layout(load, redundant_slots: int, world_size: int, num_nodes: int = 1, num_groups: int | None = None
                ) -> Layout:
    """The Layout DeepSeek's EPLB gives one load vector (E,); num_groups defaults to num_nodes."""
    load = np.asarray(load, dtype=np.float64)
    groups = num_nodes if num_groups is None else num_groups
    row = rebalance(load[None], len(load) + redundant_slots, groups, num_nodes, world_size)[0]
    per_gpu = len(row) // world_size
    return Layout(row, np.arange(len(row)) // per_gpu, world_size)
