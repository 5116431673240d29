"""Follow a routing log that is still being written (issue #17 §4): a fragment reruns every POLL_S seconds, polls
the session's LogFollower (it reads only the part files it has not read before) and shows whether the run is live
or idle; when it finds new steps the page reruns and the run is drawn again.

The follower lives in st.session_state (state.TRACE_FOLLOWER): one per browser session, never shared. The idle
threshold is the page's **Idle after (s)** (state.TRACE_IDLE_AFTER; a test sets it small).
"""
from __future__ import annotations

import os
from typing import Callable

import streamlit as st

from moe.traces.follow import LogFollower
from moe.traces.records import TraceLimits
from moe.traces.opener import check_layers
from moe.traces.store import META, parts
from moe.traces.summary import TraceSummary

from dashboard import state, trace_room
from dashboard.quoting import md_text

POLL_S = 1.0  # a new step shows within POLL_S + the time to draw it (< 2 s for a log of a few hundred steps)


def follow(path: str, n_experts: int | None, n_layers: int | None, draw: Callable[[TraceSummary], None]) -> None:
    """The status line in a fragment that polls the log at `path` (resolved, under the server's roots) every POLL_S
    seconds, then the run drawn. A poll that finds new steps reruns the page (a script rerun, not a reload): the
    charts are redrawn only when the data changed, so a quiet second costs the browser one status line."""
    ss = st.session_state
    ss[state.TRACE_FOLLOW_FULL_RUN] = True
    try:
        st.fragment(_poll, run_every=POLL_S)(path, n_experts, n_layers)
    finally:
        ss[state.TRACE_FOLLOW_FULL_RUN] = False
    held = ss.get(state.TRACE_FOLLOWER)
    if held is not None and held["summary"] is not None:
        draw(held["summary"])


def _poll(path: str, n_experts: int | None, n_layers: int | None) -> None:
    ss = st.session_state
    held = ss.get(state.TRACE_FOLLOWER)
    if held is not None and "failed" in held:
        if held["path"] == path and held["failed"] == _written(path, n_experts, n_layers):  # nothing new since: not
            st.error(f"This routing log cannot be followed: {held['error']}", icon="⚠️")  # read again each second
            return
        held = None  # a new part, meta.json, Experts (E) or expected layers: start again from the directory
    waiting = st.empty()
    try:
        with trace_room.one_read(lambda: waiting.caption(trace_room.WAITING)):  # within the server's budget
            if held is None or held["path"] != path:
                follower = LogFollower(path, TraceLimits(trace_room.room()[0]))
                held = ss[state.TRACE_FOLLOWER] = {"path": path, "follower": follower, "summary": None}
            follower = held["follower"]
            new = follower.poll()
            if new or held["summary"] is None:
                log = follower.log()
                held["summary"] = None if log is None else _checked(TraceSummary.from_log(log), n_experts, n_layers)
                if held["summary"] is not None:
                    held["summary"].extra["format"] = "moe-scope-log"
                    trace_room.hold(held["summary"])
    except (ValueError, OSError, MemoryError, ArithmeticError) as err:
        detail = md_text(str(err).replace(repr(path), "the log").replace(path, "the log"))  # never the server path;
        # a file name inside the log, as plain text. Read again only once the writer adds to the log: an auditor's
        # bad last part made every poll read the whole log again (15 s of CPU a second)
        ss[state.TRACE_FOLLOWER] = {"path": path, "summary": None, "failed": _written(path, n_experts, n_layers),
                                    "error": detail}
        st.error(f"This routing log cannot be followed: {detail}", icon="⚠️")
        return
    if new and not ss.get(state.TRACE_FOLLOW_FULL_RUN):
        st.rerun()  # the fragment's own rerun found steps: redraw the charts below it
    _status(follower, float(ss[state.TRACE_IDLE_AFTER]))


def _written(path: str, *asked) -> tuple:
    """What a read of the log depends on: meta.json's size and time and the counts parts' names (a writer renames
    whole parts into place, never rewrites one), "unlisted" when the directory cannot be listed, and the page's
    `asked` values (Experts (E), expected layers)."""
    try:
        meta = os.stat(os.path.join(path, META))
        return meta.st_size, meta.st_mtime_ns, tuple(parts(path, "counts")), *asked
    except (OSError, ValueError):
        return "unlisted", *asked


def _checked(s: TraceSummary, n_experts: int | None, n_layers: int | None) -> TraceSummary:
    """The page's Experts (E) and expected layers, checked as open_trace checks them for a file."""
    if n_experts is not None and n_experts != s.n_experts:
        raise ValueError(f"the routing log records {s.n_experts} experts but Experts (E) is {n_experts}; give "
                         f"{s.n_experts} or leave it empty")
    return check_layers(s, n_layers)


def _status(follower: LogFollower, idle_after: float) -> None:
    """live: the last step and how long ago a new one came; idle: nothing new for longer than idle_after."""
    ago = follower.clock() - follower.last_change
    if not follower.acc.cells:
        st.info(f"waiting: no step written yet ({ago:.0f} s since the log was opened)", icon="⏳")
    elif follower.idle(idle_after):
        st.warning(f"idle: no new step for {ago:.0f} s (last step {max(follower.acc.cells)}; idle after "
                   f"{idle_after:g} s)", icon="⏸️")
    else:
        st.success(f"live: step {max(follower.acc.cells)}, last new step {ago:.0f} s ago "
                   f"({len(follower.acc.cells)} steps, {follower.parts_read} part files read)", icon="🟢")
