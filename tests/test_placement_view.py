"""The Placement section: drawn from a routing log written to disk (as the Runs page opens one), it shows the
engine's verdict, the replay's charts with their definitions, and plan files the engine reads back."""
from __future__ import annotations

import json

import numpy as np
from moe.metrics import max_over_mean
import pytest
from streamlit.runtime.memory_media_file_storage import _calculate_file_id
from streamlit.testing.v1 import AppTest

from app_support import chart_traces
from dashboard import replays
from dashboard.quoting import md_text
from moe.parallel.export import read_plan
from moe.parallel.judge import ReplaySettings, balance_rows, replay_log
from moe.parallel.verdict import verdict
from moe.parallel.replay import rank_load
from moe.traces.log import RoutingLog
from moe.traces.opener import open_trace
from moe.traces.store import write_log

S, LAYERS, E = 24, ["3", "7"], 8


def section_app(path: str, world_size: int | None = None) -> None:
    from dashboard.views import placement
    from moe.traces.opener import open_trace
    placement.render(open_trace(path).log(), "runs", world_size)


@pytest.fixture
def log_dir(tmp_path) -> str:
    """A skewed log: a few hot experts per layer, drawn from a fixed seed, written with the store's writer."""
    rng = np.random.default_rng(4)
    counts = np.stack([rng.multinomial(400, rng.dirichlet(np.full(E, 0.4)), size=S) for _ in LAYERS], axis=1)
    path = str(tmp_path / "log")
    write_log(RoutingLog("moe-scope-recorder", LAYERS, np.arange(S) * 10, counts, top_k=2), path)
    return path


