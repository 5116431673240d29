"""The Expert parallel view: pure figures against the document, and the page running real torchrun jobs."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from dashboard.figures.parallel import comparison_table, rank_load_figure, rank_times_figure, traffic_figure

DOC = {  # a small ep-report document, numbers chosen by hand
    "placement": {"redundant_slots": 0, "ranks": [[0, 1], [2, 3]]},
    "per_rank": [{"rank": 0, "assignments": 30, "gather_ms": 1.0, "a2a_ms": 2.0, "expert_ms": 6.0,
                  "expert_wall_ms": 6.5, "forward_ms": 10.0},
                 {"rank": 1, "assignments": 10, "gather_ms": 1.0, "a2a_ms": 4.0, "expert_ms": 2.0,
                  "expert_wall_ms": 2.5, "forward_ms": 8.0}],
    "traffic": [[12, 5], [7, 9]], "straggler_factor": 1.5,
}


def test_figures_show_the_document_numbers():
    rows = pd.DataFrame(DOC["per_rank"])
    fig = rank_load_figure({"contiguous": rows}, {"contiguous": [29, 11]})
    bars, predicted, mean = fig.data
    assert list(bars.y) == [30, 10] and list(predicted.y) == [29, 11] and list(mean.y) == [20.0, 20.0]
    heat = traffic_figure(np.array(DOC["traffic"])).data[0]
    assert heat.z.tolist() == [[12, 5], [7, 9]]
    times = rank_times_figure(rows)
    assert {t.name: list(t.y) for t in times.data} == {"gather_ms": [1.0, 1.0], "a2a_ms": [2.0, 4.0],
                                                       "expert_wall_ms": [6.5, 2.5]}
    table = comparison_table({"contiguous": DOC}).iloc[0]
    assert table["load_max_over_mean"] == 30 / 20 and table["straggler_factor"] == 1.5
    assert table["a2a_share"] == 0.5 and table["forward_ms"] == 10.0  # max(2/10, 4/8); the slowest rank


def view_app(variant: dict) -> None:
    from dashboard.result import RunResult
    from dashboard.views import parallel
    from moe import MoEConfig, MoELayer
    from moe.scenarios import make_batch

    cfg = MoEConfig(d_model=12, d_expert=24, seed=1, **variant)
    batch = make_batch("clusters", cfg.d_model, 48, seed=cfg.seed, n_clusters=3, skew=2.0)
    _, trace = MoELayer(cfg)(batch.x)
    trace = trace.cpu()
    parallel.render(RunResult(config=cfg, scenario="clusters", scenario_params={"n_clusters": 3, "skew": 2.0},
                              trace=trace, per_expert=trace.per_expert(), summary=trace.summary()))


def ep_charts(at: AppTest) -> list:
    """The charts of the page's own runs (the Placement section's, keyed ep_place_*, aside)."""
    return [c for c in at.get("plotly_chart") if not c.key.startswith("ep_place_")]


def test_the_view_runs_contiguous_and_planned_and_the_prediction_holds():
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=30).run()
    assert not at.exception and "Not run yet" in "\n".join(c.value for c in at.caption)
    assert "--clusters 3 --skew 2.0" in at.code[0].value
    at.button(key="ep_run").click().run()
    assert "job 1 of 2" in at.get("progress")[0].proto.text  # the jobs run in the background
    until_finished(at, 400)  # two torchrun jobs; slow when the machine's cores are shared
    assert not at.exception and not at.error, at.error
    runs = at.session_state["ep_runs"]
    for name in ("contiguous", "planned"):
        measured = [r["assignments"] for r in runs["docs"][name]["per_rank"]]
        assert measured == runs["predicted"][name]
    assert runs["docs"]["planned"]["placement"]["redundant_slots"] == 2
    assert len(ep_charts(at)) == 5  # load, then traffic and times for each placement
    captions = "\n".join(c.value for c in at.caption)
    assert "straggler_factor** = median over the repeats of (max over ranks of expert_ms / mean" in captions
    assert captions.count("spread over 5 repeats: min–max ") == 2 and "immune" not in captions


SPREAD = {"repeats": 5, "median": 1.5, "min": 1.01, "q1": 1.2, "q3": 1.6, "max": 1.76,
          "per_repeat": [1.01, 1.2, 1.5, 1.6, 1.76]}


def draw_app(runs: dict) -> None:
    from dashboard.views import parallel
    parallel._draw(runs)


def test_the_page_shows_the_straggler_spread_and_a_kept_placement():
    doc = {**DOC, "straggler_spread": SPREAD}
    note = "kept the current placement: the planned layout (2 redundant slots) would give the busiest rank 31 ..."
    runs = {"docs": {"contiguous": doc, "planned": doc}, "predicted": {}, "kept_current": True, "plan_note": note}
    at = AppTest.from_function(draw_app, args=(runs,), default_timeout=30).run()
    assert not at.exception
    assert at.info[0].value.startswith("The planner kept the current placement")
    captions = [c.value for c in at.caption]
    assert captions.count("spread over 5 repeats: min–max 1.01–1.76, IQR 1.20–1.60") == 2
    table = comparison_table({"planned": doc}).iloc[0]
    assert (table["straggler_min"], table["straggler_max"], table["repeats"]) == (1.01, 1.76, 5)
    idle = {**doc, "straggler_factor": None, "straggler_spread": {**SPREAD, "min": None}}  # strict JSON's NaN
    row = comparison_table({"planned": idle}).iloc[0]
    assert np.isnan(row["straggler_factor"]) and np.isnan(row["straggler_min"])
    at = AppTest.from_function(draw_app, args=({**runs, "docs": {"planned": idle}},), default_timeout=30).run()
    assert not at.exception and at.metric[0].value == "nan"


def until_finished(at: AppTest, timeout: float, job: str = "ep_job") -> None:
    """Rerun the page (as its polling fragment does) until the background run in session key `job` has ended."""
    import time

    deadline = time.monotonic() + timeout
    while job in at.session_state and at.session_state[job].running:
        assert time.monotonic() < deadline, "the expert-parallel run did not end"
        time.sleep(0.5)
    at.run(timeout=120)
    at.run(timeout=120)  # the first run notices the end and reruns; AppTest runs once per call


def test_a_configuration_ep_cannot_run_says_why():
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, noise_std=0.5),), default_timeout=30).run()
    assert not at.exception
    assert "noise_std=0.5" in at.error[0].value and not at.button


def test_the_flags_rebuild_the_sidebars_config_exactly():
    """Every config field the sidebar can set travels to ep-report: shared experts, groups, activation, ..."""
    import pytest

    from dashboard.result import RunResult
    from dashboard.views.parallel import ep_flags
    from moe import MoEConfig, MoELayer
    from moe.cli.main import build_parser
    from moe.cli.options import resolve
    from moe.scenarios import make_batch

    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=8, top_k=4, n_group=4, topk_group=2, shared_experts=2,
                    d_shared=24, shared_gate=True, activation="gelu", gated=False, expert_biases=True,
                    sparsity_mode="relative", normalize_topk=False, capacity_factor=1.5, seed=2)
    batch = make_batch("gaussian", 8, 16, seed=2)
    _, trace = MoELayer(cfg)(batch.x)
    result = RunResult(config=cfg, scenario="gaussian", scenario_params={}, trace=trace,
                       per_expert=trace.per_expert(), summary=trace.summary())
    args = build_parser().parse_args(["ep-report", *ep_flags(result)])
    assert resolve(args)[0] == cfg
    with pytest.raises(ValueError, match="--seq-len S"):
        ep_flags(RunResult(config=cfg.replace(capacity_scope="sequence"), scenario="gaussian", scenario_params={},
                           trace=trace, per_expert=trace.per_expert(), summary=trace.summary()))
    choice = MoEConfig(d_model=8, d_expert=16, n_experts=6, top_k=1, router="expert_choice", capacity_scope="sequence")
    _, trace = MoELayer(choice)(batch.x)  # (B, S, D): C = ceil(S·K/E) per sequence, not over all B·S tokens
    with pytest.raises(ValueError, match="--seq-len S"):
        ep_flags(RunResult(config=choice, scenario="gaussian", scenario_params={}, trace=trace,
                           per_expert=trace.per_expert(), summary=trace.summary()))


def test_too_many_ranks_without_replicas_is_a_clear_message_and_starts_nothing():
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=30).run()
    at.slider(key="ep_world").set_value(6)
    at.number_input(key="ep_slots").set_value(1).run()
    assert "only the planned placement with R ≥ 2 can run" in at.info[0].value
    at.button(key="ep_run").click().run()
    assert not at.exception and "6 ranks but only 4 experts + 1 redundant slots" in at.error[0].value
    assert "ep_runs" not in at.session_state
    assert "is stopped; **Cancel**" in "\n".join(c.value for c in at.caption)


def test_more_redundant_slots_than_the_planner_takes_are_refused_before_the_contiguous_run():
    """R ≤ 7·E on the input, the planner takes R ≤ E·(W−1): R = 28 at E=4, W=2 ran the whole contiguous job, then
    failed and dropped its results."""
    from ep_support import job_processes
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=30).run()
    at.number_input(key="ep_slots").set_value(28).run()
    at.button(key="ep_run").click().run()
    assert not at.exception and len(at.error) == 1
    assert at.error[0].value.startswith("The expert-parallel job did not start: 28 redundant slots exceed E·(W-1) = 4")
    assert "ep_job" not in at.session_state and job_processes(os.getpid()) == []


def test_missing_torchrun_is_said_on_the_page(monkeypatch):
    from dashboard.views import parallel

    def missing():
        raise ValueError("torchrun is missing: this PyTorch build has no torch.distributed.run")
    monkeypatch.setattr(parallel, "check_torchrun", missing)
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=30).run()
    assert not at.exception and "torchrun is missing" in at.error[0].value and not at.button


def test_an_interrupted_wait_kills_the_whole_tree():
    """A BaseException out of the progress callback (the run's cancel) ends torchrun and every rank."""
    import pytest
    from ep_support import job_processes, kill_left, still_running
    from moe.cli.ep_report import start_ep_job

    class Interrupted(BaseException):
        pass

    procs = []

    def progress(p):
        procs[:] = job_processes(job.proc.pid)
        if p.started == 2:  # both ranks run, each in a session of its own
            raise Interrupted
    job = start_ep_job(2, ["--tokens", "4096", "--d-model", "256", "--repeats", "100000"], timeout_s=120)
    try:
        with pytest.raises(Interrupted):
            job.wait(poll_s=0.2, on_progress=progress)
        assert len(procs) == 3 and still_running(procs) == []
    finally:
        kill_left(procs)


def test_cancel_in_the_view_stops_the_job_and_draws_nothing(monkeypatch):
    import time

    from dashboard.views import parallel
    from ep_support import job_processes, kill_left, ready_processes, still_running

    # A job that lasts until cancelled: the layer's own is over in about 2 s after the ranks are ready, which a
    # loaded machine can spend before the next page run (the page would show the planned job by then).
    monkeypatch.setattr(parallel, "ep_flags", lambda result, flags=parallel.ep_flags: [*flags(result), "--repeats",
                                                                                         "100000"])
    at = AppTest.from_function(view_app, args=(dict(n_experts=4, top_k=2),), default_timeout=30).run()
    at.button(key="ep_run").click().run()
    procs = ready_processes(at.session_state["ep_job"], 2)  # the job in progress, both ranks ready and alive
    try:
        assert len(procs) == 3  # torchrun and its two ranks
        at.run()
        assert "2/2 ready" in at.get("progress")[0].proto.text
        at.button(key="ep_cancel").click().run()
        at.run()
        assert still_running(procs) == [] and not at.exception
    finally:
        kill_left(procs)  # a failure above leaves no process to the next test
    assert "Cancelled: the expert-parallel job was stopped and no process is left." in at.info[0].value
    assert "ep_runs" not in at.session_state and not ep_charts(at) and not at.get("progress")
    time.sleep(2)
    assert job_processes(os.getpid()) == []  # no planned job started after the cancel


def test_an_over_budget_job_is_refused_on_the_page_and_starts_nothing(monkeypatch):
    from ep_support import job_processes

    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "1")
    at = AppTest.from_function(view_app, args=(dict(n_experts=8, top_k=2),), default_timeout=30).run()
    at.slider(key="ep_world").set_value(8).run()
    at.button(key="ep_run").click().run()
    assert not at.exception and len(at.error) == 1
    message = at.error[0].value
    assert message.startswith("The expert-parallel job did not start: the expert-parallel job needs about")
    assert "8 rank processes 2.5 GiB" in message and "use at most 2 processes" in message
    assert "ep_job" not in at.session_state and job_processes(os.getpid()) == []
