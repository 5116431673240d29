"""Megatron-LM routing traces of every rank of a run (moe.traces.megatron.read_megatron), against a plain json loop.

Fixtures are written as RouterTracer writes them (megatron/core/transformer/moe/router_trace.py): one file
router_trace_rank{r}.jsonl per rank, one json.dumps line per (step, block, layer) router call, micro-batches
as repeated lines, router_state_rank{r}.pt as torch.save of {layer: {weight, expert_bias, score_function, topk}}.
"""
import json
import os

import numpy as np
import pytest
import torch

from moe.traces.log import GIVEN, RECORDED
from moe.traces.megatron import read_megatron
from moe.traces.readers import iter_megatron
from moe.traces.records import TraceLimits
from trace_support import megatron_records, megatron_run, swap_link_on_open, write_megatron, write_router_state

E, K = 8, 2


def _naive(paths):
    """{(step, label): {expert: tokens}} per file by a plain json loop (no numpy, no moe code)."""
    per_file = []
    for path in paths:
        cells = {}
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                label = f"mtp{rec['mtp_idx']}.{rec['layer']}" if rec["block"] == "mtp" else str(rec["layer"])
                cell = cells.setdefault((rec["step"], label), {})
                for row in rec["top_indices"]:
                    for expert in row:
                        cell[expert] = cell.get(expert, 0) + 1
        per_file.append(cells)
    return per_file


def _dense(log, cells):
    """(S, L, E) from a naive {(step, label): {expert: n}}."""
    out = np.zeros(log.counts.shape, np.int64)
    for (step, label), experts in cells.items():
        for expert, n in experts.items():
            out[list(log.steps).index(step), log.layers.index(label), expert] += n
    return out


def test_ranks_micro_batches_and_mtp_layers_add_up_as_a_plain_json_loop_counts(tmp_path):
    paths = megatron_run(tmp_path, ranks=3, steps=3, layers=4, tokens=9, n_experts=E, top_k=K, microbatches=2,
                         mtp_heads=2)
    log = read_megatron(paths, E)
    assert log.layers == ["0", "1", "2", "3", "mtp0.0", "mtp1.0"] and log.steps.tolist() == [0, 1, 2]
    assert (log.source, log.top_k, log.n_experts, log.n_experts_source) == ("megatron", K, E, GIVEN)
    per_rank = [_dense(log, cells) for cells in _naive(paths)]
    assert log.rank_counts.shape == (3, 3, 6, E)  # (S, W, L, E): logical counts per rank file
    for w, counts in enumerate(per_rank):
        assert np.array_equal(log.rank_counts[:, w], counts)
    assert np.array_equal(log.counts, sum(per_rank))
    assert log.meta["ranks"] == [0, 1, 2] and log.meta["files"][2] == "router_trace_rank2.jsonl"
    assert log.meta["fast_path"] == [True] * 3 and log.meta["records"] == 3 * 3 * 2 * 6
    assert "added" in log.meta["rank_combine"] and log.meta["identical_ranks"] == []


@pytest.mark.parametrize("seed", range(8))
def test_the_fast_path_counts_what_todays_line_reader_reads(tmp_path, seed):
    """Random runs: few large records (one bincount per record) and many small ones (one per batch)."""
    rng = np.random.default_rng(seed)
    n_experts = int(rng.choice([4, 64, 256]))
    paths = megatron_run(tmp_path, ranks=int(rng.integers(1, 4)), steps=int(rng.integers(1, 5)),
                         layers=int(rng.integers(1, 5)), tokens=int(rng.choice([3, 40, 1500])), n_experts=n_experts,
                         top_k=int(rng.integers(1, min(n_experts, 8) + 1)), microbatches=int(rng.integers(1, 4)),
                         mtp_heads=int(rng.integers(0, 2)), seed=seed)
    log = read_megatron(paths, n_experts)
    assert all(log.meta["fast_path"])
    expected = np.zeros_like(log.counts)
    for path in paths:  # today's reader, record by record
        for rec in iter_megatron(path):
            np.add.at(expected[list(log.steps).index(rec.step), log.layers.index(rec.layer)], rec.top_k_index.ravel(),
                      1)
    assert np.array_equal(log.counts, expected)