def test_the_section_shows_the_engines_verdict_and_the_replay_in_its_charts(log_dir):
    at = AppTest.from_function(section_app, args=(log_dir,), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    assert at.selectbox(key="runs_place_world").value == 8 and at.multiselect(key="runs_place_slots").value == [0, 8]
    log = open_trace(log_dir).log()
    uneven = [max_over_mean(log.layer_load(name).sum(0)) for name in log.layers]
    assert at.selectbox(key="runs_place_layer").value == log.layers[int(np.argmax(uneven))]  # opens where it matters
    at.selectbox(key="runs_place_layer").set_value("3").run()
    settings = ReplaySettings(8, (0, 8), window=1)  # 24 steps in at most 32 windows: one step each
    results = replay_log(log.counts, log.layers, settings, only=["3"])
    assert at.info[0].value == md_text(verdict(results, "contiguous blocks"))
    assert len(at.get("plotly_chart")) == 4
    rows = [row for row in balance_rows(results[0]) if row["placement"] == "current"]
    current = chart_traces(at, 0)["current"]
    assert current["x"] == [row["window"] for row in rows]
    assert np.allclose(current["y"], [row["balancedness_vllm"] for row in rows])
    by_hand = log.counts[:, 0, :].reshape(S, 8, 1).sum(axis=2)  # W = E: one expert per rank
    assert np.allclose(current["y"], by_hand.mean(axis=1) / by_hand.max(axis=1))
    heat = chart_traces(at, 1)[None]
    assert heat["z"] == by_hand.T.tolist()  # ranks × windows, the current placement's load first
    assert json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"] == \
        "Load per rank and window: current"
    at.selectbox(key="runs_place_heat").set_value("our planner, R=8").run()
    planned = results[0].loads[("planned", 8)]
    assert chart_traces(at, 1)[None]["z"] == planned.T.tolist() and (planned[0] == by_hand[0]).all()  # window 0
    assert json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"] == \
        "Load per rank and window: our planner, R=8 (window 0: the current placement, no plan before it)"
    captions = "\n".join(c.value for c in at.caption)
    for name in ("placement_verdict", "balancedness_vllm", "replay_next_window", "replay_rank_load",
                 "replay_rebalance_interval", "hot_expert_persistence", "placement_export"):
        assert f"`{name}`:" in captions
    at.selectbox(key="runs_place_layer").set_value("7").run()
    results = replay_log(log.counts, log.layers, settings, only=["7"])
    assert not at.exception and at.info[0].value == md_text(verdict(results, "contiguous blocks"))
    persisting = [m for m in at.metric if m.label == "Hot experts persisting"]
    assert [m.value for m in persisting] == ["—"]  # n = the largest R = 8 = E: every expert with tokens is hot
    at.multiselect(key="runs_place_slots").set_value([0, 2]).run()  # n = 2 of 8
    results = replay_log(log.counts, log.layers, ReplaySettings(8, (0, 2), window=1), only=["7"])
    assert results[0].hot_top == 2 and 0 < results[0].persistence < 1
    persisting = [m for m in at.metric if m.label == "Hot experts persisting"]
    assert [m.value for m in persisting] == [f"{results[0].persistence:.0%}"]


def test_the_downloads_are_the_plan_files_and_read_back(log_dir, tmp_path):
    at = AppTest.from_function(section_app, args=(log_dir,), default_timeout=60).run()
    assert len(at.get("download_button")) == 3
    log = open_trace(log_dir).log()
    files = replays.plan_files(log.counts, tuple(log.layers), None, 8, 8)
    for b, (fmt, name) in zip(at.get("download_button"), (("moe-scope", "plan-moe-scope.json"),
                                                            ("sglang", "plan-sglang.json"),
                                                            ("vllm", "plan-vllm.json"))):
        assert b.proto.url.endswith(_calculate_file_id(files[fmt].encode(), "application/json", name) + ".json")
        path = tmp_path / name
        path.write_text(files[fmt])
        plan = read_plan(str(path), E, 8)
        layouts = plan.layouts
        if fmt == "sglang":  # SGLang's map names no layer: row i is layer i, every layer id up to the largest
            assert plan.layers == [str(i) for i in range(8)]
            trivial = [p % E for p in range(E + 8)]
            assert all(plan.layouts[i].slot_expert.tolist() == trivial for i in range(8) if str(i) not in LAYERS)
            layouts = [plan.layouts[int(name)] for name in LAYERS]
        else:
            assert plan.layers == LAYERS
        assert plan.n_experts == E and plan.world_size == 8
        for i, layout in enumerate(layouts):
            assert set(layout.slot_expert.tolist()) == set(range(E))  # every logical expert placed
            assert layout.n_slots == E + 8 and np.bincount(layout.slot_rank).tolist() == [2] * 8
            load = log.counts[:, i, :].sum(axis=0)
            assert rank_load(load[None], layout).max() <= load.max()  # no rank above the hottest expert alone
    notes = json.loads(files["moe-scope"])["layers"]
    assert all(v["note"] == "planned 8 redundant slots" for v in notes.values())


def test_serving_files_only_where_e_plus_r_is_a_multiple_of_w_and_the_page_says_why(log_dir):
    at = AppTest.from_function(section_app, args=(log_dir,), default_timeout=60).run()
    at.selectbox(key="runs_place_world").set_value(4).run()
    at.multiselect(key="runs_place_slots").set_value([0, 2]).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="runs_place_export_slots").value == 0  # the largest R with every file: 8 + 0 = 2 · 4
    assert len(at.get("download_button")) == 3
    at.selectbox(key="runs_place_export_slots").set_value(2).run()
    assert [b.label for b in at.get("download_button")] == ["moe-scope plan (JSON)"]  # 8 + 2 is not a multiple of 4
    captions = "\n".join(c.value for c in at.caption)
    assert "No SGLang or vLLM file for R=2: SGLang and vLLM need E + R to be a multiple of W" in captions
    assert "use R in [2, 4]" not in captions and "use R in [4, 8]" in captions  # the nearest R that work


def test_a_replay_that_cannot_run_is_one_line(log_dir):
    at = AppTest.from_function(section_app, args=(log_dir, 12), default_timeout=60).run()
    assert not at.exception
    assert at.error[0].value.startswith("The replay cannot run: 12 ranks but 8 experts: without the run's physical "
                                        "→ logical map the placement compared against is contiguous blocks")
    assert "\n" not in at.error[0].value and not at.get("plotly_chart")


