"""SGLang ExpertDistributionRecorder dumps → RoutingLog: values against naive loops over the dumps as SGLang writes
them (tests/fixtures_sglang.py), and every documented refusal as one ValueError line."""
from __future__ import annotations

import os
import pathlib
from collections import defaultdict

import numpy as np
import pytest
import torch

from fixtures_sglang import (per_pass_record, per_token_record, placement, random_topk, select_experts_count,
                             write_rank_file, write_stat)
from moe.traces import sglang
from moe.traces.log import RECORDED
from moe.traces.safeload import load_pt

L, E, P = 3, 6, 8  # layers, logical experts, physical slots (2 replicas)


def read(paths, n_experts=None):
    return sglang.from_dumps([(p, load_pt(p)) for p in paths], n_experts=n_experts)


def refused(paths, match, n_experts=None, dumps=None):
    with pytest.raises(ValueError, match=match) as err:
        sglang.from_dumps(dumps if dumps is not None else [(p, load_pt(p)) for p in paths], n_experts=n_experts)
    assert "\n" not in str(err.value)
    return str(err.value)


def dense(cells: dict, steps, n_cols) -> np.ndarray:
    """{(step, layer, col): n} → (S, L, n_cols) in the order of `steps`."""
    out = np.zeros((len(steps), L, n_cols), dtype=np.int64)
    for (step, layer, col), n in cells.items():
        out[list(steps).index(step), layer, col] += n
    return out


def counted_passes(n_passes, world, seed=0):
    """passes[j][r]: rank r's select_experts count (L, P) int32 of pass j (top-2 of a few tokens)."""
    g = torch.Generator().manual_seed(seed)
    return [[select_experts_count(random_topk(L, 3 + r + j % 2, 2, P, g), P) for r in range(world)]
            for j in range(n_passes)]


# --------------------------------------------------------------------------- stat


def naive_stat(passes, p2l, buffer_size) -> dict:
    """slot → {(layer, logical): tokens} of the last pass written to that slot, summed over ranks."""
    slots = {}
    for j, ranks in enumerate(passes):
        cell = defaultdict(int)
        for counts in ranks:
            for layer in range(L):
                for slot in range(P):
                    cell[(layer, int(p2l[layer, slot]))] += int(counts[layer, slot])
        slots[j % buffer_size] = cell
    return slots


def test_stat_drops_unwritten_rows_and_keeps_rank0_all_reduced_counts(tmp_path):
    p2l, passes = placement(L, E, P, seed=1), counted_passes(4, world=2)
    path = write_stat(tmp_path, passes, p2l, E, buffer_size=6, rate=0.75)
    log = read([path])
    expected = naive_stat(passes, p2l, 6)
    assert log.source == "sglang-stat" and log.layers == ["0", "1", "2"]
    assert log.steps.tolist() == [0, 1, 2, 3]
    for slot, cell in expected.items():
        for layer in range(L):
            assert log.counts[slot, layer].tolist() == [cell[(layer, e)] for e in range(E)]
    assert log.meta["empty_rows_dropped"] == 2 and log.meta["buffer_rows"] == 6
    assert log.meta["files"] == [os.path.basename(path)] and log.meta["mode"] == "stat"
    assert log.meta["counts_all_reduced"] is True and log.meta["average_utilization_rate_over_window"] == 0.75
    assert log.n_experts == E and log.n_experts_source == RECORDED and log.rank_counts is None


def test_stat_after_the_buffer_wraps_steps_are_buffer_slots(tmp_path):
    p2l, passes = placement(L, E, P), counted_passes(5, world=1, seed=3)
    log = read([write_stat(tmp_path, passes, p2l, E, buffer_size=3)])
    expected = naive_stat(passes, p2l, 3)  # slot 0 = pass 3, slot 1 = pass 4, slot 2 = pass 2
    assert log.steps.tolist() == [0, 1, 2] and log.meta["empty_rows_dropped"] == 0
    for slot in range(3):
        assert log.counts[slot, 1].tolist() == [expected[slot][(1, e)] for e in range(E)]


