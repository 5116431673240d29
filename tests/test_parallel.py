"""Expert parallelism under torchrun (gloo, loopback): the same numbers as one process, traffic, placement."""
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from ep_support import assert_group_gone, torchrun
from moe.cli.ep_report import run_ep_job, start_ep_job
from moe import MoEConfig, MoELayer
from moe.cli.main import main
from moe.parallel.forward import straggler_spread
from moe.parallel.placement import Placement, chunk_sizes, contiguous, plan, predicted_load, save
from moe.scenarios import make_batch

FLAGS = ["--d-model", "16", "--d-expert", "32", "--scenario", "clusters", "--seed", "3", "--skew", "2"]


def _single(cfg: MoEConfig, tokens: int):
    x = make_batch("clusters", cfg.d_model, tokens, seed=cfg.seed, n_clusters=4, skew=2.0).x
    with torch.inference_mode():
        return MoELayer(cfg)(x)


def _naive_traffic(served: torch.Tensor, placement: Placement, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-by-token: who serves each assignment (replicas by chunks in token order), what travels."""
    T, E = served.shape
    seen = [0] * E
    bounds = [np.cumsum(chunk_sizes(int(served[:, e].sum()), len(placement.replicas(e)))) for e in range(E)]
    traffic, load = np.zeros((W, W), dtype=np.int64), np.zeros(W, dtype=np.int64)
    for t in range(T):
        sender, receivers = t * W // T, set()
        while (sender + 1) * T // W <= t:
            sender += 1
        for e in served[t].nonzero().flatten().tolist():
            replica = int(np.searchsorted(bounds[e], seen[e], side="right"))
            seen[e] += 1
            rank = placement.replicas(e)[replica]
            receivers.add(rank)
            load[rank] += 1
        for r in receivers:  # one copy of the token per receiving rank
            traffic[sender, r] += 1
    return traffic, load


def _check_against_single(doc: dict, trace, y_ep: torch.Tensor, y: torch.Tensor) -> None:
    torch.testing.assert_close(y_ep, y, rtol=1e-5, atol=1e-6)
    ours, ref = pd.DataFrame(doc["per_expert"]), trace.per_expert()
    for col in ref.columns:
        np.testing.assert_allclose(ours[col].to_numpy(float), ref[col].to_numpy(float), rtol=1e-5, atol=1e-9)
    for key, value in trace.summary().items():
        if key != "forward_ms":
            got = doc["summary"][key]  # strict JSON: NaN is written as null
            assert (float("nan") if got is None else got) == pytest.approx(value, rel=1e-5, nan_ok=True), key


def _ep_json(tmp_path, W: int, *flags: str) -> tuple[dict, torch.Tensor]:
    """ep-report on W ranks with these flags: rank 0's JSON document and the combined output y it saved."""
    out = tmp_path / "y.pt"
    run = torchrun(W, *FLAGS, *flags, "--save-output", str(out), "--format", "json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout), torch.load(out)


def test_two_ranks_equal_one_process_with_capacity(tmp_path):
    doc, saved = _ep_json(tmp_path, 2, "--n-experts", "6", "--tokens", "90", "--capacity-factor", "0.75")
    cfg = MoEConfig(d_model=16, d_expert=32, n_experts=6, capacity_factor=0.75, seed=3)
    y, trace = _single(cfg, 90)
    assert trace.summary()["dropped"] > 0  # capacity bites: global token order decides, as in one process
    _check_against_single(doc, trace, saved, y)
    placement = Placement(6, tuple(tuple(r) for r in doc["placement"]["ranks"]))
    traffic, load = _naive_traffic(trace.served, placement, 2)
    assert doc["traffic"] == traffic.tolist()
    assert doc["traffic_bytes"] == (traffic * 16 * 4).tolist()  # D fp32 values per token row
    rows = pd.DataFrame(doc["per_rank"])
    assert [r["experts"] for r in doc["per_rank"]] == [[0, 1, 2], [3, 4, 5]]  # JSON: lists of integers
    assert rows["assignments"].tolist() == load.tolist()
    assert rows["tokens_in"].tolist() == [45, 45]
    assert rows["recv_tokens"].tolist() == traffic.sum(axis=0).tolist()
    assert rows["tokens_out"].tolist() == traffic.sum(axis=1).tolist()
    spread = doc["straggler_spread"]  # one factor per timed forward (5 by default); the median is reported
    assert spread["repeats"] == len(spread["per_repeat"]) == 5
    assert doc["straggler_factor"] == spread["median"] == pytest.approx(np.median(spread["per_repeat"]))
    assert spread["min"] == min(spread["per_repeat"]) <= spread["q1"] <= spread["median"] <= spread["q3"]
    assert spread["q3"] <= spread["max"] == max(spread["per_repeat"]) and spread["min"] >= 1.0


def _run_placement(tmp_path, n_experts: int, world_size: int, placement_of) -> tuple[dict, Placement, np.ndarray]:
    """ep-report on W ranks with the placement `placement_of(load)` gives for the single-process forward's load:
    checked against that forward (outputs and per-expert statistics), the measured load against the predicted one
    and a token-by-token count, the traffic against the same count. Returns (ep-report's JSON, placement, load)."""
    cfg = MoEConfig(d_model=16, d_expert=32, n_experts=n_experts, top_k=2, seed=3)
    y, trace = _single(cfg, 120)
    load = trace.per_expert()["served"].to_numpy()
    placement = placement_of(load)
    path, out = tmp_path / "plan.json", tmp_path / "y.pt"
    save(placement, str(path), load)
    run = torchrun(world_size, *FLAGS, "--n-experts", str(n_experts), "--tokens", "120", "--placement", str(path),
                   "--save-output", str(out), "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    _check_against_single(doc, trace, torch.load(out), y)
    traffic, naive_load = _naive_traffic(trace.served, placement, world_size)
    measured = [r["assignments"] for r in doc["per_rank"]]
    assert measured == predicted_load(placement, load).tolist() == naive_load.tolist()
    assert doc["traffic"] == traffic.tolist()
    assert doc["world_size"] == world_size and doc["placement"]["ranks"] == [list(r) for r in placement.ranks]
    return doc, placement, load


def test_four_ranks_with_a_planned_placement_match_and_predict_the_load(tmp_path):
    _, placement, _ = _run_placement(tmp_path, 8, 4, lambda load: plan(load, 4, redundant_slots=4).placement)
    assert placement.redundant_slots == 4


def test_a_rank_with_two_slots_of_one_expert_serves_both_chunks(tmp_path):
    """DeepSeek's EPLB may give a rank two slots of one expert (an uneven split): rank 0 below serves two of expert
    0's three chunks, rank 1 the third; the output is the single-process one and the load is the predicted one."""
    placement = Placement(4, ((0, 0, 1), (0, 2, 3)))
    assert placement.replicas(0) == [0, 0, 1] and placement.redundant_slots == 2
    doc, _, load = _run_placement(tmp_path, 4, 2, lambda load: placement)
    chunks = chunk_sizes(int(load[0]), 3)
    measured = [r["assignments"] for r in doc["per_rank"]]
    assert measured == [chunks[0] + chunks[1] + int(load[1]), chunks[2] + int(load[2] + load[3])]
    assert doc["placement"]["ranks"] == [[0, 0, 1], [0, 2, 3]]


def _rank_exits(stderr: str) -> dict[int, int]:
    """Each failed rank's exit code, from torchrun's failure summary ("rank : 1 (local_rank: 1)" then
    "exitcode : 2 (pid: …)")."""
    return {int(rank): int(code) for rank, code in
            re.findall(r"^\s*rank\s*:\s*(\d+)\b.*\n\s*exitcode\s*:\s*(-?\d+)", stderr, re.M)}


def test_bad_inputs_exit_2_with_one_line_under_torchrun(tmp_path):
    run = torchrun(2, "--n-experts", "1", "--top-k", "1", "--tokens", "8")
    exits = _rank_exits(run.stderr)
    errors = [line for line in run.stderr.splitlines() if "moe: error:" in line]
    # torchrun stops the other ranks (SIGTERM, -15) once one has failed: a rank slower to reach the check may be
    # stopped before it writes. Every rank that exited did so with 2, having written its one whole line.
    assert run.returncode != 0 and 2 in exits.values() and set(exits.values()) <= {2, -15}, run.stderr
    assert list(exits.values()).count(2) <= len(errors) <= 2, run.stderr
    message = ("python -m moe: error: world size 2 is larger than n_experts=1: a rank would host no expert; use at "
               "most 1 processes or a --placement with redundant slots")
    assert all(line == message for line in errors), errors  # one message a line, none cut or merged


@pytest.mark.parametrize("ranks, message", [
    ([[0, 1], [1, 2]], "placement misses experts [3]"),
    ([[0, 1], [1, 2, 3]], "placement repeats experts [1] (1 extra slots) but declares redundant_slots=0"),
    ([[0, 1, 2, 3]], "has 1 ranks but the world size is 2"),
    ([[0, 1, 1], [2, 3]], "placement repeats experts [1] (1 extra slots) but declares redundant_slots=0"),
    ([[[0]], [1, 2, 3]], "every entry of 'ranks' must be a flat list of expert indices"),
    ([[0, 1.0], [2, 3]], "every entry of 'ranks' must be a flat list of expert indices"),
    ([[0, 1], [2, True]], "every entry of 'ranks' must be a flat list of expert indices"),
])
def test_bad_placement_files_exit_2_before_any_collective(tmp_path, capsys, monkeypatch, ranks, message):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the file is checked before joining the job
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"ranks": ranks, "redundant_slots": 0}))
    assert main(["ep-report", "--n-experts", "4", "--tokens", "8", "--placement", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("flags, message", [
    (["--timeout", "1e300"], "--timeout: expected seconds above 0 and at most 86,400, got '1e300'"),
    (["--timeout", "0"], "--timeout: expected seconds above 0 and at most 86,400, got '0'"),
    (["--timeout", "-1"], "--timeout: expected seconds above 0 and at most 86,400, got '-1'"),
    (["--placement", ""], "--placement is empty; give a path, or leave --placement out"),
    (["--placement", " ", "--placement-layer", "L9"], "--placement is empty"),
    (["--save-output", ""], "--save-output is empty; give a path, or leave --save-output out"),
    # torch.save failed after the forward: "[enforce fail at inline_container.cc:747] . open file failed"
    (["--save-output", "/"], "--save-output '/' is a folder; give a file path"),
    (["--save-output", "/no/such/y.pt"], "--save-output '/no/such/y.pt': its folder does not exist"),
])
def test_bad_timeouts_and_empty_paths_exit_2_before_any_collective(capsys, monkeypatch, flags, message):
    """An overflowing timeout was a traceback, 0 or -1 a C++ stack dump per rank, an empty --placement ran contiguous
    blocks instead (with its --placement-layer ignored)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["ep-report", "--n-experts", "4", "--tokens", "8", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_ep_report_outside_torchrun_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert main(["ep-report", "--tokens", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchrun --standalone --nproc-per-node" in err
    assert main(["ep-report", "--noise-std", "0.1"]) == 2
    assert "noise_std=0.1" in capsys.readouterr().err


def test_a_job_past_its_time_is_stopped_with_all_its_processes():
    job = start_ep_job(2, ["--tokens", "8"], timeout_s=0.5)  # torchrun alone takes longer than that to start
    with pytest.raises(RuntimeError, match="did not finish in 0 s and was stopped"):
        job.wait(poll_s=0.2)
    assert_group_gone(job.proc.pid)


def test_a_failed_job_reports_the_ranks_message():
    with pytest.raises(RuntimeError, match="failed: world size 2 is larger than n_experts=1"):
        run_ep_job(2, ["--n-experts", "1", "--top-k", "1", "--tokens", "8"], timeout_s=120)


def test_csv_document_has_the_report_sections_and_the_rank_tables():
    run = torchrun(2, "--n-experts", "4", "--tokens", "16", "--d-model", "8", "--d-expert", "8", "--format", "csv")
    assert run.returncode == 0, run.stderr
    sections = [line for line in run.stdout.splitlines() if line.startswith("# ")]
    assert sections == ["# config", "# summary", "# per_expert", "# ep", "# per_rank",
                        "# traffic (rows sender, columns receiver)", "# traffic_bytes (rows sender, columns receiver)"]
    per_rank = run.stdout.split("# per_rank\n")[1].split("# traffic")[0]
    rows = pd.read_csv(io.StringIO(per_rank))
    assert rows["rank"].tolist() == [0, 1] and rows["tokens_in"].tolist() == [8, 8]
    assert rows["experts"].tolist() == ["0 1", "2 3"]
    ep = pd.read_csv(io.StringIO(run.stdout.split("# ep\n")[1].split("# per_rank")[0]), index_col="key")["value"]
    assert ep["straggler_repeats"] == 5 and ep["straggler_min"] <= ep["straggler_factor"] <= ep["straggler_max"]
    text = dict(line.split(",", 1) for line in run.stdout.split("# ep\n")[1].split("# per_rank")[0].splitlines()[1:])
    assert (text["world_size"], text["straggler_repeats"]) == ("2", "5")  # counts as integers (they read 2.0, 5.0)
    assert ep["straggler_q1"] <= ep["straggler_factor"] <= ep["straggler_q3"]


def test_the_straggler_factor_is_the_median_of_the_repeats_with_its_spread():
    repeats = [pd.DataFrame({"expert_ms": ms}) for ms in ([1.0, 1.0], [3.0, 1.0], [1.0, 1.5], [2.0, 2.0], [1.0, 1.0])]
    spread = straggler_spread(repeats)  # factors max/mean: 1, 1.5, 1.2, 1, 1
    assert spread["per_repeat"] == pytest.approx([1.0, 1.5, 1.2, 1.0, 1.0])
    assert (spread["median"], spread["min"], spread["max"], spread["repeats"]) == (1.0, 1.0, 1.5, 5)
    assert (spread["q1"], spread["q3"]) == pytest.approx((1.0, 1.2))
    idle = straggler_spread([pd.DataFrame({"expert_ms": [0.0, 0.0]})])  # no expert time: no factor, no crash
    assert np.isnan(idle["median"]) and idle["repeats"] == 1


def test_missing_torchrun_is_a_clear_error(monkeypatch):
    import importlib.util

    from moe.parallel import launch as ep_launch
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="torchrun is missing"):
        ep_launch.check_torchrun()


def test_three_ranks_uneven_shares_expert_choice(tmp_path):
    """Expert choice picks each expert's best tokens over ALL tokens: exact only with global routing."""
    doc, saved = _ep_json(tmp_path, 3, "--n-experts", "6", "--tokens", "91", "--router", "expert_choice")
    y, trace = _single(MoEConfig(d_model=16, d_expert=32, n_experts=6, router="expert_choice", seed=3), 91)
    _check_against_single(doc, trace, saved, y)
    assert [r["tokens_in"] for r in doc["per_rank"]] == [30, 30, 31]
    traffic, load = _naive_traffic(trace.served, contiguous(6, 3), 3)
    assert doc["traffic"] == traffic.tolist() and [r["assignments"] for r in doc["per_rank"]] == load.tolist()


def test_two_ranks_shared_experts_and_per_sequence_capacity_equal_one_process(tmp_path):
    """The shared FFN runs on each rank's own tokens; capacity counts per sequence of the global order."""
    doc, saved = _ep_json(tmp_path, 2, "--n-experts", "4", "--tokens", "60", "--seq-len", "10", "--capacity-factor",
                          "0.75", "--capacity-scope", "sequence", "--shared-experts", "1", "--shared-gate")
    cfg = MoEConfig(d_model=16, d_expert=32, n_experts=4, capacity_factor=0.75, capacity_scope="sequence",
                    shared_experts=1, shared_gate=True, seed=3)
    x = make_batch("clusters", 16, 60, seed=3, n_clusters=4, skew=2.0).x.reshape(6, 10, 16)  # (B, S, D)
    with torch.inference_mode():
        y, trace = MoELayer(cfg)(x)
    assert trace.capacity == 4 and trace.summary()["dropped"] > 0  # C = ceil(0.75·10·2/4) per sequence
    assert 0 < trace.summary()["shared_fraction"] < 1
    _check_against_single(doc, trace, saved, y.reshape(60, 16))
    assert [r["tokens_in"] for r in doc["per_rank"]] == [30, 30]  # whole sequences: 3 per rank


def test_four_ranks_group_limited_routing_equal_one_process(tmp_path):
    doc, saved = _ep_json(tmp_path, 4, "--n-experts", "8", "--top-k", "4", "--n-group", "4", "--topk-group", "2",
                          "--tokens", "64", "--shared-experts", "2", "--no-gated")
    cfg = MoEConfig(d_model=16, d_expert=32, n_experts=8, top_k=4, n_group=4, topk_group=2, shared_experts=2,
                    gated=False, seed=3)
    y, trace = _single(cfg, 64)
    groups = trace.top_k_index // 2  # (T, K): group of each chosen expert (E/G = 2 experts per group)
    assert max(len(set(g)) for g in groups.tolist()) == 2  # 4 experts from at most topk_group=2 groups
    _check_against_single(doc, trace, saved, y)


def test_per_sequence_capacity_without_seq_len_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["ep-report", "--n-experts", "4", "--tokens", "40", "--capacity-factor", "1", "--capacity-scope", "sequence"]
    assert main(args) == 2
    assert "needs --seq-len S" in capsys.readouterr().err
    assert main(args + ["--seq-len", "30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "multiple of --seq-len 30 with at least 2 sequences" in err
    # expert choice always has a capacity (factor 1.0 when none is given): per sequence, it needs --seq-len too
    assert main(["ep-report", "--n-experts", "4", "--tokens", "40", "--router", "expert_choice", "--top-k", "1",
                 "--capacity-scope", "sequence"]) == 2
    assert "needs --seq-len S" in capsys.readouterr().err
