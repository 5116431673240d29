"""Launch `ep-report` under torchrun from Python (benchmarks, the page): bounded in time and memory, no orphan.

torchrun starts every rank in a session of its own, so a process-group kill misses them: `EPJob` follows the
whole process tree (/proc), ends it with SIGTERM then SIGKILL (`moe.proctree.kill_tree`) on timeout, failure,
cancel or memory over the budget, and the ranks also die with torchrun (PR_SET_PDEATHSIG, see ep_report).
Before launching, the tree's memory is estimated and an over-budget job is refused. Ranks append progress
lines (started, joined, one per forward) to files the parent reads (`EPJob.progress`).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from moe.config import MoEConfig
from moe.memory import BUDGET_ENV, BudgetError, budget_bytes, check_budget, describe_bytes, describe_over
from moe.proctree import Proc, kill_tree, memory_bytes, tree

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the folder that holds the moe package
PROGRESS_ENV = "MOE_EP_PROGRESS"  # the folder where ranks write their progress lines
MiB = 1024 ** 2
# Proportional set size (shared library pages split between the processes) measured on CPU, torch 2.13:
# torchrun's agent ~190 MiB, a rank before its forward ~240 MiB (W=2) and ~210 MiB (W=4); with margin:
TORCHRUN_BYTES = 256 * MiB
RANK_BYTES = 320 * MiB


def check_torchrun() -> None:
    """ValueError when this Python has no torchrun (torch.distributed.run)."""
    try:
        found = importlib.util.find_spec("torch.distributed.run") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ValueError("torchrun is missing: this PyTorch build has no torch.distributed.run; install a "
                         "PyTorch with distributed support (the default pip wheels have it)")


def ep_command(nproc: int, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node W -m moe ep-report ARGS`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "moe", "ep-report", *args]


@dataclass(frozen=True)
class JobPlan:
    """What the launcher needs to know of the ep-report arguments it passes on (moe/cli/ep_report.py parses
    them): the layer, the tokens every rank draws, the forwards each rank runs (the warm-up and the repeats),
    and the option that sets each knob, for advice in the user's terms."""
    cfg: MoEConfig
    tokens: int
    forwards: int
    names: dict[str, str] = field(default_factory=dict)


def check_job_budget(nproc: int, plan: JobPlan, budget: int | None = None) -> int:
    """ValueError (one line, with advice) when the job's process tree would need more than the budget:
    torchrun + W × (a rank process + its forward, which draws the whole batch and the whole layer).
    Returns the number of forwards each rank runs (the warm-up and the repeats)."""
    budget = budget_bytes() if budget is None else budget
    per_rank = (budget - TORCHRUN_BYTES) // nproc - RANK_BYTES  # what each rank's forward may take
    try:
        check_budget(plan.cfg, plan.tokens, max(per_rank, 0), names=plan.names)
        return plan.forwards
    except BudgetError as err:
        forward = sum(err.parts.values())
        refusal = err
    parts = {"torchrun": TORCHRUN_BYTES, f"{nproc} rank processes": nproc * RANK_BYTES,
             f"{nproc} forwards": nproc * forward}
    advice = [f"{plan.names.get(k, k)} ≤ {v:,} (now {refusal.sizes[k]:,})" for k, v in refusal.changes.items()]
    fewer = (budget - TORCHRUN_BYTES) // (RANK_BYTES + forward)
    options = ([f"use at most {fewer} processes"] if 2 <= fewer < nproc else []) + (
        [f"set {', '.join(advice)}"] if advice and per_rank > 0 else [])
    detail = ", ".join(f"{k} {describe_bytes(v)}" for k, v in parts.items())
    need, limit = describe_over(sum(parts.values()), budget)
    raise ValueError(f"the expert-parallel job needs about {need} ({detail}), over "
                     f"the budget of {limit}; to fit, "
                     f"{'; or '.join(options + [f'raise {BUDGET_ENV}'])}")


@dataclass(frozen=True)
class EPProgress:
    """What the job's ranks reported so far."""
    elapsed_s: float
    timeout_s: float
    world_size: int
    spawned: int          # rank processes torchrun has started (they import torch first)
    started: int          # ranks that entered ep-report (imports done)
    joined: int           # ranks that joined the process group
    forwards: int         # forwards every rank has finished (the slowest rank's count)
    total_forwards: int   # the warm-up plus --repeats
    memory_bytes: int     # the process tree's memory at the last poll (sum of Pss)
    budget_bytes: int     # the job is stopped when memory_bytes goes over this


def rank_progress(event: str) -> None:
    """Rank side: append one line (started, joined, forward) to this rank's file, when EPJob launched it."""
    folder = os.environ.get(PROGRESS_ENV)
    if folder and os.path.isdir(folder):
        with open(os.path.join(folder, f"rank{int(os.environ.get('RANK', '0'))}"), "a", encoding="ascii") as f:
            f.write(event + "\n")


