"""Plan files: SGLang's --init-expert-location JSON, the vLLM-style map and our own, written and read back; the
serving formats only with E + R a multiple of W; ep-report's reader takes every one of them."""
import json

import numpy as np
import pytest

from moe.parallel.export import (MOE_SCOPE_FORMAT, check_serving, layer_plans, load_placement, plan_document, read_plan,
                                 serving_redundant_slots, write_plan)
from moe.parallel.judge import current_layout, plan_layout
from moe.parallel.placement import contiguous, save
from moe.parallel.planner import pack
from moe.parallel.serving import pad_to
from moe.parallel.replay import Layout, from_map, rank_load


def _plans(E=8, W=4, R=4, L=3, seed=0):
    rng = np.random.default_rng(seed)
    loads = rng.integers(0, 300, size=(L, E))
    layouts = [pad_to(lay, load, E + R) if lay.n_slots != E + R else lay
               for lay, load in ((plan_layout(load, W, R, current_layout(E, W), distinct=True)[0], load)
                                  for load in loads)]
    return [str(i) for i in range(L)], layouts  # integer labels: SGLang's map row i is layer i


@pytest.mark.parametrize("fmt", ["sglang", "vllm", "moe-scope"])
def test_round_trip_every_expert_and_every_slot(tmp_path, fmt):
    layers, layouts = _plans()
    path = tmp_path / f"{fmt}.json"
    write_plan(str(path), plan_document(fmt, layers, layouts, 8))
    doc = json.loads(path.read_text())
    if fmt == "sglang":  # SGLang passes the keys to init_by_mapping: only the map
        assert list(doc) == ["physical_to_logical_map"] and np.array(doc["physical_to_logical_map"]).shape == (3, 12)
    back = read_plan(str(path), 8, 4)
    assert back.format == fmt and back.n_experts == 8 and back.world_size == 4
    assert back.layers == ["0", "1", "2"]
    for before, after in zip(layouts, back.layouts):
        assert after.n_slots == 4 * 3 == before.n_slots  # W × experts per rank
        assert set(after.slot_expert.tolist()) == set(range(8))  # every logical expert present
        assert [sorted(r) for r in after.rank_experts()] == [sorted(r) for r in before.rank_experts()]
        assert all(len(set(r)) == len(r) == 3 for r in after.rank_experts())


def test_serving_formats_need_e_plus_r_a_multiple_of_w(tmp_path):
    assert serving_redundant_slots(8, 4, 9) == [0, 4, 8] and serving_redundant_slots(6, 4, 6) == [2, 6]
    with pytest.raises(ValueError, match=r"E=8, R=3, W=4; use R in \[4, 8\]"):
        check_serving(8, 3, 4)
    lay, _ = plan_layout([50, 1, 1, 1, 1, 1], 4, 1, current_layout(6, 4))  # 7 slots on 4 ranks: ours only
    with pytest.raises(ValueError, match="multiple of W"):
        plan_document("sglang", ["0"], [lay], 6)
    write_plan(str(tmp_path / "ours.json"), plan_document("moe-scope", ["0"], [lay], 6))
    assert read_plan(str(tmp_path / "ours.json")).layouts[0].n_slots == 7


def test_two_slots_of_one_expert_on_a_rank_open_from_a_map_and_round_trip_in_our_file_not_in_a_serving_one(tmp_path):
    """DeepSeek's rule (vLLM's DefaultEplbPolicy) may put two slots of one expert on a GPU: such a map opens, and the
    rank serves two chunks of that expert's tokens; our own file keeps it; SGLang's and vLLM's we write refuse it."""
    path = tmp_path / "vllm.json"
    path.write_text(json.dumps({"physical_to_logical_map": [[0, 0, 1, 2]], "ep_size": 2}))
    lay = read_plan(str(path)).layouts[0]
    assert lay.rank_experts() == [[0, 0], [1, 2]]
    assert rank_load(np.array([[9, 4, 5]]), lay).tolist() == [[9, 9]]  # 4 + 5 chunks of expert 0 on rank 0
    write_plan(str(tmp_path / "ours.json"), plan_document("moe-scope", ["0"], [lay], 3))
    assert read_plan(str(tmp_path / "ours.json")).layouts[0].rank_experts() == [[0, 0], [1, 2]]
    assert json.loads((tmp_path / "ours.json").read_text())["layers"]["0"]["ranks"] == [[0, 0], [1, 2]]
    with pytest.raises(ValueError, match="puts two slots of one expert on a rank; the vllm map takes a distinct"):
        plan_document("vllm", ["0"], [lay], 3)


