"""The run's own placement as it recorded it (definition "replay_recorded"): where a dump holds counts per physical
slot of its map (SGLang's per_pass dumps, vLLM's EPLB window), the replay shows each rank's load from those counts,
beside the modelled "current" (each expert's tokens split over its slots by the chunk rule). Checked against sums
written out slot by slot from what the fixtures recorded, in the engine, `plan` and the Placement section."""
from __future__ import annotations

import json

import numpy as np
import torch
from streamlit.testing.v1 import AppTest

import fixtures_sglang as sg
from app_support import chart_traces
from fixtures_stacks import vllm_eplb_state
from moe.cli.main import main
from moe.cli.plan import LAYER_DEFINITIONS
from moe.definitions import DEFINITIONS
from moe.parallel.judge import ReplaySettings, balance_rows, replay_log
from moe.traces.formats import read_log
from moe.traces.log import UNKNOWN_W, RoutingLog
from moe.traces.store import write_log

L, E, P, RANKS, PASSES = 2, 4, 8, 2, 12


def sglang_dump(tmp_path) -> tuple[str, np.ndarray]:
    """Two ranks' per_pass files of 12 passes (the log records W = 2); each slot's count drawn on its own (a
    replicated expert's slots get unequal shares, as a dispatcher may give them). Returns the folder and what was
    recorded (passes, ranks, L, P)."""
    rng = np.random.default_rng(3)
    p2l = sg.placement(L, E, P, seed=1)
    recorded = rng.integers(0, 30, size=(PASSES, RANKS, L, P)).astype(np.int32)
    recorded[:, :, 0, :2] *= 4                                                        # slots 0, 1: rank 0 busy
    folder = tmp_path / "sglang"
    folder.mkdir()
    for rank in range(RANKS):
        sg.write_rank_file(folder, rank, [sg.per_pass_record(fp, rank, torch.from_numpy(recorded[fp, rank]))
                                          for fp in range(PASSES)], p2l)
    return str(folder), recorded


