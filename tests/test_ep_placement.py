"""The Expert parallel page's Placement section: the page's own load as a routing log, and a plan of it run for
real on W torchrun processes, whose measured per-rank load equals the replayed one."""
from __future__ import annotations


import numpy as np
from streamlit.testing.v1 import AppTest

from moe import MoEConfig, MoELayer
from moe.parallel.eplb import eplb_layout
from moe.parallel.replay import from_placement, rank_load
from moe.scenarios import make_batch
from test_parallel_view import until_finished, view_app

from dashboard.result import RunResult
from dashboard.views.ep_placement import log_from_result, planned_placement


def small_result(seq_len: int | None = None) -> RunResult:
    cfg = MoEConfig(d_model=12, d_expert=24, seed=1, n_experts=4, top_k=2)
    batch = make_batch("clusters", cfg.d_model, 50, seed=cfg.seed, n_clusters=3, skew=2.0)
    _, trace = MoELayer(cfg)(batch.x)
    trace = trace.cpu()
    return RunResult(config=cfg, scenario="clusters", scenario_params={}, trace=trace,
                     per_expert=trace.per_expert(), summary=trace.summary(), seq_len=seq_len)


def test_the_pages_log_is_the_served_assignments_in_blocks_of_consecutive_tokens():
    result = small_result()
    served = result.trace.served.numpy().astype(int)  # (50, 4)
    log = log_from_result(result, blocks=8)
    assert log.layers == ["0"] and log.counts.shape == (8, 1, 4)
    edges = [int(np.floor(k * 50 / 8)) for k in range(9)]
    for s in range(8):
        assert log.counts[s, 0].tolist() == served[edges[s]:edges[s + 1]].sum(axis=0).tolist()
    assert log.counts.sum(axis=(0, 1)).tolist() == result.per_expert["served"].tolist()
    assert log_from_result(small_result(seq_len=50)).counts.shape == (32, 1, 4)  # one sequence: still 32 steps


def test_a_planned_placement_runs_for_real_and_measured_equals_replayed():
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    assert at.multiselect(key="ep_place_slots").value == [0, 2]  # E=4, W=2: R=2 is the first serving R
    assert at.selectbox(key="ep_place_real_slots").value == 2
    at.button(key="ep_place_real_run").click().run()
    assert "job 1 of 1" in at.get("progress")[0].proto.text  # in the background, with its progress
    at.run()
    assert at.button(key="ep_run").disabled  # one expert-parallel job at a time
    until_finished(at, 300, "ep_plan_job")
    assert not at.exception and not at.error, at.error
    runs = at.session_state["ep_plan_runs"]
    (name, doc), = runs["docs"].items()
    assert name == "our planner, R=2" and doc["placement"]["redundant_slots"] == 2
    measured = [row["assignments"] for row in doc["per_rank"]]
    served = np.array([row["served"] for row in doc["per_expert"]])  # what the ranks' forward served
    placement = planned_placement(served, 2, 2, "planned")
    assert doc["placement"]["ranks"] == [list(r) for r in placement.ranks]
    assert measured == runs["predicted"][name] == rank_load(served[None], from_placement(placement))[0].tolist()
    assert at.success[0].value == f"Measured equals replayed on every rank: {measured}."
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert any(i.endswith("ep_place_real_chart") for i in ids)


def test_deepseeks_eplb_plan_runs_for_real_too():
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=60).run()
    at.selectbox(key="ep_place_real_planner").set_value("DeepSeek's EPLB")
    at.selectbox(key="ep_place_real_slots").set_value(0).run()
    assert not at.exception and not at.error, at.error
    at.button(key="ep_place_real_run").click().run()
    until_finished(at, 300, "ep_plan_job")
    assert not at.exception and not at.error, at.error
    runs = at.session_state["ep_plan_runs"]
    doc = runs["docs"]["DeepSeek's EPLB, R=0"]
    served = np.array([row["served"] for row in doc["per_expert"]])
    placement = planned_placement(served, 2, 0, "eplb")
    assert doc["placement"]["ranks"] == [list(r) for r in placement.ranks]
    measured = [row["assignments"] for row in doc["per_rank"]]
    assert measured == runs["predicted"]["DeepSeek's EPLB, R=0"]
    assert at.success[0].value.startswith("Measured equals replayed")


