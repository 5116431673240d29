"""`torchrun --standalone --nproc-per-node W -m moe ep-report ...`: the expert-parallel forward, headless
(the ranks' work: moe.parallel.worker); and the launcher's view of those options: `job_plan`, `start_ep_job`,
`run_ep_job` (moe.parallel.launch runs the job)."""
from __future__ import annotations

import argparse
import json

from moe.cli.args import (MAX_TIMEOUT_S, Parser, UsageError, check_file_out, check_paths_given, positive_int,
                          timeout_seconds)
from moe.cli.options import add_config_arguments, add_scenario_arguments, check_scenario_options, flag_names, resolve
from moe.memory import budget_bytes, check_budget
from moe.parallel.launch import EPJob, JobPlan, check_job_budget
from moe.parallel.worker import REPEATS, EPSettings, enter_rank, rank_report


def add_command(commands) -> None:
    """`ep-report`: the `report` options plus --placement (and --placement-layer), --repeats, --timeout, --seq-len,
    --save-output."""
    p = commands.add_parser("ep-report", help="expert-parallel forward under torchrun: per-rank load and traffic")
    add_options(p)
    p.set_defaults(run=run)


def add_options(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_scenario_arguments(p)  # --tokens is the total, split over the ranks
    p.add_argument("--placement", default=None,
                   help="a plan file: moe.parallel.placement.save's, or `python -m moe plan --export "
                        "sglang|vllm|moe-scope`'s (default: contiguous blocks)")
    p.add_argument("--placement-layer", default=None,
                   help="the layer of a --placement file that holds several (its layer name; SGLang's map: the layer "
                        "id, its row)")
    p.add_argument("--repeats", type=positive_int, default=REPEATS,
                   help="timed forwards after one warm-up: times and the straggler factor are medians over them")
    p.add_argument("--timeout", type=timeout_seconds, default=60.0,
                   help=f"seconds any collective may wait (above 0, at most {MAX_TIMEOUT_S:,.0f})")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="cut the tokens into sequences of S (each rank gets whole sequences); needed by "
                        "--capacity-scope sequence")
    p.add_argument("--save-output", default=None, help="rank 0 saves the combined output y (T, D) here (torch.save)")


def run(args: argparse.Namespace) -> str:
    """One rank: every check before the process group is joined; rank 0 returns the document."""
    enter_rank()
    check_scenario_options(args, args.scenario)
    cfg, scenario, params, tokens = resolve(args)  # the same tokens `report` draws
    check_budget(cfg, tokens, budget_bytes(), names=flag_names())  # before anything is built (every rank)
    if args.placement_layer is not None and args.placement is None:
        raise ValueError("--placement-layer chooses a layer of a --placement file; give the file too")
    check_paths_given(placement=args.placement, save_output=args.save_output)
    check_file_out("--save-output", args.save_output)  # before the forward: torch.save failed after it
    settings = EPSettings(args.placement, args.repeats, args.timeout, args.seq_len, args.save_output,
                          args.placement_layer)
    return rank_report(cfg, scenario, params, tokens, settings, args.format)


def job_plan(args: list[str]) -> JobPlan:
    """What the ep-report options `args` describe, for the launcher; ValueError "ep-report: ..." when they are bad."""
    parser = Parser(prog="ep-report")
    add_options(parser)
    try:
        parsed = parser.parse_args(args)
        cfg, _, _, tokens = resolve(parsed)
    except UsageError as err:
        raise ValueError(f"ep-report: {err}") from None
    return JobPlan(cfg, tokens, parsed.repeats + 1, flag_names())


def check_ep_job(nproc: int, args: list[str], budget: int | None = None) -> int:
    """ValueError when the options are bad or the job would not fit the memory budget; else the forwards per rank."""
    return check_job_budget(nproc, job_plan(args), budget)


def start_ep_job(nproc: int, args: list[str], timeout_s: float, budget: int | None = None) -> EPJob:
    """Start `ep-report ARGS` on nproc local ranks (refused first when it would not fit the budget)."""
    return EPJob(nproc, args, timeout_s, job_plan(args), budget)


def run_ep_job(nproc: int, args: list[str], timeout_s: float = 300.0, on_progress=None) -> dict:
    """Run `ep-report --format json` on nproc local ranks and return its document."""
    job = start_ep_job(nproc, [*args, "--format", "json"], timeout_s)
    return json.loads(job.wait(on_progress=on_progress))
