"""Launch `ep-report` under torchrun from Python (benchmarks, the page): bounded in time, no orphan process.

The job runs in its own process group (torchrun and its ranks); on timeout, failure or cancel the whole
group is killed. `EPJob` lets a caller poll (for progress); `run_ep_report` waits and parses the JSON.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


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


class EPJob:
    """One running torchrun job; `kill()` ends its whole process group."""

    def __init__(self, nproc: int, args: list[str], timeout_s: float):
        check_torchrun()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.command = ep_command(nproc, args)
        self.timeout_s, self.started = timeout_s, time.monotonic()
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def wait(self, poll_s: float = 0.5, on_progress=None) -> str:
        """Wait for the job (calling on_progress(elapsed_s, timeout_s) every poll); its stdout, or RuntimeError."""
        try:
            while True:
                try:
                    out, err = self.proc.communicate(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if self.elapsed_s > self.timeout_s:
                        self.kill()
                        raise RuntimeError(f"the expert-parallel job did not finish in {self.timeout_s:.0f} s "
                                           f"and was stopped (all its processes)") from None
                    if on_progress is not None:
                        on_progress(self.elapsed_s, self.timeout_s)
        except BaseException:
            self.kill()
            raise
        if self.proc.returncode != 0:
            raise RuntimeError(f"the expert-parallel job failed: {failure_line(err)}")
        return out

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.communicate()


def failure_line(stderr: str) -> str:
    """The ranks' own one-line error when there is one, else the last meaningful line torchrun printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("python -m moe: error:")]
    if ours:
        return ours[0].removeprefix("python -m moe: error:").strip()
    errors = [line for line in lines if "Error" in line and not line.startswith(("Traceback", "File"))]
    return (errors or lines or ["no output"])[-1]


def run_ep_report(nproc: int, args: list[str], timeout_s: float = 300.0, on_progress=None) -> dict:
    """Run `ep-report --format json` on nproc local ranks and return its document."""
    job = EPJob(nproc, [*args, "--format", "json"], timeout_s)
    return json.loads(job.wait(on_progress=on_progress))
