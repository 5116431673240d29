"""SGLang's expert-distribution dumps (`--expert-distribution-recorder-mode`) read into a `RoutingLog`.

Followed: sgl-project/sglang `python/sglang/srt/eplb/expert_distribution.py` at commit dd780ab9de48 (the writer:
`_StatAccumulator.dump`, `_DetailAccumulator.dump`, `_SelectExpertsSinglePassGatherer`, `_DetailSinglePassGatherer`,
`_CircularBuffer`) and `python/sglang/srt/eplb/eplb_simulator/reader.py` at 5d2c83e6bb27 (SGLang's own reader,
`read_mode_per_pass`). Every file is a `torch.save` dict; load it with `moe.traces.safeload.load_pt`.

- stat / stat_approx: `expert_distribution_recorder_{time}.pt`, written by rank 0 only:
  {rank: 0, logical_count: int32 [buffer_rows, layers, logical_experts], average_utilization_rate_over_window}.
  The counts are already summed over every rank (all_reduce before the dump), so the file is read alone.
  The buffer is circular (default 1000 rows) and dumped as stored: row i is slot i. Until it wraps, slot i is the
  i-th pass and the slots not yet written are all zeros; after it wraps, the oldest pass sits at the write position,
  which the file does not record. So step = slot index (buffer order, chronological only if the run made no more
  passes than the buffer holds), and all-zero rows (unwritten slots) are dropped and counted in
  meta["empty_rows_dropped"].
- per_pass: `expert_distribution_recorder_{time}_{rank}.pt`, one per rank: {records: [{forward_pass_id, rank,
  gatherer_key: "primary", global_physical_count: int32 [layers, physical_experts]}], last_physical_to_logical_map:
  int64 [layers, physical_experts]}. "global" names the index space (every physical expert), not a sum over ranks:
  each rank counts its own tokens (select_experts gatherer) or what its local experts received (DeepEP low-latency
  gatherer, zeros outside its slice). As SGLang's reader does, the ranks are summed per forward_pass_id (step =
  forward_pass_id) and mapped to logical experts through the map. In pure tensor parallelism (no DP attention)
  every rank routes the same tokens, so that sum counts each token once per rank, as SGLang's own numbers do.
- per_token: the same files, records also holding input_ids, positions, extend_seq_lens, forward_mode,
  misc_objects and topk_ids_of_layer: int32 [layers, tokens, 8], -1 padded, physical expert ids (select_experts
  records them after topk_ids_logical_to_physical). Token rows with no expert (a dense layer, or padded tokens that
  _mask_topk_ids_padded_region set to -1) are dropped and counted in meta["padding_rows_dropped"]; the ids keep the
  slots some token used (8 → top_k). With shared-expert fusion SGLang appends ids past the routed experts (its own
  TODO says the data is then wrong); the reader refuses ids beyond the map.

The number of logical experts E is the map's largest id + 1: SGLang builds `logical_to_all_physical_map` from the
map, so every logical expert has a slot and `check_map` refuses a map that leaves one out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from moe.memory import BUDGET_ENV, describe_over
from moe.traces.log import (
    RoutingLog,
    TokenRouting,
    check_distinct,
    check_ids,
    check_map,
    counts_from_ids,
    default_layers,
    map_to_logical,
    resolve_experts,
)
from moe.traces.records import TraceLimits, as_int

STAT, PER_PASS, PER_TOKEN = "sglang-stat", "sglang-per-pass", "sglang-per-token"
MODE = {STAT: "stat", PER_PASS: "per_pass", PER_TOKEN: "per_token"}
MAP_KEY = "last_physical_to_logical_map"
RECORD_KEYS = ("forward_pass_id", "global_physical_count", "topk_ids_of_layer")


def kind(obj) -> str | None:
    """Which SGLang dump a loaded `.pt` object is: STAT, PER_PASS, PER_TOKEN, or None when it is not one."""
    if not isinstance(obj, dict):
        return None
    if "logical_count" in obj:
        return STAT
    records = obj.get("records")
    if not isinstance(records, list):
        return None
    first = records[0] if records else None
    if isinstance(first, dict) and "topk_ids_of_layer" in first:
        return PER_TOKEN
    if MAP_KEY in obj or (isinstance(first, dict) and any(key in first for key in RECORD_KEYS)):
        return PER_PASS
    return None


def from_dumps(dumps: list[tuple[str, object]], n_experts: int | None = None, limits: TraceLimits | None = None
               ) -> RoutingLog:
    """One stat dump, or the rank files of one per_pass / per_token run: (path, load_pt(path)) pairs; the arrays
    built stay within a quarter of `limits`' budget (default: the environment's)."""
    if not dumps:
        raise ValueError("no SGLang dump was given; give expert_distribution_recorder_*.pt files")
    kinds = []
    for path, obj in dumps:
        found = kind(obj)
        if found is None:
            raise ValueError(f"{_name(path)!r} is not an SGLang expert-distribution dump (a dict with logical_count, "
                             f"or with records and {MAP_KEY}); give the file /dump_expert_distribution_record wrote")
        kinds.append(found)
    if STAT in kinds:
        if len(dumps) > 1:
            raise ValueError("a stat dump holds rank 0's counts already summed over every rank; read it alone, not "
                             "with other files")
        return _read_stat(*dumps[0], n_experts, limits or TraceLimits.from_env())
    if len(set(kinds)) > 1:
        raise ValueError("per_pass and per_token dumps are mixed; give the rank files of one recording")
    run, limits = _gather(dumps, n_experts), limits or TraceLimits.from_env()
    limits.check_summary(len(run.steps), run.p2l.shape[0], run.n_experts)  # the statistics kept per (step, layer)
    return _read_per_pass(run, limits.budget) if kinds[0] == PER_PASS else _read_per_token(run, limits.budget)


def _name(path: str) -> str:
    return os.path.basename(str(path))


def _int_tensor(value, where: str, ndim: int, what: str) -> np.ndarray:
    """A torch integer tensor of `ndim` dimensions as a NumPy array; else one line."""
    import torch
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{where}: {what} is missing or not a tensor; give the file as SGLang wrote it")
    if value.dtype == torch.bool or value.dtype.is_floating_point or value.dtype.is_complex or value.ndim != ndim:
        raise ValueError(f"{where}: {what} must be an integer tensor of {ndim} dimensions, got "
                         f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}")
    return value.detach().cpu().numpy()


def _non_negative(arr: np.ndarray, where: str, what: str) -> None:
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"{where}: {what} holds a negative count ({int(arr.min())}); give the file as SGLang wrote it")


def _check_size(entries: int, what: str, budget: int) -> None:
    """An int64 array the reader builds stays within a quarter of the memory budget."""
    if entries * 8 > budget // 4:
        need_text, _, budget_text = describe_over(entries * 8, budget // 4, budget)
        raise ValueError(f"{what} would take {need_text}, over a quarter of the memory budget of "
                         f"{budget_text}; give fewer passes or ranks, or raise {BUDGET_ENV}")


# --------------------------------------------------------------------------- stat


TOKEN_ROW_BYTES, TOKEN_ID_BYTES = 48, 40  # the per-token reader's peak: bytes per (layer, token) row and per id


def _read_stat(path: str, obj: dict, n_experts: int | None, limits: TraceLimits) -> RoutingLog:
    where = _name(path)
    rank = obj.get("rank", 0)
    if as_int(rank, where, "rank") != 0:
        raise ValueError(f"{where}: a stat dump is written by rank 0 only, this one says rank {rank}; give rank 0's "
                         f"file")
    lc = _int_tensor(obj["logical_count"], where, 3, "logical_count [buffer_steps, layers, experts]")
    _non_negative(lc, where, "logical_count")
    B, L, E = lc.shape                                                  # (B, L, E)
    E, source = resolve_experts(n_experts, E, -1, where)
    limits.check_summary(B, L, E)  # before a copy: a 1.6 KB view of 8 M rows took the server past 4.6 GB
    filled = lc.reshape(B, -1).any(axis=1)                               # (B,) False = slot never written
    if not filled.any():
        raise ValueError(f"{where}: every row of logical_count is zero (no pass was recorded); record traffic "
                         f"between /start_expert_distribution_record and the dump")
    rate = obj.get("average_utilization_rate_over_window")
    meta = {"mode": MODE[STAT], "files": [where], "ranks": [0], "world_size": 1, "counts_all_reduced": True,
            "buffer_rows": int(B), "empty_rows_dropped": int(B - filled.sum()), "step_order": "buffer slot",
            "average_utilization_rate_over_window": float(rate) if isinstance(rate, float) and np.isfinite(rate)
            else None}
    return RoutingLog(source=STAT, layers=default_layers(L), steps=np.flatnonzero(filled),
                      counts=lc[filled].astype(np.int64), n_experts_source=source, meta=meta)


# --------------------------------------------------------------------------- per_pass / per_token


@dataclass
class _Run:
    """The validated rank files of one recording."""
    p2l: np.ndarray                       # (L, P) int64, checked
    n_experts: int
    n_experts_source: str
    records: dict[tuple[int, int], tuple[dict, str]]  # (forward_pass_id, rank) -> (record, "file, record i")
    files: list[str]

    @property
    def ranks(self) -> list[int]:
        return sorted({rank for _, rank in self.records})

    @property
    def steps(self) -> np.ndarray:
        return np.array(sorted({fpid for fpid, _ in self.records}), dtype=np.int64)

    def meta(self, mode: str) -> dict:
        ranks = self.ranks
        whole = ranks == list(range(len(ranks)))  # ranks 0, 2 of a run: its W is not the files' count (a run's
                                                  # last ranks missing cannot be told from a smaller run)
        return {"mode": mode, "files": self.files, "ranks": ranks, "world_size": len(ranks) if whole else None,
                "step_order": "forward_pass_id",
                "missing_rank_passes": len(self.steps) * len(ranks) - len(self.records)}


def _gather(dumps, n_experts: int | None) -> _Run:
    p2l, first, records, file_of_rank = None, "", {}, {}
    for path, obj in dumps:
        where = _name(path)
        if MAP_KEY not in obj:
            raise ValueError(f"{where}: has no {MAP_KEY}; give the rank file as SGLang wrote it")
        arr = _int_tensor(obj[MAP_KEY], where, 2, f"{MAP_KEY} [layers, physical_experts]")
        if p2l is None:
            p2l, first = arr, where
        elif arr.shape != p2l.shape or not np.array_equal(arr, p2l):
            raise ValueError(f"{where} and {first} hold different physical → logical maps; give the rank files of one "
                             f"dump")
        rank, mine = _file_records(obj["records"], where)
        if rank in file_of_rank:
            raise ValueError(f"{where} and {file_of_rank[rank]} both hold rank {rank}; give each rank's file once")
        file_of_rank[rank] = where
        records.update(mine)
    p2l = check_map(p2l, None, f"{first}: {MAP_KEY}")
    recorded = int(p2l.max()) + 1
    E, source = resolve_experts(n_experts, recorded, recorded - 1, f"{first}'s {MAP_KEY}")
    return _Run(p2l, E, source, records, [_name(path) for path, _ in dumps])


def _file_records(records: list, where: str) -> tuple[int, dict]:
    """One file's rank and its records keyed (forward_pass_id, rank)."""
    if not records:
        raise ValueError(f"{where}: holds no records; record traffic between /start_expert_distribution_record and "
                         f"the dump")
    ranks, into = set(), {}
    for i, rec in enumerate(records):
        at = f"{where}, record {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{at}: is not a dict; give the file as SGLang wrote it")
        fpid, rank = as_int(rec.get("forward_pass_id"), at, "forward_pass_id"), as_int(rec.get("rank"), at, "rank")
        if rec.get("gatherer_key", "primary") != "primary":
            raise ValueError(f"{at}: gatherer_key is not 'primary' (two-batch-overlap sub-batches are not read); "
                             f"record with a single gatherer")
        if (fpid, rank) in into:
            raise ValueError(f"{at}: forward pass {fpid} of rank {rank} is recorded twice; give each rank's file once")
        ranks.add(rank)
        into[(fpid, rank)] = (rec, at)
    if len(ranks) > 1:
        raise ValueError(f"{where}: records of ranks {sorted(ranks)} in one file; SGLang writes one file per rank")
    return ranks.pop(), into


