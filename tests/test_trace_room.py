"""The Runs page's reads share one memory budget on a server: a read gets the budget less what open pages keep (the
traces they hold, the Playground's results), and reads run one at a time. Before, each read had the whole budget:
three visitors uploading one 9 KB file at once took a 1 GiB server 1.9 GiB above its rest."""
import gc
import threading
import time

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import trace_room
from moe.traces.counts import CSV_EXPANSION
from moe.traces.log import RoutingLog, TokenRouting
from moe.traces.summary import TraceSummary
from trace_support import traces_app

GiB = 2 ** 30


def _summary(S=6, L=2, E=8, tokens=10) -> TraceSummary:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (S, L, E)).astype(np.int64)
    ids = rng.integers(0, E, (tokens, 2)).astype(np.int64)
    routing = TokenRouting(step=np.zeros(tokens, np.int64), layer=np.zeros(tokens, np.int32), ids=ids)
    return TraceSummary.from_log(RoutingLog("counts-csv", [str(i) for i in range(L)], np.arange(S), counts,
                                            top_k=2, tokens=routing))


def _open_path(path: str) -> AppTest:
    at = AppTest.from_function(traces_app, default_timeout=60).run()
    at.radio(key="trace_source").set_value("Path on the server").run()
    at.text_input(key="trace_path").set_value(path).run()
    return at


def test_a_kept_summary_counts_its_buffers_once_while_a_session_keeps_it():
    s = _summary()
    log = s.routing_log
    naive = (log.counts.nbytes + log.steps.nbytes + log.tokens.step.nbytes + log.tokens.layer.nbytes
             + log.tokens.ids.nbytes + int(s.rows.memory_usage(index=True, deep=True).sum()))  # loads: views of counts
    assert all(np.shares_memory(v, log.counts) for v in s.load.values())
    assert trace_room.summary_bytes(s) == naive
    assert trace_room.held_bytes() == 0
    trace_room.hold(s)
    trace_room.hold(s)                                                                # kept by two: counted once
    assert trace_room.held_bytes() == naive
    del s, log
    gc.collect()
    assert trace_room.held_bytes() == 0                                               # no session keeps it


def test_a_trace_read_with_logits_is_counted_with_the_log_the_page_builds_from_it():
    """A summary read with logits has no routing log until the page asks for one (a copy of its loads): it was
    measured before that copy existed (a reviewer's: 6.8 MB counted of 13.4 MB)."""
    s = _summary()
    s.routing_log = None
    trace_room.hold(s)
    assert s.routing_log is not None and trace_room.held_bytes() == trace_room.summary_bytes(s)
    assert trace_room.held_bytes() >= s.routing_log.counts.nbytes + sum(v.nbytes for v in s.load.values())


