"""The Runs page's traces: a trace file by path opens the per-layer heatmaps, the worst (step, layer) and a plan."""
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.figures.parallel import plan_load_figure, trace_load_figure, trace_worst_figure
from moe.traces.summary import summarize
from trace_support import PLACEMENT_CHARTS, megatron_records, traces_app, write_megatron

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # the test files lie under a root (conftest.py)


def _app(path: str, **numbers) -> AppTest:
    at = AppTest.from_function(traces_app, default_timeout=60).run()
    at.radio(key="trace_source").set_value("Path on the server").run()
    for key, value in numbers.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="trace_path").set_value(path).run()
    return at


def test_a_megatron_trace_opens_with_worst_heatmaps_and_plan(tmp_path):
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, megatron_records(3, 2, 30, 8, 2, hot=6))
    at = _app(str(path), trace_experts=8)
    assert not at.exception and not at.error, at.error
    s = summarize(str(path), n_experts=8)
    worst = s.worst()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Worst (step, layer)"] == f"{worst['step']}, {worst['layer']}" and metrics["Steps"] == "3"
    charts = at.get("plotly_chart")
    # worst (step × layer), load (step × expert) of the worst layer, the run's views (layer × expert at a step,
    # percentiles across layers, dead experts, hot experts and their persistence), predicted plan; no tokens: no
    # per-token views
    assert [c.key for c in charts] == ["trace_worst_chart", "trace_load_chart", "run_layer_expert_chart",
                                       "run_pct_tokens_chart", "run_pct_ratio_chart", "run_dead_chart",
                                       "run_hot_chart", "run_persist_chart", "trace_plan_chart",
                          *PLACEMENT_CHARTS]
    text = "\n".join(c.value for c in at.caption)
    assert "busiest expert furthest above the mean" in text and "logits sidecar" in text
    assert f"{s.plan(2, 2)['planned_straggler']:.3f}" in [m.value for m in at.metric]


def test_bad_files_are_one_clear_message(tmp_path):
    path = tmp_path / "cut.jsonl"
    write_megatron(path, megatron_records(1, 2, 4, 8, 2))
    path.write_text(path.read_text()[:-20])  # the last line is cut
    at = _app(str(path), trace_experts=8)
    assert not at.exception and "line 2 is truncated" in at.error[0].value
    assert at.error[0].value.startswith("This trace cannot be opened: `/")  # the path, quoted
    at = _app(str(tmp_path / "nothing.jsonl"))
    assert not at.exception and "not under a directory this server may open" in at.error[0].value
    write_megatron(tmp_path / "ok.jsonl", megatron_records(1, 2, 4, 8, 2))
    at = _app(str(tmp_path / "ok.jsonl"), trace_experts=8, trace_layers=3)
    assert not at.exception and "3 were expected" in at.error[0].value


def test_trace_figures_carry_the_numbers():
    load = np.array([[1, 5], [3, 3]])
    heat = trace_load_figure(load, [0, 1], "0", worst_step=0)
    assert heat.data[0].z.tolist() == [[1, 5], [3, 3]] and list(heat.data[0].y) == [0, 1]
    import pandas as pd
    rows = pd.DataFrame({"step": [0, 0, 1, 1], "layer": ["0", "1", "0", "1"], "max_over_mean": [1.0, 2.0, 1.5, 1.2]})
    worst = trace_worst_figure(rows, ["0", "1"]).data[0]
    assert worst.z.tolist() == [[1.0, 2.0], [1.5, 1.2]]
    doc = {"planned_load": [5, 5], "contiguous_load": [8, 2]}
    bars = plan_load_figure(doc).data
    assert list(bars[0].y) == [8, 2] and list(bars[1].y) == [5, 5] and list(bars[2].y) == [5.0, 5.0]


def test_an_upload_is_copied_in_chunks_and_read_like_a_path(tmp_path):
    import io

    from dashboard.views import traces
    write_megatron(tmp_path / "t.jsonl", megatron_records(2, 2, 6, 8, 2, hot=1))

    class Upload(io.BytesIO):  # what st.file_uploader returns: a BytesIO with a name and a size
        name = "router_trace_rank0.jsonl"

        @property
        def size(self) -> int:
            return len(self.getbuffer())

    opened = traces._open(Upload((tmp_path / "t.jsonl").read_bytes()), "", 8, None, "softmax")
    want = summarize(str(tmp_path / "t.jsonl"), n_experts=8)
    got, expected = opened.worst(), want.worst()
    assert [got[k] for k in ("step", "layer", "max_over_mean")] == [expected[k] for k in ("step", "layer",
                                                                                            "max_over_mean")]
    assert (opened.load["1"] == want.load["1"]).all()