def _read_per_pass(run: _Run, budget: int) -> RoutingLog:
    steps, ranks = run.steps, run.ranks
    L, P = run.p2l.shape
    _check_size(len(steps) * len(ranks) * L * P, "the per-rank physical counts", budget)
    step_index = {int(s): i for i, s in enumerate(steps)}
    rank_index = {r: i for i, r in enumerate(ranks)}
    rank_counts = np.zeros((len(steps), len(ranks), L, P), dtype=np.int64)            # (S, W, L, P)
    for (fpid, rank), (rec, at) in run.records.items():
        gpc = _int_tensor(rec.get("global_physical_count"), at, 2,
                          "global_physical_count [layers, physical_experts]")
        if gpc.shape != (L, P):
            raise ValueError(f"{at}: global_physical_count is {list(gpc.shape)} but {MAP_KEY} is [{L}, {P}] "
                             f"(layers, physical experts); give the rank files of one run")
        _non_negative(gpc, at, "global_physical_count")
        rank_counts[step_index[fpid], rank_index[rank]] = gpc
    counts = map_to_logical(rank_counts.sum(axis=1), run.p2l, run.n_experts)           # (S, L, E)
    return RoutingLog(source=PER_PASS, layers=default_layers(L), steps=steps, counts=counts,
                      n_experts_source=run.n_experts_source, meta=run.meta(MODE[PER_PASS]),
                      physical_to_logical=run.p2l, rank_counts=rank_counts)


