"""The Expert parallel view's jobs: contiguous, then planned (or the Placement section's chosen plans), in a
background thread the browser session owns.

The page never waits on torchrun: it starts an `EPRun`, and a fragment polls `state` and `progress` a few
times a second, so a **Cancel** click is handled at once (`cancel()` stops the thread, which ends every
process of the job). The thread also ends the job when the browser session is gone (`alive()` false for
GONE_S: the tab was closed or reloaded). No Streamlit call happens in the thread.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from typing import Callable

import numpy as np

from moe.cli.ep_report import check_ep_job, start_ep_job
from moe.memory import describe_bytes
from moe.parallel.launch import EPJob, EPProgress
from moe.parallel.placement import Placement, check_plan_args, contiguous, plan, predicted_load, save
from moe.parallel.replay import from_placement, rank_load
from moe.proctree import Proc, alive

TIMEOUT_S = 300.0   # a job that runs longer is stopped
POLL_S = 0.25       # how often the thread looks at the job (progress, cancel, session, time, memory)
GONE_S = 3.0        # a session inactive this long (tab closed, not a brief reconnect) ends the job


class _Stop(BaseException):
    """Raised in the thread's progress callback to leave EPJob.wait (which then kills the job)."""


class EPRun:
    """One Run click: state is 'running', then 'done', 'failed' or 'cancelled'."""

    def __init__(self, key, W: int, R: int, flags: list[str], n_experts: int, sidebar_load: np.ndarray,
                 alive_check: Callable[[], bool] = lambda: True, placements: dict[str, Placement] | None = None):
        """Contiguous then planned; or, given `placements` (name -> Placement for W ranks), each of those, its
        replayed load (moe.parallel.replay.rank_load of sidebar_load) as the prediction."""
        check_ep_job(W, flags)  # ValueError before anything starts: the tree would not fit
        self.key, self.W, self.R, self.flags, self.E = key, W, R, flags, n_experts
        self.placements = placements
        if placements is not None:
            self.phases = list(placements)
            if any(p.world_size != W or p.n_experts != n_experts for p in placements.values()):
                raise ValueError(f"a placement to run is not for W={W} ranks and E={n_experts} experts")
        else:
            self.phases = (["contiguous"] if W <= n_experts else []) + ["planned"]
        if placements is None:  # ValueError now (too few experts and slots, or too many slots), not in the thread
            check_plan_args(np.asarray(sidebar_load, dtype=np.float64), W, R)  # after a whole contiguous run
        self.sidebar_load, self._alive = sidebar_load, alive_check
        self.state, self.error, self.phase = "running", "", 0
        self.progress: EPProgress | None = None
        self.docs: dict = {}
        self.plan_note, self.kept_current = "", False
        self.predicted: dict = {}
        self.seen: list[Proc] = []   # every process of every job, for the check that none is left
        self.left: list[Proc] = []
        self._current: EPJob | None = None
        self._cancel = threading.Event()
        self._gone_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="moe-ep-run", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def cancel(self, timeout_s: float = 5.0) -> list[Proc]:
        """Stop the run and every process it started; returns the processes still alive (none)."""
        self._cancel.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive() and self._current is not None:  # stuck outside its poll loop
            self._current.kill()
        self.left = alive(self.seen)
        if self.state == "running" or self._thread.is_alive():
            self.state = "cancelled"
        return self.left

    def _run(self) -> None:
        try:
            if self.placements is not None:
                self._run_given()
                return
            load = self.sidebar_load
            if "contiguous" in self.phases:
                self.docs["contiguous"] = self._job(self.flags)
                load = np.array([row["served"] for row in self.docs["contiguous"]["per_expert"]])
                self.predicted["contiguous"] = predicted_load(contiguous(self.E, self.W), load).tolist()
            result = plan(load, self.W, self.R)
            planned, self.plan_note, self.kept_current = result.placement, result.note, result.kept_current
            self.phase = len(self.phases) - 1
            with tempfile.TemporaryDirectory() as tmp:
                save(planned, f"{tmp}/plan.json", load)
                self.docs["planned"] = self._job(self.flags + ["--placement", f"{tmp}/plan.json"])
            self.predicted["planned"] = predicted_load(planned, load).tolist()
            self.state = "done"
        except _Stop:
            self.state = "cancelled"
        except (ValueError, RuntimeError) as err:
            self.error, self.state = str(err), "failed"
        except Exception as err:  # noqa: BLE001 - the page shows one line, never a traceback
            self.error, self.state = f"{type(err).__name__}: {err}", "failed"

    def _run_given(self) -> None:
        """Each given placement for real; the replayed load is what the forward must measure."""
        load = np.asarray(self.sidebar_load, dtype=np.int64)                           # (E,)
        for i, (name, placement) in enumerate(self.placements.items()):
            self.phase = i
            with tempfile.TemporaryDirectory() as tmp:
                save(placement, f"{tmp}/plan.json", load)
                self.docs[name] = self._job(self.flags + ["--placement", f"{tmp}/plan.json"])
            self.predicted[name] = rank_load(load[None], from_placement(placement))[0].tolist()
        self.state = "done"

    def _job(self, flags: list[str]) -> dict:
        self.progress = None
        if self._cancel.is_set():
            raise _Stop
        job = self._current = start_ep_job(self.W, [*flags, "--format", "json"], TIMEOUT_S)
        try:
            return json.loads(job.wait(poll_s=POLL_S, on_progress=self._tick))
        finally:
            self.seen = list(dict.fromkeys([*self.seen, *job.seen]))

    def _tick(self, progress: EPProgress) -> None:
        self.progress = progress
        if self._cancel.is_set() or self._session_gone():
            raise _Stop

    def _session_gone(self) -> bool:
        if self._alive():
            self._gone_since = None
            return False
        self._gone_since = self._gone_since or time.monotonic()
        return time.monotonic() - self._gone_since > GONE_S

    def status(self) -> tuple[float, str]:
        """(fraction done, one line) for the progress bar."""
        name, n = self.phases[self.phase], len(self.phases)
        p = self.progress
        head = f"{name} placement, job {self.phase + 1} of {n}"
        if p is None:
            return self.phase / n, f"{head}: starting torchrun…"
        steps = 3 * p.world_size + p.total_forwards
        done = p.spawned + p.started + p.joined + p.forwards
        text = (f"{head}: {p.spawned}/{p.world_size} rank processes, {p.started}/{p.world_size} ready, "
                f"{p.joined}/{p.world_size} joined, forwards {p.forwards}/{p.total_forwards} · {p.elapsed_s:.0f} s "
                f"(stopped at {p.timeout_s:.0f} s) · {describe_bytes(p.memory_bytes)} of "
                f"{describe_bytes(p.budget_bytes)}")
        return (self.phase + done / steps) / n, text
