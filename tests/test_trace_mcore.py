"""Megatron-Core EP load dumps: per-rank .npz files as ExpertLoadRecorder writes them, summed over every EP group."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fixtures_stacks import mcore_dumps
from moe.traces.log import RECORDED
from moe.traces.mcore import SOURCE, kind_npz, read_npz
from moe.traces.records import TraceLimits
from moe.traces.safeload import load_npz


def naive_group(truth: dict, ranks: int, layers: int, forwards: int, n_experts: int) -> np.ndarray:
    out = np.zeros((forwards, layers, n_experts), dtype=np.int64)
    for r in range(ranks):
        for slot in range(layers):
            for f in range(forwards):
                for e in range(n_experts):
                    out[f, slot, e] += int(truth[(r, slot)][f, e])
    return out


def test_ranks_of_one_group_sum_like_a_loop(tmp_path):
    paths, truth = mcore_dumps(tmp_path, ep_size=4, layer_numbers=[5, 2, 9], n_experts=8, max_forwards=3)
    assert len({os.path.basename(p).split("_", 4)[4] for p in paths}) == 4  # capture ids differ per rank
    log = read_npz(paths[::-1], None)  # any file order
    assert log.source == SOURCE and log.layers == ["2", "5", "9"] and list(log.steps) == [0, 1, 2]
    np.testing.assert_array_equal(log.counts, naive_group(truth, 4, 3, 3, 8))
    assert log.counts.sum() == 4 * 3 * 3 * 16 * 2  # ranks × layers × forwards × tokens × top_k
    assert log.rank_counts.shape == (3, 4, 3, 8)
    np.testing.assert_array_equal(log.rank_counts[1, 2, 0], truth[(2, 0)][1])
    assert log.n_experts == 8 and log.n_experts_source == RECORDED and log.physical_to_logical is None
    assert log.meta["ep_groups"] == [[0, 1, 2, 3]] and log.meta["forwards_dropped"] == 0


def test_every_ep_group_of_a_run_in_one_folder_is_summed(tmp_path):
    """MCORE_MOE_EXPERT_LOAD_DUMP_DIR is one folder for every rank: with 2 data-parallel replicas × EP 2 it holds two
    groups ([0, 1] and [2, 3]), which was refused ("belongs to another expert-parallel group"); a pipeline stage's
    groups hold their own layers. A layer's count is the sum over every group that holds it."""
    first, truth0 = mcore_dumps(tmp_path, ep_size=2, layer_numbers=[1, 2], n_experts=4, max_forwards=3)
    second, truth1 = mcore_dumps(tmp_path, ep_size=2, layer_numbers=[1, 2], n_experts=4, max_forwards=3, seed=1,
                                 first_rank=2)
    stage, truth2 = mcore_dumps(tmp_path, ep_size=2, layer_numbers=[3], n_experts=4, max_forwards=3, seed=2,
                                first_rank=4)
    stage2, truth3 = mcore_dumps(tmp_path, ep_size=2, layer_numbers=[3], n_experts=4, max_forwards=3, seed=3,
                                 first_rank=6)
    log = read_npz(first + second + stage + stage2, None)
    assert log.layers == ["1", "2", "3"] and log.meta["ep_groups"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    want = np.zeros((3, 3, 4), dtype=np.int64)                                        # (forwards, layers, experts)
    for truth, rows in ((truth0, (0, 1)), (truth1, (0, 1)), (truth2, (2,)), (truth3, (2,))):
        for (rank, slot), loads in truth.items():
            want[:, rows[slot]] += loads
    np.testing.assert_array_equal(log.counts, want)
    np.testing.assert_array_equal(log.rank_counts[:, 1, 0], truth0[(1, 0)] + truth1[(1, 0)])  # ep_rank 1, layer 1
    assert log.meta["forwards_dropped"] == 0
    with pytest.raises(ValueError, match=r"group \[2, 3\] do not hold each of its 2 ranks once \(ep_rank 1 is "
                                         r"missing\)"):
        read_npz(first + second[:1], None)
    # a whole group missing (one replica's second stage): layer 3 would count half its tokens, silently
    with pytest.raises(ValueError, match="layer 3 is held by 1 expert-parallel group\(s\) of the dumps, layer 1 "
                                         "by 2: a run holds every layer in one group per data-parallel replica"):
        read_npz(first + second + stage, None)


def test_rows_past_a_layers_forward_count_are_never_read(tmp_path):
    # rank 1 layer slot 0 captured 2 of 4 forwards (a _partial dump): its rows 2..3 are torch.empty leftovers
    paths, truth = mcore_dumps(tmp_path, ep_size=2, layer_numbers=[1, 3], n_experts=4, max_forwards=4,
                               forwards={(1, 0): 2}, first_rank=6)
    log = read_npz(paths, 4)
    assert list(log.steps) == [0, 1] and log.meta["forwards_dropped"] == (4 + 4 + 2 + 4) - 2 * 2 * 2
    np.testing.assert_array_equal(log.counts, naive_group(truth, 2, 2, 2, 4))
    assert log.counts.min() >= 0


def _rewrite(path, out, **changes):
    arrays = load_npz(str(path))
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(out, **arrays)
    return str(out)


@pytest.mark.parametrize("changes, match", [
    ({"dump_version": np.asarray("mcore_ep_load_dump_v2")}, "not dump version mcore_ep_load_dump_v1"),
    ({"loads": None}, "misses \\['loads'\\]"),
    ({"loads": np.zeros((2, 3, 8), np.float32)}, "non-integers"),
    ({"loads": np.zeros((2, 3, 6), np.int32)}, "has 6 physical experts but the dump names 8"),
    ({"loads": np.zeros((2, 3), np.int32)}, "must be integers \\[local MoE layers"),
    ({"forward_counts": np.asarray([3, 5], np.int32)}, "'forward_counts' must be 0..3"),
    ({"layer_numbers": np.asarray([4, 4], np.int32)}, "names a layer twice"),
    ({"layer_numbers": np.asarray([4], np.int32)}, "'layer_numbers' must be 2 integers"),
    ({"ep_rank": np.int32(5)}, "do not match 'ep_group_ranks'"),
    ({"global_rank": np.int32(3)}, "do not match 'ep_group_ranks'"),
    ({"ep_size": np.asarray([2, 2])}, "'ep_size' must be one integer"),
])
def test_a_malformed_dump_is_one_line(tmp_path, changes, match):
    paths, _ = mcore_dumps(tmp_path, ep_size=2, layer_numbers=[1, 2], n_experts=8, max_forwards=3)
    bad = _rewrite(paths[0], tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=match) as err:
        read_npz([bad, paths[1]], None)
    assert "\n" not in str(err.value)


def test_group_refusals(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    paths, _ = mcore_dumps(tmp_path / "a", ep_size=3, layer_numbers=[1, 2], n_experts=6, max_forwards=2)
    other, _ = mcore_dumps(tmp_path / "b", ep_size=3, layer_numbers=[1, 2], n_experts=6, max_forwards=2, seed=4)
    shifted, _ = mcore_dumps(tmp_path / "c", ep_size=3, layer_numbers=[1, 2], n_experts=6, max_forwards=2,
                             first_rank=3)
    with pytest.raises(ValueError, match="ep_rank 2 is missing"):
        read_npz(paths[:2], None)
    with pytest.raises(ValueError, match="ep_rank 0 appears twice"):
        read_npz([paths[0], other[0], paths[1], paths[2]], None)
    with pytest.raises(ValueError, match=r"group \[0, 1, 2\] do not hold each of its 3 ranks once \(ep_rank 1 is "
                                         r"missing\)"):
        read_npz([paths[0], shifted[1], paths[2]], None)  # groups [0, 1, 2] and [3, 4, 5], each partial
    relabelled = _rewrite(other[1], tmp_path / "r.npz", layer_numbers=np.asarray([1, 3], np.int32))
    with pytest.raises(ValueError, match="other MoE layers"):
        read_npz([paths[0], relabelled, paths[2]], None)
    with pytest.raises(ValueError, match="records 6 experts but --n-experts 8"):
        read_npz(paths, 8)
    with pytest.raises(ValueError, match="no Megatron-Core EP load dump"):
        read_npz([], None)


def test_no_forward_truncated_file_and_budget(tmp_path):
    # rank 0 never ran layer 2 (the recorder writes a file only once some layer captured a forward)
    paths, _ = mcore_dumps(tmp_path, ep_size=2, layer_numbers=[1, 2], n_experts=4, max_forwards=2,
                           forwards={(0, 1): 0})
    with pytest.raises(ValueError, match="captured no forward"):
        read_npz(paths, None)
    data = open(paths[1], "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_npz([paths[0], str(tmp_path / "cut.npz")], None)
    with pytest.raises(ValueError, match="memory budget"):
        read_npz(paths, None, limits=TraceLimits(budget=256))


def test_kind_npz(tmp_path):
    paths, _ = mcore_dumps(tmp_path, ep_size=1, layer_numbers=[0], n_experts=2, max_forwards=1)
    arrays = load_npz(paths[0])
    assert kind_npz(arrays)
    del arrays["forward_counts"]
    assert not kind_npz(arrays) and not kind_npz({"loads": np.zeros(1)})
