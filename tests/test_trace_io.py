"""Routing trace files: Megatron-LM JSONL and moe-scope Parquet, streamed into per-(step, layer) statistics."""
import io
import json
import os
import pathlib
import subprocess
import sys
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from moe import MoEConfig, MoELayer
from moe.parallel import placement
from moe.traces.parquet import TraceWriter
from moe.traces.readers import iter_megatron
from moe.traces.summary import summarize
from trace_support import megatron_records, write_megatron

E, K = 8, 2


def _naive_load(records, n_experts):
    """{(step, layer): (E,) counts} by plain bincount, micro-batches added."""
    out = {}
    for rec in records:
        key = (rec["step"], str(rec["layer"]))
        counts = np.bincount(np.asarray(rec["top_indices"]).ravel(), minlength=n_experts)
        out[key] = out.get(key, 0) + counts
    return out


def test_megatron_load_worst_and_plan_match_a_plain_count(tmp_path):
    records = list(megatron_records(steps=3, layers=2, tokens=40, n_experts=E, top_k=K, hot=5, microbatches=2))
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, records)
    s = summarize(str(path), n_experts=E, n_layers=2)
    naive = _naive_load(records, E)
    assert s.layers == ["0", "1"] and s.steps == [0, 1, 2] and s.records == 12 and not s.has_logits
    for (step, layer), counts in naive.items():
        assert s.load[layer][step].tolist() == counts.tolist()
        row = s.rows[(s.rows.step == step) & (s.rows.layer == layer)].iloc[0]
        assert row["max_over_mean"] == pytest.approx(counts.max() / counts.mean())
        assert row["tokens"] == 80 and np.isnan(row["aux_loss"])  # no logits: probability side unknown
    worst_key = max(naive, key=lambda k: naive[k].max() / naive[k].mean())
    assert (s.worst()["step"], s.worst()["layer"]) == worst_key
    total = sum(naive.values())
    assert s.expert_load().tolist() == total.tolist()
    doc = s.plan(world_size=2, redundant_slots=2)
    assert doc["placement"] == placement.plan(total, 2, 2).placement.to_dict()
    assert doc["planned_load"] == placement.predicted_load(placement.plan(total, 2, 2).placement, total).tolist()
    assert doc["planned_straggler"] < doc["contiguous_straggler"]
    # the summed load is planned against contiguous blocks, not a run's own map: the note said "current placement"
    assert doc["note"].endswith(f"(contiguous blocks: {max(doc['contiguous_load'])})")


def test_megatron_logits_sidecar_gives_the_probability_side(tmp_path):
    from moe import trace_from_routing
    logits = torch.randn(6, E).to(torch.bfloat16)  # (T, E)
    idx = logits.float().topk(K, dim=-1).indices  # (T, K)
    raw = logits.view(torch.int16).numpy().tobytes()
    (tmp_path / "logits_rank0.bin").write_bytes(raw)
    rec = {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 0, "rank": 0, "num_tokens": 6,
           "topk": K, "logit_offset": 0, "logit_bytes": len(raw), "logit_shape": [6, E],
           "top_indices": idx.tolist()}
    write_megatron(tmp_path / "router_trace_rank0.jsonl", [rec])
    s = summarize(str(tmp_path / "router_trace_rank0.jsonl"), n_experts=E)
    want = trace_from_routing(MoEConfig(n_experts=E, top_k=K), logits.float(), idx).summary()
    assert s.has_logits and s.rows["aux_loss"][0] == pytest.approx(want["aux_loss"], rel=1e-6)


