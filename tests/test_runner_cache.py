"""The dashboard's base-layer cache is bounded in bytes across sessions, and kept results count."""
import gc
import threading
import weakref

import pytest

from dashboard import runner
from dashboard.presets import CONTROL_DEFAULTS
from dashboard.state import spec_from_controls
from moe import MoEConfig
from moe.memory import estimate_bytes


def _cfg(seed):
    return MoEConfig(d_model=16, d_expert=32, n_experts=4, top_k=2, seed=seed)


def test_least_recently_used_layers_leave_to_stay_under_the_room():
    cache = runner.LayerCache()
    weights = estimate_bytes(_cfg(0), 1)["weights"]
    room = 2 * weights + weights // 2  # two sets fit, three do not
    first = cache.get(_cfg(0), room)
    cache.get(_cfg(1), room)
    assert cache.get(_cfg(0), room) is first  # a hit, and now the most recent
    cache.get(_cfg(2), room)                  # evicts seed 1, the least recently used
    assert cache.held_bytes == 2 * weights
    assert cache.get(_cfg(0), room) is first
    assert cache.get(_cfg(1), room) is not None and cache.held_bytes <= room
    with pytest.raises(ValueError, match=r"do not fit in the memory left now .*lower n_experts"):
        cache.get(_cfg(3), weights - 1)


def test_sessions_sharing_the_cache_never_exceed_it():
    cache = runner.LayerCache()
    weights = estimate_bytes(_cfg(0), 1)["weights"]
    room, seen, errors = 2 * weights, [], []

    def session(i):
        try:
            for round_ in range(5):
                layer = cache.get(_cfg((i + round_) % 4), room)
                seen.append((layer.cfg.seed, id(layer)))
                assert cache.held_bytes <= room
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(seen) == 20 and cache.held_bytes <= room


def test_kept_results_count_against_the_budget(monkeypatch):
    spec = spec_from_controls({**CONTROL_DEFAULTS, "batch": 1, "seq_len": 64})
    result = runner.run(spec)
    kept = runner.result_bytes(result)
    assert kept >= 64 * 8 * 4 * 5  # five (T, E) float32 matrices at least
    assert runner.kept_bytes() >= kept
    before, ref = runner.kept_bytes(), weakref.ref(result)
    del result
    gc.collect()
    assert ref() is None
    assert runner.kept_bytes() <= before - kept  # a result no session holds no longer counts (nor others that died)
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.0001")  # ~105 KB: the forward itself is over
    with pytest.raises(ValueError, match="over the budget"):
        runner.run(spec)
