"""`python -m moe model-report`: per-layer routing of a local MoE causal LM on a text, as JSON or CSV.

JSON: {"model", "tokens", "layers": [{"layer", "summary", "per_expert": [...]}]}, `layer` the index of the
model's decoder layer. CSV: one row per (layer, expert): `layer`, then the per-expert columns.
With --cf-* options (JSON only) a "counterfactual" entry adds the same text rerun with those routing settings:
{"settings", "mean_loss_bits": {"own", "counterfactual", "delta"}, "layers": [{"layer", "summary"}]}.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import pandas as pd
import torch

from .stats import PER_EXPERT_COLUMNS

DEFAULT_MAX_TOKENS = 1024


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


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_dict(name: str, run) -> dict:
    layers = []
    for layer, trace in zip(run.layers, run.traces):
        per_expert = [{k: _clean(v) for k, v in row.items()} for row in trace.per_expert().to_dict("records")]
        layers.append({"layer": layer, "summary": {k: _clean(v) for k, v in trace.summary().items()},
                       "per_expert": per_expert})
    return {"model": name, "tokens": int(run.input_ids.numel()), "layers": layers}


def render_report(name: str, run, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report_dict(name, run), indent=1, allow_nan=False)
    return layer_frames(run).to_csv(index=False)


def add_report_command(commands) -> None:
    from .cli import _positive_int

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
    cf.add_argument("--cf-drop", choices=("position", "probs"), default=None)
    cf.add_argument("--cf-temperature", type=float, default=None)
    p.set_defaults(run=_model_report)


def counterfactual_from_args(args: argparse.Namespace):
    """The Counterfactual the --cf-* options describe, or None when none is given."""
    from .model_counterfactual import Counterfactual

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
    own, new = (float(r.token_loss().mean()) / math.log(2) for r in (run, cf_run))
    settings = {k: v for k, v in cf.__dict__.items() if v is not None and k not in ("bias_expert", "bias")}
    return {"settings": {**settings, "layers": list(cf.layers) if cf.layers else "all"},
            "mean_loss_bits": {"own": own, "counterfactual": new, "delta": new - own},
            "layers": [{"layer": layer, "summary": {k: _clean(v) for k, v in t.summary().items()}}
                       for layer, t in zip(cf_run.layers, cf_run.traces)]}


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    path = pathlib.Path(args.text_file)
    if not path.is_file():
        raise ValueError(f"--text-file {args.text_file!r} does not exist")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ValueError(f"--text-file {args.text_file!r} cannot be read ({err.strerror})") from None


def _model_report(args: argparse.Namespace) -> str:
    from .hf import run_model
    from .hf_load import load_model

    text = _read_text(args)
    cf = counterfactual_from_args(args)
    if not text.strip():
        raise ValueError("the text is empty; give some text to route (--text or --text-file)")
    loaded = load_model(args.model, tokens=args.max_tokens)
    ids, total = encode_text(loaded.tokenizer, text, args.max_tokens)
    if total > ids.numel():
        print(f"python -m moe: note: the text has {total} tokens; routing the first {ids.numel()} "
              f"(--max-tokens {args.max_tokens})", file=sys.stderr)
    run = run_model(loaded.model, ids)
    if cf is None:
        return render_report(loaded.name, run, args.format)
    from .model_counterfactual import run_counterfactual

    report = {**report_dict(loaded.name, run), "counterfactual": counterfactual_dict(run, run_counterfactual(
        loaded.model, ids, cf), cf)}
    return json.dumps(report, indent=1, allow_nan=False)