def test_a_megatron_file_with_logits_takes_its_routers_score_from_the_weights_dump(tmp_path):
    """router_state_rank0.pt beside the file says the router scores with sigmoid: probabilities by softmax (the
    default --score) were computed silently, wrong numbers; now that is one line naming the score to give."""
    from moe import trace_from_routing
    from moe.traces.opener import open_trace
    from trace_support import write_router_state
    logits = torch.randn(6, E).to(torch.bfloat16)                                     # (T, E)
    idx = logits.float().topk(K, dim=-1).indices                                      # (T, K)
    raw = logits.view(torch.int16).numpy().tobytes()
    (tmp_path / "logits_rank0.bin").write_bytes(raw)
    rec = {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 0, "rank": 0, "num_tokens": 6,
           "topk": K, "logit_offset": 0, "logit_bytes": len(raw), "logit_shape": [6, E], "top_indices": idx.tolist()}
    path = str(tmp_path / "router_trace_rank0.jsonl")
    write_megatron(path, [rec])
    assert open_trace(path).has_logits  # no weights dump: the score given is used
    write_router_state(tmp_path, 0, [0], E, K, score_function="sigmoid")
    with pytest.raises(ValueError, match="router_state_rank0.pt says the router scores with sigmoid, but the "
                                         "probabilities were asked with softmax; .*--score sigmoid"):
        open_trace(path)
    s = open_trace(path, score="sigmoid")
    want = trace_from_routing(MoEConfig(n_experts=E, top_k=K, score="sigmoid"), logits.float(), idx).summary()
    assert s.rows["aux_loss"][0] == pytest.approx(want["aux_loss"], rel=1e-6)


@pytest.mark.parametrize("failed, where", [(4, "line 5: some records carry logits and others not"),
                                           (0, "7 of 8 records carry logits")])
def test_a_megatron_trace_with_logits_on_some_records_reads_its_counts(tmp_path, capsys, failed, where):
    """RouterTracer._record writes a record's logit_* fields only where capturing them worked (no hidden state of the
    record's token count, or gating() raised): such a file was refused ("some records carry logits and others not;
    copy the logits sidecar"), the sidecar being there. Now its counts are read, every record, and it says why the
    logits' numbers are missing, also where the first record has none (step 0, first micro-batch, layer 0: the file
    was read as counts alone, without saying why the logits' numbers were missing)."""
    from moe.cli.main import main
    from moe.traces.opener import PARTIAL_LOGITS, open_trace
    records, raw, offset = [], b"", 0
    for i, rec in enumerate(megatron_records(steps=2, layers=2, tokens=5, n_experts=E, top_k=K, microbatches=2)):
        if i != failed:  # the capture failed there
            logits = torch.randn(5, E).to(torch.bfloat16)
            data = logits.view(torch.int16).numpy().tobytes()
            raw += data
            fields = {"logit_offset": offset, "logit_bytes": len(data), "logit_shape": [5, E]}
            offset += len(data)
            rec = {**{k: v for k, v in rec.items() if k != "top_indices"}, **fields, "top_indices": rec["top_indices"]}
        records.append(rec)
    (tmp_path / "logits_rank0.bin").write_bytes(raw)
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, records)
    s = open_trace(str(path), n_experts=E)
    assert not s.has_logits and s.steps == [0, 1] and s.layers == ["0", "1"]
    for (step, layer), counts in _naive_load(records, E).items():
        assert s.load[layer][step].tolist() == counts.tolist()
    assert where in s.routing_log.meta[PARTIAL_LOGITS]
    assert main(["trace-report", str(path), "--n-experts", str(E), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "the loads count every record" in doc["meta"][PARTIAL_LOGITS]


def test_writer_round_trip_equals_the_engine_forward(tmp_path):
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2)
    layers = [MoELayer(cfg.replace(seed=i)) for i in range(2)]
    want = {}
    with TraceWriter(tmp_path / "run.parquet") as w:
        for step in range(3):
            x = torch.randn(20, 8, generator=torch.Generator().manual_seed(step))  # (T, D)
            for i, layer in enumerate(layers):
                _, trace = layer(x)
                w.write(trace, step=step, layer=i)
                want[(step, str(i))] = trace
    s = summarize(str(tmp_path / "run.parquet"))
    assert s.source == "parquet" and s.has_logits and s.n_experts == 4 and s.steps == [0, 1, 2]
    for (step, layer), trace in want.items():
        row = s.rows[(s.rows.step == step) & (s.rows.layer == layer)].iloc[0]
        assert row["aux_loss"] == pytest.approx(trace.summary()["aux_loss"], rel=1e-5)
        assert s.load[layer][step].tolist() == trace.routed.sum(0).tolist()


def test_writer_called_again_for_a_step_and_layer_adds_a_micro_batch(tmp_path):
    """Gradient accumulation: TraceWriter.write twice per (step, layer), back to back (micro-batches of 20 and 12
    tokens) reads as interleaved writes read, and the load is the two forwards' routed counts added."""
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2)
    layers = [MoELayer(cfg.replace(seed=i)) for i in range(2)]
    traces = {(step, i, mb): layers[i](torch.randn(20 - 8 * mb, 8, generator=torch.Generator().manual_seed(
        10 * step + mb)))[1] for step in range(2) for i in range(2) for mb in range(2)}
    orders = {"back_to_back": [(s, i, mb) for s in range(2) for i in range(2) for mb in range(2)],
              "interleaved": [(s, i, mb) for s in range(2) for mb in range(2) for i in range(2)]}
    read = {}
    for name, order in orders.items():
        with TraceWriter(tmp_path / f"{name}.parquet") as w:
            for step, i, mb in order:
                w.write(traces[(step, i, mb)], step=step, layer=i)
        read[name] = summarize(str(tmp_path / f"{name}.parquet"))
    for s in read.values():
        assert s.steps == [0, 1] and s.layers == ["0", "1"]
        for step in range(2):
            for i in range(2):
                want = sum(traces[(step, i, mb)].routed.sum(0) for mb in range(2)).tolist()
                assert s.load[str(i)][step].tolist() == want
    a, b = (read[name].rows.sort_values(["step", "layer"]).reset_index(drop=True) for name in orders)
    assert a.equals(b)
    assert read["back_to_back"].records == read["interleaved"].records == 8  # a record per write, either way


