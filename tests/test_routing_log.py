"""The routing log: RoutingLog's checks, the shared reader helpers, the on-disk dataset (write, read back, read by
pandas/pyarrow as is), following a log being written, and the load rows of a counts-only log against summary_dict."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from moe.from_routing import sums_from_counts
from moe.stats import summary_dict
from moe.traces.follow import LogFollower
from moe.traces.loadrows import load_rows
from moe.traces.log import (
    GIVEN,
    RECORDED,
    RoutingLog,
    TokenRouting,
    check_map,
    counts_from_ids,
    map_to_logical,
    resolve_experts,
)
from moe.traces.opener import open_trace
from moe.traces.store import LogWriter, write_log
from moe.traces.store_read import read_store
from moe.traces.summary import ROW_KEYS


def _distinct_ids(rng, N: int, E: int) -> np.ndarray:
    """(N, 2) ids as a router writes them: two distinct experts per token, some slots empty (-1)."""
    ids = np.argsort(rng.random((N, E)), axis=1)[:, :2]
    return np.where(rng.random((N, 2)) < 0.2, -1, ids)


def _log(seed: int = 0, S: int = 4, L: int = 3, E: int = 6, tokens: bool = False) -> RoutingLog:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, (S, L, E))
    tok = None
    if tokens:
        N = 10
        tok = TokenRouting(step=np.sort(rng.choice(np.arange(S) * 3 + 1, N)),
                           layer=rng.integers(0, L, N).astype(np.int32), ids=_distinct_ids(rng, N, E),
                           weights=rng.random((N, 2)).astype(np.float32))
    return RoutingLog("sglang-per-token", [f"l{i}" for i in range(L)], np.arange(S) * 3 + 1, counts, top_k=2,
                      meta={"world_size": 2, "files": ["a.pt"]}, tokens=tok,
                      physical_to_logical=np.array([list(range(E)) + [0, 1]] * L))


def test_map_to_logical_equals_a_loop_over_slots():
    rng = np.random.default_rng(3)
    p2l = np.array([[0, 1, 2, 3, 1, 1], [3, 2, 1, 0, 0, 2]])
    phys = rng.integers(0, 100, (5, 2, 6))
    want = np.zeros((5, 2, 4), int)
    for s in range(5):
        for layer in range(2):
            for p in range(6):
                want[s, layer, p2l[layer, p]] += phys[s, layer, p]
    assert np.array_equal(map_to_logical(phys, p2l, 4), want)


def test_counts_from_ids_skips_padding_and_counts_each_slot():
    ids = np.array([[0, 1], [2, -1], [1, 1], [-1, -1]])
    got = counts_from_ids(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 0]), ids, 2, 2, 3)
    want = np.zeros((2, 2, 3), int)
    want[0, 0, [0, 1]] = 1
    want[0, 1, 2] = 1
    want[1, 0, 1] = 2
    assert np.array_equal(got, want)


@pytest.mark.parametrize("p2l, message", [
    ([[0, 1, 1]], "gives logical expert 2 no physical slot in layer 0"),
    ([[0, 1, 5]], "holds expert 5, outside 0..2"),
    ([[0, -1, 2]], "holds expert -1"),
    ([[0.5, 1, 2]], "must be an integer array"),
])
def test_a_bad_physical_map_is_one_line(p2l, message):
    with pytest.raises(ValueError, match=message):
        check_map(np.array(p2l), 3, "the map")


def test_resolve_experts_follows_the_n_experts_rule():
    assert resolve_experts(None, 8, 5, "f") == (8, RECORDED)
    assert resolve_experts(8, None, 7, "f") == (8, GIVEN)
    with pytest.raises(ValueError, match="does not record the number of experts.*at least the largest expert index"):
        resolve_experts(None, None, 3, "f")
    with pytest.raises(ValueError, match="routes to expert 8 but the expert count is 8"):
        resolve_experts(8, None, 8, "f")
    with pytest.raises(ValueError, match="records 8 experts but --n-experts 6"):
        resolve_experts(6, 8, 3, "f")


def test_routing_log_refuses_inconsistent_shapes():
    with pytest.raises(ValueError, match="counts must be"):
        RoutingLog("x", ["0"], np.arange(2), np.zeros((2, 2, 4), np.int64))
    with pytest.raises(ValueError, match="strictly ascending"):
        RoutingLog("x", ["0"], np.array([3, 1]), np.zeros((2, 1, 4), np.int64))


def test_written_log_reads_back_exactly_and_pandas_reads_it_as_is(tmp_path):
    log = _log(tokens=True)
    write_log(log, str(tmp_path / "log"))
    back = read_store(str(tmp_path / "log"))
    assert back.layers == log.layers and np.array_equal(back.steps, log.steps)
    assert np.array_equal(back.counts, log.counts) and back.top_k == 2 and back.meta == log.meta
    assert np.array_equal(back.physical_to_logical, log.physical_to_logical)
    for name in ("step", "layer", "ids", "weights"):  # steps ascending, each step's tokens in source order
        assert np.array_equal(getattr(back.tokens, name), getattr(log.tokens, name)), name
    frame = pd.read_parquet(tmp_path / "log" / "counts")  # the dataset, as any tool reads it
    pivot = frame.pivot_table(index=["step", "layer"], columns="expert", values="count", aggfunc="sum")
    for s, step in enumerate(log.steps):
        for i, layer in enumerate(log.layers):
            assert list(pivot.loc[(step, layer)]) == list(log.counts[s, i])
    meta = json.loads((tmp_path / "log" / "meta.json").read_text())
    assert meta["schema"] == "moe-scope-routing-log/1" and meta["n_experts"] == 6


def test_writer_refuses_a_used_directory_and_steps_that_go_back(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep")
    with pytest.raises(ValueError, match="is not empty"):
        LogWriter(str(tmp_path / "used"), ["0"], 4)
    w = LogWriter(str(tmp_path / "new"), ["0"], 4)
    w.write_step(5, [[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="step 5 comes after step 5"):
        w.write_step(5, [[1, 2, 3, 4]])
    with pytest.raises(ValueError, match=r"counts must be \(layers=1, experts=4\)"):
        w.write_step(6, [[1, 2, 3]])


def test_follower_reads_only_new_parts_and_marks_idle(tmp_path):
    now = [0.0]
    path = str(tmp_path / "log")
    w = LogWriter(path, ["0", "1"], 3, top_k=1)
    f = LogFollower(path, clock=lambda: now[0])
    assert f.poll() == [] and f.log() is None
    w.write_step(0, [[1, 0, 0], [0, 1, 0]])
    w.flush()
    assert f.poll() == [0] and f.parts_read == 1
    w.write_step(1, [[2, 0, 0], [0, 0, 2]])
    w.write_step(2, [[0, 0, 3], [3, 0, 0]])
    w.flush()
    assert f.poll() == [1, 2] and f.parts_read == 2  # the first part is not read again
    assert f.poll() == [] and f.parts_read == 2
    assert np.array_equal(f.log().counts[:, 1], [[0, 1, 0], [0, 0, 2], [3, 0, 0]])
    now[0] = 29.0
    assert not f.idle(30.0)
    now[0] = 31.0
    assert f.idle(30.0)
    assert f.step_line(2) == "step 2: 6 assignments over 2 layers; worst layer 0 max/mean 3.000, dead experts 2"


def test_a_half_written_part_is_never_read(tmp_path):
    path = str(tmp_path / "log")
    w = LogWriter(path, ["0"], 2)
    w.write_step(0, [[1, 1]])
    w.flush()
    (tmp_path / "log" / "counts" / ".part-000000000009-abc.parquet.tmp").write_bytes(b"PAR1 half")
    assert read_store(path).counts.shape == (1, 1, 2)


def test_load_rows_equal_summary_dict_row_by_row():
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 6, (5, 3, 7))
    counts[2, 1] = 0  # a layer without tokens at one step
    counts[3, 0, :6] = 0  # one expert takes everything
    rows = load_rows(np.arange(5) * 2, ["a", "b", "c"], counts, 2)
    assert list(rows["step"][:4]) == [0, 0, 0, 2] and list(rows["layer"][:4]) == ["a", "b", "c", "a"]
    for n, row in rows.iterrows():
        s, i = divmod(n, 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            want = summary_dict(sums_from_counts(counts[s, i], counts[s, i].sum() / 2, 2))
        for key in ROW_KEYS:
            a, b = row[key], want[key]
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), (n, key)


def test_counts_only_numbers_are_load_side_and_naive():
    counts = np.array([[[3, 1, 0, 0]]])
    rows = load_rows(np.array([0]), ["0"], counts, None)
    assert rows["max_over_mean"][0] == 3.0  # max 3 / mean 1
    assert rows["dead_fraction"][0] == 0.5
    assert math.isnan(rows["tokens"][0]) and math.isnan(rows["aux_loss"][0])  # no top_k, no logits


def test_open_trace_reads_a_routing_log_directory_with_todays_keys(tmp_path):
    log = _log()
    write_log(log, str(tmp_path / "log"))
    s = open_trace(str(tmp_path / "log"))
    assert s.source == "sglang-per-token" and s.layers == log.layers and s.steps == list(log.steps)
    assert np.array_equal(s.load["l1"], log.counts[:, 1])
    worst = s.rows.loc[s.rows["max_over_mean"].idxmax()]
    assert s.worst()["layer"] == worst["layer"] and s.worst()["step"] == worst["step"]
    with pytest.raises(ValueError, match="has 3 MoE layers"):
        open_trace(str(tmp_path / "log"), n_layers=2)


def test_a_directory_without_routing_files_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no routing files"):
        open_trace(str(tmp_path))


def test_trace_report_converts_and_reads_the_converted_log(tmp_path, capsys):
    from moe.cli.main import main
    log = _log()
    write_log(log, str(tmp_path / "a"))
    assert main(["trace-report", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["trace-report", str(tmp_path / "b")]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["load"] == second["load"] == {name: log.counts[:, i].tolist() for i, name in enumerate(log.layers)}
    assert sorted(os.listdir(tmp_path / "b")) == ["counts", "meta.json"]


def test_a_layer_without_tokens_is_reported_not_a_crash(tmp_path, capsys):
    from moe.cli.main import main
    counts = np.zeros((2, 2, 4), np.int64)
    counts[:, 1] = [[3, 1, 0, 0], [2, 2, 0, 0]]  # layer "0" (a dense layer of a per-token dump) routes nothing
    write_log(RoutingLog("x", ["0", "1"], np.arange(2), counts, top_k=2), str(tmp_path / "log"))
    assert main(["trace-report", str(tmp_path / "log")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["per_layer"]["0"]["max_over_mean"] is None  # NaN, written as null: nothing to divide by
    assert doc["per_layer"]["1"]["max_over_mean"] == 2.5  # [5, 3, 0, 0]: max 5 over mean 2
    assert doc["worst"]["layer"] == "1"


def test_all_zero_counts_are_one_line(tmp_path, capsys):
    from moe.cli.main import main
    (tmp_path / "zero.csv").write_text("layer,expert,count\n0,0,0\n0,1,0\n")
    assert main(["trace-report", str(tmp_path / "zero.csv")]) == 2
    assert "holds no routed tokens" in capsys.readouterr().err


def test_a_counts_table_says_its_expert_count_was_inferred(tmp_path, capsys):
    from moe.cli.main import main
    (tmp_path / "c.csv").write_text("layer,expert,count\n0,0,5\n0,2,1\n")
    assert main(["trace-report", str(tmp_path / "c.csv")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_experts"] == 3 and doc["n_experts_source"] == "inferred"
    assert main(["trace-report", str(tmp_path / "c.csv"), "--n-experts", "8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_experts"] == 8 and doc["n_experts_source"] == "given"
    assert doc["per_layer"]["0"]["dead_fraction"] == 6 / 8


def _part(folder, name, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.table(columns), os.path.join(folder, name))


def test_a_tampered_log_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "log")
    w = LogWriter(path, ["0"], 4, top_k=1)
    w.write_step(0, [[1, 2, 3, 4]])
    w.flush()
    counts = os.path.join(path, "counts")
    _part(counts, "part-zzz1.parquet", {"step": [1], "layer": ["0"], "expert": [0], "count": ["7"]})
    with pytest.raises(ValueError, match="no integer column 'count'"):
        read_store(path)
    os.remove(os.path.join(counts, "part-zzz1.parquet"))
    _part(counts, "part-zzz2.parquet", {"step": [0], "layer": ["0"], "expert": [1], "count": [7]})
    with pytest.raises(ValueError, match="two counts parts hold the same step"):
        read_store(path)
    os.remove(os.path.join(counts, "part-zzz2.parquet"))
    bad_layers = {"a layer meta.json does not list": ["7"], "no layer": [None], "bytes that are not text": [b"\xff"]}
    for why, layer in bad_layers.items():
        _part(counts, "part-zzz4.parquet", {"step": [4], "layer": layer, "expert": [1], "count": [7]})
        with pytest.raises(ValueError, match="names a layer that meta.json does not list"):
            read_store(path)
    _part(counts, "part-zzz4.parquet", {"step": [4, 4], "layer": ["0", "0"], "expert": [1, 1], "count": [7, 8]})
    with pytest.raises(ValueError, match=r"gives one \(step, layer, expert\) twice"):
        read_store(path)
    _part(counts, "part-zzz4.parquet", {"step": [4, 4], "layer": [0, 0], "expert": [1, 2], "count": [7, 8]})
    assert read_store(path).counts[1, 0, 1:3].tolist() == [7, 8]  # integer layer labels read as their text
    os.remove(os.path.join(counts, "part-zzz4.parquet"))
    big = 2 ** 60 + 1  # beyond float64's exact integers: kept exact
    _part(counts, "part-zzz3.parquet", {"step": [5], "layer": ["0"], "expert": [3], "count": [big]})
    assert int(read_store(path).counts[1, 0, 3]) == big


def test_token_ids_outside_the_expert_count_are_refused(tmp_path):
    log = _log(tokens=True)
    write_log(log, str(tmp_path / "log"))
    folder = tmp_path / "log" / "tokens"
    _part(str(folder), "part-zzz.parquet", {"step": [1], "layer": ["l0"], "token": [0], "experts": [[9, 1]]})
    with pytest.raises(ValueError, match="names expert 9, outside 0..5"):
        read_store(str(tmp_path / "log"))


def test_per_rank_counts_round_trip(tmp_path):
    log = _log()
    log.rank_counts = np.random.default_rng(2).integers(0, 9, (len(log.steps), 2, len(log.layers), 8))
    write_log(log, str(tmp_path / "log"))
    assert np.array_equal(read_store(str(tmp_path / "log")).rank_counts, log.rank_counts)


def test_meta_json_is_bounded_by_the_budget_and_never_read_through_a_link_out_of_the_log(tmp_path, monkeypatch):
    """An auditor's 60 MB meta.json of empty objects parsed to 2.0 GB under a 1 GB budget (its cap was a fixed
    64 MiB); a meta.json linking out of the log was read, though the server may open only the log's folder."""
    from moe.traces.store import read_meta
    with LogWriter(str(tmp_path / "log"), ["0"], 4, top_k=1) as w:
        w.write_step(0, [[1, 2, 3, 4]])
    meta = tmp_path / "log" / "meta.json"
    doc = json.loads(meta.read_text())
    assert read_meta(str(tmp_path / "log"))["layers"] == ["0"]
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", str(128 * 100_000 / 2 ** 30))           # line_bytes: 100,000
    meta.write_text(json.dumps({**doc, "metadata": {"note": "x" * 99_000}}))
    assert read_meta(str(tmp_path / "log"))["metadata"]["note"] == "x" * 99_000
    meta.write_text(json.dumps({**doc, "metadata": {"note": "x" * 101_000}}))
    with pytest.raises(ValueError, match=r"meta.json takes more than 97\.7 KiB, the most a routing log's metadata"):
        read_store(str(tmp_path / "log"))
    monkeypatch.delenv("MOE_SCOPE_MEMORY_GB")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(doc))
    meta.unlink()
    meta.symlink_to(outside)
    with pytest.raises(ValueError, match="meta.json links outside the routing log; copy the log itself"):
        read_store(str(tmp_path / "log"))
    inside = tmp_path / "log" / "meta-copy.json"                                       # a link within the log: read
    inside.write_text(json.dumps(doc))
    meta.unlink()
    meta.symlink_to(inside)
    assert read_meta(str(tmp_path / "log"))["layers"] == ["0"]