def test_the_expert_count_comes_from_logit_shape_when_recorded(tmp_path):
    recs = [{**r, "logit_offset": 2 * 5 * E * i, "logit_bytes": 2 * 5 * E, "logit_shape": [5, E]}
            for i, r in enumerate(megatron_records(2, 2, 5, E, K))]
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, recs)
    log = read_megatron([str(path)], None)  # no sidecar copied: counting needs none
    assert (log.n_experts, log.n_experts_source) == (E, RECORDED) and log.meta["records_with_logits"] == 4
    assert log.meta["fast_path"] == [True]
    assert np.array_equal(log.counts, _dense(log, _naive([path])[0]))
    with pytest.raises(ValueError, match="records 8 experts but --n-experts 16 was given"):
        read_megatron([str(path)], 16)
    write_megatron(path, recs[:1] + [{**recs[1], "logit_shape": [5, 99]}])
    with pytest.raises(ValueError, match="line 2: logit_shape \\[5, 99\\] and logit_bytes 80 do not describe"):
        read_megatron([str(path)], None)


def _lines(**kw):
    return [json.dumps(r) + "\n" for r in megatron_records(2, 3, 5, E, K, **kw)]


def _refused(tmp_path, lines, n_experts=E, name="router_trace_rank0.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes("".join(lines).encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError) as err:
        read_megatron([str(path)], n_experts)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _record(**change):
    rec = {**json.loads(_lines()[0]), **change}
    return json.dumps({k: v for k, v in rec.items() if v is not ...}) + "\n"


@pytest.mark.parametrize("lines, message", [
    (lambda: _lines()[:5] + [_lines()[5][:40]], "line 6 is truncated (the file ends mid-record)"),
    (lambda: ["{oops\n"] + _lines(), "line 1 is not JSON"),
    (lambda: _lines()[:2] + ["[1, 2]\n"], "line 3 is not a JSON object"),
    (lambda: [], "holds no routing records"),
    (lambda: ["\n", "  \n"], "holds no routing records"),
    (lambda: [_record(top_indices=...)], "line 1 misses field(s) ['top_indices']"),
    (lambda: [_record(num_tokens=...)], "line 1 misses field(s) ['num_tokens']"),
    (lambda: [_record(num_tokens=4)], "line 1: 'top_indices' has 5 rows, expected (num_tokens=4, topk=2)"),
    (lambda: [_record(topk=3)], "line 1: 'top_indices' has shape (5, 2), expected (num_tokens=5, topk=3)"),
    (lambda: [_record(top_indices=[[0, 1]] * 4 + [[2]])], "line 1: 'top_indices' has 5 rows"),
    (lambda: [_record(top_indices=5)], "line 1: 'top_indices' must be a list"),
    (lambda: [_record(top_indices=[[0, -1]] * 5)], "expert indices are >= 0"),
    (lambda: [_record(top_indices=[[0, 16384]] * 5)], "expert indices are below 16384"),
    (lambda: [_record(top_indices=[[0, 2 ** 40]] * 5)], "expert indices are below 16384"),
    (lambda: [_record(top_indices=[[0, 1.5]] * 5)], "'top_indices' must hold integers"),
    (lambda: [_record(top_indices=[[0, None]] * 5)], "'top_indices' must hold integers"),
    (lambda: [_record(step=True)], "line 1: field 'step' must be an integer >= 0, got true"),
    (lambda: [_record(step=-1)], "line 1: field 'step' must be an integer >= 0, got -1"),
    (lambda: [_record(layer="**x**](http://e)")], "field 'layer' must be an integer >= 0, got a string"),
    (lambda: [_record(block="mtp")], "line 1: field 'mtp_idx' must be an integer >= 0, got null"),
    (lambda: [_record(block=None)], "field 'block' must be a string"),
    (lambda: [_record(topk=0, num_tokens=0, top_indices=[])], "field 'topk' must be an integer >= 1, got 0"),
    # what pyarrow alone would read otherwise: two objects on a line, \r between them, a null, a byte not UTF-8
    (lambda: [_lines()[0].strip() + _lines()[1]], "line 1 is not JSON (Extra data)"),
    (lambda: [_lines()[0].strip() + "\r" + _lines()[1]], "line 1 is not JSON (Extra data)"),
    (lambda: [_record(logit_offset=None)], "line 1 misses field(s) ['logit_bytes', 'logit_shape']"),
    (lambda: [_lines()[0].replace("pre_dispatch", "pre\udcff")], "line 1 is not JSON (nested too deep or not UTF-8)"),
])
def test_every_malformed_file_is_todays_one_line_message(tmp_path, lines, message):
    got = _refused(tmp_path, lines())
    assert message in got, got
    assert "**x**" not in got


def test_blank_lines_and_non_ascii_text_are_read_as_the_line_reader_reads_them(tmp_path):
    lines = _lines()
    path = tmp_path / "router_trace_rank0.jsonl"
    path.write_text("".join(lines))
    plain = read_megatron([str(path)], E)
    path.write_text("\n".join(lines) + "\n  \n")  # blank lines: skipped by both readers
    spaced = read_megatron([str(path)], E)
    path.write_text("".join(line.replace('"pre_dispatch"', '"pr\u00e9"') for line in lines), encoding="utf-8")
    accented = read_megatron([str(path)], E)
    assert plain.meta["fast_path"] == [True] and spaced.meta["fast_path"] == accented.meta["fast_path"] == [False]
    assert np.array_equal(plain.counts, spaced.counts) and np.array_equal(plain.counts, accented.counts)


def test_counts_the_file_cannot_hold_are_refused_in_one_line(tmp_path):
    assert "routes to expert 7 but the expert count is 4" in _refused(tmp_path, _lines(), n_experts=4)
    assert "does not record the number of experts; give it (--n-experts" in _refused(tmp_path, _lines(),
                                                                                       n_experts=None)
    mixed = _lines()[:3] + [_record(topk=3, top_indices=[[0, 1, 2]] * 5)]
    assert "the records name topk [2, 3]" in _refused(tmp_path, mixed)
    assert "step 1 has no record of layer 2" in _refused(tmp_path, _lines()[:5])  # the last step was cut
    assert "--n-experts must be an expert count" in _refused(tmp_path, _lines(), n_experts=0)


def test_a_bad_file_among_ranks_is_named_and_ranks_are_given_once(tmp_path):
    paths = megatron_run(tmp_path, ranks=3, steps=2, layers=2, tokens=4, n_experts=E, top_k=K)
    with open(paths[2], "a") as f:
        f.write('{"step": 2, "layer"')
    with pytest.raises(ValueError, match="router_trace_rank2.jsonl' line 5 is truncated"):
        read_megatron(paths, E)
    with pytest.raises(ValueError, match="rank 1 is given twice"):
        read_megatron([paths[0], paths[1], paths[1]], E)
    with pytest.raises(ValueError, match="does not exist"):
        read_megatron([paths[0], str(tmp_path / "router_trace_rank7.jsonl")], E)


def test_an_empty_rank_is_kept_and_identical_ranks_are_flagged(tmp_path):
    paths = megatron_run(tmp_path, ranks=2, steps=2, layers=2, tokens=6, n_experts=E, top_k=K)
    same = tmp_path / "router_trace_rank2.jsonl"
    same.write_text(open(paths[1]).read().replace('"rank": 1', '"rank": 2'))  # saw rank 1's tokens (TP, no SP)
    empty = tmp_path / "router_trace_rank3.jsonl"
    empty.write_text("")  # RouterTracer creates the file at start; a rank without MoE layers never writes
    log = read_megatron([*paths, str(same), str(empty)], E)
    assert log.meta["identical_ranks"] == [[1, 2]] and log.meta["empty_ranks"] == [3]
    assert np.array_equal(log.rank_counts[:, 1], log.rank_counts[:, 2]) and not log.rank_counts[:, 3].any()
    assert np.array_equal(log.counts, log.rank_counts.sum(1))


def test_a_line_longer_than_a_block_is_read_and_one_past_the_line_cap_refused(tmp_path):
    rng = np.random.default_rng(0)
    T = 600_000  # "[n], " × 600,000: a 3 MB line after a short one, past the first blocks (1 MiB, then 2)
    short, long = ({"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 0, "rank": 0, "num_tokens": n,
                    "topk": 1, "top_indices": rng.integers(0, E, (n, 1)).tolist()} for n in (3, T))
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, [short, long])
    log = read_megatron([str(path)], E)
    assert log.meta["fast_path"] == [True]
    ids = np.concatenate([np.ravel(short["top_indices"]), np.ravel(long["top_indices"])])
    assert log.counts[0, 0].tolist() == np.bincount(ids, minlength=E).tolist()
    with pytest.raises(ValueError, match="line 2 is longer than 2.0 MiB"):
        read_megatron([str(path)], E, limits=TraceLimits(256 << 20))  # one line may take 2 MiB


