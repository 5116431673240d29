"""The memory a Runs-page read may take on this server: the budget (MOE_SCOPE_MEMORY_GB) less what the pages open now
keep (the traces the Runs page holds, the Playground's results), with one read at a time. Each read was bounded by
the whole budget on its own: three visitors uploading a 9 KB file at once took a 1 GiB server 1.9 GiB above its rest.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref

import numpy as np

from moe.memory import BUDGET_ENV, budget_bytes, describe_bytes
from moe.traces.summary import TraceSummary

from dashboard.loaders import kept_bytes

WAITING = "waiting: another file is being read on this server (one read at a time, within the memory budget)…"
WAIT_S = 0.25        # a waiting read looks for its turn this often (and lets Streamlit stop it meanwhile)
_HELD: weakref.WeakValueDictionary[int, TraceSummary] = weakref.WeakValueDictionary()
_SIZE: dict[int, int] = {}  # id -> summary_bytes, measured once when held (an id leaves _HELD with its summary)
_HELD_LOCK = threading.Lock()
_READ = threading.Lock()


def _arrays(obj):
    """The NumPy arrays of a dataclass and of the dataclasses it holds."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            yield value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _arrays(value)


def summary_bytes(summary: TraceSummary) -> int:
    """Bytes a kept summary holds: its arrays (each buffer once: the per-layer loads are views of the log's counts)
    and its table of rows, strings included)."""
    arrays = list(summary.load.values()) + (list(_arrays(summary.routing_log)) if summary.routing_log else [])
    buffers = {}
    for a in arrays:
        while isinstance(a.base, np.ndarray):
            a = a.base
        buffers[id(a)] = a.nbytes
    return sum(buffers.values()) + int(summary.rows.memory_usage(index=True, deep=True).sum())


def hold(summary: TraceSummary) -> None:
    """Count a summary a session keeps until no session keeps it. Its routing log is built first (the page draws
    from it: a trace read with logits builds one from its loads, a copy that was not counted yet)."""
    summary.log()
    size = summary_bytes(summary)
    with _HELD_LOCK:
        _HELD[id(summary)], _SIZE[id(summary)] = summary, size


def held_bytes() -> int:
    with _HELD_LOCK:
        for gone in _SIZE.keys() - _HELD.keys():
            del _SIZE[gone]
        return sum(_SIZE.values())


def room() -> tuple[int, int]:
    """(bytes a read may take now, bytes the open pages keep); ValueError when they keep the whole budget (with less
    left, the read's own checks refuse what does not fit, and the page names what the open pages keep)."""
    budget, kept = budget_bytes(), held_bytes() + kept_bytes()
    if budget <= kept:
        raise ValueError(f"the pages open on this server keep {describe_bytes(kept)}, the whole memory budget of "
                         f"{describe_bytes(budget)}; try again once some close, or raise {BUDGET_ENV}")
    return budget - kept, kept


@contextlib.contextmanager
def one_read(waiting):
    """Run the body when no other read runs on this server; `waiting()` is called while it waits."""
    while not _READ.acquire(timeout=WAIT_S):
        waiting()
    try:
        yield
    finally:
        _READ.release()
