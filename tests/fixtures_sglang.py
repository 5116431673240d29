"""Fixture writers for SGLang's ExpertDistributionRecorder dumps, as sgl-project/sglang
python/sglang/srt/eplb/expert_distribution.py (commit dd780ab9de48) writes them: torch.save of the same dict keys,
dtypes (int32 counts and ids, int64 map), shapes and file names (expert_distribution_recorder_{time}.pt for stat,
expert_distribution_recorder_{time}_{rank}.pt for per_pass / per_token)."""
from __future__ import annotations

import time

import torch

TOP_K_SLOTS = 8  # _DetailSinglePassGatherer._TOP_K_NUM


def file_name(rank: int | None = None) -> str:
    """_StatAccumulator.dump (rank 0 only, no suffix) / _DetailAccumulator.dump (one file per rank)."""
    return (f"expert_distribution_recorder_{time.time()}.pt" if rank is None
            else f"expert_distribution_recorder_{time.time()}_{rank}.pt")


def placement(layers: int, n_logical: int, n_physical: int, seed: int = 0) -> torch.Tensor:
    """A physical → logical map (L, P) int64 like init_trivial's arange(P) % E, shuffled per layer (an EPLB
    placement: every logical expert has a slot, the extra slots are replicas)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n_physical) % n_logical                                       # (P,)
    return torch.stack([base[torch.randperm(n_physical, generator=g)] for _ in range(layers)])  # (L, P)


def random_topk(layers: int, tokens: int, k: int, n_physical: int, g: torch.Generator) -> torch.Tensor:
    """Physical ids (L, T, k) int32, k distinct per token (what select_experts hands the recorder)."""
    ids = torch.stack([torch.stack([torch.randperm(n_physical, generator=g)[:k] for _ in range(tokens)])
                       if tokens else torch.zeros((0, k), dtype=torch.int64) for _ in range(layers)])
    return ids.to(torch.int32)


def select_experts_count(topk: torch.Tensor, n_physical: int) -> torch.Tensor:
    """_SelectExpertsSinglePassGatherer: per layer, scatter_add of 1 for every id that is not -1 → int32 (L, P)."""
    data = torch.zeros((topk.shape[0], n_physical), dtype=torch.int)
    for layer in range(topk.shape[0]):
        flat = topk[layer].flatten()
        mask = flat != -1
        data[layer].scatter_add_(0, flat.masked_fill(~mask, 0).long(), mask.int())
    return data


def write_stat(directory, passes: list[list[torch.Tensor]], p2l: torch.Tensor, n_logical: int,
               buffer_size: int, rate: float | None = None) -> str:
    """stat mode: every rank keeps a _CircularBuffer of its per-pass global physical counts (L, P); the dump
    converts it to logical counts (scatter_add by the map), all-reduces it over the ranks (a sum) and rank 0 saves.
    `passes[j][r]` is rank r's count of pass j."""
    world = len(passes[0])
    logical = torch.zeros((buffer_size, p2l.shape[0], n_logical), dtype=torch.int32)  # all_reduce target
    for rank in range(world):
        buffer = torch.zeros((buffer_size, *p2l.shape), dtype=torch.int32)           # _CircularBuffer
        index = 0
        for counts in passes:
            buffer[index] = counts[rank]
            index = (index + 1) % buffer_size
        mine = torch.zeros((buffer_size, p2l.shape[0], n_logical), dtype=torch.int32)
        mine.scatter_add_(2, p2l.unsqueeze(0).expand(buffer_size, -1, -1).to(torch.int64), buffer)
        logical += mine
    path = directory / file_name()
    torch.save(dict(rank=0, logical_count=logical, average_utilization_rate_over_window=rate), str(path))
    return str(path)


def write_rank_file(directory, rank: int, records: list[dict], p2l: torch.Tensor) -> str:
    """_DetailAccumulator.dump: {records, last_physical_to_logical_map}, one file per rank."""
    path = directory / file_name(rank)
    torch.save(dict(records=records, last_physical_to_logical_map=p2l), str(path))
    return str(path)


def per_pass_record(forward_pass_id: int, rank: int, counts: torch.Tensor) -> dict:
    """_DetailAccumulator.append of a select_experts / DeepEP gatherer's collect(): int32 (L, P)."""
    return dict(forward_pass_id=forward_pass_id, rank=rank, gatherer_key="primary",
                global_physical_count=counts.cpu().clone())


def per_token_record(forward_pass_id: int, rank: int, topk: torch.Tensor, n_physical: int, forward_mode: int = 1
                     ) -> dict:
    """_DetailSinglePassGatherer: a (L, T·8-capacity, 8) int32 buffer reset to -1, the pass's ids written in
    [:, :T, :k], collect() keeps the first T = len(input_ids) tokens and adds their global_physical_count (L, P)
    (_convert_per_token_to_global_physical_count: a count of the ids that are not -1; an id outside 0..P-1, which
    only the refusal tests write, is left uncounted)."""
    layers, tokens, k = topk.shape
    buffer = torch.zeros((layers, max(tokens, 1) * 8, TOP_K_SLOTS), dtype=torch.int32)
    buffer[...] = -1                                                                  # reset()
    buffer[:, :tokens, :k] = topk                                                     # on_select_experts
    return dict(forward_pass_id=forward_pass_id, rank=rank, gatherer_key="primary",
                input_ids=list(range(100, 100 + tokens)), positions=list(range(tokens)),
                extend_seq_lens=[tokens] if forward_mode == 1 else None, forward_mode=forward_mode,
                topk_ids_of_layer=buffer[:, :tokens, :].clone().cpu(), misc_objects=[],
                global_physical_count=select_experts_count(
                    topk.masked_fill((topk < 0) | (topk >= n_physical), -1), n_physical))