def test_a_plan_with_two_slots_of_one_expert_on_a_rank_is_a_placement_the_forward_runs():
    """DeepSeek's EPLB may give one expert two slots on one GPU; the Placement keeps both slots (the forward serves
    both chunks there: tests/test_parallel.py runs one), with the replayed load of DeepSeek's own layout."""
    load = np.array([100, 1, 1, 1])  # both extra slots go to expert 0: 33.3 tokens per slot, 3 slots per GPU
    placement = planned_placement(load, 2, 2, "eplb")
    theirs = eplb_layout(load, 2, 2)
    assert theirs.rank_experts() == [[0, 0, 3], [0, 1, 2]]
    assert placement.ranks == ((0, 0, 3), (0, 1, 2)) and placement.replicas(0) == [0, 0, 1]
    assert rank_load(load[None], from_placement(placement)).tolist() == rank_load(load[None], theirs).tolist()


def test_cancel_stops_the_plan_run_and_leaves_no_process():
    from ep_support import ready_processes, still_running

    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=60).run()
    at.button(key="ep_place_real_run").click().run()
    procs = ready_processes(at.session_state["ep_plan_job"], 2)
    assert len(procs) == 3  # torchrun and its two ranks, cancelled below
    at.run()
    at.button(key="ep_place_real_cancel").click().run()
    at.run()
    assert still_running(procs) == [] and not at.exception
    assert any("Cancelled: the expert-parallel job was stopped" in i.value for i in at.info)
    assert "ep_plan_runs" not in at.session_state and not at.success
    assert not at.button(key="ep_run").disabled  # the page's own run may start again


def test_more_processes_than_experts_say_why_the_replay_is_not_shown():
    """W > E: contiguous blocks, the placement every plan is compared with, would leave a rank empty: one info line,
    no error, no replay."""
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=60).run()
    at.slider(key="ep_world").set_value(6).run()
    assert not at.exception and not at.error, at.error
    assert any(i.value.startswith("The placement replay compares plans with contiguous blocks, which leave a rank "
                                  "without an expert at W=6 > n_experts=4") for i in at.info)
    assert "ep_place_slots" not in at.session_state


def test_ep_report_runs_the_chosen_layer_of_a_sglang_map_that_holds_several(tmp_path, capsys, monkeypatch):
    """SGLang's map holds every layer of the model: --placement-layer ID runs row ID for real (W=2 torchrun ranks),
    its measured per-rank load the replay of that row's layout on the served counts; a missing layer and the option
    alone are one line."""
    import json
    from moe.cli.ep_report import run_ep_job
    from moe.cli.main import main
    from moe.parallel.replay import from_map
    rows = [[0, 1, 2, 3, 0, 1], [3, 0, 1, 2, 3, 1]]  # E=4, R=2 on W=2: 3 slots a rank, distinct on each
    path = tmp_path / "sglang.json"
    path.write_text(json.dumps({"physical_to_logical_map": rows}))
    base = ["--n-experts", "4", "--top-k", "2", "--tokens", "64", "--placement", str(path)]
    doc = run_ep_job(2, [*base, "--placement-layer", "1"], timeout_s=300)
    assert doc["placement"]["ranks"] == [[0, 1, 3], [1, 2, 3]]  # row 1, rank by rank, ascending
    served = np.array([row["served"] for row in doc["per_expert"]])
    measured = [row["assignments"] for row in doc["per_rank"]]
    assert measured == rank_load(served[None], from_map(rows[1], 2))[0].tolist()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the file is read before joining the job
    for argv, message in (([*base], "holds 2 layers and ep-report runs one; choose it with --placement-layer"),
                          ([*base, "--placement-layer", "7"], "has no layer '7'; choose one of ['0', '1']"),
                          (["--n-experts", "4", "--placement-layer", "1"], "--placement-layer chooses a layer")):
        assert main(["ep-report", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
