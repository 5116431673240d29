"""Every routing format through the one entry point: detected from the content (a file, or a directory of rank
files), `trace-report`'s JSON with today's keys and the reader's exact counts, `--out DIR` into a routing log that
reads back equal, and a malformed file as one line with exit status 2."""
from __future__ import annotations

import json
import re
import shutil

import fixtures_sglang as sg
import fixtures_stacks as st
import numpy as np
import pytest
import torch

from moe.cli.main import main
from moe.traces.formats import FORMATS, detect, read_log
from moe.traces.store_read import read_store

KEYS = {"layers", "steps", "load", "per_layer", "rows", "worst", "source", "n_experts"}


def _sglang_per_pass(tmp_path):
    g = torch.Generator().manual_seed(0)
    p2l = sg.placement(2, 6, 8)
    folder = tmp_path / "sglang"
    folder.mkdir()
    for rank in range(2):
        records = [sg.per_pass_record(fp, rank, sg.select_experts_count(sg.random_topk(2, 5, 2, 8, g), 8))
                   for fp in range(3)]
        sg.write_rank_file(folder, rank, records, p2l)
    return str(folder), None


def _sglang_stat(tmp_path):
    g = torch.Generator().manual_seed(1)
    p2l = sg.placement(2, 6, 8)
    passes = [[sg.select_experts_count(sg.random_topk(2, 5, 2, 8, g), 8) for _ in range(2)] for _ in range(3)]
    return sg.write_stat(tmp_path, passes, p2l, 6, buffer_size=5), None


def _vllm_routed(tmp_path):
    path = tmp_path / "routed.npy"
    np.save(path, st.vllm_routed(20, 3, 2, 8))
    return str(path), 8


def _vllm_routed_pt(tmp_path):
    path = tmp_path / "routed.pt"
    torch.save(torch.from_numpy(st.vllm_routed(20, 3, 2, 8).astype(np.int64)), path)
    return str(path), 8


def _vllm_eplb(tmp_path):
    state, _ = st.vllm_eplb_state(window=4, layers=2, n_logical=6, n_redundant=2, passes=3)
    path = tmp_path / "eplb_state.pt"
    torch.save(state, path)
    return str(path), None


def _mcore(tmp_path):
    folder = tmp_path / "mcore"
    folder.mkdir()
    st.mcore_dumps(str(folder), ep_size=2, layer_numbers=[3, 5], n_experts=8, max_forwards=3)
    return str(folder), None


def _counts_csv(tmp_path):
    path = tmp_path / "counts.csv"
    st.write_counts_csv(path, st.counts_rows([0, 1, 2], [0, 1], 6))
    return str(path), 6


def _counts_parquet(tmp_path):
    rows = st.counts_rows([0, 1], [0, 1, 2], 4, seed=2)
    path = tmp_path / "counts.parquet"
    st.write_counts_parquet(path, {name: [r[i] for r in rows] for i, name in enumerate(("step", "layer", "expert",
                                                                                          "count"))})
    return str(path), 4


def _megatron(tmp_path):
    folder = tmp_path / "megatron"
    folder.mkdir()
    for rank in range(2):
        with open(folder / f"router_trace_rank{rank}.jsonl", "w") as f:
            for step in range(2):
                for layer in (1, 2):
                    ids = [[(rank + step + layer + t) % 8, (rank + step + layer + t + 1) % 8] for t in range(4)]
                    f.write(json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer,
                                        "rank": rank, "num_tokens": 4, "topk": 2, "top_indices": ids}) + "\n")
    return str(folder), 8