def test_the_room_is_the_budget_less_what_pages_keep(monkeypatch):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "1")
    s = _summary()
    trace_room.hold(s)
    space, kept = trace_room.room()
    assert kept >= trace_room.summary_bytes(s) and space == GiB - kept
    big = _summary()
    big.rows = pd.DataFrame({"x": np.zeros(GiB // 8 // 4, np.int64)})                # 256 MiB of rows
    trace_room.hold(big)
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str(0.25))
    with pytest.raises(ValueError, match=r"the pages open on this server keep 256\.\d+ MiB, the whole memory budget "
                                         r"of 256\.0 MiB; try again once some close, or raise MOE_SCOPE_MEMORY_GB"):
        trace_room.room()


def test_another_pages_trace_leaves_less_room_and_the_page_says_why(tmp_path, monkeypatch):
    rows = [f"{s},0,{e},{1 + (s * e) % 7}" for s in range(8) for e in range(900)]
    data = ("step,layer,expert,count\n" + "\n".join(rows) + "\n").encode()
    (tmp_path / "counts.csv").write_bytes(data)
    budget = 2 * CSV_EXPANSION * len(data) + len(data) // 2                           # fits with len/2 to spare
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str(budget / GiB))
    monkeypatch.setenv("MOE_SCOPE_ROOTS", str(tmp_path))
    first = _open_path(str(tmp_path / "counts.csv"))
    assert not first.exception and first.get("metric")[1].proto.body == "1"          # opened: this page keeps it
    assert trace_room.held_bytes() > len(data) // 2
    second = _open_path(str(tmp_path / "counts.csv"))                                 # another visitor, same file
    assert not second.exception
    text = second.error[0].value
    assert text.startswith("This trace cannot be opened") and "over the" in text, text
    assert "the pages open on this server keep" in text and "a read gets the rest" in text
    del first
    gc.collect()                                                                      # the first page closed
    third = _open_path(str(tmp_path / "counts.csv"))
    assert not third.exception and third.get("metric")[1].proto.body == "1"


def test_reads_run_one_at_a_time(tmp_path, monkeypatch):
    (tmp_path / "c.csv").write_text("step,layer,expert,count\n0,0,0,3\n0,0,1,1\n")
    monkeypatch.setenv("MOE_SCOPE_ROOTS", str(tmp_path))
    got = {}
    trace_room._READ.acquire()                                                        # another visitor's read
    try:
        reader = threading.Thread(target=lambda: got.update(at=_open_path(str(tmp_path / "c.csv"))))
        reader.start()
        time.sleep(3 * trace_room.WAIT_S + 1.0)
        assert reader.is_alive() and not got                                          # waiting for its turn
    finally:
        trace_room._READ.release()
    reader.join(60)
    assert not got["at"].exception and got["at"].get("metric")[1].proto.body == "1"


class _Turn:
    """A stand-in for the one-read lock that records what is held when a read ends (its release)."""

    def __init__(self):
        self.held_at_release = []

    def acquire(self, timeout=-1):
        return True

    def release(self):
        self.held_at_release.append(trace_room.held_bytes())


def test_a_read_holds_its_trace_before_the_next_read_starts(tmp_path, monkeypatch):
    """The page counted a trace once the read had left the one-read section: a read waiting for its turn started
    before the trace just read was counted, and two visitors both got the whole room (a reviewer's: 2 of 3 tries)."""
    (tmp_path / "c.csv").write_text("step,layer,expert,count\n0,0,0,3\n0,0,1,1\n")
    monkeypatch.setenv("MOE_SCOPE_ROOTS", str(tmp_path))
    turn = _Turn()
    monkeypatch.setattr(trace_room, "_READ", turn)
    at = _open_path(str(tmp_path / "c.csv"))
    assert not at.exception and at.get("metric")[1].proto.body == "1"
    assert len(turn.held_at_release) == 1 and turn.held_at_release[0] > 0


def test_a_trace_no_longer_shown_is_not_kept(tmp_path, monkeypatch):
    """A page kept (and counted) the trace it showed after the path was cleared or another file failed to open. (The
    count follows once nothing else holds it: the test harness, unlike a server's next run, keeps the last run's
    download callables, which hold the trace.)"""
    from dashboard.state import TRACE_VIEW
    (tmp_path / "c.csv").write_text("step,layer,expert,count\n0,0,0,3\n0,0,1,1\n")
    monkeypatch.setenv("MOE_SCOPE_ROOTS", str(tmp_path))
    at = _open_path(str(tmp_path / "c.csv"))
    assert TRACE_VIEW in at.session_state and trace_room.held_bytes() > 0
    at.text_input(key="trace_path").set_value(str(tmp_path / "missing.csv")).run()
    assert at.error and TRACE_VIEW not in at.session_state
    at.text_input(key="trace_path").set_value(str(tmp_path / "c.csv")).run()
    assert TRACE_VIEW in at.session_state
    at.text_input(key="trace_path").set_value("").run()
    assert TRACE_VIEW not in at.session_state


def test_an_upload_that_leaves_no_room_is_refused_in_words(monkeypatch):
    from dashboard.views.traces import upload_limits
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "1")
    assert upload_limits(1000, 5000).budget == 4000
    with pytest.raises(ValueError, match=r"the upload takes 1000 B, and the pages open on this server leave 1000 B of "
                                         r"the memory budget of 1\.0 GiB; try again once some close"):
        upload_limits(1000, 1000)


def test_a_followed_log_is_read_within_the_room_and_counted(tmp_path, monkeypatch):
    """Follow read a routing log within the whole budget, outside the one-read turn, and its trace was not counted."""
    from moe.traces.store import LogWriter
    monkeypatch.setenv("MOE_SCOPE_ROOTS", str(tmp_path))
    other = _summary()
    trace_room.hold(other)                                                            # another page keeps a trace
    writer = LogWriter(str(tmp_path / "live"), layers=["0"], n_experts=4, top_k=1)
    writer.write_step(0, [[3, 1, 0, 0]])
    writer.flush()
    turn = _Turn()
    monkeypatch.setattr(trace_room, "_READ", turn)
    at = _open_path(str(tmp_path / "live"))
    before = len(turn.held_at_release)
    at.toggle(key="trace_follow").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(turn.held_at_release) > before                                          # the poll took its turn
    from dashboard.state import TRACE_FOLLOWER
    follower = at.session_state[TRACE_FOLLOWER]["follower"]
    assert follower.limits.budget <= trace_room.budget_bytes() - trace_room.summary_bytes(other)  # (and the file
    #                                                        view's trace, while the harness's download still holds it)
    assert trace_room.held_bytes() >= trace_room.summary_bytes(other) + trace_room.summary_bytes(
        at.session_state[TRACE_FOLLOWER]["summary"])