class EPJob:
    """One torchrun job: `poll()` or `wait()` for it, `kill()` ends its whole process tree."""

    def __init__(self, nproc: int, args: list[str], timeout_s: float, plan: JobPlan, budget: int | None = None):
        """`args`: the ep-report options; `plan`: what they describe (moe.cli.ep_report.job_plan(args))."""
        check_torchrun()
        self.budget = budget_bytes() if budget is None else budget
        self.total_forwards = check_job_budget(nproc, plan, self.budget)
        self.nproc, self.command, self.timeout_s = nproc, ep_command(nproc, args), timeout_s
        self.seen: list[Proc] = []  # every process of the tree seen so far (a re-parented rank stays known)
        self.memory, self.peak_memory, self.spawned = 0, 0, 0
        self._dir = tempfile.mkdtemp(prefix="moe-ep-")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), PROGRESS_ENV: self._dir,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self._out = open(os.path.join(self._dir, "stdout"), "w+", encoding="utf-8")  # files, not pipes: an
        self._err = open(os.path.join(self._dir, "stderr"), "w+", encoding="utf-8")  # orphan never blocks a read
        self.started = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.command, env=env, stdout=self._out, stderr=self._err,  # the caller's cwd
                                         start_new_session=True)
        except OSError as err:
            self._remove_files()
            raise RuntimeError(f"torchrun could not start: {err}") from None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def poll(self) -> str | None:
        """None while the job runs; its stdout once it succeeded; RuntimeError when it failed, ran past its
        time or over the memory budget (every process of the tree is ended first)."""
        if self.proc.poll() is None:
            self._watch()
            return None
        out, err = self._read()
        self.kill()  # ranks that outlived torchrun
        if self.proc.returncode != 0:
            raise RuntimeError(f"the expert-parallel job failed: {failure_line(err)}")
        return out

    def _watch(self) -> None:
        procs = tree(self.proc.pid)
        self.seen = list(dict.fromkeys([*self.seen, *procs]))
        self.spawned = max(self.spawned, min(len(procs) - 1, self.nproc))  # torchrun's children are its ranks
        self.memory = memory_bytes(procs)
        self.peak_memory = max(self.peak_memory, self.memory)
        if self.elapsed_s > self.timeout_s:
            self.kill()
            raise RuntimeError(f"the expert-parallel job did not finish in {self.timeout_s:.0f} s and was stopped "
                               f"(all its processes)")
        if self.memory > self.budget:
            self.kill()
            used, limit = describe_over(self.memory, self.budget)
            raise RuntimeError(f"the expert-parallel job used {used}, over the memory budget "
                               f"of {limit}, and was stopped (all its processes); lower the "
                               f"tokens or the processes, or raise {BUDGET_ENV}")

    def wait(self, poll_s: float = 0.5, on_progress=None) -> str:
        """Poll until the job ends (calling on_progress(EPProgress) every poll); its stdout, or RuntimeError."""
        try:
            while (out := self.poll()) is None:
                if on_progress is not None:
                    on_progress(self.progress())
                try:
                    self.proc.wait(timeout=poll_s)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            self.kill()
            raise
        return out

    def progress(self) -> EPProgress:
        lines = []
        for rank in range(self.nproc):
            try:
                with open(os.path.join(self._dir, f"rank{rank}"), encoding="ascii") as f:
                    lines.append(f.read().split())
            except OSError:  # not started yet, or the job is over
                lines.append([])
        started = sum("started" in r for r in lines)
        return EPProgress(self.elapsed_s, self.timeout_s, self.nproc, max(self.spawned, started), started,
                          sum("joined" in r for r in lines), min(r.count("forward") for r in lines),
                          self.total_forwards, self.memory, self.budget)

    def kill(self) -> list[Proc]:
        """End every process of the job (SIGTERM, then SIGKILL after a second) and remove its files;
        returns the processes left (none). Safe to call again."""
        running = self.proc.poll() is None
        left = kill_tree(self.proc.pid, self.seen, group=running)
        self.proc.wait()
        self._remove_files()
        return left

    def _remove_files(self) -> None:
        for f in (self._out, self._err):
            f.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _read(self) -> tuple[str, str]:
        self._out.seek(0)
        self._err.seek(0)
        return self._out.read(), self._err.read()


def failure_line(stderr: str) -> str:
    """The ranks' own one-line error when there is one, else the last meaningful line torchrun printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("python -m moe: error:")]
    if ours:
        return ours[0].removeprefix("python -m moe: error:").strip()
    errors = [line for line in lines if "Error" in line and not line.startswith(("Traceback", "File"))]
    return (errors or lines or ["no output"])[-1]