@pytest.mark.parametrize("restore", [False, True])
def test_a_link_swapped_in_while_meta_json_is_opened_is_refused(tmp_path, monkeypatch, restore):
    """A reviewer's race: meta.json's link was checked, then opened by name, so a writer inside the log could swap in
    a link out of it between the two. The file opened is checked on its descriptor: swapped just before the open
    (and, with `restore`, swapped back just after it), the outside file is refused either way."""
    import moe.roots
    from moe.traces.store import read_meta
    with LogWriter(str(tmp_path / "log"), ["0"], 4, top_k=1) as w:
        w.write_step(0, [[1, 2, 3, 4]])
    meta, inside = tmp_path / "log" / "meta.json", tmp_path / "log" / "meta-copy.json"
    doc = json.loads(meta.read_text())
    inside.write_text(json.dumps(doc))
    (tmp_path / "outside.json").write_text(json.dumps({**doc, "layers": ["secret"]}))
    meta.unlink()
    meta.symlink_to(inside)
    opened = moe.roots.open_regular

    def racing(path, *args):
        if os.path.basename(path) == "meta.json":
            meta.unlink()
            meta.symlink_to(tmp_path / "outside.json")                              # the writer's swap
        f = opened(path, *args)
        if restore and os.path.basename(path) == "meta.json":
            meta.unlink()
            meta.symlink_to(inside)
        return f
    monkeypatch.setattr(moe.roots, "open_regular", racing)
    with pytest.raises(ValueError, match="meta.json links outside the routing log; copy the log itself"):
        read_meta(str(tmp_path / "log"))
    monkeypatch.setattr(moe.roots, "open_regular", opened)
    meta.unlink()
    meta.symlink_to(inside)
    assert read_meta(str(tmp_path / "log"))["layers"] == ["0"]                      # no race: the link within is read