def _token_ids(run: _Run, budget: int) -> list[tuple[int, int, np.ndarray]]:
    """Every record's (forward_pass_id, rank, ids (L, T, K)), checked, once the rows they make are known to fit:
    what they take at their peak here and in _read_per_token (measured: 68 B a row at K=1, 301 at K=8), counted from
    the shapes before any is built (the ids tensor's own size says nothing of a zero-width one's T)."""
    L, P = run.p2l.shape
    out, width = [], None
    for (fpid, rank), (rec, at) in sorted(run.records.items()):
        ids = _int_tensor(rec.get("topk_ids_of_layer"), at, 3, "topk_ids_of_layer [layers, tokens, top_k]")
        if ids.shape[0] != L:
            raise ValueError(f"{at}: topk_ids_of_layer has {ids.shape[0]} layers but {MAP_KEY} has {L}; give the "
                             f"rank files of one run")
        if ids.shape[2] < 1 or (width is not None and ids.shape[2] != width):
            raise ValueError(f"{at}: topk_ids_of_layer has {ids.shape[2]} slots per token, " + (
                f"other records {width}; give the rank files of one run" if ids.shape[2] else
                "SGLang writes top_k (at least 1); give the file as SGLang wrote it"))
        width = ids.shape[2]
        out.append((fpid, rank, ids, at))
    rows = sum(L * ids.shape[1] for _, _, ids, _ in out)
    _check_size(rows * (TOKEN_ROW_BYTES + TOKEN_ID_BYTES * (width or 1)) // 8, "the per-token rows", budget)
    for _, _, ids, at in out:
        high = check_ids(ids, at, allow_padding=True)
        check_distinct(ids, at)
        if high >= P:
            raise ValueError(f"{at}: routes to physical expert {high} but {MAP_KEY} has {P} physical experts "
                             f"(0..{P - 1}); give the map written with the ids")
    return [(fpid, rank, ids) for fpid, rank, ids, _ in out]


def _token_rows(run: _Run, budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (layer, token) row of every record: (step index, rank index, layer, physical ids (N, K))."""
    L = run.p2l.shape[0]
    step_index = {int(s): i for i, s in enumerate(run.steps)}
    rank_index = {r: i for i, r in enumerate(run.ranks)}
    parts = []
    for fpid, rank, ids in _token_ids(run, budget):
        T, K = ids.shape[1], ids.shape[2]
        parts.append((np.full(L * T, step_index[fpid]), np.full(L * T, rank_index[rank]),
                      np.repeat(np.arange(L, dtype=np.int32), T), ids.reshape(L * T, K)))  # (L·T, K)
    cols = [np.concatenate([part[i] for part in parts]) for i in range(4)]
    return cols[0].astype(np.int64), cols[1].astype(np.int64), cols[2], cols[3].astype(np.int64)


def _read_per_token(run: _Run, budget: int) -> RoutingLog:
    steps, ranks = run.steps, run.ranks
    L, P = run.p2l.shape
    S, W, E = len(steps), len(ranks), run.n_experts
    _check_size(S * W * L * P, "the per-rank physical counts", budget)
    step_i, rank_i, layer, physical = _token_rows(run, budget)                        # (N,) ×3, (N, K)
    kept = (physical >= 0).any(axis=1)                                                # (N,) rows with an expert
    step_i, rank_i, layer, physical = step_i[kept], rank_i[kept], layer[kept], physical[kept]
    used = np.flatnonzero((physical >= 0).any(axis=0))
    physical = physical[:, :used[-1] + 1 if used.size else 0]                         # (N, K) K = widest row
    valid = physical >= 0                                                             # (N, K)
    logical = np.where(valid, run.p2l[layer[:, None], np.where(valid, physical, 0)], -1)  # (N, K)
    counts = counts_from_ids(step_i, layer, logical, S, L, E)                         # (S, L, E)
    rank_counts = counts_from_ids(step_i * W + rank_i, layer, physical, S * W, L, P).reshape(S, W, L, P)
    per_row = valid.sum(axis=1)                                                       # (N,)
    top_k = int(per_row[0]) if per_row.size and bool((per_row == per_row[0]).all()) else None
    meta = {**run.meta(MODE[PER_TOKEN]), "token_rows": int(kept.sum()), "padding_rows_dropped": int((~kept).sum())}
    tokens = TokenRouting(step=steps[step_i], layer=layer, ids=logical)
    return RoutingLog(source=PER_TOKEN, layers=default_layers(L), steps=steps, counts=counts,
                      n_experts_source=run.n_experts_source, top_k=top_k, meta=meta, tokens=tokens,
                      physical_to_logical=run.p2l, rank_counts=rank_counts)
