"""The `model-report` document (the command is moe/cli/model_report.py): per-layer routing of a local MoE
causal LM on a text, as JSON or CSV.

JSON: {"model", "tokens", "context", "windows", "token_loss_bits", "token_top1", "layers": [{"layer", "summary",
"per_expert": [...]}]}, `layer` the index of the model's decoder layer; `context` the model's context (the most
positions a forward may hold: moe.hf.windows.model_context), `windows` the forwards (moe.hf.windows),
`token_loss_bits` entry s the loss of token s+1 given tokens ≤ s, in bits; `token_top1[i][s]` the top-1 expert of
token s at the i-th entry of `layers` (the routing next to each token's loss).
CSV: one row per (layer, expert): `layer`, then the per-expert columns.
With --cf-* options (JSON only) a "counterfactual" entry adds the same text rerun with those routing settings:
{"settings", "mean_loss_bits": {"own", "counterfactual", "delta"}, "context", "windows", "token_loss_bits",
"layers": [{"layer", "summary"}]}; with
--cf-sweep a "sweep" entry adds the change at each MoE layer alone: [{"layer", "delta_loss_bits", "dropped_fraction"}]
(moe.hf.counterfactual.sweep_layers).
"""
from __future__ import annotations

import codecs
import contextlib

import pandas as pd
import torch

from moe.jsonio import dumps
from moe.metrics import nats_to_bits
from moe.roots import read_regular
from moe.stats import PER_EXPERT_COLUMNS

DEFAULT_MAX_TOKENS = 1024
# --text-file is cut before tokenising: at most this many bytes per requested token are read (a generous bound:
# BPE tokens average ~4 bytes, the bundled byte model's are 1), so --max-tokens bounds the memory, not the file.
READ_BYTES_PER_TOKEN = 64
EMPTY_TEXT_CLI = "the text is empty; give some text to route (--text or --text-file)"
EMPTY_TEXT_PAGE = "the text is empty; type a text to route"


def tokenize(tokenizer, text: str, **options) -> dict:
    """tokenizer(text): a special token's name typed in the text (e.g. `<|endoftext|>`) is read as text, not as
    the special token (which stands for no bytes), when the tokenizer can (transformers' split_special_tokens)."""
    if hasattr(tokenizer, "split_special_tokens"):
        options = {"split_special_tokens": True, **options}
    return tokenizer(text, **options)


def encode_text(tokenizer, text: str, max_tokens: int, empty: str = EMPTY_TEXT_CLI) -> tuple[torch.Tensor, int]:
    """Token ids (S,) of `text`, cut to max_tokens, and the untruncated count (ValueError on an empty text, with
    the message `empty`: the CLI names its flags, the web page says to type a text)."""
    if not text or not text.strip():
        raise ValueError(empty)
    ids = tokenize(tokenizer, text)["input_ids"]
    if not ids:
        raise ValueError("the text produced no tokens; give some text to route")
    return torch.tensor(ids[:max_tokens], dtype=torch.long), len(ids)


def layer_frames(run) -> pd.DataFrame:
    """Long table: one row per (layer, expert) with the per-expert columns."""
    frames = [t.per_expert().assign(layer=layer) for layer, t in zip(run.layers, run.traces)]
    return pd.concat(frames, ignore_index=True)[["layer", *PER_EXPERT_COLUMNS]]


def report_dict(name: str, run) -> dict:
    """The JSON report's content (non-finite numbers become null when written by moe.jsonio)."""
    layers = [{"layer": layer, "summary": trace.summary(), "per_expert": trace.per_expert().to_dict("records")}
              for layer, trace in zip(run.layers, run.traces)]
    return {"model": name, "tokens": int(run.input_ids.numel()), "context": run.context, "windows": run.windows,
            "token_loss_bits": token_loss_bits(run), "token_top1": run.top1().tolist(), "layers": layers}


def token_loss_bits(run) -> list[float]:
    """run.token_loss() in bits: entry s is the loss of token s+1 given tokens ≤ s (S−1 floats)."""
    return [nats_to_bits(x) for x in run.token_loss().tolist()]


def render_report(name: str, run, fmt: str) -> str:
    if fmt == "json":
        return dumps(report_dict(name, run), indent=1)
    return layer_frames(run).to_csv(index=False)


def counterfactual_dict(run, cf_run, cf) -> dict:
    """Own vs counterfactual mean next-token loss (bits per token) and the counterfactual's layer summaries."""
    own, new = run.mean_loss_bits(), cf_run.mean_loss_bits()
    unset = ("layers",) if cf.bias_expert is not None else ("layers", "bias")  # a bias without its expert: nothing
    settings = {k: v for k, v in cf.__dict__.items() if v is not None and k not in unset}
    return {"settings": {**settings, "layers": list(cf.layers) if cf.layers else "all"},
            "mean_loss_bits": {"own": own, "counterfactual": new, "delta": new - own},
            "context": cf_run.context, "windows": cf_run.windows, "token_loss_bits": token_loss_bits(cf_run),
            "layers": [{"layer": layer, "summary": t.summary()} for layer, t in zip(cf_run.layers, cf_run.traces)]}


def read_text_file(path: str, limit: int) -> tuple[str, bool]:
    """(the first `limit` bytes of a regular file as UTF-8 text, whether the file had more); ValueError otherwise.

    Opened non-blocking and checked on the open descriptor, so a FIFO or a device is refused, never read."""
    data = read_regular(path, limit, "--text-file", "give a text file")
    cut = len(data) > limit
    # an incremental decoder drops a character cut in half at the end instead of writing U+FFFD for it
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data[:limit], final=not cut), cut


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """transformers' progress bars (e.g. "Loading weights") on or off inside the block, restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was != enabled:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        if was != enabled:
            (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