def test_a_log_with_the_runs_map_replays_that_placement(tmp_path):
    """The run's physical → logical map is the current placement: slot p on rank p // (P / W), an expert with two
    slots splits its tokens in two chunks (the larger second), computed here slot by slot."""
    p2l = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])  # (L=1, P=12): experts 0-3 twice
    counts = np.random.default_rng(2).integers(0, 40, size=(6, 1, E))
    path = str(tmp_path / "log")
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(6), counts, physical_to_logical=p2l,
                         meta={"world_size": 4}), path)
    at = AppTest.from_function(section_app, args=(path,), default_timeout=60).run()
    assert at.selectbox(key="runs_place_world").value == 4  # the run's W, from the log
    at.selectbox(key="runs_place_heat").set_value("current").run()
    assert not at.exception and not at.error, at.error
    by_hand = np.zeros((6, 4), dtype=int)
    for s in range(6):
        for p, e in enumerate(p2l[0]):
            n = counts[s, 0, e]
            share = n if e > 3 else (n // 2 if p < 8 else n - n // 2)
            by_hand[s, p // 3] += share
    assert chart_traces(at, 1)[None]["z"] == by_hand.T.tolist()


def test_a_layer_that_keeps_its_placement_is_padded_only_in_the_serving_files(tmp_path):
    """An even layer keeps contiguous blocks (E slots) in our file; SGLang's and vLLM's need E + R on every layer."""
    even = np.full((4, 1, E), 10)
    skewed = np.tile(np.array([80, 1, 1, 1, 1, 1, 1, 1]), (4, 1))[:, None, :]
    counts = np.concatenate([even, skewed], axis=1)                                   # (S=4, L=2, E)
    named = replays.plan_files(counts, ("even", "skewed"), None, 4, 4)
    assert named["sglang"] is None and "integers" in named["sglang_error"] and named["vllm"] is not None
    files = replays.plan_files(counts, ("0", "1"), None, 4, 4)  # even, skewed: SGLang's rows are layer ids
    ours = json.loads(files["moe-scope"])["layers"]
    assert ours["0"]["redundant_slots"] == 0 and ours["0"]["note"].startswith("kept the current placement")
    assert ours["1"]["redundant_slots"] == 4
    (tmp_path / "sglang.json").write_text(files["sglang"])
    plan = read_plan(str(tmp_path / "sglang.json"), E, 4)
    assert [lay.n_slots for lay in plan.layouts] == [E + 4, E + 4]
    load = counts[:, 0, :].sum(axis=0)
    assert rank_load(load[None], plan.layouts[0]).max() <= 2 * 40  # padding loads no rank past its busiest (80)
    # a log whose source numbers layers from 1 (Megatron-Core's layer_number): layers "1" and "2" are rows 0 and 1
    from_one = replays.plan_files(counts, ("1", "2"), None, 4, 4, layer_base=1)
    assert json.loads(from_one["sglang"]) == json.loads(files["sglang"])


def test_a_run_with_replicas_is_replayed_at_its_own_r_at_first(tmp_path):
    """An auditor's SGLang per_pass run (E = 16 on 20 slots, W = 2): R = 0 and 2 were replayed at first, and the plan
    files had 18 slots, two fewer than the run, without a word. The run's own R (4) is offered and replayed at first,
    and the plan files are made at it: 20 slots, as the servers that ran it hold."""
    from dashboard.views.placement import default_slots, slot_options
    at = _open_with_map(tmp_path, np.r_[np.arange(16), [0, 1, 2, 3]][None], 16, 2, seed=5)  # (L=1, P=20)
    assert at.multiselect(key="runs_place_slots").value == [0, 4]
    assert at.selectbox(key="runs_place_export_slots").value == 4
    sglang = next(b for b in at.get("download_button") if b.proto.label.startswith("SGLang"))
    assert sglang.proto.label and default_slots(16, 2, 4) == [0, 4] and default_slots(16, 2) == [0, 2]
    assert 3 in slot_options(16, 2, 3) and 3 not in slot_options(16, 2)                # an odd R a run may have
    assert slot_options(4, 8, 4) == [4]                                                  # no rank empty: as before


def test_the_window_goes_back_to_its_default_for_another_log(tmp_path):
    """An auditor opened a 600-step log (window 19 at first), then a 24-step one: the window stayed 19, one window,
    and the verdict said nothing could be judged. Another log gets its own default (at most 32 windows); the same log
    keeps the visitor's window, grown too (a reviewer's: it went back to 20), while a default window follows the
    log's steps (a second reviewer's: the default of 24 steps, 1, stayed at 6,400). The R replayed go back to the new
    log's defaults as well: a log with a map opened after another replayed the other's R, not its own."""
    rng = np.random.default_rng(6)
    paths = []
    for name, steps in (("long", 600), ("short", 24), ("grown", 640)):
        counts = np.stack([rng.multinomial(200, rng.dirichlet(np.full(E, 0.4)), size=steps)], axis=1)
        paths.append(str(tmp_path / name))
        write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(steps), counts, top_k=2), paths[-1])
    p2l = np.r_[np.arange(E), [0, 1]][None]                                            # a run of R = 2 at W = 2
    paths.append(str(tmp_path / "map"))
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(6), np.ones((6, 1, E), np.int64),
                         physical_to_logical=p2l, meta={"world_size": 2}), paths[-1])

    def app(path_key: str) -> None:
        import streamlit as st
        from dashboard.views import placement
        from moe.traces.opener import open_trace
        placement.render(open_trace(st.session_state[path_key]).log(), "runs")
    at = AppTest.from_function(app, args=("path",), default_timeout=60)
    at.session_state["path"] = paths[1]
    at.run()
    assert at.number_input(key="runs_place_window").value == 1                         # ceil(24 / 32)
    at.session_state["path"] = paths[0]                                                 # grown, or another run of
    at.run()                                                                            # the model: the default follows
    assert at.number_input(key="runs_place_window").value == 19                        # ceil(600 / 32), not 1
    at.number_input(key="runs_place_window").set_value(25).run()
    at.run()
    assert at.number_input(key="runs_place_window").value == 25                        # kept for this log
    at.session_state["path"] = paths[2]                                                 # the same run, grown (Follow)
    at.run()
    assert at.number_input(key="runs_place_window").value == 25                        # still the visitor's
    at.session_state["path"] = paths[1]
    at.run()
    assert not at.exception and not at.error, at.error
    assert at.number_input(key="runs_place_window").value == 1                         # 25 would leave no window
    assert not [i.value for i in at.info if i.value.startswith("one window only")]
    at.multiselect(key="runs_place_slots").set_value([0, 1]).run()
    at.session_state["path"] = paths[3]                                                 # another log, with a map:
    at.run()                                                                            # its defaults, its own R
    assert at.multiselect(key="runs_place_slots").value == [0, 2], at.multiselect(key="runs_place_slots").value


