"""Megatron-LM routing traces: every rank's `router_trace_rank{R}.jsonl` of one run read into one RoutingLog.

Producer: NVIDIA/Megatron-LM megatron/core/transformer/moe/router_trace.py (RouterTracer, read at commit
059f0f5c78cddcfa10e34842607d68b745631aeb, 2026). What it writes, and what that means here:
- Every rank writes its own file (`rank` = torch.distributed.get_rank(), the global rank), one line per router
  call: {"step", "stage", "block", "layer", "rank", "num_tokens", "topk", "top_indices"} (+ "mtp_idx" for MTP
  layers, + logit_* / hs_* when the sidecars were captured). Lines of one (step, layer) are micro-batches
  (training mode: the step advances once per iteration): they add up. A forward hook also fires when activation
  recomputation re-runs a router, and the file cannot show it: such lines are added like micro-batches.
- Each rank records the tokens its own router saw. Data-, context- and expert-parallel ranks route different
  tokens, and so do tensor-parallel ones in training (Megatron requires sequence parallelism with MoE and TP > 1,
  so each TP rank routes its own slice of the sequence): counts of all ranks are ADDED. The file records no
  parallel layout, so ranks that saw the same tokens (TP without sequence parallelism, as in some inference
  setups) cannot be told apart and are added too: `meta["identical_ranks"]` lists ranks whose counts are equal at
  every (step, layer), the telltale of such duplicates.
- `layer` is the index in the module name `decoder.layers.{i}`, i.e. within the rank's pipeline stage: with
  pipeline parallelism different stages (and the virtual-pipeline chunks of one rank) reuse the same numbers and
  the file does not say which stage wrote it.
  Layers keep Megatron's numbers (readers.layer_label: "3", "mtp0.1"); `meta["router_state_differs"]` lists layers
  whose router weights differ between ranks (router_state_rank{R}.pt), the telltale of different stages.
- Records with logits are counted like the others (their logit_shape gives E); the sidecar is not read here
  (moe.traces.summary.summarize reads it for the probability side).
Files are read by pyarrow in blocks (moe.traces.megatron_arrow); whatever that path cannot vouch for is re-read by
the exact line reader (readers.iter_megatron), whose one-line ValueError names the line and the fix.
"""
from __future__ import annotations

import os
import re

import numpy as np

from moe.traces.log import RoutingLog, resolve_experts
from moe.traces.megatron_arrow import FileCounts, NotFast, count_file
from moe.traces.megatron_state import read_router_states
from moe.traces.readers import iter_megatron
from moe.traces.records import Progress, TraceLimits, check_experts, open_regular

SOURCE = "megatron"
RANK_FILE = re.compile(r"router_trace_rank(\d+)\.jsonl$")
RANK_NOTE = ("counts of all rank files are added: each rank records the tokens its own router saw (data-, "
             "context-, expert- and, with sequence parallelism, tensor-parallel ranks see different tokens); the "
             "file records no parallel layout, so ranks that saw the same tokens are added too (see identical_ranks)")
RANK_COUNTS_NOTE = "rank_counts holds each rank file's LOGICAL expert counts (P = E): Megatron records logical ids"


def read_megatron(paths: list[str], n_experts: int | None, progress: Progress | None = None,
                  limits: TraceLimits | None = None) -> RoutingLog:
    """The routing log of one run from its rank files (sorted by rank); counts added over ranks and micro-batches.
    E is logit_shape's when recorded, else `n_experts`; records with logits are counted like the others (the
    sidecar is not read). Every malformed input is one ValueError line (see the module docstring for meta)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ValueError("no Megatron-LM trace file was given; give the run's router_trace_rank*.jsonl files")
    if n_experts is not None:
        n_experts = check_experts(n_experts, "--n-experts")
    limits = limits or TraceLimits.from_env()
    ranks = _ranks(paths)
    files, fast = [], []
    for part, path in _progress_parts(paths, progress):  # the counts of all files: a quarter of the budget
        counts, was_fast = _read_file(path, limits, part, limits.budget // 4 - sum(f.used for f in files))
        files.append(counts)
        fast.append(was_fast)
    if not any(f.records for f in files):
        raise ValueError(f"{_named(paths)} no routing records; give the router_trace_rank*.jsonl files of "
                         f"a run that traced at least one step")
    log = _assemble(files, ranks, paths, n_experts, limits)
    log.meta.update(fast_path=fast, **read_router_states(paths, ranks, log.n_experts, log.top_k, limits, log.layers))
    if progress is not None:
        progress(1.0)
    return log


def _read_file(path: str, limits: TraceLimits, progress: Progress | None, cap: int) -> tuple[FileCounts, bool]:
    """Fast (pyarrow) when it can vouch for the file; else the exact line reader, which words any error."""
    try:
        return count_file(path, limits, progress, cap), True
    except NotFast:
        return _count_exact(path, limits, progress, cap), False


def _count_exact(path: str, limits: TraceLimits, progress: Progress | None = None,
                 cap: int | None = None) -> FileCounts:
    """readers.iter_megatron, record by record: today's checks and messages, line numbers included."""
    out = FileCounts(cap)
    for rec in iter_megatron(path, progress, limits):
        idx = rec.top_k_index                                            # (T, K) int64
        out.add(rec.step, rec.layer, np.bincount(idx.ravel()))           # (max id + 1,)
        out.top_k.add(int(idx.shape[1]))
        out.records += 1
        if rec.n_experts is not None:
            out.recorded.add(rec.n_experts)
            out.with_logits += 1
    return out