def test_a_part_file_swapped_for_a_link_after_it_was_listed_is_refused(tmp_path, monkeypatch):
    """The parts are checked when they are listed and opened later: a link out of the log swapped in between (a
    writer inside the log) is refused on the descriptor opened, and the outside file is never read."""
    import moe.roots
    with LogWriter(str(tmp_path / "log"), ["0"], 4, top_k=1) as w:
        w.write_step(0, [[1, 2, 3, 4]])
    part = next((tmp_path / "log" / "counts").iterdir())
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(part.read_bytes())
    assert read_store(str(tmp_path / "log")).counts.sum() == 10
    opened = moe.roots.open_regular

    def racing(path, *args):
        if os.path.basename(path) == part.name and not os.path.islink(path):
            os.unlink(path)
            os.symlink(outside, path)                                                  # the writer's swap
        return opened(path, *args)
    monkeypatch.setattr(moe.roots, "open_regular", racing)
    with pytest.raises(ValueError, match=f"'{part.name}' in counts/ links outside the routing log"):
        read_store(str(tmp_path / "log"))


def test_the_counts_folder_swapped_for_a_link_after_the_listing_is_refused(tmp_path, monkeypatch):
    """A reviewer's bypass: the part's own check resolved counts/ again when it opened the part, so counts/ renamed
    and replaced by a link to an outside folder holding a part of the same name was read (its 1,000 tokens). The
    parts are named from counts/ as it resolved when listed."""
    import moe.roots
    with LogWriter(str(tmp_path / "log"), ["0"], 4, top_k=1) as w:
        w.write_step(0, [[1, 2, 3, 4]])
    counts = tmp_path / "log" / "counts"
    part = next(counts.iterdir())
    (tmp_path / "outside").mkdir()
    with LogWriter(str(tmp_path / "other"), ["0"], 4, top_k=1) as w:
        w.write_step(0, [[1000, 0, 0, 0]])
    os.rename(next((tmp_path / "other" / "counts").iterdir()), tmp_path / "outside" / part.name)
    opened = moe.roots.open_regular

    def racing(path, *args):
        if os.path.basename(path) == part.name and not os.path.islink(counts):
            os.rename(counts, tmp_path / "log" / "counts-old")
            os.symlink(tmp_path / "outside", counts)                                   # the writer's swap
        return opened(path, *args)
    monkeypatch.setattr(moe.roots, "open_regular", racing)
    with pytest.raises(ValueError, match=f"'{part.name}' in counts/ links outside the routing log"):
        read_store(str(tmp_path / "log"))