def test_a_kept_layer_is_padded_without_loading_its_busiest_rank_more():
    load = np.array([10] * 8)
    cur = current_layout(8, 4)
    padded = pad_to(cur, load, 12)
    assert padded.n_slots == 12 and all(len(set(r)) == 3 for r in padded.rank_experts())
    assert rank_load(load[None], padded).max() <= rank_load(load[None], cur).max()


def test_bad_files_are_one_line(tmp_path):
    path = tmp_path / "bad.json"
    for doc, message in (({"physical_to_logical_map": [[0, 1, 2]]}, "does not record the world size"),
                         ({"physical_to_logical_map": [[0, 1, 1, 1]], "ep_size": 2}, "gives logical expert 2 no"),
                         ({"physical_to_logical_map": [[0, "1"]], "ep_size": 2}, "must be \\[layers"),
                         ({"something": 1}, "neither 'physical_to_logical_map' nor 'ranks'"),
                         ({"physical_to_logical_map": [[0, 1, 2, 10**22]], "ep_size": 2}, "beyond 64-bit integers"),
                         ({"physical_to_logical_map": [[0, 1, 2, 0]] * 2, "ep_size": 2, "layers": ["a", "a"]},
                          "each layer once"),
                         # it was read as E=3 with 1 redundant slot, silently
                         ({"physical_to_logical_map": [[0, 1, 2, 0]], "ep_size": 2, "num_redundant_experts": 5},
                          r"says num_redundant_experts=5, but its map holds 4 slots for 3 experts \(1 redundant\)"),
                         ({"physical_to_logical_map": [[0, 1, 2, 0]], "ep_size": 2, "num_redundant_experts": "1"},
                          "num_redundant_experts='1'")):
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=message):
            read_plan(str(path), 3, None if "ep_size" in doc else None)
    for doc in ({"physical_to_logical_map": [[0, 1, 2, 0]], "ep_size": "x" * 200_000},
                {"format": MOE_SCOPE_FORMAT, "n_experts": "y" * 200_000, "world_size": 2, "layers": {"0": {}}},
                {"format": MOE_SCOPE_FORMAT, "n_experts": 3, "world_size": 2, "layers": {"z" * 200_000: {}}}):
        path.write_text(json.dumps(doc))  # a value from the file is echoed shortened, not whole
        with pytest.raises(ValueError) as err:
            read_plan(str(path), 3, 2)
        assert len(str(err.value)) < 400 and "\n" not in str(err.value), str(err.value)[:200]


def test_ep_report_reads_every_format_one_layer_at_a_time(tmp_path):
    layers, layouts = _plans(L=1)
    for fmt in ("sglang", "vllm", "moe-scope"):
        path = tmp_path / f"{fmt}.json"
        write_plan(str(path), plan_document(fmt, layers, layouts, 8))
        p = load_placement(str(path), 8, 4)
        assert [sorted(r) for r in p.ranks] == [sorted(r) for r in layouts[0].rank_experts()]
    save(contiguous(8, 4), str(tmp_path / "old.json"))
    assert load_placement(str(tmp_path / "old.json"), 8, 4) == contiguous(8, 4)
    layers, layouts = _plans(L=2)
    write_plan(str(tmp_path / "two.json"), plan_document("vllm", layers, layouts, 8))
    with pytest.raises(ValueError, match="holds 2 layers and ep-report runs one; choose it with --placement-layer"):
        load_placement(str(tmp_path / "two.json"), 8, 4)
    for fmt in ("sglang", "vllm", "moe-scope"):  # a layer of a file that holds several, by its name (SGLang: its id)
        path = tmp_path / f"two-{fmt}.json"
        write_plan(str(path), plan_document(fmt, ["0", "1"], layouts, 8))
        for name, layout in zip(("0", "1"), layouts):
            p = load_placement(str(path), 8, 4, name)
            assert [sorted(r) for r in p.ranks] == [sorted(r) for r in layout.rank_experts()]
        with pytest.raises(ValueError, match="has no layer '2'; choose one of \\['0', '1'\\]"):
            load_placement(str(path), 8, 4, "2")
    assert layouts[0].rank_experts() != layouts[1].rank_experts()  # so choosing the layer is seen
    with pytest.raises(ValueError, match="ep_size=4, this run has 2 ranks"):
        load_placement(str(tmp_path / "two.json"), 8, 2)


