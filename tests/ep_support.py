"""Run `python -m torch.distributed.run ... -m moe ep-report` on loopback, bounded in time, leaving no process."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

from moe.parallel.launch import ep_command

ROOT = pathlib.Path(__file__).resolve().parents[1]


def torchrun(nproc: int, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """One torchrun job in its own process group; on timeout the whole group is killed."""
    # A collective may wait most of the job's time: on a loaded machine the ranks' imports alone can be seconds apart.
    cmd = ep_command(nproc, ["--timeout", str(0.8 * timeout), *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: killpg reaches the ranks too
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s: {' '.join(cmd)}")
    finally:
        assert_group_gone(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_group_gone(pgid: int) -> None:
    """No process of the job's group is left (zombies reaped by their parents count as gone)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError(f"processes of group {pgid} were still running after torchrun returned")


# An independent /proc scan (not moe.proctree): the job processes a test expects to be gone.
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def job_processes(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live torchrun / ep-report process descending from `root` (root included)."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) and s[0] != "Z"}
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            if "torch.distributed.run" in _cmdline(pid) or "ep-report" in _cmdline(pid):
                found.append((pid, stats[pid][2]))
            todo += [c for c, s in stats.items() if s[1] == pid]
    return found


def ready_processes(run, ranks: int, timeout: float = 120.0) -> list[tuple[int, int]]:
    """The processes of the job an EPRun has in progress (torchrun and its ranks) once all `ranks` are ready and
    alive; [] at the timeout. Under load a job may end between two looks: the run's next job is then the one seen."""
    deadline, procs = time.monotonic() + timeout, []
    while len(procs) != ranks + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        job, progress = run._current, run.progress
        ready = job is not None and progress is not None and progress.started >= ranks
        procs = job_processes(job.proc.pid) if ready else []
    return procs


def still_running(procs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The processes among `procs` alive (same pid and start time, not a zombie)."""
    return [(p, t) for p, t in procs if (s := _stat(p)) and s[0] != "Z" and s[2] == t]


def kill_left(procs: list[tuple[int, int]]) -> None:
    """Test cleanup: SIGKILL whatever of `procs` is still running."""
    for pid, _ in still_running(procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