def test_an_expert_count_given_for_a_routing_log_must_agree_with_its_own(tmp_path):
    """trace-report LOG --n-experts 4 on a log of 16 experts printed the log's numbers as if the flag were not there."""
    from moe.traces.formats import read_log
    from moe.traces.store import write_log
    counts = np.arange(2 * 1 * 16).reshape(2, 1, 16)
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(2), counts), str(tmp_path / "log"))
    assert read_log(str(tmp_path / "log"), 16).n_experts == read_log(str(tmp_path / "log")).n_experts == 16
    with pytest.raises(ValueError, match="records 16 experts"):
        read_log(str(tmp_path / "log"), 4)


@pytest.mark.parametrize("base", [[1], "1", 1.0, -1, 2, True])
def test_a_malformed_layer_base_in_meta_json_is_one_line(tmp_path, base):
    """`"layer_base": [1]` in a log's meta.json ended `plan --export sglang` in a TypeError traceback."""
    from moe.traces.formats import read_log
    from moe.traces.store import write_log
    write_log(RoutingLog("megatron", ["1"], np.arange(2), np.ones((2, 1, 4), np.int64)), str(tmp_path / "log"))
    meta = json.loads((tmp_path / "log" / "meta.json").read_text())
    meta["meta"]["layer_base"] = base
    (tmp_path / "log" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="the routing log's layer_base must be 0 or 1"):
        read_log(str(tmp_path / "log"))