def test_layer_plans_from_the_whole_log_or_its_last_window():
    from moe.parallel.export import layer_plans
    counts = np.zeros((6, 2, 8), dtype=np.int64)
    counts[:, :, :] = 10
    counts[:3, 0, 0] = 200  # layer "a": expert 0 hot in the first half only
    whole = layer_plans(counts, ["a", "b"], 4, 4)
    assert whole["a"].load.tolist() == counts[:, 0, :].sum(0).tolist() and not whole["a"].kept_current
    assert whole["b"].kept_current and whole["b"].layout.n_slots == 8  # even: the current placement, flagged
    last = layer_plans(counts, ["a", "b"], 4, 4, last_window=3)
    assert last["a"].load.tolist() == counts[3:, 0, :].sum(0).tolist() and last["a"].kept_current
    served = layer_plans(counts, ["a", "b"], 4, 4, serving=True)
    assert all(p.layout.n_slots == 12 for p in served.values()) and "padded to 12 slots" in served["b"].note
    doc = served["b"].to_dict()
    assert max(doc["predicted_load"]) <= 20 * 6 and all(isinstance(e, int) for r in doc["ranks"] for e in r)
    with pytest.raises(ValueError, match="layer 'z' is not in the log"):
        layer_plans(counts, ["a", "b"], 4, 4, only=["z"])