def test_stat_expert_count_follows_resolve_experts(tmp_path):
    path = write_stat(tmp_path, counted_passes(2, 1), placement(L, E, P), E, buffer_size=2)
    assert read([path], n_experts=E).n_experts == E
    refused([path], rf"records {E} experts but --n-experts 9 was given", n_experts=9)


def test_stat_refusals(tmp_path):
    def stat(**fields):
        path = tmp_path / f"expert_distribution_recorder_{len(list(tmp_path.iterdir()))}.pt"
        torch.save({"rank": 0, "average_utilization_rate_over_window": None, **fields}, str(path))
        return str(path)
    refused([stat(logical_count=torch.zeros((4, L, E), dtype=torch.int32))], "every row of logical_count is zero")
    refused([stat(logical_count=torch.ones((L, E), dtype=torch.int32))], "integer tensor of 3 dimensions")
    refused([stat(logical_count=torch.ones((2, L, E)))], "integer tensor of 3 dimensions, got float32")
    refused([stat(logical_count=-torch.ones((2, L, E), dtype=torch.int32))], "negative count")
    refused([stat(logical_count=torch.ones((2, L, E), dtype=torch.int32), rank=1)], "rank 0 only")
    refused([stat(logical_count=[[[1]]])], "not a tensor")


def test_stat_is_never_mixed_with_other_files(tmp_path):
    p2l = placement(L, E, P)
    stat = write_stat(tmp_path, counted_passes(2, 1), p2l, E, buffer_size=2)
    rank = write_rank_file(tmp_path, 0, [per_pass_record(0, 0, torch.ones((L, P), dtype=torch.int32))], p2l)
    refused([stat, rank], "already summed over every rank; read it alone")
    refused([stat, write_stat(tmp_path, counted_passes(2, 1), p2l, E, buffer_size=2)], "read it alone")


# --------------------------------------------------------------------------- per_pass


def per_pass_run(tmp_path, world=3, fpids=(10, 11, 13, 14), skip=None, seed=0):
    """One file per rank; `skip` = (fpid, rank) a rank did not record. Returns paths, map, {(fpid, rank): count}."""
    p2l, g = placement(L, E, P, seed=seed), torch.Generator().manual_seed(seed)
    counts = {(f, r): select_experts_count(random_topk(L, 2 + r, 3, P, g), P) for f in fpids for r in range(world)}
    paths = [write_rank_file(tmp_path, r, [per_pass_record(f, r, counts[(f, r)]) for f in fpids if (f, r) != skip],
                             p2l) for r in range(world)]
    return paths, p2l, {key: c for key, c in counts.items() if key != skip}


def test_per_pass_sums_ranks_per_forward_pass_and_maps_to_logical(tmp_path):
    paths, p2l, counts = per_pass_run(tmp_path, skip=(13, 1))
    log = read(paths[::-1])
    logical, physical = defaultdict(int), defaultdict(int)
    for (fpid, rank), c in counts.items():
        for layer in range(L):
            for slot in range(P):
                logical[(fpid, layer, int(p2l[layer, slot]))] += int(c[layer, slot])
                physical[(fpid, rank, layer, slot)] += int(c[layer, slot])
    assert log.source == "sglang-per-pass" and log.steps.tolist() == [10, 11, 13, 14]
    assert np.array_equal(log.counts, dense(logical, [10, 11, 13, 14], E))
    assert log.rank_counts.shape == (4, 3, L, P)
    for s, fpid in enumerate([10, 11, 13, 14]):
        for rank in range(3):
            assert log.rank_counts[s, rank].tolist() == [[physical[(fpid, rank, layer, slot)] for slot in range(P)]
                                                         for layer in range(L)]
    assert np.array_equal(log.physical_to_logical, p2l.numpy()) and log.n_experts == E
    assert log.meta["ranks"] == [0, 1, 2] and log.meta["world_size"] == 3 and log.meta["mode"] == "per_pass"
    assert sorted(log.meta["files"]) == sorted(os.path.basename(p) for p in paths)
    assert log.meta["missing_rank_passes"] == 1 and log.top_k is None and log.tokens is None