def test_an_even_trace_keeps_contiguous_blocks_and_says_so(tmp_path, capsys):
    from moe.cli.main import main
    path = tmp_path / "even.jsonl"  # every expert serves the same count: no plan can lighten the busiest rank
    write_megatron(path, [{"step": 0, "layer": 0, "num_tokens": 32, "topk": 2,
                           "top_indices": [[t % 8, (t + 1) % 8] for t in range(32)]}])
    assert main(["trace-report", str(path), "--n-experts", "8", "--world-size", "2", "--redundant-slots", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["kept_current"] and plan["placement"]["ranks"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan["note"].startswith("kept contiguous blocks: ") and "contiguous blocks give it 32" in plan["note"]
    at = _app(str(path), trace_experts=8)
    assert not at.exception and not at.error, at.error
    assert "kept contiguous blocks" in at.info[0].value
    assert plan["compared_with"] == "contiguous blocks"  # a Megatron trace records no placement


def test_the_quick_plan_says_it_is_not_compared_with_the_runs_recorded_map(tmp_path, capsys):
    """An SGLang per_pass dump records its physical → logical map: `plan` replays the run under it, the quick plan
    compares with contiguous blocks, and now says so (an auditor read the two as disagreeing)."""
    import torch

    from fixtures_sglang import per_pass_record, placement, write_rank_file
    from moe.cli.main import main
    p2l = placement(1, 4, 6)                                                          # 4 experts on 6 slots
    counts = torch.tensor([[5, 1, 1, 1, 3, 2]], dtype=torch.int32)                    # (L, P)
    write_rank_file(tmp_path, 0, [per_pass_record(0, 0, counts)], p2l)
    assert main(["trace-report", str(tmp_path), "--world-size", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["compared_with"].startswith("contiguous blocks; this run recorded its own placement")
    assert "`python -m moe plan`" in plan["compared_with"]
    at = _app(str(tmp_path))
    assert not at.exception and not at.error, at.error
    assert any("this run recorded its own placement" in c.value for c in at.caption)


def fine_grained_app() -> None:
    """The view under the sidebar's Fine-grained preset (64 experts): the trace's count must not come from it."""
    from types import SimpleNamespace

    from dashboard.views import traces
    from moe import MoEConfig
    traces.render(SimpleNamespace(config=MoEConfig(n_experts=64, top_k=2)))


def test_the_view_asks_for_the_count_a_trace_does_not_record_and_says_which_was_used(tmp_path):
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, megatron_records(2, 2, 30, 8, 2, hot=3))  # 8 experts, no logits
    at = AppTest.from_function(fine_grained_app, default_timeout=60).run()
    at.radio(key="trace_source").set_value("Path on the server").run()
    assert at.number_input(key="trace_experts").value is None  # empty, not the sidebar's 64
    at.text_input(key="trace_path").set_value(str(path)).run()
    assert not at.exception and not at.error and not at.get("plotly_chart")
    assert "type the model's expert count" in at.warning[0].value and "at least 8" in at.warning[0].value
    at.number_input(key="trace_experts").set_value(8).run()
    worst = summarize(str(path), n_experts=8).worst()
    metrics = {m.label: m for m in at.metric}
    assert metrics["Worst (step, layer)"].delta == f"max/mean {worst['max_over_mean']:.3f}"
    text = "\n".join(c.value for c in at.caption)
    assert "**E = 8**, typed in **Experts (E)** above (the file does not record it)" in text and not at.warning
    at.number_input(key="trace_experts").set_value(64).run()  # the count a careless hand would give
    assert "**E = 64**, typed in" in "\n".join(c.value for c in at.caption)
    assert "indices reach only 7: experts 8...63 never receive a token" in at.warning[0].value


def test_a_count_the_file_records_is_used_and_named(tmp_path):
    import torch

    from moe import MoEConfig, MoELayer
    from moe.traces.parquet import TraceWriter
    _, trace = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2))(torch.randn(12, 8))
    with TraceWriter(tmp_path / "t.parquet") as w:
        w.write(trace, step=0, layer=0)
    at = _app(str(tmp_path / "t.parquet"))
    text = "\n".join(c.value for c in at.caption)
    assert not at.error and "**E = 4**, recorded in the file: one Parquet row per (token, expert)" in text
    at = _app(str(tmp_path / "t.parquet"), trace_experts=64)
    assert "the file records 4 experts" in at.error[0].value


def test_a_path_outside_the_roots_is_refused_alike_for_existing_and_missing_files(tmp_path, monkeypatch):
    from moe.roots import OUTSIDE
    monkeypatch.delenv("MOE_SCOPE_ROOTS")  # tmp_path is not under the server's directory
    write_megatron(tmp_path / "t.jsonl", megatron_records(1, 1, 4, 8, 2))
    shown = []
    for name in ("t.jsonl", "missing.jsonl"):
        at = _app(str(tmp_path / name), trace_experts=8)
        assert not at.exception and not at.get("plotly_chart")
        shown.append(at.error[0].value)
    assert shown[0] == shown[1] == f"This trace cannot be opened: {OUTSIDE}" and str(tmp_path) not in shown[0]


def test_a_single_step_gets_one_integer_tick_and_the_worst_label_stays_clear_of_the_colour_bar():
    import pandas as pd
    heat = trace_load_figure(np.array([[1, 5, 3, 3]]), [0], "0", worst_step=0)
    assert list(heat.layout.yaxis.tickvals) == [0] and list(heat.layout.yaxis.ticktext) == ["0"]
    label = heat.layout.annotations[0]
    assert label.text == "worst step" and label.xanchor == "left" and label.x == 0  # at the left, not by the bar
    rows = pd.DataFrame({"step": [0, 0], "layer": ["0", "1"], "max_over_mean": [1.0, 2.0]})
    assert list(trace_worst_figure(rows, ["0", "1"]).layout.yaxis.tickvals) == [0]


def test_a_layer_that_routed_no_token_is_named_not_left_as_dead_experts(tmp_path, capsys):
    """SGLang's recorder keeps a row for every hidden layer: a dense layer's counts stay 0 and read as 'dead
    fraction 1'. trace-report names such layers and the page says what the 1 means."""
    import torch

    from fixtures_sglang import per_pass_record, placement, write_rank_file
    from moe.cli.main import main
    counts = torch.tensor([[0, 0, 0, 0], [3, 1, 0, 2], [0, 0, 0, 0]], dtype=torch.int32)  # (L, P): layers 0, 2 dense
    write_rank_file(tmp_path, 0, [per_pass_record(0, 0, counts)], placement(3, 4, 4))
    assert main(["trace-report", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["layers_without_tokens"] == ["0", "2"] and doc["per_layer"]["0"]["dead_fraction"] == 1.0
    at = _app(str(tmp_path))
    assert not at.exception and not at.error, at.error
    assert any(i.value.startswith("2 of 3 layers routed no token in this source (`0`, `2`)") for i in at.info)
    busy = tmp_path / "busy"
    busy.mkdir()
    write_rank_file(busy, 0, [per_pass_record(0, 0, counts + 1)], placement(3, 4, 4))
    assert main(["trace-report", str(busy)]) == 0
    assert "layers_without_tokens" not in json.loads(capsys.readouterr().out)


def test_the_quick_plan_of_a_one_expert_source_takes_every_rank_count(tmp_path):
    """Redundant slots went up to 7·E with W as its default: with E = 1, W = 8 put the default over the maximum and
    the page showed Streamlit's traceback (an auditor's). Every W opens; a plan that cannot be made says why."""
    path = tmp_path / "one.csv"
    path.write_text("layer,expert,count\n0,0,5\n")
    at = _app(str(path))
    for W in (2, 5, 8):
        at.slider(key="trace_world").set_value(W).run()
        assert not at.exception, at.exception
        assert len(at.error) == 1 and at.error[0].value.startswith("No plan: "), [e.value for e in at.error]
    assert at.number_input(key="trace_slots").value == 2  # untouched: its default at the first W


def test_a_long_log_is_drawn_in_rows_of_consecutive_steps_within_the_cell_limit():
    """A 9 KB CSV of 650 steps × 16,384 experts made a 10.6 M-cell heatmap (14 MB of JSON, 5.6 s to build, a minute
    in the browser). Past HEATMAP_MAX_CELLS, rows hold consecutive steps: summed for the load, the largest for
    max/mean (NaN skipped), and the title says so; a short log keeps one row per step."""
    from dashboard.tables import HEATMAP_MAX_CELLS, step_rows
    rng = np.random.default_rng(0)
    S, E = 650, 16384
    load = rng.integers(0, 3, (S, E))
    steps = list(range(100, 100 + 2 * S, 2))                                          # every other step logged
    fig = trace_load_figure(load, steps, "0", worst_step=steps[10])
    z = np.asarray(fig.data[0].z)
    R = HEATMAP_MAX_CELLS // E                                                        # 16 rows
    assert z.shape == (R, E) and z.sum() == load.sum()
    edges = np.linspace(0, S, R + 1).round().astype(int)
    for r in range(R):                                                                # naive: each row's own steps
        assert (z[r] == load[edges[r]:edges[r + 1]].sum(axis=0)).all()
    assert list(fig.data[0].y) == [steps[i] for i in edges[:-1]] + [steps[-1] + 1]   # R + 1 edges: rows span steps
    row = int(np.searchsorted(fig.data[0].y, steps[10], side="right")) - 1            # the row the marker falls on
    assert edges[row] <= 10 < edges[row + 1] and fig.layout.shapes[0].y0 == steps[10]
    assert "650 steps in 16 rows, each the sum of 40–41 consecutive steps" in fig.layout.title.text
    short = trace_load_figure(load[:10, :8], steps[:10], "0")
    assert np.asarray(short.data[0].z).tolist() == load[:10, :8].tolist() and "<sup>" not in short.layout.title.text
    worst = np.array([[1.0, np.nan], [3.0, np.nan], [2.0, 5.0]])                      # (S, C)
    z, starts, note = step_rows(worst, [0, 1, 2], np.fmax, max_cells=4)               # 2 rows of 2 columns
    assert starts == [0, 2] and note.startswith("3 steps in 2 rows, each the largest of 1–2")
    assert z[0].tolist()[0] == 3.0 and np.isnan(z[0][1]) and z[1].tolist() == [2.0, 5.0]