def by_hand(per_slot: np.ndarray, world_size: int, window: int) -> np.ndarray:
    """(N, W) per window and rank: slot p's counts (steps, P) summed over the window's steps on rank p // (P / W)."""
    steps, slots = per_slot.shape
    out = np.zeros((steps // window, world_size), dtype=np.int64)
    for k in range(steps // window):
        for s in range(k * window, (k + 1) * window):
            for p in range(slots):
                out[k, p // (slots // world_size)] += int(per_slot[s, p])
    return out


def modelled_by_hand(counts: np.ndarray, p2l_row: np.ndarray, world_size: int, window: int) -> np.ndarray:
    """(N, W) the chunk rule: expert e's n tokens of a window cut at i·n // c over its c slots, in slot order."""
    out = np.zeros((len(counts) // window, world_size), dtype=np.int64)
    for k in range(len(out)):
        n_of = counts[k * window: (k + 1) * window].sum(axis=0)
        for p, e in enumerate(p2l_row):
            slots = [q for q, f in enumerate(p2l_row) if f == e]
            i, c, n = slots.index(p), len(slots), int(n_of[e])
            out[k, p // (len(p2l_row) // world_size)] += (i + 1) * n // c - i * n // c
    return out


def test_the_replay_reads_each_ranks_load_from_the_slots_the_run_recorded(tmp_path):
    folder, recorded = sglang_dump(tmp_path)
    log = read_log(folder)
    per_slot = recorded.sum(axis=1)                                                   # (passes, L, P)
    assert log.meta["world_size"] == 2
    slots = log.slot_counts(1, 2)
    np.testing.assert_array_equal(slots.counts, per_slot[:, 1])
    assert slots.note == ""                                                           # at the W the log records
    results = replay_log(log.counts, log.layers, ReplaySettings(2, (4, 0), window=3), log.physical_to_logical,
                         slot_counts=lambda i: log.slot_counts(i, 2))
    for i, result in enumerate(results):
        expected = by_hand(per_slot[:, i], 2, 3)
        np.testing.assert_array_equal(result.recorded, expected)
        rows = [row for row in balance_rows(result) if row["placement"] == "recorded"]
        assert [row["window"] for row in rows] == [0, 1, 2, 3]                     # listed once, every window
        assert {row["redundant_slots"] for row in rows} == {0}                      # as "current": the first R
        assert [row["balancedness_vllm"] for row in rows] == [e.mean() / e.max() for e in expected]
        assert [row["max_load"] for row in rows] == [e.max() for e in expected]
        assert not result.notes
    # layer 0's replicated slots got unequal shares: the modelled split differs (else the test shows nothing)
    assert not np.array_equal(results[0].recorded, results[0].loads[("current", 0)])


def test_another_w_or_counts_that_do_not_add_up_are_not_shown_and_a_note_says_why(tmp_path, capsys):
    folder, _ = sglang_dump(tmp_path)
    log = read_log(folder)
    other_w = log.slot_counts(0, 4)
    assert other_w.counts is None and "at its own W=2 only" in other_w.note and "replay at W=2" in other_w.note
    result = replay_log(log.counts, log.layers, ReplaySettings(4, (0,), window=3), log.physical_to_logical,
                        only=["0"], slot_counts=lambda i: log.slot_counts(i, 4))[0]
    assert result.recorded is None and result.notes == [other_w.note] and result.recorded_p50() is None
    assert "recorded" not in {row["placement"] for row in balance_rows(result)}
    for W, current in ((4, "the run's map on 4 ranks (the run had 2)"), (2, "the run's placement")):
        assert main(["plan", folder, "--world-size", str(W), "--window", "3"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["current"] == current and (doc["layers"]["0"]["recorded_next_window_p50"] is None) == (W == 4)
    ranks = log.rank_counts.copy()
    ranks[0, 0, 0, 0] += 1                                                            # one token more on a slot
    changed = RoutingLog(log.source, log.layers, log.steps, log.counts, physical_to_logical=log.physical_to_logical,
                         rank_counts=ranks)
    assert changed.slot_counts(0, 2).counts is None and "do not sum" in changed.slot_counts(0, 2).note
    assert changed.slot_counts(1, 2).counts is not None
    plain = RoutingLog(log.source, log.layers, log.steps, log.counts)                 # no map: nothing recorded
    assert plain.slot_counts(0, 2) is None
    result = replay_log(plain.counts, plain.layers, ReplaySettings(4, (0,), window=3))[0]
    assert result.recorded is None and not result.notes
    assert {row["placement"] for row in balance_rows(result)} == {"current", "planned", "eplb"}


def test_plan_shows_each_layer_as_recorded_where_its_counts_add_up(tmp_path, capsys):
    """A stored log whose layer 0 was changed by one token: `plan` shows layer 1 as recorded (alone with --layer
    too), layer 0 with a note; every number of a layer's summary names its definition."""
    folder, recorded = sglang_dump(tmp_path)
    log = read_log(folder)
    ranks = log.rank_counts.copy()
    ranks[0, 0, 0, 0] += 1
    write_log(RoutingLog(log.source, log.layers, log.steps, log.counts, physical_to_logical=log.physical_to_logical,
                         rank_counts=ranks, meta={"world_size": 2}), str(tmp_path / "log"))
    for only in ([], ["--layer", "1"]):
        assert main(["plan", str(tmp_path / "log"), "--world-size", "2", "--window", "3", *only]) == 0
        doc = json.loads(capsys.readouterr().out)
        expected = by_hand(recorded.sum(axis=1)[:, 1], 2, 3)
        rows = [row for row in doc["windows"]["1"] if row["placement"] == "recorded"]
        assert [row["max_load"] for row in rows] == expected.max(axis=1).tolist()
        assert doc["layers"]["1"]["recorded_next_window_p50"] == float(np.median([e.mean() / e.max()
                                                                                   for e in expected[1:]]))
        assert not doc["layers"]["1"]["notes"]
    assert main(["plan", str(tmp_path / "log"), "--world-size", "2", "--window", "3"]) == 0
    layer0 = json.loads(capsys.readouterr().out)["layers"]["0"]
    assert layer0["recorded_next_window_p50"] is None and any("do not sum" in n for n in layer0["notes"])
    assert set(layer0) - {"slots", "notes"} == set(LAYER_DEFINITIONS)
    assert all(name in DEFINITIONS for name in LAYER_DEFINITIONS.values())


def test_plan_lists_the_recorded_load_of_a_vllm_window(tmp_path, capsys):
    """vLLM's EPLB window (a row per pass of per-slot counts; the state records no W): rows and summary, and a
    single window has no window after a plan (no p50)."""
    state, history = vllm_eplb_state(window=8, layers=2, n_logical=6, n_redundant=2, passes=8, seed=5)
    torch.save(state, tmp_path / "eplb.pt")
    assert main(["plan", str(tmp_path / "eplb.pt"), "--world-size", "2", "--window", "2",
                 "--redundant-slots", "2,0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for layer in (0, 1):
        expected = by_hand(np.stack(history)[:, layer], 2, 2)                         # (4 windows, 2 ranks)
        rows = [row for row in doc["windows"][str(layer)] if row["placement"] == "recorded"]
        assert [row["max_load"] for row in rows] == expected.max(axis=1).tolist()
        balance = [e.mean() / e.max() for e in expected]
        assert [row["balancedness_vllm"] for row in rows] == balance
        assert {row["redundant_slots"] for row in rows} == {0}
        assert doc["layers"][str(layer)]["recorded_next_window_p50"] == float(np.median(balance[1:]))
        assert doc["layers"][str(layer)]["notes"] == [UNKNOWN_W]                       # the state records no W
    assert doc["current"] == "the run's map on 2 ranks"                              # which W the run had: unknown
    assert main(["plan", str(tmp_path / "eplb.pt"), "--world-size", "2", "--window", "8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["windows_per_layer"] == 1 and doc["layers"]["0"]["recorded_next_window_p50"] is None
    assert [row["window"] for row in doc["windows"]["0"] if row["placement"] == "recorded"] == [0]


def section_app(path: str) -> None:
    from dashboard.views import placement
    from moe.traces.opener import open_trace
    placement.render(open_trace(path).log(), "runs")


def test_the_section_shows_the_recorded_load_beside_the_modelled_one(tmp_path):
    folder, recorded = sglang_dump(tmp_path)
    log = read_log(folder)
    path = str(tmp_path / "log")
    write_log(log, path)                                                              # as the Runs page keeps it
    at = AppTest.from_function(section_app, args=(path,), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    assert at.selectbox(key="runs_place_world").value == 2                           # the run's W
    i = log.layers.index(at.selectbox(key="runs_place_layer").value)
    window = at.number_input(key="runs_place_window").value
    expected = by_hand(recorded.sum(axis=1)[:, i], 2, window)
    modelled = modelled_by_hand(log.counts[:, i], log.physical_to_logical[i], 2, window)
    text = " ".join(c.value for c in at.caption)
    p50 = [np.median([e.mean() / e.max() for e in load[1:]]) for load in (expected, modelled)]
    assert f"{p50[0]:.3f} as recorded and {p50[1]:.3f} as modelled" in text and "`replay_recorded`" in text
    line = chart_traces(at, 0)["current, as recorded"]
    assert line["line"]["dash"] == "dot" and line["y"] == [e.mean() / e.max() for e in expected]
    at.selectbox(key="runs_place_heat").set_value("current, as recorded").run()
    heat = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert chart_traces(at, 1)[None]["z"] == expected.T.tolist()
    assert heat["layout"]["title"]["text"] == "Load per rank and window: current, as recorded"


def test_the_section_says_when_the_log_does_not_record_the_runs_w(tmp_path):
    """vLLM's EPLB state records no W: the recorded slots lie on the W chosen, and the caption says so."""
    state, history = vllm_eplb_state(window=8, layers=1, n_logical=6, n_redundant=2, passes=8, seed=5)
    torch.save(state, tmp_path / "eplb.pt")
    at = AppTest.from_function(section_app, args=(str(tmp_path / "eplb.pt"),), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    W, window = at.selectbox(key="runs_place_world").value, at.number_input(key="runs_place_window").value
    expected = by_hand(np.stack(history)[:, 0], W, window)
    text = " ".join(c.value for c in at.caption)
    assert f"{np.median([e.mean() / e.max() for e in expected[1:]]):.3f} as recorded" in text
    assert UNKNOWN_W in text
    at.number_input(key="runs_place_window").set_value(8).run()                      # one window: no p50, the note
    text = " ".join(c.value for c in at.caption)
    assert not at.error and "as recorded and" not in text and UNKNOWN_W in text
    assert "current, as recorded" in at.selectbox(key="runs_place_heat").options
    folder, _ = sglang_dump(tmp_path)                                                 # records W = 2: not said
    at = AppTest.from_function(section_app, args=(folder,), default_timeout=60).run()
    text = " ".join(c.value for c in at.caption)
    assert "as recorded and" in text and UNKNOWN_W not in text