def _open_with_map(tmp_path, p2l: np.ndarray, n_experts: int, world_size: int, seed: int) -> AppTest:
    """The section on a one-layer log of 6 steps of random counts that recorded its map p2l (1, P) at world_size."""
    counts = np.random.default_rng(seed).integers(0, 40, size=(6, 1, n_experts))
    path = str(tmp_path / "log")
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(6), counts, physical_to_logical=p2l,
                         meta={"world_size": world_size}), path)
    at = AppTest.from_function(section_app, args=(path,), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    return at


def test_the_runs_map_is_replayed_at_the_w_it_recorded_and_r_leaves_no_rank_empty(tmp_path):
    """A run with more ranks than experts (E=4, W=8, one slot per rank): the page offers only the recorded W (the map
    read at another W would not be the run's placement) and only R from W − E up, and replays it."""
    at = _open_with_map(tmp_path, np.array([[0, 1, 2, 3, 0, 1, 2, 3]]), 4, 8, seed=3)
    assert at.selectbox(key="runs_place_world").options == ["8"]
    assert at.multiselect(key="runs_place_slots").options == ["4"] and at.multiselect(key="runs_place_slots").value == [4]


def test_the_plan_files_open_at_an_r_the_serving_formats_take(tmp_path):
    """vLLM's EPLB state with E = 6 on 8 slots, replayed at W = 8: R = 2 and 4 at first (2 = W − E, the serving one),
    and the plan files at R = 2, whose SGLang and vLLM files exist (R = 4 has none: (6 + 4) % 8 != 0)."""
    import torch
    from dashboard.views.placement import default_slots
    from fixtures_stacks import vllm_eplb_state
    state, _ = vllm_eplb_state(window=20, layers=2, n_logical=6, n_redundant=2, passes=20, seed=3)
    torch.save(state, tmp_path / "eplb.pt")
    at = AppTest.from_function(section_app, args=(str(tmp_path / "eplb.pt"),), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    assert at.selectbox(key="runs_place_world").value == 8 and at.multiselect(key="runs_place_slots").value == [2, 4]
    assert at.selectbox(key="runs_place_export_slots").value == 2
    assert [b.proto.label for b in at.get("download_button")] == [
        "moe-scope plan (JSON)", "SGLang --init-expert-location (JSON)", "vLLM-style map (JSON)"]
    assert default_slots(6, 8) == [2, 4] and default_slots(8, 8) == [0, 8] and default_slots(4, 2) == [0, 2]


def test_slot_options_at_one_rank_and_with_more_ranks_than_experts():
    from dashboard.views.placement import slot_options
    assert slot_options(1, 1) == [0] and slot_options(8, 1) == [0]  # one rank: no replica has anywhere to go
    assert slot_options(4, 8) == [4]  # every rank needs a slot: R >= W − E = 4; offered up to E
    assert slot_options(6, 8) == [2, 4]  # 2 = W − E (and serving: (6 + 2) % 8 == 0), 4 a power of two
    assert slot_options(8, 4) == [0, 1, 2, 4, 8]


def test_the_page_says_when_the_serving_rule_costs_load(tmp_path):
    """DeepSeek's layout (two slots of expert 0 on a rank) is our plan for this load; the serving files cannot hold it
    and carry a heavier busiest rank: the page says by how much, from the same plans the files hold."""
    counts = np.tile(np.array([175, 195, 45, 176, 20, 21]), (4, 1))[:, None, :]      # (S=4, L=1, E=6)
    files = replays.plan_files(counts, ("0",), None, 2, 2)
    ours, serving = files["serving_heavier"]["0"]
    load = counts[:, 0, :].sum(axis=0)
    (tmp_path / "vllm.json").write_text(files["vllm"])
    (tmp_path / "ours.json").write_text(files["moe-scope"])
    assert rank_load(load[None], read_plan(str(tmp_path / "vllm.json"), 6, 2).layouts[0]).max() == serving
    assert rank_load(load[None], read_plan(str(tmp_path / "ours.json"), 6, 2).layouts[0]).max() == ours < serving


def test_the_replicas_of_the_runs_map_show_what_they_absorb_at_r_0(tmp_path, log_dir):
    """At R = 0 a plan that keeps the run's map keeps its replicas: the page shows their share (it showed R > 0
    only, and the engine said NaN); a contiguous run has no replica at R = 0, and shows none."""
    p2l = np.array([[0, 0, 1, 2, 3, 4, 5, 0]])  # W = 2: the hot expert 0 three times; no plan beats it
    counts = np.random.default_rng(5).integers(0, 20, size=(8, 1, 6))
    counts[:, 0, 0] = 100
    path = str(tmp_path / "mapped")
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(8), counts, physical_to_logical=p2l,
                         meta={"world_size": 2}), path)
    shown = {}
    for name, log in (("mapped", path), ("contiguous", log_dir)):
        at = AppTest.from_function(section_app, args=(log,), default_timeout=60).run()
        at.multiselect(key="runs_place_slots").set_value([0]).run()
        assert not at.exception and not at.error, at.error
        shown[name] = {m.label: m.value for m in at.metric}
    replay = replay_log(counts, ["0"], ReplaySettings(2, (0,), window=1), p2l=p2l)[0]
    assert shown["mapped"]["Absorbed by replicas, R=0"] == f"{replay.absorbed[0]:.0%}" != "0%"
    assert "Absorbed by replicas, R=0" not in shown["contiguous"]


