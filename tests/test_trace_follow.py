"""Following a routing log being written: LogFollower reads only the part files it has not read, says idle after a
quiet spell, and `trace-report --follow` prints one line per new step in a separate process, then ends idle."""
import queue
import subprocess
import sys
import threading
import time

import numpy as np

from moe.traces.follow import LogFollower
from moe.traces.store import LogWriter, parts

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_poll_reads_only_the_new_part_files_and_idle_follows_the_clock(tmp_path, monkeypatch):
    import moe.traces.follow as follow
    read = []
    real = follow.counts_batches
    monkeypatch.setattr(follow, "counts_batches", lambda part, *a: read.append(part) or real(part, *a))  # a spy
    clock = Clock()
    writer = LogWriter(str(tmp_path), layers=["0", "1"], n_experts=4, top_k=1)
    writer.write_step(0, [[1, 2, 0, 0], [0, 0, 3, 0]])
    writer.write_step(1, [[2, 2, 0, 0], [0, 0, 0, 4]])
    writer.flush()
    f = LogFollower(str(tmp_path), clock=clock)
    assert f.poll() == [0, 1] and len(read) == 1
    clock.now = 5.0
    assert f.poll() == [] and len(read) == 1  # nothing new: nothing read
    assert f.idle(4.0) and not f.idle(6.0)
    writer.write_step(2, [[0, 0, 0, 1], [1, 0, 0, 0]])
    writer.flush()
    assert f.poll() == [2] and read[1:] == parts(str(tmp_path), "counts")[1:] and len(read) == 2
    assert not f.idle(4.0)  # a new step resets the quiet spell
    log = f.log()
    assert log.steps.tolist() == [0, 1, 2] and log.counts[:, 1, :].tolist() == [[0, 0, 3, 0], [0, 0, 0, 4],
                                                                                [1, 0, 0, 0]]


def _line(step: int, counts: np.ndarray, layers: list[str]) -> str:
    """The expected --follow line, by hand: the worst layer by max/mean (first on ties)."""
    ratios = [max(row) / (sum(row) / len(row)) for row in counts.tolist()]
    worst = max(range(len(ratios)), key=lambda i: (ratios[i], -i))
    dead = sum(1 for v in counts[worst] if v == 0)
    return (f"step {step}: {int(counts.sum())} assignments over {len(layers)} layers; worst layer {layers[worst]} "
            f"max/mean {ratios[worst]:.3f}, dead experts {dead}")


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def test_trace_report_follow_prints_each_new_step_and_ends_idle(tmp_path):
    layers = ["0", "1"]
    writer = LogWriter(str(tmp_path), layers=layers, n_experts=4, top_k=1)
    first = np.array([[4, 0, 0, 0], [1, 1, 1, 1]])
    writer.write_step(0, first)
    writer.flush()
    proc = subprocess.Popen([sys.executable, "-m", "moe", "trace-report", str(tmp_path), "--follow",
                             "--idle-after", "3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    try:
        assert lines.get(timeout=60) == _line(0, first, layers)
        second = np.array([[1, 1, 1, 0], [0, 0, 0, 6]])
        writer.write_step(1, second)
        writer.flush()
        started = time.monotonic()
        assert lines.get(timeout=20) == _line(1, second, layers)
        assert time.monotonic() - started < 5  # polled every 0.5 s, not at the end
        assert lines.get(timeout=30) == "idle: no new step for 3 s (2 steps read)"
        assert lines.get(timeout=10) is None and proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr.read() == ""


def test_follow_refuses_a_path_that_is_not_a_routing_log(tmp_path, capsys):
    from moe.cli.main import main
    (tmp_path / "t.jsonl").write_text("{}\n")
    assert main(["trace-report", str(tmp_path / "t.jsonl"), "--follow"]) == 2
    assert "--follow reads a routing log directory" in capsys.readouterr().err


def _follow_app(path: str) -> None:
    import streamlit as st
    from dashboard.views import run_follow
    st.session_state.setdefault("trace_idle_after", 30.0)                             # the page's Idle after (s)
    run_follow._poll(path, None, None)


def test_after_an_error_the_page_reads_the_log_again_only_once_the_writer_adds_to_it(tmp_path, monkeypatch):
    """An auditor's log whose last part is damaged: every poll (each second) dropped the follower and read the whole
    log again, 15 s of CPU a poll at 1 M steps. Now the error stays on the page until a part or meta.json is added;
    then the directory is read again, and a good log follows as before."""
    from streamlit.testing.v1 import AppTest
    import dashboard.views.run_follow as run_follow
    made = []
    real = run_follow.LogFollower
    monkeypatch.setattr(run_follow, "LogFollower", lambda *a, **k: made.append(a) or real(*a, **k))  # a spy
    writer = LogWriter(str(tmp_path), layers=["0"], n_experts=4, top_k=1)
    writer.write_step(0, [[1, 2, 0, 0]])
    writer.flush()
    bad = tmp_path / "counts" / "part-zzzz.parquet"
    bad.write_bytes(b"not parquet at all")
    at = AppTest.from_function(_follow_app, args=(str(tmp_path),), default_timeout=60).run()
    assert at.error and "cannot be followed" in at.error[0].value and len(made) == 1
    for _ in range(3):                                                                # polls with nothing new
        at.run()
        assert at.error and "cannot be followed" in at.error[0].value
    assert len(made) == 1                                                             # not read again
    bad.unlink()
    writer.write_step(1, [[0, 0, 3, 0]])
    writer.flush()                                                                    # the writer adds a part
    at.run()
    assert not at.error and not at.exception and len(made) == 2
    held = at.session_state["trace_follower"]
    assert held["summary"].steps == [0, 1]


def _follow_app_with(path: str) -> None:
    import streamlit as st
    from dashboard.views import run_follow
    st.session_state.setdefault("trace_idle_after", 30.0)
    run_follow._poll(path, st.session_state.get("asked_experts"), None)  # the page's Experts (E)


def test_the_followed_log_is_read_again_when_the_page_asks_for_something_else_or_meta_json_comes_back(tmp_path):
    """A reviewer's: a wrong Experts (E) stayed on the page after it was corrected (the saved error waited for the
    writer), and a log whose meta.json could not be read gave KeyError 'follower' on every poll after."""
    from streamlit.testing.v1 import AppTest
    writer = LogWriter(str(tmp_path), layers=["0"], n_experts=4, top_k=1)
    writer.write_step(0, [[1, 2, 0, 0]])
    writer.flush()
    at = AppTest.from_function(_follow_app_with, args=(str(tmp_path),), default_timeout=60)
    at.session_state["asked_experts"] = 8
    at.run()
    assert at.error and "records 4 experts but Experts" in at.error[0].value
    at.run()
    assert at.error and "records 4 experts but Experts" in at.error[0].value                # nothing new: the same
    at.session_state["asked_experts"] = 4                                                 # corrected
    at.run()
    assert not at.error and not at.exception and at.session_state["trace_follower"]["summary"].n_experts == 4
    meta = tmp_path / "meta.json"
    meta.rename(tmp_path / "meta.away")                                               # unreadable: an error
    at.session_state["asked_experts"] = None
    at.session_state["trace_follower"] = None
    at.run()
    assert at.error and not at.exception
    at.run()                                                                          # nothing new: the same error
    assert at.error and not at.exception
    (tmp_path / "meta.away").rename(meta)                                             # it comes back
    at.run()
    assert not at.error and not at.exception, (at.error, at.exception)
    assert at.session_state["trace_follower"]["summary"].steps == [0]