def test_per_pass_expert_count_from_the_map(tmp_path):
    paths, _, _ = per_pass_run(tmp_path, world=1)
    assert read(paths, n_experts=E).n_experts_source == RECORDED
    refused(paths, f"records {E} experts but --n-experts {E + 1} was given", n_experts=E + 1)


def rank_file(tmp_path, rank, records, p2l=None):
    return write_rank_file(tmp_path, rank, records, placement(L, E, P) if p2l is None else p2l)


def ones(layers=L, slots=P):
    return torch.ones((layers, slots), dtype=torch.int32)


def test_per_pass_refusals(tmp_path):
    ok = rank_file(tmp_path, 0, [per_pass_record(0, 0, ones())])
    no_map = tmp_path / "expert_distribution_recorder_1.0_1.pt"
    torch.save({"records": [per_pass_record(0, 1, ones())]}, str(no_map))
    refused([ok, str(no_map)], f"{no_map.name}: has no last_physical_to_logical_map")
    refused([ok, rank_file(tmp_path, 1, [per_pass_record(0, 1, ones())], placement(L, E, P, seed=5))],
            "different physical → logical maps")
    refused([ok, rank_file(tmp_path, 1, [per_pass_record(0, 1, ones(layers=L + 1))])],
            rf"global_physical_count is \[{L + 1}, {P}\] but last_physical_to_logical_map is \[{L}, {P}\]")
    refused([ok, rank_file(tmp_path, 0, [per_pass_record(1, 0, ones())])], "both hold rank 0")
    refused([rank_file(tmp_path, 0, [per_pass_record(0, 0, ones()), per_pass_record(0, 0, ones())])],
            "forward pass 0 of rank 0 is recorded twice")
    refused([rank_file(tmp_path, 0, [per_pass_record(0, 0, ones()), per_pass_record(1, 1, ones())])],
            r"records of ranks \[0, 1\] in one file")
    refused([rank_file(tmp_path, 0, [])], "holds no records")
    refused([rank_file(tmp_path, 0, [per_pass_record(0, 0, -ones())])], "negative count")
    refused([rank_file(tmp_path, 0, [per_pass_record(0, 0, ones().float())])], "integer tensor of 2 dimensions")
    refused([rank_file(tmp_path, 0, [{**per_pass_record(0, 0, ones()), "forward_pass_id": "7"}])],
            "field 'forward_pass_id' must be an integer >= 0, got a string")
    refused([rank_file(tmp_path, 0, [{**per_pass_record(0, 0, ones()), "gatherer_key": "child_a"}])],
            "gatherer_key is not 'primary'")
    refused([rank_file(tmp_path, 0, [[1, 2]])], "record 0: is not a dict")


def test_per_pass_map_refusals(tmp_path):
    missing = placement(L, E, P).clone()
    missing[1] = torch.arange(P) % (E - 1)  # layer 1 gives the last logical expert no slot
    refused([rank_file(tmp_path, 0, [per_pass_record(0, 0, ones())], missing)],
            f"gives logical expert {E - 1} no physical slot in layer 1")
    negative = placement(L, E, P).clone()
    negative[0, 0] = -1
    refused([rank_file(tmp_path, 0, [per_pass_record(0, 0, ones())], negative)], "holds expert -1")
    refused([rank_file(tmp_path, 0, [per_pass_record(0, 0, ones())], placement(L, E, P).float())],
            r"last_physical_to_logical_map \[layers, physical_experts\] must be an integer tensor of 2 dimensions, "
            r"got float32")


# --------------------------------------------------------------------------- per_token


def per_token_run(tmp_path, k=6, world=2, fpids=(4, 5, 6), seed=0, dense_layer=None):
    """Rank files of per_token records; pass 5 of rank 1 has no tokens; `dense_layer` never routes (all -1)."""
    p2l, g = placement(L, E, P, seed=seed), torch.Generator().manual_seed(seed)
    topk = {}
    for f in fpids:
        for r in range(world):
            ids = random_topk(L, 0 if (f, r) == (5, 1) else 2 + r + f % 3, k, P, g)
            if dense_layer is not None:
                ids[dense_layer] = -1
            topk[(f, r)] = ids
    paths = [write_rank_file(tmp_path, r, [per_token_record(f, r, topk[(f, r)], P) for f in fpids], p2l)
             for r in range(world)]
    return paths, p2l, topk


