"""The run's own placement as it recorded it (definition "replay_recorded"): where a dump holds counts per physical
slot of its map (SGLang's per_pass dumps, vLLM's EPLB window), the replay shows each rank's load from those counts,
beside the modelled "current" (each expert's tokens split evenly over its slots). Checked against sums written out
slot by slot from what the fixtures recorded, in the engine, `plan` and the Placement section."""
from __future__ import annotations

import json

import numpy as np
import torch
from streamlit.testing.v1 import AppTest

import fixtures_sglang as sg
from fixtures_stacks import vllm_eplb_state
from moe.cli.main import main
from moe.parallel.judge import ReplaySettings, balance_rows, replay_log
from moe.traces.formats import read_log
from moe.traces.log import RoutingLog
from moe.traces.store import write_log

L, E, P, RANKS, PASSES = 2, 4, 8, 2, 12


def sglang_dump(tmp_path) -> tuple[str, np.ndarray]:
    """Two ranks' per_pass files of 12 passes; each slot's count drawn on its own (a replicated expert's slots get
    unequal shares, as a dispatcher may give them). Returns the folder and what was recorded (passes, ranks, L, P)."""
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


def test_the_replay_reads_each_ranks_load_from_the_slots_the_run_recorded(tmp_path):
    folder, recorded = sglang_dump(tmp_path)
    log = read_log(folder)
    per_slot = recorded.sum(axis=1)                                                   # (passes, L, P)
    np.testing.assert_array_equal(log.slot_counts(), per_slot)
    np.testing.assert_array_equal(log.slot_counts(1), per_slot[:, 1])
    results = replay_log(log.counts, log.layers, ReplaySettings(4, (0, 4), window=3), log.physical_to_logical,
                         slot_counts=log.slot_counts())
    for i, result in enumerate(results):
        expected = by_hand(per_slot[:, i], 4, 3)
        np.testing.assert_array_equal(result.recorded, expected)
        rows = [row for row in balance_rows(result) if row["placement"] == "recorded"]
        assert [row["window"] for row in rows] == [0, 1, 2, 3]                     # listed once, every window
        assert [row["balancedness_vllm"] for row in rows] == [e.mean() / e.max() for e in expected]
        assert [row["max_load"] for row in rows] == [e.max() for e in expected]
    # the layer whose replicated slots got unequal shares differs from the modelled split (else the test shows nothing)
    assert not np.array_equal(results[0].recorded, results[0].loads[("current", 0)])


def test_per_slot_counts_that_do_not_match_the_expert_counts_are_not_shown(tmp_path):
    folder, _ = sglang_dump(tmp_path)
    log = read_log(folder)
    ranks = log.rank_counts.copy()
    ranks[0, 0, 0, 0] += 1                                                            # one token more on a slot
    changed = RoutingLog(log.source, log.layers, log.steps, log.counts, physical_to_logical=log.physical_to_logical,
                         rank_counts=ranks)
    assert changed.slot_counts() is None and changed.slot_counts(0) is None
    assert changed.slot_counts(1) is not None                                         # the other layer agrees
    plain = RoutingLog(log.source, log.layers, log.steps, log.counts)                 # no map: nothing recorded
    assert plain.slot_counts() is None
    result = replay_log(plain.counts, plain.layers, ReplaySettings(4, (0,), window=3))[0]
    assert result.recorded is None and {row["placement"] for row in balance_rows(result)} == {"current", "planned",
                                                                                             "eplb"}


def test_plan_lists_the_recorded_load_of_a_vllm_window(tmp_path, capsys):
    """vLLM's EPLB window (a row per pass of per-slot counts): plan's rows and summary give the recorded load."""
    state, history = vllm_eplb_state(window=8, layers=2, n_logical=6, n_redundant=2, passes=8, seed=5)
    torch.save(state, tmp_path / "eplb.pt")
    assert main(["plan", str(tmp_path / "eplb.pt"), "--world-size", "2", "--window", "2",
                 "--redundant-slots", "0,2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for layer in (0, 1):
        expected = by_hand(np.stack(history)[:, layer], 2, 2)                         # (4 windows, 2 ranks)
        rows = [row for row in doc["windows"][str(layer)] if row["placement"] == "recorded"]
        assert [row["max_load"] for row in rows] == expected.max(axis=1).tolist()
        balance = [e.mean() / e.max() for e in expected]
        assert [row["balancedness_vllm"] for row in rows] == balance
        assert doc["layers"][str(layer)]["recorded_next_window_p50"] == float(np.median(balance[1:]))


def section_app(path: str) -> None:
    from dashboard.views import placement
    from moe.traces.opener import open_trace
    placement.render(open_trace(path).log(), "runs")


def test_the_section_shows_the_recorded_load_beside_the_modelled_one(tmp_path):
    folder, recorded = sglang_dump(tmp_path)
    log = read_log(folder)
    path = str(tmp_path / "log")
    write_log(RoutingLog(log.source, log.layers, log.steps, log.counts, physical_to_logical=log.physical_to_logical,
                         rank_counts=log.rank_counts, meta={"world_size": 4}), path)  # as the Runs page keeps it
    at = AppTest.from_function(section_app, args=(path,), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    layer = at.selectbox(key="runs_place_layer").value
    window = at.number_input(key="runs_place_window").value
    expected = by_hand(recorded.sum(axis=1)[:, log.layers.index(layer)], 4, window)
    balance = [e.mean() / e.max() for e in expected]
    text = " ".join(c.value for c in at.caption)
    assert f"{np.median(balance[1:]):.3f} as recorded" in text and "`replay_recorded`" in text
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    line = next(t for t in spec["data"] if t["name"] == "current, as recorded")
    assert line["line"]["dash"] == "dot"
    at.selectbox(key="runs_place_heat").set_value("current, as recorded").run()
    heat = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]["z"]
    from test_placement_view import _array
    assert _array(heat) == expected.T.tolist()
