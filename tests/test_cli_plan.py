"""`python -m moe plan`: the replay's JSON and CSV, the export files, one-line errors with exit status 2."""
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from moe.cli.main import main
from moe.metrics import balancedness_vllm
from moe.parallel.export import read_plan
from moe.parallel.replay import rank_load, window_counts
from moe.parallel.judge import current_layout
from moe.traces.summary import summarize
from trace_support import megatron_records, write_megatron


def _trace(tmp_path):
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, megatron_records(12, 2, 60, 8, 2, hot=5))
    return str(path)


def test_json_windows_verdict_and_plan(tmp_path, capsys):
    path = _trace(tmp_path)
    code = main(["plan", path, "--world-size", "4", "--redundant-slots", "4", "--n-experts", "8", "--window", "3"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    doc = json.loads(out)
    s = summarize(path, n_experts=8)
    windows = window_counts(s.load["0"], 3)                                           # (4, 8)
    current = [row for row in doc["windows"]["0"] if row["placement"] == "current"]
    expected = balancedness_vllm(rank_load(windows, current_layout(8, 4)))
    assert [row["balancedness_vllm"] for row in current] == list(expected)
    assert {row["placement"] for row in doc["windows"]["1"]} == {"current", "planned", "eplb"}
    assert doc["windows_per_layer"] == 4
    # the verdict quotes, to two decimals, the p50s the JSON lists for its layer (current, then the planner it names)
    assert doc["redundant_slots"] == 4 and doc["replayed_slots"] == [4]
    found = re.search(r"(DeepSeek's EPLB|planned \(.*\)) with R=(\d+) lifts the p50 balancedness of layer (\S+) from "
                      r"([\d.]+) to ([\d.]+)", doc["verdict"]) or re.search(
        r"best: layer (\S+), (DeepSeek's EPLB|planned \(.*\)) with R=(\d+), p50 balancedness ([\d.]+) → ([\d.]+)",
        doc["verdict"])
    assert found, doc["verdict"]
    who, R, layer = ((found[1], found[2], found[3]) if found[1].startswith(("DeepSeek", "planned"))
                     else (found[2], found[3], found[1]))
    p50 = doc["layers"][layer]["slots"][R]["next_window_p50"]
    name = "eplb" if who.startswith("DeepSeek") else "planned"
    assert (found[4], found[5]) == (f"{p50['current']:.2f}", f"{p50[name]:.2f}")
    ranks = doc["plan"]["0"]["ranks"]
    assert all(isinstance(e, int) for r in ranks for e in r) and sorted({e for r in ranks for e in r}) == list(range(8))
    planned = rank_load(s.load["0"].sum(0)[None], current_layout(8, 4))[0]  # whole-log plan: never worse
    assert max(doc["plan"]["0"]["predicted_load"]) <= planned.max()


def test_csv_and_export(tmp_path, capsys):
    path, out_file = _trace(tmp_path), tmp_path / "sglang.json"
    code = main(["plan", path, "--world-size", "4", "--redundant-slots", "4", "--n-experts", "8", "--format", "csv",
                 "--export", "sglang", "--out", str(out_file)])
    out, _ = capsys.readouterr()
    assert code == 0
    frame = pd.read_csv(io.StringIO(out))
    assert set(frame.columns) >= {"layer", "window", "placement", "balancedness_vllm", "balancedness_sglang"}
    back = read_plan(str(out_file), 8, 4)
    assert len(back.layouts) == 2 and all(lay.n_slots == 12 for lay in back.layouts)
    code = main(["plan", path, "--world-size", "4", "--redundant-slots", "4", "--n-experts", "8",
                 "--export", "sglang", "--out", str(out_file)])
    doc = json.loads(capsys.readouterr().out)
    rows = json.loads(out_file.read_text())["physical_to_logical_map"]
    assert code == 0 and len(rows) == 2
    for layer in ("0", "1"):  # each exported row is the plan the JSON reports for that layer, rank by rank
        assert rows[int(layer)] == [e for r in doc["plan"][layer]["ranks"] for e in r]


def test_sglang_rows_are_layer_ids_with_the_model_layer_count(tmp_path, capsys):
    path, out_file = tmp_path / "router_trace_rank0.jsonl", tmp_path / "sglang.json"
    write_megatron(path, [dict(r, layer=3 if r["layer"] == 1 else 0)  # layers 0 and 3 routed, 1 and 2 not
                          for r in megatron_records(12, 2, 60, 8, 2, hot=5)])
    base = ["plan", str(path), "--world-size", "4", "--redundant-slots", "4", "--n-experts", "8",
            "--export", "sglang", "--out", str(out_file)]
    assert main([*base, "--num-layers", "6"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = json.loads(out_file.read_text())["physical_to_logical_map"]
    trivial = [p % 8 for p in range(12)]
    assert len(rows) == 6 and rows[1] == rows[2] == rows[4] == rows[5] == trivial
    assert rows[0] == [e for r in doc["plan"]["0"]["ranks"] for e in r]
    assert rows[3] == [e for r in doc["plan"]["3"]["ranks"] for e in r] != trivial
    assert main(base) == 0 and len(json.loads(out_file.read_text())["physical_to_logical_map"]) == 4


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    path = _trace(tmp_path)
    for argv, message in ((["--redundant-slots", "3", "--export", "vllm", "--out", str(tmp_path / "x.json")],
                           "use R in [4, 8]"),
                          (["--export", "vllm"], "--export and --out go together"),
                          (["--layer", "nope"], "layer 'nope' is not in the log"),
                          (["--redundant-slots", "4", "--export", "sglang", "--out", str(tmp_path / "x.json"),
                            "--layer", "0"], "--export sglang writes every layer of the model"),
                          (["--num-layers", "4"], "--num-layers is the row count of SGLang's map"),
                          (["--redundant-slots", "4", "--export", "sglang", "--out", str(tmp_path / "x.json"),
                            "--num-layers", "1"], "the log has layer 1, which does not fit --num-layers 1"),
                          (["--export", "vllm", "--out", str(tmp_path / "no" / "x.json")], "its folder does not exist"),
                          (["--export", "vllm", "--out", str(tmp_path)], "it is a folder"),
                          (["--redundant-slots", "4,x"], "expected an integer ≥ 0, got 'x'"),
                          (["--export", "vllm", "--out", "   "], "--out is empty"),  # it wrote a file named "   "
                          (["--export", "vllm", "--out", ""], "--out is empty"),  # it refused after the replay
                          (["--nodes", "3"], "4 GPUs do not split over 3 nodes"),  # said in notes only
                          (["--nodes", "2", "--groups", "6"], "8 experts do not split into 6 groups")):
        code = main(["plan", path, "--world-size", "4", "--n-experts", "8", *argv])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.json").exists()


def test_several_r_are_replayed_and_the_plan_takes_the_largest(tmp_path, capsys):
    """--redundant-slots 4,0,2: R = 0, 2 and 4 replayed (rows and a summary each), the plan with R = 4 (the verdict
    says so when it names another R);
    a layer named twice is replayed once; every number of a summary names its definition."""
    from moe.cli.plan import SUMMARY_DEFINITIONS
    from moe.definitions import DEFINITIONS
    path = _trace(tmp_path)
    code = main(["plan", path, "--world-size", "4", "--n-experts", "8", "--window", "3", "--redundant-slots",
                 "4,0,2", "--layer", "1", "--layer", "1"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["redundant_slots"] == 4 and doc["replayed_slots"] == [0, 2, 4]
    named = int(re.search(r"with R=(\d+)", doc["verdict"])[1])  # the verdict's best R; the plan's is 4
    assert doc["verdict"].endswith("; the plan below (and --export) has R=4, the largest given") == (named != 4)
    assert list(doc["layers"]) == ["1"] and list(doc["layers"]["1"]["slots"]) == ["0", "2", "4"]
    rows = doc["windows"]["1"]
    assert {(row["placement"], row["redundant_slots"]) for row in rows} == {  # DeepSeek's EPLB: (E + R) % W == 0
        ("current", 0), ("planned", 0), ("planned", 2), ("planned", 4), ("eplb", 0), ("eplb", 4)}
    assert len(rows) == len({(row["placement"], row["redundant_slots"], row["window"]) for row in rows})  # once each
    plan = doc["plan"]["1"]  # from the whole log, with the largest R
    assert not plan["kept_current"] and sum(map(len, plan["ranks"])) == 8 + 4
    assert plan["note"] == "planned 4 redundant slots"
    for R, summary in doc["layers"]["1"]["slots"].items():
        assert set(summary) == set(SUMMARY_DEFINITIONS)
        p50 = summary["next_window_p50"]
        for name in p50:  # each p50 is the median of its rows' balancedness, after window 0
            values = [row["balancedness_vllm"] for row in rows if row["placement"] == name and row["window"] > 0
                      and row["redundant_slots"] == (0 if name == "current" else int(R))]
            assert p50[name] == pytest.approx(float(np.median(values)))
    assert all(name in DEFINITIONS for name in SUMMARY_DEFINITIONS.values())
    rng = np.random.default_rng(1)  # a hot expert that moves every step: replicas planned on the past miss it
    rows = [f"{s},{layer},{e},{int(rng.integers(0, 50) * (3 if e == s % 8 else 1))}"
            for s in range(40) for layer in ("0", "1") for e in range(8)]
    (tmp_path / "moving.csv").write_text("step,layer,expert,count\n" + "\n".join(rows) + "\n")
    assert main(["plan", str(tmp_path / "moving.csv"), "--world-size", "4", "--redundant-slots", "0,4",
                 "--window", "4"]) == 0
    text = json.loads(capsys.readouterr().out)["verdict"]
    assert "with R=0 lifts" in text and text.endswith("; the plan below (and --export) has R=4, the largest given")
    even = [f"{s},0,{e},50" for s in range(8) for e in range(8)]  # balanced already: "(best: …, with R=…, …)"
    (tmp_path / "even.csv").write_text("step,layer,expert,count\n" + "\n".join(even) + "\n")
    assert main(["plan", str(tmp_path / "even.csv"), "--world-size", "4", "--redundant-slots", "0,4"]) == 0
    text = json.loads(capsys.readouterr().out)["verdict"]
    named = int(re.search(r"best: layer 0, .* with R=(\d+), p50", text)[1])
    assert text.startswith("balanced already") and text.endswith("has R=4, the largest given") == (named != 4)


def test_layers_replayed_side_by_side_print_nothing_on_stderr(tmp_path):
    """A log whose map replicates experts (vLLM's EPLB state, 2 layers): the layers' threads both reach the chunk rule
    at once; in a fresh process (nothing compiled yet in it) `plan` writes nothing to stderr (numba warned of a
    second compile of it)."""
    import subprocess
    import sys

    import torch
    from fixtures_stacks import vllm_eplb_state
    state, _ = vllm_eplb_state(window=20, layers=2, n_logical=6, n_redundant=2, passes=20, seed=3)
    torch.save(state, tmp_path / "eplb.pt")
    for W in (4, 8):  # W = 8 > E = 6: the run's map gives every rank a slot, and R = 2 does for the planners
        done = subprocess.run([sys.executable, "-m", "moe", "plan", str(tmp_path / "eplb.pt"), "--world-size", str(W),
                               "--redundant-slots", "2"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stderr == "", done.stderr[-400:]
        assert json.loads(done.stdout)["replayed_slots"] == [2]


def test_a_replay_past_the_budget_is_refused_before_it_runs(tmp_path, capsys, monkeypatch):
    """An auditor's 432 KB counts file of 16,384 layers ran `plan` for 420 s to 2.1 GB under a 1 GB budget, and a
    reviewer's one layer of 16,384 experts × 200 windows grew 541 MB: the replay (`replay_bytes`) must fit half the
    budget, checked first."""
    from moe.parallel.replay import replay_bytes
    assert replay_bytes(1, 200, 2, 16384, 8) >= 541 * 2 ** 20                       # what the reviewer measured
    assert replay_bytes(16384, 8, 1, 16, 4) >= (2136 - 480) * 2 ** 20 * 0.9         # the auditor's, less imports
    layers, steps = 400, 6
    cell = np.arange(layers * steps * 4)
    path = tmp_path / "counts.csv"
    pd.DataFrame({"step": cell // (4 * layers), "layer": (cell // 4) % layers, "expert": cell % 4,
                  "count": 1 + cell % 7}).to_csv(path, index=False)
    need = replay_bytes(layers, steps, 2, 4, 2)                                       # R in {0, 2}, one step a window
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str(2 * need / 2 ** 30 * 0.99))        # half: just under it
    args = ["plan", str(path), "--world-size", "2", "--redundant-slots", "0,2", "--window", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "replaying 400 layers × 6 windows of 4 experts for 2 R would take about" in err
    assert "over half the memory budget" in err and "--layer NAME" in err
    assert main(args + ["--layer", "3", "--layer", "7"]) == 0                         # two layers: replayed
    assert sorted(json.loads(capsys.readouterr().out)["windows"]) == ["3", "7"]
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str(2 * need / 2 ** 30 * 1.001))       # enough: replayed
    assert main(args) == 0
    assert len(json.loads(capsys.readouterr().out)["windows"]) == layers


def test_sglang_rows_of_a_megatron_core_dump_count_layer_numbers_from_1(tmp_path, capsys):
    # Megatron's layer_number counts from 1 (TransformerBlock builds layer i + 1): the dump's layers 1 and 2 are the
    # model's layer ids 0 and 1, SGLang's rows 0 and 1. The map had 3 rows, row 0 trivial, each plan one row late.
    from fixtures_stacks import mcore_dumps
    mcore_dumps(tmp_path, ep_size=2, layer_numbers=[1, 2], n_experts=8, max_forwards=4)
    out_file = tmp_path / "sglang.json"
    base = ["plan", str(tmp_path), "--world-size", "2", "--redundant-slots", "2", "--export", "sglang",
            "--out", str(out_file)]
    assert main([*base, "--num-layers", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = json.loads(out_file.read_text())["physical_to_logical_map"]
    assert len(rows) == 2
    assert rows[0] == [e for r in doc["plan"]["1"]["ranks"] for e in r]  # the labels stay Megatron's numbers
    assert rows[1] == [e for r in doc["plan"]["2"]["ranks"] for e in r]
    assert main(base) == 0 and len(json.loads(out_file.read_text())["physical_to_logical_map"]) == 2
    capsys.readouterr()
    assert main([*base, "--num-layers", "1"]) == 2
    err = capsys.readouterr().err
    assert "the log has layer 2 (layer id 1: its source counts from 1), which does not fit --num-layers 1" in err
    assert "(at least 2)" in err


def test_the_replay_estimate_counts_the_runs_own_slots(tmp_path, capsys, monkeypatch):
    """A vLLM EPLB window whose map holds 400,000 slots for 2 experts: the estimate counted E + R = 2 columns, while a
    window's plans are padded to the map's width (an auditor's 3.9 M slots grew 400 MB under a 256 MiB budget)."""
    import torch
    from moe.parallel.replay import replay_bytes
    P = 400_000
    torch.save({"expert_load_window": torch.ones(1, 1, P, dtype=torch.int64),
                "physical_to_logical_map": (torch.arange(P) % 2)[None]}, str(tmp_path / "eplb.pt"))
    narrow, wide = replay_bytes(1, 1, 1, 2, 0), replay_bytes(1, 1, 1, 2, 0, P)
    assert wide > 100 * narrow
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str(wide / 2 ** 30 * 1.5))  # half of it is under the estimate
    assert main(["plan", str(tmp_path / "eplb.pt"), "--world-size", "2"]) == 2
    assert "would take about" in capsys.readouterr().err


def test_nothing_to_judge_names_no_plan_r(tmp_path, capsys):
    """An auditor's log whose windows after the first hold no token: "nothing to judge" names no R, so the CLI does
    not add "the plan below (and --export) has R=2" as if the verdict had named another."""
    path = tmp_path / "idle.csv"
    path.write_text("step,layer,expert,count\n" + "".join(f"{s},0,{e},{3 if s == 0 else 0}\n" for s in range(4)
                                                          for e in range(4)))
    assert main(["plan", str(path), "--world-size", "2", "--redundant-slots", "0,2", "--window", "1"]) == 0
    text = json.loads(capsys.readouterr().out)["verdict"]
    assert text.startswith("nothing to judge: on every layer most windows after planning hold no token"), text
    assert "the plan below" not in text