def test_progress_rises_to_one_over_all_files(tmp_path):
    paths = megatron_run(tmp_path, ranks=2, steps=2, layers=2, tokens=6, n_experts=E, top_k=K)
    with open(paths[1], "a") as f:
        f.write("\n")  # a blank line: the fast path gives way to the exact reader, which starts the file over
    seen = []
    log = read_megatron(paths, E, progress=seen.append)
    assert log.meta["fast_path"] == [True, False]
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1 and len(seen) >= 3


# --- router_state_rank{R}.pt ------------------------------------------------------------------------

def test_router_state_is_summarised_per_layer(tmp_path):
    paths = megatron_run(tmp_path, ranks=2, steps=1, layers=2, tokens=4, n_experts=E, top_k=K)
    write_router_state(tmp_path, 0, [0, 1], E, K)
    write_router_state(tmp_path, 1, [0, 1], E, K)  # same seed: the same routers (another DP rank)
    log = read_megatron(paths, E)
    state = log.meta["router_state"]
    saved = torch.load(tmp_path / "router_state_rank0.pt", weights_only=True)
    assert list(state) == ["0", "1"] and state["1"]["score_function"] == "sigmoid" and state["1"]["topk"] == K
    assert state["1"]["expert_bias"] == pytest.approx(saved[1]["expert_bias"].tolist())
    assert log.meta["router_state_ranks"] == [0, 1] and log.meta["router_state_differs"] == []
    write_router_state(tmp_path, 0, [0, 1, 7], E, K)  # layer 7 is not in the trace: not kept
    assert list(read_megatron(paths, E).meta["router_state"]) == ["0", "1"]
    write_router_state(tmp_path, 0, [0, 1], E, K)
    write_router_state(tmp_path, 1, [0, 1], E, K, seed=1, bias=False)  # another pipeline stage's layers 0, 1
    assert read_megatron(paths, E).meta["router_state_differs"] == ["0", "1"]
    os.remove(tmp_path / "router_state_rank0.pt")
    os.remove(tmp_path / "router_state_rank1.pt")
    assert "router_state" not in read_megatron(paths, E).meta