def test_a_log_of_more_layers_than_a_file_may_name_is_refused_by_every_reader():
    """MAX_LAYERS was checked on Parquet labels only: an auditor's routing log naming 100,000 layers in meta.json
    (740 KB) took the Runs page 86 s, a 281 KB Megatron-Core npz of 200,000 layers 31 s, a 100 KB vLLM .npy 15 s.
    The log itself refuses them, whatever read it."""
    from moe.traces.records import MAX_LAYERS
    from moe.traces.vllm import from_routed
    L = MAX_LAYERS + 1
    with pytest.raises(ValueError, match=f"names {L:,} layers, more than the {MAX_LAYERS:,} a file may name"):
        RoutingLog("counts-csv", [str(i) for i in range(L)], np.arange(1), np.ones((1, L, 2), np.int64))
    with pytest.raises(ValueError, match=f"names {L:,} layers, more than the {MAX_LAYERS:,}"):
        from_routed(np.ones((1, L, 1), np.int8), "routed.npy", 2)
    log = RoutingLog("counts-csv", [str(i) for i in range(MAX_LAYERS)], np.arange(1), np.ones((1, MAX_LAYERS, 2)))
    assert len(log.layers) == MAX_LAYERS
    with pytest.raises(ValueError, match=f"a routing log holds 1 to {MAX_LAYERS:,} layers, got {L:,}"):
        LogWriter(os.path.join(os.path.dirname(__file__), "never-written"), [str(i) for i in range(L)], 2)  # none


