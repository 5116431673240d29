"""Logs that `plan` and the Placement section must refuse in one line, or read as written: a map with a row count
other than the log's layers, a layer label that would make SGLang's map enormous, an SGLang dump from some ranks
only, a ranks table that leaves out slots of no tokens, and a replay at a W the log does not record."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import fixtures_sglang as sg
from moe.cli.main import main
from moe.parallel.export import MAX_SGLANG_CELLS
from moe.traces.formats import read_log
from moe.traces.log import RoutingLog
from moe.traces.store import LogWriter, write_log

E = 4


def _log(layers, p2l=None, steps: int = 8) -> RoutingLog:
    counts = np.random.default_rng(0).integers(1, 20, size=(steps, len(layers), E))
    return RoutingLog("moe-scope-recorder", layers, np.arange(steps), counts, physical_to_logical=p2l)


def test_a_map_needs_one_row_per_layer(tmp_path, capsys):
    """A map of 1 row for 2 layers crashed `plan` with an IndexError traceback (and the Runs page); one of 3 rows
    had its extra row ignored. The log, its writer and its reader refuse both in one line."""
    for rows in (1, 3):
        p2l = np.tile(np.arange(E + 2) % E, (rows, 1))
        with pytest.raises(ValueError, match=fr"has {rows} row\(s\) for 2 layer\(s\); give one row per layer"):
            _log(["0", "1"], p2l)
        with pytest.raises(ValueError, match=fr"has {rows} row\(s\) for 2 layer\(s\)"):
            LogWriter(str(tmp_path / f"w{rows}"), ["0", "1"], E, physical_to_logical=p2l)
    path = tmp_path / "log"
    write_log(_log(["0", "1"], np.tile(np.arange(E + 2) % E, (2, 1))), str(path))
    doc = json.loads((path / "meta.json").read_text())
    doc["physical_to_logical_map"] = doc["physical_to_logical_map"][:1]              # as another writer may leave it
    (path / "meta.json").write_text(json.dumps(doc))
    assert main(["plan", str(path), "--world-size", "2", "--redundant-slots", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "physical_to_logical_map has 1 row(s) for 2 layer(s)" in err, err


def test_sglang_s_map_is_refused_before_the_replay_when_it_would_grow_past_any_model(tmp_path, capsys, monkeypatch):
    """A 16 KB log labelled "20000000" made an SGLang map of 20 M rows (4 GB, minutes) and left a 0-byte file. Now
    `plan` refuses it before it replays anything (the replay is made to fail here: the refusal must come first),
    naming what made it that big: the log's layer id, or --num-layers."""
    import moe.cli.plan as plan_cli

    def no_replay(*_, **__):
        raise AssertionError("replayed before the SGLang map was checked")
    path, out = tmp_path / "log", tmp_path / "plan.json"
    write_log(_log(["20000000"]), str(path))
    monkeypatch.setattr(plan_cli, "replay_log", no_replay)
    assert main(["plan", str(path), "--world-size", "2", "--redundant-slots", "2", "--export", "sglang",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would hold 20,000,001 rows (the log's largest layer id is 20,000,000)" in err
    assert not out.exists()
    write_log(_log(["1"]), str(tmp_path / "two"))
    assert main(["plan", str(tmp_path / "two"), "--world-size", "2", "--redundant-slots", "2", "--export", "sglang",
                 "--out", str(out), "--num-layers", "20000"]) == 2
    err = capsys.readouterr().err
    assert "would hold 20,000 rows (--num-layers 20,000)" in err and "give the model's number of layers" in err
    rows = 16_384                                                                     # as many as a log may name
    wide = MAX_SGLANG_CELLS // rows                                                   # E: E + 2 slots is past it
    counts = np.random.default_rng(0).integers(1, 20, size=(4, 1, wide))
    write_log(RoutingLog("moe-scope-recorder", [str(rows - 1)], np.arange(4), counts), str(tmp_path / "wide"))
    assert main(["plan", str(tmp_path / "wide"), "--world-size", "2", "--redundant-slots", "2", "--export", "sglang",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"would hold {rows:,} layers × {wide + 2} slots (the log's largest layer id is {rows - 1:,}), more than " \
           f"{MAX_SGLANG_CELLS:,} entries" in err and not out.exists(), err


def test_sglang_s_map_at_the_bound_is_written(tmp_path, capsys):
    rows = 16_384
    wide = MAX_SGLANG_CELLS // rows - 2                                               # E + R = the bound's slots
    counts = np.random.default_rng(0).integers(1, 20, size=(4, 1, wide))
    write_log(RoutingLog("moe-scope-recorder", [str(rows - 1)], np.arange(4), counts), str(tmp_path / "log"))
    assert main(["plan", str(tmp_path / "log"), "--world-size", "2", "--redundant-slots", "2", "--export", "sglang",
                 "--out", str(tmp_path / "plan.json")]) == 0
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert np.shape(doc["physical_to_logical_map"]) == (rows, MAX_SGLANG_CELLS // rows)


def test_a_plan_that_cannot_be_written_leaves_no_file(tmp_path):
    from moe.parallel.export import write_plan
    with pytest.raises(TypeError):
        write_plan(str(tmp_path / "plan.json"), {"physical_to_logical_map": [[0, 1]], "note": object()})
    assert not (tmp_path / "plan.json").exists()


def test_an_sglang_dump_with_a_rank_missing_records_no_world_size(tmp_path):
    """Ranks 0 and 2 of a run: its W is not the 2 files read, so no W is recorded (the replay then says that the
    slots lie on the W chosen); ranks 0 … n − 1 record n."""
    p2l = sg.placement(1, E, 8)
    g = torch.Generator().manual_seed(0)
    for name, ranks in (("gap", (0, 2)), ("whole", (0, 1))):
        folder = tmp_path / name
        folder.mkdir()
        for rank in ranks:
            sg.write_rank_file(folder, rank, [sg.per_pass_record(fp, rank, sg.select_experts_count(
                sg.random_topk(1, 6, 2, 8, g), 8)) for fp in range(4)], p2l)
        log = read_log(str(folder))
        assert log.meta["ranks"] == list(ranks)
        assert log.meta["world_size"] == (None if name == "gap" else 2)
        assert log.recorded_world_size() == (None if name == "gap" else 2)
        assert (log.slot_counts(0, 4).counts is None) == (name == "whole")


def test_a_ranks_table_without_its_zero_rows_reads_as_written(tmp_path):
    """A writer that leaves out slots of no tokens: the ranks table is read at least at the map's P (those slots 0),
    not the largest slot named + 1, so the recorded load is shown; a slot past the map is read too, and its
    counts are then not the map's (a note, not a refusal of the whole log), and the log saves again as read."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    p2l = np.array([[0, 1, 2, 3, 0, 1]])                                              # P = 6; slot 5 idle
    counts = np.zeros((4, 1, E), dtype=np.int64)
    rank_counts = np.zeros((4, 2, 1, 6), dtype=np.int64)
    rank_counts[..., :5] = np.random.default_rng(1).integers(1, 9, size=(4, 2, 1, 5))
    counts[:, 0] = np.stack([np.bincount(p2l[0], rank_counts[s, :, 0].sum(0), E) for s in range(4)])
    path = tmp_path / "log"
    write_log(RoutingLog("moe-scope-recorder", ["0"], np.arange(4), counts, physical_to_logical=p2l,
                         rank_counts=rank_counts), str(path))
    (part,) = [os.path.join(path / "ranks", f) for f in os.listdir(path / "ranks")]
    table = pq.read_table(part)
    kept = table.filter(pa.compute.greater(table["count"], 0))                        # zero rows left out
    assert kept.num_rows < table.num_rows and max(kept["physical"].to_pylist()) == 4
    pq.write_table(kept, part)
    log = read_log(str(path))
    np.testing.assert_array_equal(log.rank_counts, rank_counts)
    np.testing.assert_array_equal(log.slot_counts(0, 2).counts, rank_counts[:, :, 0].sum(axis=1))
    physical = kept["physical"].to_numpy().copy()
    physical[0] = 7                                                                   # past the map's 6 slots
    pq.write_table(kept.set_column(kept.schema.get_field_index("physical"), "physical", pa.array(physical)), part)
    log = read_log(str(path))
    assert log.rank_counts.shape == (4, 2, 1, 8) and log.counts.sum() == counts.sum()
    slots = log.slot_counts(0, 2)
    assert slots.counts is None and "are not [steps=4, ranks, layers=1, slots=6] of its map" in slots.note
    write_log(log, str(tmp_path / "copy"))                                            # saved again as read
    np.testing.assert_array_equal(read_log(str(tmp_path / "copy")).rank_counts, log.rank_counts)
