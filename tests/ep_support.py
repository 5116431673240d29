"""Run `python -m torch.distributed.run ... -m moe ep-report` on loopback, bounded in time, leaving no process."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess

from moe.ep_launch import ep_command

ROOT = pathlib.Path(__file__).resolve().parents[1]


def torchrun(nproc: int, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """One torchrun job in its own process group; on timeout the whole group is killed."""
    cmd = ep_command(nproc, ["--timeout", "30", *args])
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
