"""`python -m moe model-report`: per-layer routing of a local MoE causal LM on a text (moe.hf.report), as JSON or
CSV; with --cf-* options (JSON only) the same text rerun with other routing settings."""
from __future__ import annotations

import argparse
import re
import sys

from moe.cli.args import check_paths_given, finite_float, non_negative_int, positive_int
from moe.config import DROP_POLICIES
from moe.hf.counterfactual import BIAS_NOTE, BIASES
from moe.hf.report import (DEFAULT_MAX_TOKENS, READ_BYTES_PER_TOKEN, counterfactual_dict, encode_text,
                           progress_bars, read_text_file, render_report, report_dict)
from moe.jsonio import dumps

_SURROGATE = re.compile("[\ud800-\udfff]")  # no UTF-8 spelling: bytes argv could not decode, or a lone half


def add_command(commands) -> None:
    p = commands.add_parser("model-report", help="per-layer routing of a local MoE language model on a text")
    p.add_argument("--model", default=None, help="local model directory (default: $MOE_SCOPE_MODEL or the "
                                                  "bundled model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", default=None)
    source.add_argument("--text-file", default=None)
    p.add_argument("--max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--format", choices=("json", "csv"), default="json")
    cf = p.add_argument_group("counterfactual routing (JSON only; unset = the model's own)")
    cf.add_argument("--cf-layers", default=None, help="comma-separated decoder-layer indices (default: all MoE layers)")
    cf.add_argument("--cf-top-k", type=positive_int, default=None)
    cf.add_argument("--cf-capacity", type=finite_float, default=None, help="capacity factor (default: dropless)")
    cf.add_argument("--cf-drop", choices=DROP_POLICIES, default=None)
    cf.add_argument("--cf-temperature", type=finite_float, default=None)
    bias = cf.add_mutually_exclusive_group()
    for name, value in BIASES.items():  # the Model page's "Bias one expert": hot or cold
        bias.add_argument(f"--cf-{name}-expert", type=non_negative_int, default=None, metavar="E",
                          help=f"add {value:+g} to expert E's selection score ({name}: {BIAS_NOTE})")
    cf.add_argument("--cf-sweep", action="store_true", help='add a "sweep": the change at each MoE layer alone '
                    "(one forward per layer; --cf-layers does not apply to it)")
    p.set_defaults(run=run)


def _biased_expert(args: argparse.Namespace) -> tuple[str, int] | None:
    """(bias name, expert) from --cf-hot-expert / --cf-cold-expert, or None."""
    given = [(name, getattr(args, f"cf_{name}_expert")) for name in BIASES]
    return next(((name, e) for name, e in given if e is not None), None)


def counterfactual_from_args(args: argparse.Namespace):
    """The Counterfactual the --cf-* options describe, or None when none is given."""
    from moe.hf.counterfactual import Counterfactual

    layers = None
    if args.cf_layers is not None:
        try:
            layers = tuple(int(x) for x in args.cf_layers.split(","))
        except ValueError:
            raise ValueError(f"--cf-layers {args.cf_layers!r} must be comma-separated layer indices, "
                             "e.g. 0,2") from None
    if args.cf_drop is not None and args.cf_capacity is None:  # it changed nothing: these models are dropless
        raise ValueError("--cf-drop chooses which tokens a capacity drops; give --cf-capacity too")
    biased = _biased_expert(args)
    cf = Counterfactual(layers=layers, top_k=args.cf_top_k, capacity_factor=args.cf_capacity,
                        drop_policy=args.cf_drop, temperature=args.cf_temperature,
                        bias_expert=biased[1] if biased else None, bias=BIASES[biased[0]] if biased else 0.0)
    if not cf.changed() and layers is None and not args.cf_sweep:
        return None
    if args.format != "json":
        raise ValueError("--cf-* options need --format json (the CSV is one routing's per-expert table)")
    return cf


def read_text(args: argparse.Namespace) -> str:
    """--text (checked to be UTF-8), or the start of --text-file (a note on stderr when the file is cut)."""
    if args.text is not None:
        bad = len(_SURROGATE.findall(args.text))
        if bad:  # argv bytes that are not UTF-8 arrive as surrogate escapes
            raise ValueError(f"--text is not valid UTF-8 ({bad} undecodable byte{'s' * (bad > 1)}); pass UTF-8 "
                             "text, or put the text in a file and use --text-file")
        return args.text
    limit = args.max_tokens * READ_BYTES_PER_TOKEN
    text, cut = read_text_file(args.text_file, limit)
    if cut:
        print(f"{args.prog}: note: --text-file is longer than {limit} bytes; read the first {limit} "
              f"(--max-tokens {args.max_tokens} × {READ_BYTES_PER_TOKEN} bytes per token)", file=sys.stderr)
    return text


def run(args: argparse.Namespace) -> str:
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    check_paths_given(model=args.model, text_file=args.text_file)  # "" was the default model, silently
    text = read_text(args)
    cf = counterfactual_from_args(args)
    if not text.strip():
        raise ValueError("the text is empty; give some text to route (--text or --text-file)")
    with progress_bars(sys.stderr.isatty()):  # a bar is for a person watching, not for a log or a pipe
        loaded = load_model(args.model, tokens=args.max_tokens)
    ids, total = encode_text(loaded.tokenizer, text, args.max_tokens)
    if total > ids.numel():
        print(f"{args.prog}: note: the text has {total} tokens; routing the first {ids.numel()} "
              f"(--max-tokens {args.max_tokens})", file=sys.stderr)
    run_ = run_model(loaded.model, ids, loaded.context)
    if cf is None:
        return render_report(loaded.name, run_, args.format)
    from moe.hf.counterfactual import run_counterfactual, sweep_layers

    _check_expert(args, run_)
    report = {**report_dict(loaded.name, run_), "counterfactual": counterfactual_dict(run_, run_counterfactual(
        loaded.model, ids, cf, loaded.context), cf)}
    if args.cf_sweep:
        report["sweep"] = sweep_layers(loaded.model, ids, cf, loaded.context).to_dict("records")
    return dumps(report, indent=1)


def _check_expert(args: argparse.Namespace, run_) -> None:
    """--cf-hot-expert / --cf-cold-expert name an expert of every MoE layer (ValueError with the range)."""
    biased = _biased_expert(args)
    E = min(t.config.n_experts for t in run_.traces)
    if biased is not None and biased[1] >= E:
        raise ValueError(f"--cf-{biased[0]}-expert {biased[1]} is not an expert of this model; choose 0..{E - 1}")