def _ranks(paths: list[str]) -> list[int]:
    """Each file's rank: the number in its name router_trace_rank{R}.jsonl, else its place in the list."""
    ranks = []
    for i, path in enumerate(paths):
        match = RANK_FILE.search(os.path.basename(path))
        ranks.append(int(match.group(1)) if match else i)
    if len(set(ranks)) != len(ranks):
        twice = next(r for r in ranks if ranks.count(r) > 1)
        raise ValueError(f"rank {twice} is given twice; give each rank's router_trace_rank{{R}}.jsonl once")
    return ranks


def _progress_parts(paths: list[str], progress: Progress | None):
    """(per-file progress, path) pairs whose fractions add up to the bytes of all files."""
    sizes = []
    for path in paths:
        with open_regular(path) as f:  # a missing or non-regular file is refused before any is read
            sizes.append(max(os.fstat(f.fileno()).st_size, 1))
    total, done, shown = sum(sizes), 0, [0.0]

    def report(fraction: float) -> None:  # never backwards (a file re-read by the exact reader starts over)
        if fraction > shown[0]:
            shown[0] = fraction
            progress(fraction)

    for path, size in zip(paths, sizes):
        part = None if progress is None else (lambda frac, d=done, s=size: report((d + frac * s) / total))
        yield part, path
        done += size


def _assemble(files: list[FileCounts], ranks: list[int], paths: list[str], n_experts: int | None,
              limits: TraceLimits) -> RoutingLog:
    """The (S, W, L, E) per-rank counts of every (step, layer) any rank recorded, and their sum over ranks."""
    top_k = set().union(*(f.top_k for f in files))
    if len(top_k) > 1:
        raise ValueError(f"the records name topk {sorted(top_k)}; give the trace of one model (one top-k)")
    recorded = set().union(*(f.recorded for f in files))
    if len(recorded) > 1:
        raise ValueError(f"the records' logit_shape name {sorted(recorded)} experts; give the trace of one model")
    max_id = max(f.max_id for f in files)
    E, source = resolve_experts(n_experts, recorded.pop() if recorded else None, max_id, "the Megatron-LM trace")
    cells = set().union(*(f.cells for f in files))
    steps = sorted({s for s, _ in cells})
    layers = sorted({name for _, name in cells}, key=_layer_order)
    limits.check_summary(len(steps) * (len(files) + 1), len(layers), E)  # per-rank counts and their sum
    _check_complete(cells, steps, layers)
    step_at = {s: i for i, s in enumerate(steps)}
    layer_at = {name: i for i, name in enumerate(layers)}
    rank_counts = np.zeros((len(steps), len(files), len(layers), E), np.int64)  # (S, W, L, E)
    for w, f in enumerate(files):
        for (s, name), row in f.cells.items():
            rank_counts[step_at[s], w, layer_at[name], :len(row)] = row
    meta = {"files": [os.path.basename(p) for p in paths], "ranks": ranks, "world_size": len(files),
            "records": sum(f.records for f in files), "records_with_logits": sum(f.with_logits for f in files),
            "empty_ranks": [r for r, f in zip(ranks, files) if not f.records], "rank_combine": RANK_NOTE,
            "rank_counts": RANK_COUNTS_NOTE, "identical_ranks": _identical_ranks(rank_counts, ranks)}
    return RoutingLog(source=SOURCE, layers=layers, steps=np.array(steps, np.int64), counts=rank_counts.sum(1),
                      n_experts_source=source, top_k=top_k.pop() if top_k else None, meta=meta,
                      rank_counts=rank_counts)


def _layer_order(label: str) -> tuple[int, int]:
    """Decoder layers by number, then MTP heads by (head, layer): the labels of readers.layer_label."""
    if label.startswith("mtp"):
        head, layer = label[3:].split(".")
        return int(head), int(layer)
    return -1, int(label)


def _check_complete(cells: set, steps: list[int], layers: list[str]) -> None:
    """Every step has a record of every layer in some rank's file (a router fires at every step)."""
    if len(cells) == len(steps) * len(layers):
        return
    seen = {}
    for s, name in cells:
        seen.setdefault(s, set()).add(name)
    step = next(s for s in steps if len(seen[s]) < len(layers))
    missing = next(name for name in layers if name not in seen[step])
    raise ValueError(f"step {step} has no record of layer {missing} in any rank file, though other steps have one; "
                     f"the trace is cut or mixed: give every rank's file of one run as written")


def _identical_ranks(rank_counts: np.ndarray, ranks: list[int]) -> list[list[int]]:
    """Groups of ranks with tokens whose counts are equal at every (step, layer, expert): likely duplicates."""
    groups: dict[bytes, list[int]] = {}
    for w, rank in enumerate(ranks):
        counts = rank_counts[:, w]                                       # (S, L, E)
        if counts.any():
            groups.setdefault(counts.tobytes(), []).append(rank)
    return [g for g in groups.values() if len(g) > 1]


def _named(paths: list[str]) -> str:
    return f"{paths[0]!r} holds" if len(paths) == 1 else f"the {len(paths)} files from {paths[0]!r} hold"
