"""The Runs page opens a routing log directory by its path and an uploaded plain-counts CSV, names the format and
its metadata, and draws the run's views with the numbers moe.traces.runstats computes; Follow reads new steps only."""
import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from moe.traces.log import RoutingLog, TokenRouting
from moe.traces.runstats import dead_experts, hot_persistence, hot_top_n, layer_percentiles
from moe.traces.store import LogWriter, write_log

from trace_support import PLACEMENT_CHARTS, traces_app

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # the test files lie under a root (conftest.py)


def _log(S: int = 6, L: int = 2, E: int = 8, K: int = 2, seed: int = 0) -> RoutingLog:
    """A log with per-token ids: counts are exactly the ids' counts; expert 5 of layer "1" is hot."""
    rng = np.random.default_rng(seed)
    step, layer, ids = [], [], []
    for s in range(S):
        for li in range(L):
            p = np.ones(E)
            p[5] += 6 * li
            chosen = np.stack([rng.choice(E, K, replace=False, p=p / p.sum()) for _ in range(20)])  # (20, K)
            step += [s * 10] * 20
            layer += [li] * 20
            ids.append(chosen)
    ids = np.concatenate(ids).astype(np.int64)
    step, layer = np.asarray(step), np.asarray(layer, dtype=np.int32)
    counts = np.zeros((S, L, E), np.int64)
    for st_, li, row in zip(step, layer, ids):
        for e in row:
            counts[st_ // 10, li, e] += 1
    return RoutingLog(source="sglang-stat", layers=["0", "1"], steps=np.arange(S) * 10, counts=counts, top_k=K,
                      meta={"world_size": 4, "files": ["a.pt", "b.pt"]},
                      tokens=TokenRouting(step=step.astype(np.int64), layer=layer, ids=ids))


def _open_path(path: str) -> AppTest:
    at = AppTest.from_function(traces_app, default_timeout=60).run()
    at.radio(key="trace_source").set_value("Path on the server").run()
    at.text_input(key="trace_path").set_value(path).run()
    return at


def _figures(at: AppTest) -> dict:
    """key -> the figure's JSON with every array as a plain (nested) list."""
    return {c.key: _plain(json.loads(c.proto.spec)) for c in at.get("plotly_chart")}


def _plain(value):
    """Plotly's JSON sends numpy arrays as base64 `bdata` with a dtype and a shape: back to lists."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_a_routing_log_directory_opens_with_every_view(tmp_path):
    log = _log()
    write_log(log, str(tmp_path / "run"))
    at = _open_path(str(tmp_path / "run"))
    assert not at.exception and not at.error, at.error
    figs = _figures(at)
    assert list(figs) == ["trace_worst_chart", "trace_load_chart", "run_layer_expert_chart", "run_pct_tokens_chart",
                          "run_pct_ratio_chart", "run_dead_chart", "run_hot_chart", "run_persist_chart",
                          "run_slots_chart", "run_co_chart", "trace_plan_chart",
                          *PLACEMENT_CHARTS]
    from dashboard.quoting import md_text
    from moe.traces.formats import FORMATS
    listed = "\n".join(m.value for m in at.markdown)
    assert all(f"- {md_text(name)}" in listed for name in FORMATS.values())  # the engine's list, not a copy
    text = "\n".join(c.value for c in at.caption)
    assert "**moe-scope routing log (a directory: meta.json, counts/, tokens/)**, written from *SGLang" in text
    assert "Metadata: `world_size` `4`; `files` 2 items, first `a.pt`" in text
    assert "**E = 8**, recorded in the file" in text and "`current_pass_balancedness`" in text
    # the last step at a glance, layer × expert
    assert figs["run_layer_expert_chart"]["data"][0]["z"] == log.counts[-1].tolist()
    pct = layer_percentiles(log.steps, log.counts)
    tokens = pct[pct["stat"] == "tokens_per_expert"]
    drawn = {t["name"]: t["y"] for t in figs["run_pct_tokens_chart"]["data"]}
    assert drawn["p95"] == pytest.approx(tokens["p95"].tolist()) and drawn["max"] == tokens["max"].tolist()
    layer = at.selectbox(key="trace_layer").value  # the worst layer: "1", where expert 5 is hot
    assert layer == "1"
    dead = dead_experts(log.steps, log.layers, log.counts)
    assert figs["run_dead_chart"]["data"][0]["y"] == dead[dead["layer"] == "1"]["dead"].tolist()
    persistence = hot_persistence(log.layer_load("1"), hot_top_n(8))
    assert figs["run_persist_chart"]["data"][0]["y"] == persistence["longest_run"].tolist()
    assert persistence.loc[5, "longest_run"] == 6  # hot at every step
    # per-token views of the last step at layer "1": slot usage adds up to the tokens' choices
    slots = np.asarray(figs["run_slots_chart"]["data"][0]["z"])
    assert slots.sum(1).tolist() == [20, 20] and (slots.sum(0) == log.counts[-1, 1]).all()


def test_the_step_slider_picks_the_layer_expert_step(tmp_path):
    log = _log()
    write_log(log, str(tmp_path / "run"))
    at = _open_path(str(tmp_path / "run"))
    at.select_slider(key="trace_step").set_value(20).run()
    assert _figures(at)["run_layer_expert_chart"]["data"][0]["z"] == log.counts[2].tolist()


def upload_app(data: bytes) -> None:
    """The page's upload path (_open copies the upload, open_trace reads it) and its drawing."""
    import io

    from dashboard.views import traces

    class Upload(io.BytesIO):  # what st.file_uploader returns: a BytesIO with a name and a size
        name = "counts.csv"

        @property
        def size(self) -> int:
            return len(self.getbuffer())

    opened = traces._open(Upload(data), "", None, None, "softmax")
    if opened is not None:
        traces._draw(opened)


def test_an_uploaded_counts_csv_shows_the_charts():
    rows = ["step,layer,expert,count"] + [f"{s},{l},{e},{(s + 1) * (e + 1) * (l + 1)}"
                                          for s in range(3) for l in range(2) for e in range(4)]
    at = AppTest.from_function(upload_app, args=("\n".join(rows).encode(),), default_timeout=60).run()
    assert not at.exception and not at.error, at.error
    text = "\n".join(c.value for c in at.caption)
    assert "**plain counts: CSV with columns layer, expert, count" in text
    figs = _figures(at)
    assert figs["run_layer_expert_chart"]["data"][0]["z"] == [[3 * (e + 1) * (l + 1) for e in range(4)]
                                                              for l in range(2)]
    assert "run_slots_chart" not in figs  # counts only: no per-token views


def test_follow_reads_new_steps_only_and_marks_the_run_idle(tmp_path):
    path = tmp_path / "live"
    writer = LogWriter(str(path), layers=["0"], n_experts=4, top_k=1)
    writer.write_step(0, [[3, 1, 0, 0]])
    writer.flush()
    at = _open_path(str(path))
    assert at.toggle(key="trace_follow").value is False and not at.error  # opened as a file: no polling
    at.toggle(key="trace_follow").set_value(True).run()
    assert not at.exception and not at.error, at.error
    assert at.success[0].value.startswith("live: step 0, last new step") and "1 part files read" in at.success[0].value
    writer.write_step(1, [[0, 0, 4, 0]])
    writer.flush()
    at.run()  # the fragment's next poll (a browser reruns it every second; here a rerun stands in)
    assert at.success[0].value.startswith("live: step 1") and "2 part files read" in at.success[0].value
    assert _figures(at)["trace_load_chart"]["data"][0]["z"] == [[3, 1, 0, 0], [0, 0, 4, 0]]
    assert not [k for k in _figures(at) if k.startswith("runs_place_")]  # no replay per new step
    assert any("paused while following" in i.value for i in at.info)
    at.number_input(key="trace_idle_after").set_value(1.0).run()
    import time
    time.sleep(1.2)
    at.run()
    assert at.warning[0].value.startswith("idle: no new step for") and "last step 1" in at.warning[0].value


def test_follow_refuses_an_expert_count_the_log_contradicts(tmp_path):
    path = tmp_path / "live"
    with LogWriter(str(path), layers=["0"], n_experts=4) as writer:
        writer.write_step(0, [[1, 1, 1, 1]])
    at = AppTest.from_function(traces_app, default_timeout=60).run()
    at.radio(key="trace_source").set_value("Path on the server").run()
    at.number_input(key="trace_experts").set_value(6)
    at.text_input(key="trace_path").set_value(str(path)).run()
    at.toggle(key="trace_follow").set_value(True).run()
    from dashboard.quoting import md_text
    assert not at.exception and md_text("records 4 experts but Experts (E) is 6") in at.error[0].value


def test_the_routing_log_zip_reads_back_as_the_same_run(tmp_path):
    import zipfile

    from dashboard.exports import routing_log_zip
    from moe.traces.store_read import read_store
    log = _log()
    with zipfile.ZipFile(__import__("io").BytesIO(routing_log_zip(log))) as zf:
        assert all(n.startswith("routing-log/") for n in zf.namelist())
        zf.extractall(tmp_path)
    back = read_store(str(tmp_path / "routing-log"))
    assert back.steps.tolist() == log.steps.tolist() and (back.counts == log.counts).all()
    assert back.layers == log.layers and back.meta == log.meta and back.source == log.source
    assert (back.tokens.ids == log.tokens.ids).all() and back.tokens.step.tolist() == log.tokens.step.tolist()


def test_follow_waits_for_the_first_step_of_an_empty_log(tmp_path):
    path = tmp_path / "live"
    writer = LogWriter(str(path), layers=["0"], n_experts=4)  # meta.json only: nothing flushed yet
    at = _open_path(str(path))
    assert "holds no counts yet" in at.error[0].value  # opened as a file: one line, and Follow is offered
    at.toggle(key="trace_follow").set_value(True).run()
    assert not at.exception and not at.error and at.info[0].value.startswith("waiting: no step written yet")
    assert not at.get("plotly_chart")
    writer.write_step(3, [[0, 2, 0, 0]])
    writer.flush()
    at.run()
    assert at.success[0].value.startswith("live: step 3") and len(at.get("plotly_chart")) > 0


def test_a_bad_rank_file_inside_a_directory_is_named_as_typed_never_resolved(tmp_path):
    """A truncated rank file of a Megatron directory: the message names it under the path as the visitor typed it."""
    folder = tmp_path / "real" / "meg"
    folder.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (folder / "router_trace_rank0.jsonl").write_text('{"step": 0, "layer": 0, "num_tokens": 1, "topk": 1, '
                                                    '"top_indices": [[0]]}\n{"step": 1, "lay')
    at = AppTest.from_function(traces_app, default_timeout=60).run()
    at.radio(key="trace_source").set_value("Path on the server").run()
    at.number_input(key="trace_experts").set_value(4)
    at.text_input(key="trace_path").set_value(str(tmp_path / "alias" / "meg")).run()
    assert not at.exception
    message = at.error[0].value
    assert "is truncated" in message and str(tmp_path / "real") not in message


def test_an_upload_is_read_within_the_budget_less_what_streamlit_holds_of_it(tmp_path, monkeypatch):
    """Streamlit keeps an upload in memory while it is read: a counts CSV whose read fits half the budget (opened by
    its path) does not fit half of the budget less the upload's own size (uploaded), and the page says why; an upload
    over half the budget is refused before it is copied."""
    from dashboard.views.traces import upload_limits
    from moe.traces.counts import CSV_EXPANSION
    rows = [f"{s},0,{e},{1 + (s * e) % 7}" for s in range(8) for e in range(900)]
    data = ("step,layer,expert,count\n" + "\n".join(rows) + "\n").encode()
    (tmp_path / "counts.csv").write_bytes(data)
    budget = 2 * CSV_EXPANSION * len(data) + len(data) // 2       # the path's read fits; less the upload, it does not
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str(budget / 2 ** 30))
    assert upload_limits(len(data)).budget == int(budget / 2 ** 30 * 2 ** 30) - len(data)
    at = _open_path(str(tmp_path / "counts.csv"))
    assert not at.exception, at.exception
    assert at.get("metric")[1].proto.body == "1"                                     # MoE layers: opened
    # at this budget the trace opens but its Placement replay (replay_bytes, as `plan` checks it) does not fit
    assert [e.value.split(" would take")[0] for e in at.error] == ["The replay cannot run: replaying this layer's 8 "
                                                                   "windows"], [e.value for e in at.error]
    at = AppTest.from_function(traces_app, default_timeout=60).run()
    at.get("file_uploader")[0].upload("counts.csv", data, "text/csv").run()
    assert not at.exception and len(at.error) == 1
    text = at.error[0].value
    assert "This trace cannot be opened" in text and "over the" in text, text
    assert "an upload is read within the budget less its own" in text and "by its path on the server" in text
    with pytest.raises(ValueError, match="over half the memory budget of .*, and Streamlit holds it in memory"):
        upload_limits(int(budget / 2 ** 30 * 2 ** 30) // 2 + 1)


def test_a_file_name_inside_a_directory_is_plain_text_in_the_message(tmp_path):
    """Only the typed path was escaped: a rank file named with Markdown showed as bold text, a link and an image the
    browser fetched from the named host."""
    import torch
    folder = tmp_path / "evil"
    folder.mkdir()
    name = "expert_distribution_recorder_**BOLD** [click](http:evil.example) ![i](http:evil.example:9)_0.pt"
    torch.save({"something": torch.zeros(1)}, str(folder / name))
    at = _open_path(str(folder))
    assert not at.exception
    message = at.error[0].value
    assert "but not a routing dump moe-scope reads" in message
    assert r"\*\*BOLD\*\* \[click\]\(http:evil.example\) \!\[i\]\(http:evil.example:9\)" in message


def test_co_occurrence_is_not_drawn_past_the_heatmap_cells(tmp_path):
    """At E = 16,384 its E × E table took 88 s and 4.5 GB for one token; a table past a heatmap's cells is not built."""
    log = _log(S=2, E=1024)
    write_log(log, str(tmp_path / "run"))
    at = _open_path(str(tmp_path / "run"))
    assert not at.exception and not at.error, at.error
    assert "run_co_chart" not in _figures(at) and "run_slots_chart" in _figures(at)
    assert any("Co-occurrence is not drawn for 1024 experts: its 1,048,576 cells are over the 262,144" in c.value
               for c in at.caption)


def test_a_megatron_trace_with_logits_on_some_records_says_so_on_the_page(tmp_path):
    """The note on why the logits' numbers are missing was only in the metadata line, which lists 12 entries: past a
    router state dump's it was not shown. It is its own line, above the metadata, which no longer repeats it."""
    import torch
    from trace_support import megatron_records, write_megatron
    E, K = 8, 2
    records, raw = [], b""
    for i, rec in enumerate(megatron_records(steps=2, layers=2, tokens=5, n_experts=E, top_k=K, microbatches=2)):
        if i:  # the first record's capture failed: Megatron-LM wrote no logit_* fields there
            data = torch.randn(5, E).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
            top = rec.pop("top_indices")
            rec.update(logit_offset=len(raw), logit_bytes=len(data), logit_shape=[5, E], top_indices=top)
            raw += data
        records.append(rec)
    (tmp_path / "logits_rank0.bin").write_bytes(raw)
    write_megatron(tmp_path / "router_trace_rank0.jsonl", records)
    at = _open_path(str(tmp_path / "router_trace_rank0.jsonl"))
    assert not at.exception and not at.error, at.error
    notes = [m.value.replace("\\", "") for m in at.info]  # md_text escapes the parentheses
    assert any(n.startswith("7 of 8 records carry logits (Megatron-LM writes none where capturing them failed): the "
                            "loads count every record") for n in notes), notes
    assert "carry logits" not in "\n".join(c.value for c in at.caption)


def test_a_log_s_own_logits_metadata_stays_its_metadata(tmp_path):
    """A reviewer's routing log whose meta.json holds its own "logits" entry: the page showed it as its own info line,
    unquoted and whole. Only a Megatron-LM log's note (ours) is; another log's entry is quoted metadata."""
    log = _log()
    log.meta["logits"] = "fp32 router logits recorded by hook v2 " + "x" * 3000
    write_log(log, str(tmp_path / "run"))
    at = _open_path(str(tmp_path / "run"))
    assert not at.exception and not at.error, at.error
    assert not [m.value for m in at.info if "fp32 router logits" in m.value]
    assert "`logits` `fp32 router logits recorded by hook" in "\n".join(c.value for c in at.caption)