@pytest.mark.parametrize("experts", ["8", 8.0, True, 0])
def test_num_logical_experts_must_be_a_positive_int_one_line_in_ep_report(tmp_path, capsys, monkeypatch, experts):
    from moe.cli.main import main
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"physical_to_logical_map": [[0, 1, 2, 3, 4, 5, 6, 7]], "ep_size": 2,
                                "num_logical_experts": experts}))
    with pytest.raises(ValueError, match="'num_logical_experts' must be a positive integer"):
        read_plan(str(path), 8, 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the file is read before joining the job
    assert main(["ep-report", "--n-experts", "8", "--tokens", "8", "--placement", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'num_logical_experts' must be a positive integer" in err, err


def test_sglang_map_row_index_is_the_layer_id_and_missing_layers_get_the_trivial_row(tmp_path):
    _, layouts = _plans(L=2)
    doc = plan_document("sglang", ["3", "1"], layouts, 8)  # log order 3, 1; rows by layer id 0 … 3
    rows = doc["physical_to_logical_map"]
    trivial = [p % 8 for p in range(12)]  # SGLang's init_trivial: arange(P) % E
    assert len(rows) == 4 and rows[0] == rows[2] == trivial
    for layer, lay in ((3, layouts[0]), (1, layouts[1])):
        assert rows[layer] == [e for r in lay.rank_experts() for e in sorted(r)]
    assert len(plan_document("sglang", ["3", "1"], layouts, 8, num_layers=6)["physical_to_logical_map"]) == 6
    path = tmp_path / "sglang.json"
    write_plan(str(path), doc)
    back = read_plan(str(path), 8, 4)
    assert back.layers == ["0", "1", "2", "3"]
    assert [sorted(r) for r in back.layouts[3].rank_experts()] == [sorted(r) for r in layouts[0].rank_experts()]
    with pytest.raises(ValueError, match="layer 3, which does not fit --num-layers 3"):
        plan_document("sglang", ["3", "1"], layouts, 8, num_layers=3)
    with pytest.raises(ValueError, match="needs layer labels that are integers"):
        plan_document("sglang", ["model.layers.0", "model.layers.1"], layouts, 8)
    named = plan_document("vllm", ["model.layers.0", "model.layers.1"], layouts, 8)  # the others take any label
    write_plan(str(path), named)
    assert read_plan(str(path), 8, 4).layers == ["model.layers.0", "model.layers.1"]


def test_serving_files_from_a_kept_map_with_two_slots_of_one_expert_on_a_rank():
    """The run's map puts expert 0 twice on rank 0 and nothing lightens it: the serving plan re-packs the run's own
    replica counts with a distinct expert per slot of a rank, exactly as light (115 = half of 230 per rank)."""
    counts, p2l = np.array([[[100, 30, 50, 50]]]), np.array([[0, 0, 1, 2, 3, 1]])
    assert rank_load(counts[0], from_map(p2l[0], 2)).tolist() == [[115, 115]]
    plan = layer_plans(counts, ["0"], 2, 2, p2l, serving=True)["0"]
    assert plan.kept_current and plan.layout.rank_experts() == [[0, 1, 2], [0, 1, 3]]
    assert rank_load(counts[0], plan.layout).tolist() == [[115, 115]]
    assert "distinct expert per slot of a rank (busiest rank 115, current 115)" in plan.note
    plan_document("vllm", ["0"], [plan.layout], 4)  # the serving writer takes it
    assert layer_plans(counts, ["0"], 2, 2, p2l)["0"].layout.rank_experts() == [[0, 0, 1], [2, 3, 1]]  # ours: kept


def test_padding_a_kept_even_layer_searches_when_both_rules_fail():
    """Both padding rules load a rank of this near-even layer past 10001 tokens; the search finds a pair of replicas
    (one each way) that keeps both ranks at 10000, checked against every padding by brute force."""
    load = np.array([2536, 2491, 2499, 2475, 2560, 2441, 2499, 2499])
    cur = current_layout(8, 2)
    assert rank_load(load[None], cur).tolist() == [[10001, 9999]]
    padded = pad_to(cur, load, 10)
    best = min(int(rank_load(load[None], Layout(np.array([0, 1, 2, 3, a, 4, 5, 6, 7, b]), np.repeat([0, 1], 5),
                                                2)).max()) for a in range(4, 8) for b in range(4))
    assert int(rank_load(load[None], padded).max()) == best == 10000
    assert all(len(set(r)) == 5 for r in padded.rank_experts())


def test_the_note_counts_the_replicas_placed_not_the_ones_allowed():
    """The run's map holds 4 replicas; contiguous blocks (none) are lighter on an even load: 0 of the 4 allowed."""
    p2l = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    plan = layer_plans(np.full((1, 1, 8), 10), ["0"], 4, 4, p2l)["0"]
    assert not plan.kept_current and plan.layout.n_slots == 8
    # it said "(more did not lighten the busiest rank)": false where fewer replicas than R would have (greedy plans
    # are not monotone in R: load [6, 11, 3, 5, 2, 4, 5, 12] at W=2 plans 24 with R=1 or 2, and 25 with R=3)
    assert plan.note == ("planned 0 redundant slots of the 4 allowed: contiguous blocks, lighter than the current "
                         "placement; with 4, neither our layout nor DeepSeek's was lighter still (a smaller R may be: "
                         "greedy plans are not monotone in R)")
    assert rank_load(np.full((1, 8), 10), plan.layout).tolist() == [[20, 20, 20, 20]]


def test_a_run_map_whose_replica_counts_cannot_be_packed_distinct_is_one_line_or_another_plan():
    """The run's map gives expert 1 two slots; packing its counts heaviest first leaves only one rank with room, which
    already holds expert 1: pack says so in a ValueError (not an IndexError), and the serving files come from the
    other candidates, never with an expert twice on a rank nor heavier than the run's map."""
    with pytest.raises(ValueError, match="cannot be packed with a distinct expert per slot of a rank"):
        pack(np.array([100, 1, 1, 1, 1, 1, 1, 1.0]), np.array([1, 1, 1, 1, 1, 1, 1, 2]), 3)
    row, load = np.array([3, 0, 1, 0, 1, 5, 4, 2]), np.array([7, 2305, 31, 139, 175, 14])
    try:
        plan = layer_plans(load[None, None, :], ["0"], 2, 2, row[None], serving=True)["0"]
    except ValueError as err:
        assert str(err).startswith("layer '0': none of the layouts tried with 8 slots and a distinct expert per slot")
    else:
        assert all(len(set(r)) == len(r) for r in plan.layout.rank_experts())
        assert rank_load(load[None], plan.layout).max() <= rank_load(load[None], from_map(row, 2)).max()


def test_the_serving_refusal_names_the_run_s_own_replica_counts_where_they_were_tried():
    """The refusal listed what was tried but not the run's own replica counts, which are tried where the run's map
    has the export's slot count. Both loads below have no distinct layout at least as light as the current placement
    (checked by hand: the heaviest expert's rank carries it plus two others, or half of it plus the two heaviest)."""
    row = np.array([0, 2, 4, 3, 1, 1])                                  # the run's map: expert 1 twice
    with pytest.raises(ValueError, match="the lightest experts re-packed, the run's own replica counts re-packed, "
                                         "and our plan padded .*busiest rank 215"):
        layer_plans(np.array([38, 184, 103, 31, 31])[None, None, :], ["0"], 2, 1, row[None], serving=True)
    with pytest.raises(ValueError, match="the lightest experts re-packed, and our plan padded .*busiest rank 262"):
        layer_plans(np.array([258, 4, 132, 6, 38])[None, None, :], ["0"], 2, 1, None, serving=True)  # no map


def test_a_plan_file_with_a_count_as_text_says_so(tmp_path):
    """`"world_size": "2"` said "is for world_size='2', this run has 2", which reads as a contradiction."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": MOE_SCOPE_FORMAT, "n_experts": 4, "world_size": "2",
                                "layers": {"0": {"ranks": [[0, 1], [2, 3]]}}}))
    with pytest.raises(ValueError, match="'n_experts' and 'world_size' must be integers from 1 to"):
        read_plan(str(path), 4, 2)


def test_a_placement_file_for_another_expert_count_is_refused_before_its_experts_are_listed(tmp_path):
    """An auditor's 44-byte placement file naming 300,000,000 experts made `ep-report --placement` build a set of
    them (2.8 GB before a 4 GB ulimit stopped it): the file's count must be the run's, and an expert count."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"ranks": [[0, 1]], "n_experts": 300_000_000}))
    with pytest.raises(ValueError, match=r"is for 300000000 experts, this run has 8; give a placement of this run"):
        read_plan(str(path), 8, 1)
    with pytest.raises(ValueError, match=r"records n_experts=300000000; a count from 1 to 16384 is an expert count"):
        read_plan(str(path))
    path.write_text(json.dumps({"format": MOE_SCOPE_FORMAT, "n_experts": 300_000_000, "world_size": 1,
                                "layers": {"0": {"ranks": [[0, 1]]}}}))
    with pytest.raises(ValueError, match=r"'n_experts' and 'world_size' must be integers from 1 to 16384"):
        read_plan(str(path))
    path.write_text(json.dumps({"ranks": [[0, 1], [2, 3]], "n_experts": 4}))
    assert read_plan(str(path), 4, 2).n_experts == 4                                  # the run's own count: read


@pytest.mark.parametrize("load, row, best", [
    ([144, 152, 5, 146, 105], None, [[0, 2, 3], [1, 2, 4]]),   # contiguous [[0, 1], [2, 3, 4]]: busiest 296
    ([170, 16, 155], [2, 0, 2, 0, 0, 1], [[0, 1], [1, 2]]),     # the run's map: busiest 211
])
def test_a_serving_export_is_found_where_a_lighter_distinct_layout_exists(load, row, best):
    """An auditor's layers that `--export vllm` refused with "no layout with E + R slots and a distinct expert per slot
    of a rank is as light as the current placement", though `best` is one (checked here by the naive rank loads): a
    replica of a light expert fills the slot the serving formats require. The export is now such a layout."""
    load = np.array(load)
    p2l = None if row is None else np.array([row])
    current = current_layout(len(load), 2, None if row is None else p2l[0])
    limit = naive_rank_load(load, current.slot_expert, current.slot_rank, 2).max()
    shown = Layout(np.array([e for r in best for e in r]), np.repeat([0, 1], len(best[0])), 2)
    assert naive_rank_load(load, shown.slot_expert, shown.slot_rank, 2).max() < limit
    plan = layer_plans(load[None, None, :], ["0"], 2, 1, p2l, serving=True)["0"]
    ranks = plan.layout.rank_experts()
    assert plan.layout.n_slots == len(load) + 1 and {len(r) for r in ranks} == {(len(load) + 1) // 2}
    assert all(len(set(r)) == len(r) for r in ranks) and {e for r in ranks for e in r} == set(range(len(load)))
    assert naive_rank_load(load, plan.layout.slot_expert, plan.layout.slot_rank, 2).max() <= limit


def naive_rank_load(load, slot_expert, slot_rank, W):
    """Per rank, the tokens its slots serve: an expert's n tokens cut into c chunks at i·n // c, in slot order."""
    out = np.zeros(W, dtype=np.int64)
    for p, (e, r) in enumerate(zip(slot_expert.tolist(), slot_rank.tolist())):
        mine = [q for q in range(len(slot_expert)) if slot_expert[q] == e]
        i, c, n = mine.index(p), len(mine), int(load[e])
        out[r] += (i + 1) * n // c - i * n // c
    return out