def test_a_replay_past_the_budget_is_refused_before_it_runs(tmp_path, monkeypatch):
    """`plan` checked its replay against the budget, the page did not: a run's map of 3.9 M slots for 2 experts
    replayed 400 MB past a 256 MiB budget. Now the page refuses it in one line, as `plan` does."""
    P = 20_000
    p2l = (np.arange(P) % 2)[None]
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(400), np.full((400, 1, 2), 5), physical_to_logical=p2l,
                         meta={"world_size": 2}), str(tmp_path / "log"))
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.1")
    at = AppTest.from_function(section_app, args=(str(tmp_path / "log"),), default_timeout=60).run()
    assert not at.exception
    assert any("The replay cannot run: replaying this layer's" in e.value and "over half the memory budget" in e.value
               for e in at.error), [e.value for e in at.error]


def test_a_replay_fits_what_the_open_pages_leave(log_dir, monkeypatch):
    """The replay's check counts what the server's open pages keep (trace_room): with the budget all but taken, the
    replay that runs on an idle server is refused in one line that says why."""
    from dashboard import trace_room
    from moe.memory import budget_bytes
    at = AppTest.from_function(section_app, args=(log_dir,), default_timeout=60).run()
    assert not at.exception and not at.error and at.get("plotly_chart")                # an idle server replays it
    monkeypatch.setattr(trace_room, "held_bytes", lambda: budget_bytes() - (64 << 10))  # 64 KiB left
    at = AppTest.from_function(section_app, args=(log_dir,), default_timeout=60).run()
    assert not at.exception and not at.get("plotly_chart")
    (error,) = [e.value for e in at.error]
    assert error.startswith("The replay cannot run: replaying this layer's") and "\n" not in error
    assert "32.0 KiB, half of what the memory budget of" in error and "the pages open on this server keep" in error