@pytest.mark.parametrize("layers, experts, top_k, problem", [
    (["0", "0"], 4, 2, "layers must be a list of distinct names of 1 to 32 characters"),
    (["0", ""], 4, 2, "layers must be a list of distinct names"),
    (["x" * 33], 4, 2, "layers must be a list of distinct names"),
    (["[x](http://127.0.0.1:9/a)"], 4, 2, "layers must be a list of distinct names of 1 to 32 characters, each a"),
    (["0"], 0, None, "n_experts must be an expert count from 1 to"),
    (["0"], 4, 5, "top_k must be null or an integer from 1 to n_experts"),
    (["0"], 4, True, "top_k must be null or an integer"),                   # int() made them 1 and 2
    (["0"], 4, 2.7, "top_k must be null or an integer"),
])
def test_the_writer_refuses_the_meta_every_reader_refuses(tmp_path, layers, experts, top_k, problem):
    """LogWriter wrote logs of duplicated, empty or 33-character layer names (and top_k > E) that read_meta, and so
    every page and command, refused: a run recorded for hours could not be opened. It refuses them before writing,
    with the reader's words; what it writes, every reader opens."""
    with pytest.raises(ValueError, match=f"cannot write a routing log whose {problem}"):
        LogWriter(str(tmp_path / "log"), layers, experts, top_k=top_k)
    assert not (tmp_path / "log").exists()
    with pytest.raises(ValueError, match=f"meta.json's {problem}"):  # the reader's refusal, of a log written by hand
        os.makedirs(tmp_path / "hand")
        (tmp_path / "hand" / "meta.json").write_text(json.dumps(
            {"schema": "moe-scope-routing-log/1", "layers": layers, "n_experts": experts, "top_k": top_k}))
        read_store(str(tmp_path / "hand"))
    name = "x" * 32
    with LogWriter(str(tmp_path / "ok"), [name, "1"], 4, top_k=np.int64(2)) as w:  # a numpy top_k, as configs hold
        w.write_step(0, np.ones((2, 4), np.int64))
    log = read_store(str(tmp_path / "ok"))
    assert log.layers == [name, "1"] and log.top_k == 2


