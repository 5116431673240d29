"""The torchrun job's lifecycle: every process of its tree ends on kill, timeout, torchrun's death or memory
over the budget, on time; an over-budget tree is refused before it starts; the ranks report progress."""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import pytest

from ep_support import job_processes, kill_left, still_running
from moe.parallel import launch as ep_launch
from moe.cli.ep_report import start_ep_job
from moe.parallel.launch import EPJob

LONG = ["--tokens", "4096", "--d-model", "256", "--repeats", "100000"]  # runs for minutes once its ranks start


def ranks_running(job: EPJob, W: int, timeout: float = 120.0) -> list[tuple[int, int]]:
    """Wait until torchrun and its W ranks run; their (pid, start time), found by an independent /proc scan."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = job_processes(job.proc.pid)
        if len(procs) >= W + 1:
            return procs
        time.sleep(0.2)
    raise AssertionError(f"the job's {W} ranks did not start in {timeout} s")


@contextmanager
def long_job(W: int = 2):
    """A long W-rank job and its rank processes, once running; whatever is left is killed afterwards."""
    job = start_ep_job(W, LONG, timeout_s=300)
    procs = ranks_running(job, W)
    try:
        yield job, procs
    finally:
        kill_left(procs)


def within(seconds: float, fn) -> tuple[float, BaseException | None]:
    """Run fn in a thread; (seconds it took, the exception it raised); fails when it takes longer."""
    outcome: list = []

    def call():
        try:
            fn()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)
    t0 = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return time.monotonic() - t0, outcome[0]


def test_kill_ends_every_rank_although_each_has_its_own_session():
    with long_job() as (job, procs):
        assert len({os.getsid(p) for p, _ in procs}) == 3  # torchrun and each rank: three sessions
        took, err = within(10, job.kill)
        assert err is None and took < 5
        assert still_running(procs) == []


def test_the_timeout_arrives_on_time_and_leaves_no_process():
    with long_job() as (job, procs):
        job.timeout_s = job.elapsed_s + 1.0  # due in one second, with the ranks computing
        took, err = within(15, lambda: job.wait(poll_s=0.2))
        assert isinstance(err, RuntimeError) and "did not finish" in str(err)
        assert took < 1.0 + 3.0  # the deadline, one poll, SIGTERM's grace and SIGKILL
        assert still_running(procs) == []


def test_ranks_die_with_torchrun():
    """SIGKILL torchrun alone (its handlers cannot run): the ranks end by their parent-death signal."""
    with long_job() as (job, procs):
        while job.progress().started < 2:  # the ranks set their parent-death signal first thing
            time.sleep(0.2)
        os.kill(job.proc.pid, signal.SIGKILL)
        job.proc.wait()
        deadline = time.monotonic() + 5
        while still_running(procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_running(procs) == []
        job.kill()


def test_an_over_budget_tree_is_refused_before_anything_starts(monkeypatch):
    from moe.cli.ep_report import check_ep_job

    before = job_processes(os.getpid())
    with pytest.raises(ValueError) as refused:
        check_ep_job(8, ["--tokens", "65536", "--d-model", "512"], budget=4 * 1024 ** 3)
    message = str(refused.value)
    assert "\n" not in message and "the expert-parallel job needs about" in message
    assert "8 rank processes 2.5 GiB" in message and "use at most 2 processes; or set --tokens ≤" in message
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "1")
    with pytest.raises(ValueError, match="over the budget of 1.0 GiB"):
        start_ep_job(8, ["--tokens", "64"], timeout_s=60)  # 8 rank processes alone are over 1 GiB
    assert job_processes(os.getpid()) == before  # no torchrun started


def test_a_tree_growing_over_the_budget_is_stopped(monkeypatch):
    monkeypatch.setattr(ep_launch, "check_job_budget", lambda *a, **k: 2)  # past the estimate, to the watch
    job = start_ep_job(2, ["--tokens", "64"], timeout_s=120, budget=200 * 1024 ** 2)  # torch alone takes more
    took, err = within(60, lambda: job.wait(poll_s=0.2))
    assert isinstance(err, RuntimeError) and "over the memory budget of 200.0 MiB" in str(err)
    assert job.peak_memory > 200 * 1024 ** 2 and still_running(job.seen) == []


def test_progress_counts_ranks_and_forwards():
    seen = []
    job = start_ep_job(2, ["--tokens", "64", "--repeats", "3", "--format", "json"], timeout_s=120)
    out = job.wait(poll_s=0.1, on_progress=seen.append)
    assert out.startswith("{") and job.total_forwards == 4
    assert max(p.spawned for p in seen) == 2 and max(p.started for p in seen) == 2
    for a, b in zip(seen, seen[1:]):  # counts only grow, and stay within W and the forwards
        assert a.started <= b.started <= 2 and a.forwards <= b.forwards <= 4
    assert max(p.memory_bytes for p in seen) > 100 * 1024 ** 2 and still_running(job.seen) == []