SOURCES = {"sglang-per-pass": _sglang_per_pass, "sglang-stat": _sglang_stat, "vllm-routed-experts": _vllm_routed,
           "vllm-routed-experts (.pt)": _vllm_routed_pt, "vllm-eplb-window": _vllm_eplb, "mcore-ep-loads": _mcore,
           "counts-csv": _counts_csv, "counts-parquet": _counts_parquet, "megatron": _megatron}


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_format_reports_todays_keys_and_converts_to_an_equal_log(name, tmp_path, capsys):
    path, n_experts = SOURCES[name](tmp_path)
    log = read_log(path, n_experts)
    assert log.source in FORMATS
    extra = ["--n-experts", str(n_experts)] if n_experts else []
    assert main(["trace-report", path, *extra, "--out", str(tmp_path / "log")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert KEYS <= set(doc) and doc["layers"] == log.layers and doc["steps"] == len(log.steps)
    assert doc["load"] == {layer: log.counts[:, i].tolist() for i, layer in enumerate(log.layers)}
    back = read_store(str(tmp_path / "log"))
    assert np.array_equal(back.counts, log.counts) and back.layers == log.layers and back.source == log.source
    assert main(["trace-report", str(tmp_path / "log")]) == 0
    assert json.loads(capsys.readouterr().out)["load"] == doc["load"]


@pytest.mark.parametrize("name", ["sglang-stat", "vllm-routed-experts", "vllm-eplb-window", "counts-csv"])
def test_detection_reads_the_content_not_the_name(name, tmp_path):
    path, n_experts = SOURCES[name](tmp_path)
    renamed = tmp_path / "renamed.bin"
    shutil.copy(path, renamed)
    assert np.array_equal(read_log(str(renamed), n_experts).counts, read_log(path, n_experts).counts)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes): it holds no routing; copy the file again"),  # it listed every format
    (b"hello, world\n", "is none of the routing formats"),
    (b"PK\x03\x04garbage", "damaged zip archive"),
    (b"\x93NUMPY\x01\x00garbage", "not a readable NumPy array file"),
])
def test_an_unreadable_file_is_one_line_and_exit_status_2(content, message, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    assert main(["trace-report", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_truncated_torch_file_is_one_line(tmp_path, capsys):
    path, _ = _vllm_eplb(tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    assert main(["trace-report", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"logical_count": Boom()}, path)
    assert main(["trace-report", str(path)]) == 2
    captured = capsys.readouterr()
    assert "would run code" in captured.err and "this must never run" not in captured.out


def test_a_directory_is_read_as_one_run_of_rank_files(tmp_path):
    path, _ = _megatron(tmp_path)
    log = read_log(path, 8)
    assert detect(path) == "megatron" and log.layers == ["1", "2"]
    naive = np.zeros((2, 2, 8), int)
    for rank in range(2):
        for step in range(2):
            for li, layer in enumerate((1, 2)):
                for t in range(4):
                    for e in ((rank + step + layer + t) % 8, (rank + step + layer + t + 1) % 8):
                        naive[step, li, e] += 1
    assert np.array_equal(log.counts, naive)


def test_a_rank_file_or_log_part_that_links_out_of_its_directory_is_refused(tmp_path):
    path, _ = _megatron(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jsonl").write_text((tmp_path / "megatron" / "router_trace_rank1.jsonl").read_text())
    (tmp_path / "megatron" / "router_trace_rank1.jsonl").unlink()
    (tmp_path / "megatron" / "router_trace_rank1.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(ValueError, match="links outside that directory"):
        read_log(path, 8)
    csv_path, _ = _counts_csv(tmp_path)
    read_log(csv_path, 6)
    from moe.traces.store import write_log
    write_log(read_log(csv_path, 6), str(tmp_path / "log"))
    part = next((tmp_path / "log" / "counts").iterdir())
    moved = outside / "part.parquet"
    part.rename(moved)
    part.symlink_to(moved)
    with pytest.raises(ValueError, match="links outside the routing log"):
        read_store(str(tmp_path / "log"))


def test_a_token_naming_an_expert_twice_is_refused_as_the_logits_path_refuses_it(tmp_path):
    """An auditor's files: a Megatron record without logits, `top_indices [[1, 1], [1, 1]]`, was counted 4 for expert
    1 (max/mean 4 over the bound E/K = 2), a vLLM routed token [1, 1] counted twice where the co-occurrence diagonal
    counts it once; the logits path refused the same ids. Every per-token reader refuses them now (the stacks' top-k
    never repeat an expert); -1 pads (SGLang) may repeat. And a JSON `true` among Megatron's ids was read as 1."""
    from moe.traces.log import repeated_expert
    assert repeated_expert(np.array([[0, 1, -1, -1], [2, 3, 1, 2]])) == 2
    assert repeated_expert(np.array([[0, -1, -1], [2, 3, 1]])) is None
    rank = tmp_path / "mega"
    rank.mkdir()
    good = {"step": 1, "stage": "fwd", "block": "decoder", "layer": 0, "rank": 0, "num_tokens": 2, "topk": 2,
            "top_indices": [[0, 1], [2, 3]]}
    for ids, message in (([[1, 1], [0, 1]], "line 2: 'top_indices': a token names expert 1 twice among its top-k"),
                         ([[0, True], [2, 3]], "line 2: 'top_indices' must hold integers")):
        lines = [good, {**good, "step": 2, "top_indices": ids}] * 40                  # the fast path reads batches
        (rank / "router_trace_rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        with pytest.raises(ValueError, match=re.escape(message)):
            read_log(str(rank / "router_trace_rank0.jsonl"), n_experts=4)
    routed = np.array([[[1, 1]], [[1, 2]]], dtype=np.int32)                           # (T, L, K)
    np.save(tmp_path / "routed.npy", routed)
    with pytest.raises(ValueError, match="a token names expert 1 twice among its top-k"):
        read_log(str(tmp_path / "routed.npy"), n_experts=4)
    # a reviewer's: a token whose K ids are all 0 in a captured layer is a buffer row vLLM never wrote, as a layer of
    # zeros is a layer it never captured: skipped and counted (meta), not refused, and not counted as expert 0
    blank = np.array([[[1, 2], [0, 0]], [[3, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=np.int32)  # layer 1 uncaptured
    np.save(tmp_path / "blank.npy", blank)
    log = read_log(str(tmp_path / "blank.npy"), n_experts=4)
    assert log.counts.tolist() == [[[0, 2, 1, 1]]] and log.meta["uncaptured_rows"] == 1
    assert log.meta["uncaptured_layers"] == [1] and (log.tokens.ids[2] == -1).all()
    folder = tmp_path / "sglang"
    folder.mkdir()
    topk = torch.tensor([[[0, 1], [3, 3]]], dtype=torch.int32)                        # (L, T, K): token 1 twice
    sg.write_rank_file(folder, 0, [sg.per_token_record(0, 0, topk, 4)], sg.placement(1, 4, 4))
    with pytest.raises(ValueError, match="a token names expert 3 twice among its top-k"):
        read_log(str(folder))
    padded = tmp_path / "padded"
    padded.mkdir()
    pads = torch.tensor([[[0, 1], [-1, -1], [2, -1]]], dtype=torch.int32)            # -1 twice for token 1
    sg.write_rank_file(padded, 0, [sg.per_token_record(0, 0, pads, 4)], sg.placement(1, 4, 4))
    assert read_log(str(padded)).counts.sum() == 3                                    # -1 pads repeat: read
