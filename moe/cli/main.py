"""`python -m moe COMMAND` (and the installed `moe-scope COMMAND`): builds the parser from one module per command
and runs the chosen one. Every failure is one line on stderr and exit status 2.

  report        one forward of the synthetic layer (moe/cli/report.py)
  train         the live-training loop, one row per step (moe/cli/train.py)
  train-lm      train the bundled MoE language model (moe/cli/train_lm.py)
  model-report  per-layer routing of a local MoE language model on a text (moe/cli/model_report.py)
  trace-report  routing data of any stack, a file or a directory of ranks (moe/cli/trace_report.py)
  plan          should I enable EPLB? replay a routing log, export a plan (moe/cli/plan.py)
  ep-report     the expert-parallel forward, under torchrun (moe/cli/ep_report.py)
"""
from __future__ import annotations

import sys

from moe.cli import ep_report, model_report, plan, report, trace_report, train, train_lm
from moe.cli.args import Parser, UsageError, one_line
from moe.memory import out_of_memory

COMMANDS = (report, train, train_lm, model_report, trace_report, plan, ep_report)  # the order `--help` lists them in


def build_parser(prog: str = "python -m moe") -> Parser:
    serving = (f" `{prog}` alone (or with Streamlit options such as --server.port 8502) serves the dashboard."
               if prog == "moe-scope" else "")
    parser = Parser(prog=prog, description="Headless moe-scope." + serving)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_command(commands)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m moe") -> int:
    try:
        args = build_parser(prog).parse_args(argv)
        args.prog = prog  # notes on stderr name the command the user typed
        text = args.run(args)
    except (UsageError, ValueError, RuntimeError, MemoryError, OSError) as err:  # every failure: one line, exit 2
        message = one_line(err)
        if isinstance(err, MemoryError):  # its own message is empty: say what ran out and the budget to set
            message = out_of_memory("running this command")
        # One write call: print() writes the text and its newline apart, and the ranks of a torchrun job share one
        # stderr pipe, so another rank's line could land between the two (one pipe write under 4 KiB is atomic).
        sys.stderr.write(f"{prog}: error: {message}\n")
        sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        return 130
    if text:  # `train` streams its rows itself and returns ""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