def test_many_micro_batches_of_one_step_and_layer_are_one_record(tmp_path):
    """One token's two rows repeated 50,000 times: 50,000 micro-batches of one token, read as one record of 50,000
    tokens (each micro-batch was its own record, found by a scan of every row: quadratic in the rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from moe.traces.readers import iter_records
    n = 50_000
    pq.write_table(pa.table({"step": np.zeros(2 * n, np.int64), "layer": np.full(2 * n, "0"),
                             "token": np.zeros(2 * n, np.int64), "expert": np.tile([0, 1], n).astype(np.int64),
                             "router_logit": np.tile([1.0, 0.0], n).astype(np.float32),
                             "routed": np.tile([True, False], n)}), tmp_path / "many.parquet")
    records = list(iter_records(str(tmp_path / "many.parquet")))
    assert len(records) == 1 and records[0].top_k_index.shape == (n, 1) and not records[0].top_k_index.any()
    assert records[0].parts == n  # the file's records it joins: trace-report's "records" counts them


def test_a_token_given_twice_for_some_experts_only_is_refused(tmp_path):
    from moe.traces.parquet import trace_frame
    _, trace = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2))(torch.randn(6, 8))
    frame = trace_frame(trace)
    bad = pd.concat([frame, frame[(frame.token == 0) & (frame.expert < 2)]])  # token 0 again, for experts 0 and 1
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(ValueError, match=r"step 0, layer 0: 26 rows are not tokens × n_experts=4; every token needs "
                                         r"one row per expert"):
        summarize(str(tmp_path / "bad.parquet"))


def test_page_download_without_step_columns_reads_as_step_0_layer_0(tmp_path):
    cfg = MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2)
    _, trace = MoELayer(cfg)(torch.randn(12, 8))
    from moe.traces.parquet import trace_frame
    trace_frame(trace).drop(columns=["step", "layer"]).to_parquet(tmp_path / "old.parquet", index=False)
    s = summarize(str(tmp_path / "old.parquet"))
    assert s.steps == [0] and s.layers == ["0"]
    assert s.rows["max_over_mean"][0] == pytest.approx(trace.summary()["max_over_mean"])


def test_large_file_streams_in_bounded_memory_with_progress(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:  # ~6 MB: 40 steps × 2 layers × 4096 tokens × top-4 of 16
        for step in range(40):
            for layer in range(2):
                idx = np.argsort(rng.random((4096, 16)), axis=1)[:, :4]  # (T, K) distinct
                f.write(json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer,
                                    "rank": 0, "num_tokens": 4096, "topk": 4, "top_indices": idx.tolist()}) + "\n")
    size = path.stat().st_size
    seen = []
    tracemalloc.start()
    try:
        s = summarize(str(path), n_experts=16, progress=seen.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 5e6 and peak < size / 4, (size, peak)
    assert len(s.steps) == 40 and s.load["1"].shape == (40, 16) and s.load["1"].sum() == 40 * 4096 * 4
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 1


def _bad(tmp_path, lines: list[str], **kw) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(lines))
    with pytest.raises(ValueError) as err:
        summarize(str(path), **{"n_experts": E, **kw})
    return str(err.value)


def _lines(**kw):
    return [json.dumps(r) + "\n" for r in megatron_records(2, 3, 5, E, K, **kw)]


def test_bad_megatron_files_say_what_is_wrong(tmp_path):
    lines = _lines()
    assert "line 6 is truncated" in _bad(tmp_path, lines[:5] + [lines[5][:40]])
    assert "3 MoE layers" in _bad(tmp_path, lines, n_layers=4) and "4 were expected" in _bad(tmp_path, lines,
                                                                                              n_layers=4)
    assert "step 1 has MoE layers ['0', '1']" in _bad(tmp_path, lines[:5])  # the last step was cut
    rec = json.loads(lines[0])
    del rec["top_indices"]
    assert "misses field(s) ['top_indices']" in _bad(tmp_path, [json.dumps(rec) + "\n"] + lines[1:])
    assert "n_experts=4" in _bad(tmp_path, lines, n_experts=4)  # indices up to 7
    assert "steps ascending" in _bad(tmp_path, lines[3:] + lines[:3])
    assert "not JSON" in _bad(tmp_path, ["{oops\n"] + lines)
    (tmp_path / "ok.jsonl").write_text("".join(lines))  # no logits: the count is not in the file
    with pytest.raises(ValueError, match="does not record the number of experts; give it \\(--n-experts"):
        summarize(str(tmp_path / "ok.jsonl"))


def test_cli_trace_report_json_csv_and_one_line_errors(tmp_path):
    records = list(megatron_records(2, 2, 10, E, K, hot=1))
    path = tmp_path / "t.jsonl"
    write_megatron(path, records)
    run = lambda *a: subprocess.run([sys.executable, "-m", "moe", "trace-report", str(path), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    out = run("--n-experts", "8", "--world-size", "2", "--redundant-slots", "1")
    doc = json.loads(out.stdout)
    naive = _naive_load(records, E)
    assert doc["load"]["1"][1] == naive[(1, "1")].tolist() and doc["plan"]["placement"]["redundant_slots"] == 1
    assert doc["worst"]["max_over_mean"] == pytest.approx(max(c.max() / c.mean() for c in naive.values()))
    import pandas as pd
    table = pd.read_csv(io.StringIO(run("--n-experts", "8", "--format", "csv").stdout))
    assert table.filter(regex=r"^load_\d+$").sum(axis=1).tolist() == [20] * 4
    bad = run("--n-experts", "8", "--layers", "3")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "3 were expected" in bad.stderr
    for empty in ("", "   "):  # it wrote nothing, or a folder named "   ", and exited 0
        bad = subprocess.run([sys.executable, "-m", "moe", "trace-report", str(path), "--n-experts", "8", "--out",
                              empty], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])})
        assert bad.returncode == 2 and "--out is empty; give a path, or leave --out out" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_trace_report_out_is_checked_before_the_source_is_read(tmp_path, capsys, monkeypatch):
    """--out naming a file or a missing folder printed the raw OS error ("[Errno 17] File exists"), after reading
    the whole source."""
    from moe.cli import trace_report
    from moe.cli.main import main
    write_megatron(tmp_path / "t.jsonl", megatron_records(2, 1, 3, E, K))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    monkeypatch.setattr(trace_report, "open_trace", lambda *a, **k: pytest.fail("the source was read"))
    for out, message in (("notes.txt", "'notes.txt' is a file, not a directory; give a new or empty directory"),
                         ("notes.txt/log", "'notes.txt/log' lies under '" + str(tmp_path / "notes.txt") +
                          "', a file; give a new directory in a folder"),
                         ("full", "'full' is not empty; give a new directory for the routing log")):
        monkeypatch.chdir(tmp_path)
        assert main(["trace-report", "t.jsonl", "--n-experts", str(E), "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    monkeypatch.undo()
    assert main(["trace-report", str(tmp_path / "t.jsonl"), "--n-experts", str(E), "--out",
                 str(tmp_path / "new" / "runs" / "log")]) == 0  # missing folders are made, as before
    assert (tmp_path / "new" / "runs" / "log" / "meta.json").is_file()


def test_reader_never_reads_the_whole_file(tmp_path):
    write_megatron(tmp_path / "t.jsonl", megatron_records(2, 1, 3, E, K))
    it = iter_megatron(str(tmp_path / "t.jsonl"))
    first = next(it)  # a generator: one record at a time
    assert first.step == 0 and first.top_k_index.shape == (3, K)


def test_malformed_records_name_the_line_and_field(tmp_path):
    rec = next(megatron_records(1, 1, 3, E, K))
    for change, message in ((dict(top_indices=5), "must be a list"),
                            (dict(top_indices=[[0, 1], [2]]), "'top_indices'"),
                            (dict(num_tokens=4), "expected (num_tokens=4, topk=2)"),
                            (dict(layer="x"), "field 'layer' must be an integer"),
                            (dict(top_indices=[[0, -1]] * 3), "expert indices are >= 0")):
        path = tmp_path / "m.jsonl"
        write_megatron(path, [{**rec, **change}])
        with pytest.raises(ValueError, match="line 1") as err:
            summarize(str(path), n_experts=E)
        assert message in str(err.value), str(err.value)


def test_a_cut_parquet_file_is_a_value_error(tmp_path):
    _, trace = MoELayer(MoEConfig(d_model=8, d_expert=16, n_experts=4, top_k=2))(torch.randn(12, 8))
    with TraceWriter(tmp_path / "t.parquet") as w:
        w.write(trace, step=0, layer=0)
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        summarize(str(tmp_path / "cut.parquet"))


def test_mtp_layers_stay_apart_from_decoder_layers_of_the_same_number(tmp_path):
    recs = list(megatron_records(1, 2, 4, E, K))
    mtp = {**recs[1], "block": "mtp", "mtp_idx": 0, "top_indices": [[0, 1]] * 4}  # layer 1 of MTP head 0
    write_megatron(tmp_path / "t.jsonl", recs + [mtp])
    s = summarize(str(tmp_path / "t.jsonl"), n_experts=E)
    assert s.layers == ["0", "1", "mtp0.1"] and s.load["mtp0.1"][0].tolist() == [4, 4, 0, 0, 0, 0, 0, 0]


def test_plan_options_without_a_world_size_are_refused(tmp_path, capsys):
    """--redundant-slots 2 or --layer X without --world-size were accepted and ignored (no plan is made)."""
    from moe.cli.main import main
    write_megatron(tmp_path / "t.jsonl", megatron_records(2, 1, 3, E, K))
    for flags, flag in ((["--redundant-slots", "2"], "--redundant-slots"), (["--layer", ""], "--layer")):
        assert main(["trace-report", str(tmp_path / "t.jsonl"), "--n-experts", str(E), *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flag} shapes the plan, which --world-size asks for; give --world-size W too" in err
    assert main(["trace-report", str(tmp_path / "t.jsonl"), "--n-experts", str(E), "--world-size", "2",
                 "--redundant-slots", "2"]) == 0


def test_whole_read_options_with_follow_are_refused(tmp_path, capsys):
    """`trace-report LOG --follow --n-experts 7` on a 4-expert log printed its steps and exited 0: --follow dropped
    --n-experts, --out, --world-size, --layers and --format."""
    from moe.cli.main import main
    for flags, flag in ((["--n-experts", "7"], "--n-experts"), (["--out", str(tmp_path / "o")], "--out"),
                        (["--world-size", "2"], "--world-size"), (["--layers", "2"], "--layers"),
                        (["--format", "csv"], "--format csv")):
        assert main(["trace-report", str(tmp_path), "--follow", *flags]) == 2
        err = capsys.readouterr().err
        assert f"; {flag} is for reading a whole source: drop it, or drop --follow" in err, err
    assert not (tmp_path / "o").exists()
