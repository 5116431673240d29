"""The dashboard's base-layer cache is bounded in bytes across sessions, and kept results count."""
import gc
import threading
import weakref

import pytest

from moe import MoEConfig
from moe.memory import estimate_bytes
from dashboard import loaders
from dashboard.links import spec_from_controls
from dashboard.presets import CONTROL_DEFAULTS


def _cfg(seed):
    return MoEConfig(d_model=16, d_expert=32, n_experts=4, top_k=2, seed=seed)


def test_least_recently_used_layers_leave_to_stay_under_the_room():
    cache = loaders.LayerCache()
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
    cache = loaders.LayerCache()
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
    result = loaders.run(spec)
    kept = loaders.result_bytes(result)
    assert kept >= 64 * 8 * 4 * 5  # five (T, E) float32 matrices at least
    assert loaders.kept_bytes() >= kept
    before, ref = loaders.kept_bytes(), weakref.ref(result)
    del result
    gc.collect()
    assert ref() is None
    assert loaders.kept_bytes() <= before - kept  # a result no session holds no longer counts (nor others that died)
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.0001")  # ~105 KB: the forward itself is over
    with pytest.raises(ValueError, match="over the budget"):
        loaders.run(spec)


# --- the knobs that fix the weights (#9): each gives its own cached layer, and the page's numbers are the engine's
WEIGHT_KNOBS = [dict(shared_experts=1), dict(shared_experts=2, d_shared=24), dict(shared_experts=1, shared_gate=True),
                dict(gated=False), dict(expert_biases=True)]


def _forward(values: dict):
    """An independent forward: a fresh MoELayer for the spec, on the page's (B, S, D) batch."""
    import torch

    from moe import MoELayer
    from moe.scenarios import make_batch
    spec = spec_from_controls(values)
    cfg = spec.config
    x = make_batch(spec.scenario, cfg.d_model, spec.tokens, seed=cfg.seed, **spec.params).x
    with torch.inference_mode():
        return MoELayer(cfg)(x.reshape(values["batch"], values["seq_len"], cfg.d_model))[1]


@pytest.mark.parametrize("knobs", WEIGHT_KNOBS)
def test_a_weight_knob_builds_its_own_layer_and_gives_the_engines_numbers(knobs):
    small = {**CONTROL_DEFAULTS, "d_model": 16, "d_expert": 32, "batch": 2, "seq_len": 16}
    plain = loaders.run(spec_from_controls(small))           # caches the default layer first
    values = {**small, **knobs}
    shown = loaders.run(spec_from_controls(values))
    assert loaders.weight_key(shown.config) != loaders.weight_key(plain.config)
    trace = _forward(values)
    for key in ("aux_loss", "shared_fraction", "shared_output_rms", "topk_margin"):
        expected, got = trace.summary()[key], shown.summary[key]
        assert got == pytest.approx(expected, rel=1e-5, nan_ok=True), key
    assert shown.per_expert["output_rms"].to_numpy() == pytest.approx(trace.per_expert()["output_rms"].to_numpy(),
                                                                       rel=1e-5)
    assert (shown.summary["shared_fraction"] > 0) == (values.get("shared_experts", 0) > 0)


@pytest.mark.parametrize("knobs", WEIGHT_KNOBS)
def test_weight_fields_are_the_ones_reconfigured_refuses(knobs):
    base = MoEConfig(d_model=16, d_expert=32, n_experts=4, top_k=2)
    changed = base.replace(**knobs)
    assert loaders.weight_key(changed) != loaders.weight_key(base)
    with pytest.raises(ValueError, match="must not change"):
        loaders.LayerCache().get(base, 10 ** 9).reconfigured(changed)


def test_value_knobs_share_the_layer():
    base = MoEConfig(d_model=16, d_expert=32, n_experts=8, top_k=2)
    other = base.replace(n_group=4, topk_group=2, capacity_scope="sequence", activation="gelu", swiglu_limit=3.0,
                         sparsity_mode="relative")
    assert loaders.weight_key(other) == loaders.weight_key(base)


def test_per_sequence_capacity_runs_on_sequences():
    values = {**CONTROL_DEFAULTS, "d_model": 16, "d_expert": 32, "batch": 4, "seq_len": 16, "top_k": 1,
              "dropless": False, "capacity_factor": 1.0, "capacity_scope": "sequence", "scenario": "clusters",
              "skew": 2.0}
    shown = loaders.run(spec_from_controls(values))
    trace = _forward(values)
    assert shown.trace.capacity == trace.capacity == 2          # ceil(1.0 · S·K/E) = ceil(16/8)
    assert shown.per_expert["served"].tolist() == trace.per_expert()["served"].tolist()
    batch_scope = loaders.run(spec_from_controls({**values, "capacity_scope": "batch"}))
    assert batch_scope.trace.capacity == 8                     # ceil(1.0 · T·K/E) over the whole batch
    assert (shown.trace.served != batch_scope.trace.served).any()  # other tokens are dropped