def naive_tokens(topk, p2l):
    """Token rows (step, layer, logical ids) and {(step, layer, logical): n} and {(step, rank, layer, slot): n}."""
    rows, cells, physical = [], defaultdict(int), defaultdict(int)
    for (fpid, rank), ids in topk.items():
        for layer in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                logical = [int(p2l[layer, i]) if i != -1 else -1 for i in ids[layer, t].tolist()]
                if any(x != -1 for x in logical):
                    rows.append((fpid, layer, tuple(logical)))
                for i in ids[layer, t].tolist():
                    if i != -1:
                        cells[(fpid, layer, int(p2l[layer, i]))] += 1
                        physical[(fpid, rank, layer, i)] += 1
    return sorted(rows), cells, physical


def test_per_token_maps_physical_ids_to_logical_tokens_and_counts(tmp_path):
    paths, p2l, topk = per_token_run(tmp_path)
    log = read(paths)
    rows, cells, physical = naive_tokens(topk, p2l)
    got = sorted(zip(log.tokens.step.tolist(), log.tokens.layer.tolist(), map(tuple, log.tokens.ids.tolist())))
    assert log.source == "sglang-per-token" and got == rows and log.tokens.ids.shape[1] == 6  # 8 slots, 2 unused
    assert np.array_equal(log.counts, dense(cells, [4, 5, 6], E)) and log.steps.tolist() == [4, 5, 6]
    assert log.top_k == 6 and log.counts.sum() == 6 * len(rows)
    for (fpid, rank, layer, slot), n in physical.items():
        assert log.rank_counts[[4, 5, 6].index(fpid), rank, layer, slot] == n
    assert log.rank_counts.sum() == log.counts.sum() and np.array_equal(log.physical_to_logical, p2l.numpy())
    assert log.meta["world_size"] == 2 and log.meta["token_rows"] == len(rows) and log.meta["mode"] == "per_token"


def test_per_token_drops_rows_without_an_expert_and_top_k_none_when_it_varies(tmp_path):
    paths, p2l, topk = per_token_run(tmp_path, k=2, world=1, dense_layer=0)
    log = read(paths)
    rows, _, _ = naive_tokens(topk, p2l)
    assert log.meta["padding_rows_dropped"] == sum(ids.shape[1] for ids in topk.values())  # layer 0's rows
    assert 0 not in log.tokens.layer.tolist() and log.counts[:, 0].sum() == 0 and log.top_k == 2
    assert len(rows) == log.meta["token_rows"]
    varied = tmp_path / "varied"
    varied.mkdir()
    ids = random_topk(L, 4, 3, P, torch.Generator().manual_seed(1))
    ids[2, 1, 2] = -1  # one token of layer 2 chose 2 experts
    log = read([write_rank_file(varied, 0, [per_token_record(0, 0, ids, P)], p2l)])
    assert log.top_k is None and log.counts[0, 2].sum() == 4 * 3 - 1 and log.tokens.ids.shape[1] == 3
    assert log.tokens.ids[(log.tokens.layer == 2)][1].tolist()[2] == -1


def test_per_token_refusals(tmp_path):
    p2l, ids = placement(L, E, P), random_topk(L, 3, 2, P, torch.Generator().manual_seed(0))
    outside = ids.clone()
    outside[1, 0, 0] = P
    refused([rank_file(tmp_path, 0, [per_token_record(0, 0, outside, P)], p2l)],
            f"routes to physical expert {P} but last_physical_to_logical_map has {P} physical experts")
    below = ids.clone()
    below[0, 0, 0] = -2
    refused([rank_file(tmp_path, 0, [per_token_record(0, 0, below, P)], p2l)], "expert id -2 is negative")
    refused([rank_file(tmp_path, 0, [per_token_record(0, 0, random_topk(L + 1, 3, 2, P,
                                                                        torch.Generator()), P)], p2l)],
            f"topk_ids_of_layer has {L + 1} layers but last_physical_to_logical_map has {L}")
    narrow = {**per_token_record(1, 0, ids, P), "topk_ids_of_layer": ids.clone()}  # 2 slots, not 8
    refused([rank_file(tmp_path, 0, [per_token_record(0, 0, ids, P), narrow], p2l)],
            "2 slots per token, other records 8")
    floats = {**per_token_record(0, 0, ids, P), "topk_ids_of_layer": ids.float()}
    refused([rank_file(tmp_path, 0, [floats], p2l)], "integer tensor of 3 dimensions")
    per_pass = rank_file(tmp_path, 1, [per_pass_record(0, 1, ones())], p2l)
    refused([rank_file(tmp_path, 0, [per_token_record(0, 0, ids, P)], p2l), per_pass], "per_pass and per_token")


