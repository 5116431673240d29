"""`python -m moe model-report`: per-layer routing of a local MoE causal LM on a text, as JSON or CSV.

JSON: {"model", "tokens", "layers": [{"layer", "summary", "per_expert": [...]}]}, `layer` the index of the
model's decoder layer. CSV: one row per (layer, expert): `layer`, then the per-expert columns.
With --cf-* options (JSON only) a "counterfactual" entry adds the same text rerun with those routing settings:
{"settings", "mean_loss_bits": {"own", "counterfactual", "delta"}, "layers": [{"layer", "summary"}]}.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import re
import sys

import pandas as pd
import torch

from moe.config import DROP_POLICIES
from moe.jsonio import dumps
from moe.metrics import nats_to_bits
from moe.roots import read_regular
from moe.stats import PER_EXPERT_COLUMNS

DEFAULT_MAX_TOKENS = 1024
# --text-file is cut before tokenising: at most this many bytes per requested token are read (a generous bound:
# BPE tokens average ~4 bytes, the bundled byte model's are 1), so --max-tokens bounds the memory, not the file.
READ_BYTES_PER_TOKEN = 64
_SURROGATE = re.compile("[\ud800-\udfff]")  # no UTF-8 spelling: bytes argv could not decode, or a lone half


def encode_text(tokenizer, text: str, max_tokens: int) -> tuple[torch.Tensor, int]:
    """Token ids (S,) of `text`, cut to max_tokens, and the untruncated count (ValueError on an empty text)."""
    if not text or not text.strip():
        raise ValueError("the text is empty; give some text to route (--text or --text-file)")
    ids = tokenizer(text)["input_ids"]
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
    return {"model": name, "tokens": int(run.input_ids.numel()), "layers": layers}


def render_report(name: str, run, fmt: str) -> str:
    if fmt == "json":
        return dumps(report_dict(name, run), indent=1)
    return layer_frames(run).to_csv(index=False)


def add_report_command(commands) -> None:
    from moe.cli.main import _positive_int

    p = commands.add_parser("model-report", help="per-layer routing of a local MoE language model on a text")
    p.add_argument("--model", default=None, help="local model directory (default: $MOE_SCOPE_MODEL or the "
                                                  "bundled model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", default=None)
    source.add_argument("--text-file", default=None)
    p.add_argument("--max-tokens", type=_positive_int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--format", choices=("json", "csv"), default="json")
    cf = p.add_argument_group("counterfactual routing (JSON only; unset = the model's own)")
    cf.add_argument("--cf-layers", default=None, help="comma-separated decoder-layer indices (default: all MoE layers)")
    cf.add_argument("--cf-top-k", type=_positive_int, default=None)
    cf.add_argument("--cf-capacity", type=float, default=None, help="capacity factor (default: dropless)")
    cf.add_argument("--cf-drop", choices=DROP_POLICIES, default=None)
    cf.add_argument("--cf-temperature", type=float, default=None)
    p.set_defaults(run=_model_report)


def counterfactual_from_args(args: argparse.Namespace):
    """The Counterfactual the --cf-* options describe, or None when none is given."""
    from moe.hf.counterfactual import Counterfactual

    layers = None
    if args.cf_layers is not None:
        try:
            layers = tuple(int(x) for x in args.cf_layers.split(","))
        except ValueError:
            raise ValueError(f"--cf-layers {args.cf_layers!r} must be comma-separated layer indices, e.g. 0,2") from None
    cf = Counterfactual(layers=layers, top_k=args.cf_top_k, capacity_factor=args.cf_capacity,
                        drop_policy=args.cf_drop, temperature=args.cf_temperature)
    if not cf.changed() and layers is None:
        return None
    if args.format != "json":
        raise ValueError("--cf-* options need --format json (the CSV is one routing's per-expert table)")
    return cf


def counterfactual_dict(run, cf_run, cf) -> dict:
    """Own vs counterfactual mean next-token loss (bits per token) and the counterfactual's layer summaries."""
    own, new = (nats_to_bits(float(r.token_loss().mean())) for r in (run, cf_run))
    settings = {k: v for k, v in cf.__dict__.items() if v is not None and k not in ("bias_expert", "bias")}
    return {"settings": {**settings, "layers": list(cf.layers) if cf.layers else "all"},
            "mean_loss_bits": {"own": own, "counterfactual": new, "delta": new - own},
            "layers": [{"layer": layer, "summary": t.summary()} for layer, t in zip(cf_run.layers, cf_run.traces)]}


def read_text_file(path: str, limit: int) -> tuple[str, bool]:
    """(the first `limit` bytes of a regular file as UTF-8 text, whether the file had more); ValueError otherwise.

    Opened non-blocking and checked on the open descriptor, so a FIFO or a device is refused, never read."""
    data = read_regular(path, limit, "--text-file", "give a text file")
    cut = len(data) > limit
    # an incremental decoder drops a character cut in half at the end instead of writing U+FFFD for it
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data[:limit], final=not cut), cut


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        bad = len(_SURROGATE.findall(args.text))
        if bad:  # argv bytes that are not UTF-8 arrive as surrogate escapes
            raise ValueError(f"--text is not valid UTF-8 ({bad} undecodable byte{'s' * (bad > 1)}); pass UTF-8 "
                             "text, or put the text in a file and use --text-file")
        return args.text
    limit = args.max_tokens * READ_BYTES_PER_TOKEN
    text, cut = read_text_file(args.text_file, limit)
    if cut:
        print(f"python -m moe: note: --text-file is longer than {limit} bytes; read the first {limit} "
              f"(--max-tokens {args.max_tokens} × {READ_BYTES_PER_TOKEN} bytes per token)", file=sys.stderr)
    return text


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


def _model_report(args: argparse.Namespace) -> str:
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    text = _read_text(args)
    cf = counterfactual_from_args(args)
    if not text.strip():
        raise ValueError("the text is empty; give some text to route (--text or --text-file)")
    with progress_bars(sys.stderr.isatty()):  # a bar is for a person watching, not for a log or a pipe
        loaded = load_model(args.model, tokens=args.max_tokens)
    ids, total = encode_text(loaded.tokenizer, text, args.max_tokens)
    if total > ids.numel():
        print(f"python -m moe: note: the text has {total} tokens; routing the first {ids.numel()} "
              f"(--max-tokens {args.max_tokens})", file=sys.stderr)
    run = run_model(loaded.model, ids)
    if cf is None:
        return render_report(loaded.name, run, args.format)
    from moe.hf.counterfactual import run_counterfactual

    report = {**report_dict(loaded.name, run), "counterfactual": counterfactual_dict(run, run_counterfactual(
        loaded.model, ids, cf), cf)}
    return dumps(report, indent=1)
