"""vLLM readers: routed experts and EPLB windows, from files written as vLLM's tensors are, against naive loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_stacks import vllm_eplb_state, vllm_routed
from moe.traces.log import GIVEN, RECORDED
from moe.traces.records import TraceLimits
from moe.traces.safeload import load_npy, load_pt
from moe.traces.vllm import EPLB, ROUTED, from_eplb, from_routed, kind


def naive_routed(arr: np.ndarray, layers: list[int], n_experts: int) -> np.ndarray:
    out = np.zeros((1, len(layers), n_experts), dtype=np.int64)
    for t in range(arr.shape[0]):
        for i, layer in enumerate(layers):
            for k in range(arr.shape[2]):
                out[0, i, int(arr[t, layer, k])] += 1
    return out


def naive_logical(rows: list[np.ndarray], p2l: np.ndarray, n_experts: int) -> np.ndarray:
    out = np.zeros((len(rows), p2l.shape[0], n_experts), dtype=np.int64)
    for s, row in enumerate(rows):
        for layer in range(p2l.shape[0]):
            for slot in range(p2l.shape[1]):
                out[s, layer, int(p2l[layer, slot])] += int(row[layer, slot])
    return out


def test_routed_counts_equal_a_token_loop_and_dense_layers_are_dropped(tmp_path):
    arr = vllm_routed(tokens=30, layers=5, top_k=3, n_experts=8, dense=(0, 1))
    np.save(tmp_path / "routed.npy", arr)
    log = from_routed(load_npy(str(tmp_path / "routed.npy")), "routed.npy", 8)
    assert log.source == ROUTED and log.layers == ["2", "3", "4"] and log.top_k == 3
    assert log.meta["uncaptured_layers"] == [0, 1] and log.n_experts_source == GIVEN
    np.testing.assert_array_equal(log.counts, naive_routed(arr, [2, 3, 4], 8))
    assert log.counts.sum() == 30 * 3 * 3
    # per-token rows: layer-major, the ids of that token as vLLM returned them
    assert log.tokens.ids.shape == (90, 3)
    np.testing.assert_array_equal(log.tokens.ids[30:60], arr[:, 3, :])
    assert (log.tokens.layer[30:60] == 1).all() and (log.tokens.step == 0).all()


def test_routed_from_a_torch_save_tensor(tmp_path):
    arr = vllm_routed(tokens=12, layers=2, top_k=2, n_experts=6, seed=3, dtype=np.int32)
    torch.save(torch.from_numpy(arr), tmp_path / "routed.pt")
    obj = load_pt(str(tmp_path / "routed.pt"))
    assert kind(obj) == ROUTED
    np.testing.assert_array_equal(from_routed(obj, "routed.pt", 6).counts, naive_routed(arr, [0, 1], 6))


def test_top1_keeps_every_layer_even_all_zero():
    arr = np.zeros((4, 2, 1), dtype=np.int16)
    arr[:, 1, 0] = [1, 2, 2, 3]
    log = from_routed(arr, "x.npy", 4)
    assert log.layers == ["0", "1"]
    np.testing.assert_array_equal(log.counts[0], [[4, 0, 0, 0], [0, 1, 2, 1]])


@pytest.mark.parametrize("arr, n, match", [
    (np.zeros((3, 2, 2), np.int16) + 1, None, "does not record the number of experts"),
    (np.full((3, 2, 2), 7, np.int16), 4, "routes to expert 7 but the expert count is 4"),
    (np.full((3, 2, 2), -1, np.int16), 4, "negative"),
    (np.zeros((3, 2, 2), np.float32), 4, "integer tensor"),
    (np.zeros((3, 2), np.int16), 4, "3 non-empty dimensions"),
    (np.zeros((0, 2, 2), np.int16), 4, "non-empty"),
    (np.zeros((3, 2, 2), np.int16), 4, "never captured"),
])
def test_routed_refusals_are_one_line(arr, n, match):
    with pytest.raises(ValueError, match=match) as err:
        from_routed(arr, "r.npy", n)
    assert "\n" not in str(err.value)


def test_routed_over_the_budget_is_refused():
    arr = vllm_routed(tokens=64, layers=2, top_k=2, n_experts=4)
    with pytest.raises(ValueError, match="over a quarter of the memory budget"):
        from_routed(arr, "r.npy", 4, limits=TraceLimits(budget=4096))


def test_kind():
    assert kind(torch.zeros(2, 3, 4, dtype=torch.int16)) == ROUTED
    assert kind(np.zeros((2, 3, 4), np.int64)) == ROUTED
    assert kind(torch.zeros(2, 3, 4)) is None and kind(np.zeros((2, 3), np.int32)) is None
    assert kind(torch.zeros(2, 3, 4, dtype=torch.bool)) is None and kind(np.zeros((2, 3, 4), bool)) is None
    assert kind({"expert_load_window": torch.zeros(1)}) == EPLB and kind({"other": 1}) is None
    assert kind("text") is None


@pytest.mark.parametrize("passes", [3, 11])
def test_eplb_window_oldest_first_mapped_like_a_slot_loop(tmp_path, passes):
    state, history = vllm_eplb_state(window=5, layers=3, n_logical=6, n_redundant=2, passes=passes)
    torch.save(state, tmp_path / "eplb.pt")
    obj = load_pt(str(tmp_path / "eplb.pt"))
    assert kind(obj) == EPLB
    log = from_eplb(obj, "eplb.pt", None)
    rows = history if passes < 5 else history[-5:]  # time order; rows vLLM has not written yet are dropped
    p2l = state["physical_to_logical_map"].numpy()
    np.testing.assert_array_equal(log.counts, naive_logical(rows, p2l, 6))
    np.testing.assert_array_equal(log.rank_counts[:, 0], np.stack(rows))
    np.testing.assert_array_equal(log.physical_to_logical, p2l)
    assert log.n_experts_source == RECORDED and log.n_experts == 6
    assert list(log.steps) == ([2, 3, 4] if passes < 5 else [0, 1, 2, 3, 4])  # window rows, oldest first
    assert log.meta["empty_rows_dropped"] == max(0, 5 - passes)
    assert log.meta["window_order"] == "oldest first"


def test_eplb_without_step_keeps_storage_order_and_n_experts_may_agree():
    state, _ = vllm_eplb_state(window=4, layers=2, n_logical=4, n_redundant=4, passes=6, seed=1)
    del state["expert_load_window_step"], state["logical_to_physical_map"], state["logical_replica_count"]
    log = from_eplb(state, "w.pt", 4)
    stored = [state["expert_load_window"][i].numpy() for i in range(4)]
    np.testing.assert_array_equal(log.counts, naive_logical(stored, state["physical_to_logical_map"].numpy(), 4))
    assert log.meta["window_order"] == "storage" and log.n_experts_source == RECORDED


def _broken(change):
    state, _ = vllm_eplb_state(window=3, layers=2, n_logical=4, n_redundant=2, passes=4, seed=2)
    change(state)
    return state


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


def _missing_expert(s):
    s["physical_to_logical_map"][0] = torch.tensor([0, 1, 2, 2, 1, 0])
    del s["logical_to_physical_map"], s["logical_replica_count"]


def _swap_inverse(s):
    s["logical_to_physical_map"][1, 0, 0], s["logical_to_physical_map"][1, 1, 0] = (
        s["logical_to_physical_map"][1, 1, 0].clone(), s["logical_to_physical_map"][1, 0, 0].clone())


@pytest.mark.parametrize("change, n, match", [
    (lambda s: s.pop("physical_to_logical_map"), None, "has no 'physical_to_logical_map'"),
    (_set("physical_to_logical_map", torch.zeros(2, 5, dtype=torch.long)), None, "save the map of the same"),
    (_missing_expert, None, "no physical slot"),
    (_set("expert_load_window", torch.zeros(3, 2, 6)), None, "integer tensor"),
    (_set("expert_load_window", torch.full((3, 2, 6), -1, dtype=torch.int32)), None, "negative load"),
    (_set("expert_load_window_step", 3), None, "from 0 to 2"),
    (_set("expert_load_window_step", "1"), None, "from 0 to 2"),
    (lambda s: s["logical_replica_count"].add_(1), None, "does not count the slots"),
    (_swap_inverse, None, "not the inverse"),
    (_set("physical_to_logical_map", [[0, 1]]), None, "integer tensor"),
    (lambda s: None, 8, "records 4 experts but --n-experts 8"),
])
def test_eplb_refusals_are_one_line(change, n, match):
    with pytest.raises(ValueError, match=match) as err:
        from_eplb(_broken(change), "w.pt", n)
    assert "\n" not in str(err.value)


def test_a_truncated_eplb_file_is_one_line(tmp_path):
    state, _ = vllm_eplb_state(window=2, layers=1, n_logical=2, n_redundant=0, passes=1)
    torch.save(state, tmp_path / "eplb.pt")
    data = (tmp_path / "eplb.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_pt(str(tmp_path / "cut.pt"))