@pytest.mark.parametrize("state, message", [
    ([1, 2], "is not Megatron-LM's router state"),
    ({"0": {}}, "the layers must be integer layer numbers"),
    ({0: {"weight": torch.zeros(E, 4)}}, "layer 0 must hold exactly"),
    ({0: {"weight": torch.zeros(5, 4), "expert_bias": None, "score_function": None, "topk": K}},
     "the router weight has 5 experts but the trace has 8"),
    ({0: {"weight": torch.zeros(E, 4), "expert_bias": torch.zeros(3), "score_function": None, "topk": K}},
     "'expert_bias' must be None or a float tensor [8]"),
    ({0: {"weight": torch.zeros(E, 4), "expert_bias": None, "score_function": "<b>x</b>", "topk": K}},
     "'score_function' must be None or a name"),
    ({0: {"weight": torch.zeros(E, 4), "expert_bias": None, "score_function": None, "topk": 3}},
     "topk 3 but the trace routes each token to 2 experts"),
    ({0: {"weight": torch.zeros(E, 4), "expert_bias": torch.full((E,), float("nan")), "score_function": None,
          "topk": K}}, "'expert_bias' holds non-finite values"),
])
def test_a_malformed_router_state_is_one_line(tmp_path, state, message):
    paths = megatron_run(tmp_path, ranks=1, steps=1, layers=1, tokens=4, n_experts=E, top_k=K)
    torch.save(state, tmp_path / "router_state_rank0.pt")
    with pytest.raises(ValueError) as err:
        read_megatron(paths, E)
    assert message in str(err.value) and "\n" not in str(err.value) and "<b>" not in str(err.value)