def test_the_plan_files_of_a_log_of_many_layers_are_made_on_a_click(tmp_path):
    """An auditor's 322 KB log of 16,384 layers kept the server planning for 50 s each time it was opened. Past
    AUTO_PLAN_LAYERS layers the section replays its layer and waits for "Plan all … layers"; the request holds while
    the choice stays, and a new choice asks again."""
    from dashboard.views.placement import AUTO_PLAN_LAYERS
    L = AUTO_PLAN_LAYERS + 1
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 20, (4, L, 8))
    path = str(tmp_path / "log")
    write_log(RoutingLog("moe-scope-recorder", [str(i) for i in range(L)], np.arange(4), counts, top_k=2), path)
    at = AppTest.from_function(section_app, args=(path,), default_timeout=120).run()
    assert not at.exception and not at.error, at.error
    assert len(at.get("plotly_chart")) == 4 and not at.get("download_button")           # replayed, not planned
    assert any(f"This log has {L:,} layers: their plan files are made when you ask" in c.value for c in at.caption)
    at.button(key="runs_place_plan_all").click().run()
    assert not at.exception and not at.error, at.error
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels[0] == "moe-scope plan (JSON)" and len(labels) == 3
    W, R = at.selectbox(key="runs_place_world").value, at.selectbox(key="runs_place_export_slots").value
    files = replays.plan_files(counts, tuple(str(i) for i in range(L)), None, W, R)       # every layer's plan
    assert len(json.loads(files["moe-scope"])["layers"]) == L
    assert at.get("download_button")[0].proto.url.endswith(
        _calculate_file_id(files["moe-scope"].encode(), "application/json", "plan-moe-scope.json") + ".json")
    at.run()                                                                           # a rerun keeps them
    assert len(at.get("download_button")) == 3
    slots = at.selectbox(key="runs_place_export_slots")
    other = [v for v in at.multiselect(key="runs_place_slots").value if v != R][0]
    slots.set_value(other).run()
    assert not at.exception and not at.error and at.selectbox(key="runs_place_export_slots").value == other
    assert not at.get("download_button") and at.button(key="runs_place_plan_all")


def test_the_section_opens_on_the_most_uneven_layer_in_one_pass():
    """The layer of the largest max/mean of its summed load (the first on ties, never one without tokens), now from
    the (L, E) sums at once: a lookup per layer was L² (an auditor's 40,000 layers: 19 s)."""
    from dashboard.views.placement import most_uneven_layer
    rng = np.random.default_rng(2)
    for _ in range(50):
        L, E = int(rng.integers(1, 9)), int(rng.integers(1, 6))
        counts = rng.integers(0, 4, (3, L, E)) * (rng.random((1, L, 1)) < 0.7)          # some layers empty
        counts[0, 0, 0] += 1                                                            # one layer routes a token
        log = RoutingLog("counts-csv", [f"l{i}" for i in range(L)], np.arange(3), counts)
        ratios = [max_over_mean(counts[:, i].sum(0)) if counts[:, i].sum() else -1.0 for i in range(L)]
        assert most_uneven_layer(log) == f"l{ratios.index(max(ratios))}"


def test_the_nodes_offered_are_those_deepseek_s_eplb_takes(tmp_path):
    """Nodes that DeepSeek's EPLB cannot take (W / nodes not whole, or E not split into as many groups) skipped it for
    every R with a note only; `plan --nodes` refuses them, so the page does not offer them."""
    from dashboard.views.placement import _eplb_takes
    assert _eplb_takes(6, 1, 4) and _eplb_takes(6, 2, 4)
    assert not _eplb_takes(6, 4, 4)                                                      # 6 experts in 4 groups
    assert not _eplb_takes(8, 3, 6) and not _eplb_takes(8, 3, 4)                         # 3 groups; 4 GPUs on 3 nodes
    counts = np.random.default_rng(7).integers(0, 40, size=(6, 1, 6))
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(6), counts, meta={"world_size": 4}),
              str(tmp_path / "log"))
    at = AppTest.from_function(section_app, args=(str(tmp_path / "log"),), default_timeout=60).run()
    assert not at.exception and at.selectbox(key="runs_place_world").value == 4
    assert at.selectbox(key="runs_place_nodes").options == ["1", "2"]