def test_per_token_records_of_many_tokens_open(tmp_path, monkeypatch):
    """SGLang keeps each pass's input_ids and positions as lists of ints: a dump of 80 passes of 8,192 tokens holds
    1.3 M of them, and the loader's walk refused it ("more than 1,048,576 objects"), whatever the budget. Numbers
    are not walked; a dump past the (lowered) count of containers is still refused."""
    from moe.traces import tensors
    monkeypatch.setattr(tensors, "MAX_OBJECTS", 1_000)
    p2l, g = placement(L, E, P), torch.Generator().manual_seed(3)
    topk = {f: random_topk(L, 300, 2, P, g) for f in range(2)}                        # 2 × 2 × 300 ints in lists
    path = write_rank_file(tmp_path, 0, [per_token_record(f, 0, topk[f], P) for f in topk], p2l)
    log = read([path])
    rows, cells, _ = naive_tokens({(f, 0): ids for f, ids in topk.items()}, p2l)
    assert log.meta["token_rows"] == len(rows) == 2 * L * 300 and np.array_equal(log.counts, dense(cells, [0, 1], E))
    many = tmp_path / "many"
    many.mkdir()
    wide = write_rank_file(many, 0, [per_token_record(f, 0, topk[0], P) for f in range(200)], p2l)
    with pytest.raises(ValueError, match="holds more than 1,000 containers and tensors"):
        load_pt(wide)


# --------------------------------------------------------------------------- detection, untrusted files


def test_kind_names_each_mode_and_nothing_else(tmp_path):
    p2l = placement(L, E, P)
    stat = write_stat(tmp_path, counted_passes(1, 1), p2l, E, buffer_size=2)
    per_pass = rank_file(tmp_path, 0, [per_pass_record(0, 0, ones())], p2l)
    per_token = rank_file(tmp_path, 1, [per_token_record(0, 1, random_topk(L, 2, 2, P, torch.Generator()), P)], p2l)
    assert [sglang.kind(load_pt(p)) for p in (stat, per_pass, per_token)] == [
        "sglang-stat", "sglang-per-pass", "sglang-per-token"]
    assert sglang.kind({"records": [], "last_physical_to_logical_map": p2l}) == "sglang-per-pass"
    for other in ({}, {"weights": torch.ones(2)}, {"records": "x"}, {"records": [{"step": 1}]}, [1, 2],
                  torch.ones(3), None, "logical_count"):
        assert sglang.kind(other) is None
    with pytest.raises(ValueError, match="'other.pt' is not an SGLang expert-distribution dump"):
        sglang.from_dumps([("/x/other.pt", {"weights": torch.ones(2)})])
    with pytest.raises(ValueError, match="no SGLang dump was given"):
        sglang.from_dumps([])


class Payload:
    """An object whose pickle would call os.mkdir on load (any callable could be there instead)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_would_run_code_is_refused_in_one_line(tmp_path):
    path, marker = tmp_path / "expert_distribution_recorder_1.0_0.pt", tmp_path / "ran"
    torch.save({"records": [Payload(marker)], "last_physical_to_logical_map": placement(L, E, P)}, str(path))
    with pytest.raises(ValueError, match="would run code when loaded, so it is refused") as err:
        load_pt(str(path))
    assert "\n" not in str(err.value) and not marker.exists()