def test_a_router_state_that_would_run_code_is_refused(tmp_path):
    paths = megatron_run(tmp_path, ranks=1, steps=1, layers=1, tokens=4, n_experts=E, top_k=K)
    torch.save({0: {"weight": torch.zeros(E, 4), "expert_bias": None, "score_function": os.getcwd,
                    "topk": K}}, tmp_path / "router_state_rank0.pt")
    with pytest.raises(ValueError, match="would run code when loaded"):
        read_megatron(paths, E)


def test_a_router_state_link_swapped_in_after_its_check_is_refused(tmp_path, monkeypatch):
    """The dump beside the trace was checked with lies_in, then opened by name: a link out of the trace's directory
    swapped in between (by a writer inside it) was loaded. The file opened is checked on its descriptor
    (moe.roots.open_inside), as the logits sidecar is."""
    import moe.traces.megatron_state
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    paths = megatron_run(run, ranks=1, steps=1, layers=1, tokens=4, n_experts=E, top_k=K)
    write_router_state(run, 0, [0], E, K)
    write_router_state(other, 0, [0], E, K, seed=1)                                      # someone else's file
    assert read_megatron(paths, E).meta["router_state_ranks"] == [0]                      # its own dump: read
    swap_link_on_open(monkeypatch, "router_state_rank0.pt", other / "router_state_rank0.pt")  # the writer's swap
    with pytest.raises(ValueError, match="router_state_rank0.pt links outside the trace's directory"):
        read_megatron(paths, E)
    monkeypatch.setattr(moe.traces.megatron_state, "lies_in", lambda *_: True)           # a check passed before it:
    with pytest.raises(ValueError, match="router_state_rank0.pt links outside the trace's directory"):  # still
        read_megatron(paths, E)                                                           # refused on the descriptor


def test_counts_past_the_memory_budget_are_refused_while_reading(tmp_path):
    paths = megatron_run(tmp_path, ranks=2, steps=300, layers=4, tokens=3, n_experts=E, top_k=K)
    small = TraceLimits(1 << 20)  # counts may take 256 KiB: ~1,000 (step, layer) cells of 8 experts
    with pytest.raises(ValueError, match="need more than 256.0 KiB, what the memory budget leaves them; give fewer "
                                         "steps"):
        read_megatron(paths, E, limits=small)
    assert read_megatron(paths[:1], E, limits=TraceLimits(16 << 20)).counts.shape == (300, 4, E)


def test_router_state_layers_the_trace_lacks_are_never_built(tmp_path):
    """240 layers sharing one bias of 16,384 floats (a 138 KB dump) built 121 MB of float lists before the filter."""
    import tracemalloc
    big = 16384
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, megatron_records(1, 1, 4, big, K))
    weight, bias = torch.zeros(big, 2), torch.ones(big)
    torch.save({layer: {"weight": weight, "expert_bias": bias, "score_function": "sigmoid", "topk": K}
                for layer in range(240)}, str(tmp_path / "router_state_rank0.pt"))
    tracemalloc.start()
    try:
        log = read_megatron([str(path)], big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(log.meta["router_state"]) == ["0"] and len(log.meta["router_state"]["0"]["expert_bias"]) == big
    assert peak < 40 << 20, peak