def test_a_counts_part_is_added_a_batch_at_a_time_as_a_loop_adds_it_row_by_row():
    """CountsAccumulator writes every row of a batch at once (a step each in a loop took an auditor's 25 KB part of
    1 M one-row steps 16 s): a step may span batches (row groups), a missing cell is 0, and a cell given twice, in
    one batch or across two, is refused."""
    import pyarrow as pa
    from moe.traces.records import TraceLimits
    from moe.traces.store_read import CountsAccumulator
    rng = np.random.default_rng(5)
    layers, E = ["a", "b"], 3

    def batch(rows):
        step, layer, expert, count = zip(*rows)
        return pa.table({"step": np.array(step, np.int64), "layer": list(layer), "expert": np.array(expert, np.int64),
                         "count": np.array(count, np.int64)})
    cells = [(s, l, e) for s in range(6) for l in layers for e in range(E)]
    chosen = [cells[i] for i in rng.permutation(len(cells))[:25]]
    chosen.sort(key=lambda c: c[0])                                                    # steps in order, split below
    rows = [(s, l, e, int(rng.integers(1, 9))) for s, l, e in chosen]
    k = next(k for k in range(1, len(rows)) if rows[k - 1][0] == rows[k][0])           # a step across two batches
    acc = CountsAccumulator(layers, E, TraceLimits.from_env())
    assert acc.add([batch(rows[:k]), batch(rows[k:])]) == sorted({r[0] for r in rows})
    want = {}
    for s, l, e, n in rows:                                                            # the loop, row by row
        want.setdefault(s, np.zeros((2, E), np.int64))[layers.index(l), e] = n
    assert set(acc.cells) == set(want) and all((acc.cells[s] == want[s]).all() for s in want)
    for parts in ([rows[:3] + [rows[0]]], [rows[:k], [rows[k - 1]] + rows[k:]]):      # twice: in one batch, across
        acc = CountsAccumulator(layers, E, TraceLimits.from_env())
        with pytest.raises(ValueError, match=r"gives one \(step, layer, expert\) twice"):
            acc.add([batch(p) for p in parts])
