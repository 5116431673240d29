"""Never run a model past its context: sliding windows over a long text, and merging their traces.

A text longer than the model's context is read in windows of `context` tokens with stride context // 2
(the last window ends at the text's end). Every token is scored exactly once, in the first window that
contains it: the window where it has the most left context (the standard sliding-window perplexity
evaluation). Its routing statistics and its next-token logits come from that window.

Windows of one text all hold `context` tokens, so when no routing decision depends on the other tokens of a
forward (dropless, no noise: `batchable`) they run as one batch (B windows, context) in forwards of at most
BATCH_TOKENS tokens: `BatchRows` puts each window's scored rows first, in text order, so the engine counts them
as one contiguous slice, and puts the rows back after the layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch

from moe.hf.lm_config import read_training_report
from moe.trace import Trace


@dataclass(frozen=True)
class Window:
    """One forward over tokens [start, end) of the text; tokens [score_from, end) are scored in it."""
    start: int
    end: int
    score_from: int

    def scored_rows(self) -> slice:
        """The scored tokens as rows of this window's forward."""
        return slice(self.score_from - self.start, self.end - self.start)


def window_stride(context: int) -> int:
    """Positions from one window's start to the next: half the context, at least 1."""
    return max(context // 2, 1)


def plan_windows(n_tokens: int, context: int) -> list[Window]:
    """The windows that read n_tokens with a model of `context` positions (one window [0, n) when it fits)."""
    if n_tokens < 1:
        raise ValueError(f"a text of {n_tokens} tokens has nothing to read; give at least one token")
    if context < 1:
        raise ValueError(f"a context of {context} positions cannot hold a token; give a context of at least 1")
    if n_tokens <= context:
        return [Window(0, n_tokens, 0)]
    stride = window_stride(context)
    windows, start, scored_to = [], 0, 0
    while scored_to < n_tokens:
        start = min(start, n_tokens - context)  # the last window ends at the text's end
        windows.append(Window(start, start + context, scored_to))
        scored_to = start + context
        start += stride
    return windows


BATCH_TOKENS = 4096  # windows run together in one forward of at most this many tokens (one window when longer)


@dataclass(frozen=True)
class BatchRows:
    """The rows of a batch of windows (B, context) flattened, reordered: `order` lists the scored rows first (text
    order), then the context rows; `back` restores the batch order; `scored` counts the scored rows."""
    order: torch.Tensor  # (B·context,) int64
    back: torch.Tensor   # (B·context,) int64, the inverse permutation
    scored: int


def batch_rows(windows: list[Window]) -> BatchRows:
    """The BatchRows of windows of equal length run as one batch, in their order."""
    length = windows[0].end - windows[0].start
    if any(w.end - w.start != length for w in windows):
        raise ValueError("windows run as one batch must hold the same number of tokens")
    rows = torch.arange(len(windows) * length).view(len(windows), length)             # (B, context)
    scored = torch.cat([rows[b, w.scored_rows()] for b, w in enumerate(windows)])
    keep = torch.ones(rows.numel(), dtype=torch.bool)
    keep[scored] = False
    order = torch.cat([scored, rows.view(-1)[keep]])
    return BatchRows(order, torch.argsort(order), len(scored))


def batches(windows: list[Window], tokens: int = BATCH_TOKENS) -> list[list[Window]]:
    """Consecutive windows in groups of at most max(1, tokens // window length)."""
    per = max(1, tokens // (windows[0].end - windows[0].start))
    return [windows[i:i + per] for i in range(0, len(windows), per)]


def model_context(hf_config, model_dir: str | None) -> int:
    """The positions the model may be run on: config.max_position_embeddings, or the sequence length it was
    trained on (training.json's config.seq_len in its directory) when that is smaller."""
    context = int(hf_config.max_position_embeddings)
    trained = _trained_seq_len(model_dir) if model_dir else None
    return context if trained is None else min(context, trained)



def _trained_seq_len(model_dir: str) -> int | None:
    """training.json's config.seq_len when the directory has a usable report with a positive integer, else None."""
    saved, _ = read_training_report(model_dir)
    config = saved.get("config") if saved else None
    seq_len = config.get("seq_len") if isinstance(config, dict) else None
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        return None
    return seq_len


# Trace fields with one row per token: the windows' rows are concatenated in text order.
TOKEN_FIELDS = ("router_logits", "probs", "routed", "served", "gates", "contributions", "top_k_index",
                "top_k_weights")


def merge_traces(traces: list[Trace]) -> Trace:
    """One Trace of a layer from its windows' traces (each already restricted to its scored rows), in text order:
    per-token tensors concatenated, co-activation and statistics summed (ForwardSums.__add__)."""
    if len(traces) == 1:
        return traces[0]
    first = traces[0]
    rows = {name: None if getattr(first, name) is None else torch.cat([getattr(t, name) for t in traces])
            for name in TOKEN_FIELDS}
    return Trace(config=first.config, **rows, coactivation=torch.stack([t.coactivation for t in traces]).sum(dim=0),
                 capacity=first.capacity, device=first.device,
                 sums=reduce(lambda a, b: a + b, (t.sums for t in traces)))
