"""Never run a model past its context (#16 §2): the window plan, exact statistics of the scored rows, and
run_model / counterfactuals on a text of three contexts checked against direct forwards of each window."""
import json
import math

import numpy as np
import pytest
import torch

from moe.config import MoEConfig
from moe.hf.counterfactual import Counterfactual, run_counterfactual
from moe.hf.instrument import collect, instrument, run_model
from moe.hf.windows import Window, batch_rows, batches, model_context, plan_windows
from moe.layer import MoELayer
from moe.stats import PER_EXPERT_COLUMNS
from tests.model_support import VOCAB, tiny_model

CONTEXT = 16


def _scoring_by_brute_force(windows: list[Window], n: int) -> list[Window]:
    """For every token, the window that contains it with the most left context (the smallest start)."""
    best = []
    for t in range(n):
        holding = [w for w in windows if w.start <= t < w.end]
        best.append(min(holding, key=lambda w: w.start))
    return best


@pytest.mark.parametrize("context, n", [(16, 48), (15, 45), (16, 50), (7, 21), (1, 3), (2, 6)])
def test_a_text_of_three_contexts_scores_every_token_once_with_the_most_left_context(context, n):
    windows = plan_windows(n, context)
    stride = max(context // 2, 1)
    assert len(windows) == 1 + math.ceil((n - context) / stride)
    assert all(w.end - w.start == context for w in windows)  # never past the context, never shorter
    assert windows[0].start == 0 and windows[-1].end == n
    assert all(b.start - a.start <= stride for a, b in zip(windows, windows[1:]))
    expected = _scoring_by_brute_force(windows, n)
    for t in range(n):
        scoring = [w for w in windows if w.score_from <= t < w.end]
        assert scoring == [expected[t]], t  # scored exactly once, in the window with the most left context
        if t >= context:  # past the first window: at least half a context to the left
            assert t - scoring[0].start >= context // 2


@pytest.mark.parametrize("n", [1, 5, 16])
def test_a_text_that_fits_is_one_window(n):
    assert plan_windows(n, CONTEXT) == [Window(0, n, 0)]


@pytest.mark.parametrize("n, context, match", [(0, 4, "at least one token"), (3, 0, "at least 1")])
def test_window_plan_refusals(n, context, match):
    with pytest.raises(ValueError, match=match):
        plan_windows(n, context)


@pytest.mark.parametrize("saved, expected", [
    ({"config": {"seq_len": 128}}, 128), ({"config": {"seq_len": 1024}}, 512), ({"config": {}}, 512),
    ({"config": {"seq_len": "128"}}, 512), ({"config": {"seq_len": 0}}, 512), ([1, 2], 512), (None, 512)])
def test_model_context_is_the_smaller_of_declared_and_trained(tmp_path, saved, expected):
    from transformers import MixtralConfig

    if saved is not None:
        (tmp_path / "training.json").write_text(json.dumps(saved))
    assert model_context(MixtralConfig(max_position_embeddings=512), str(tmp_path)) == expected


@pytest.mark.parametrize("name", ["pydoc-mixtral", "pydoc-deepseek"])
def test_each_bundled_model_declares_the_context_it_was_trained_at(name):
    from transformers import AutoConfig

    from moe.hf.load import BUNDLED_MODELS

    path = BUNDLED_MODELS[name]
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    trained = json.loads(open(f"{path}/training.json").read())["config"]["seq_len"]
    assert model_context(config, path) == trained == config.max_position_embeddings == 512


# --- MoELayer.forward(stat_rows=): routing over every row, statistics over the chosen rows ---------------------

def _layer(**changes) -> MoELayer:
    return MoELayer(MoEConfig(d_model=16, d_expert=24, n_experts=6, top_k=2, seed=1, **changes))


def _x(T: int = 30) -> torch.Tensor:
    return torch.randn(T, 16, generator=torch.Generator().manual_seed(5))


def _same_stats(a, b):
    sa, sb = a.summary(), b.summary()
    for key in sa:
        if key != "forward_ms":
            np.testing.assert_allclose(sa[key], sb[key], rtol=1e-5, atol=1e-6, err_msg=key)
    pa, pb = a.per_expert(), b.per_expert()
    for column in PER_EXPERT_COLUMNS:
        np.testing.assert_allclose(pa[column].to_numpy(float), pb[column].to_numpy(float), rtol=1e-5, atol=1e-6,
                                   err_msg=column)
    assert torch.equal(a.coactivation, b.coactivation)


@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("changes", [{}, {"shared_experts": 1}, {"sparsity_mode": "relative", "sparsity_eps": 0.3}])
def test_stat_rows_of_a_dropless_layer_are_the_statistics_of_those_rows_alone(monkeypatch, small, changes):
    if not small:  # every slice finished inside the dispatch loop (the large-layer path)
        monkeypatch.setattr("moe.experts.SMALL_NUMEL", 0)
    layer, x = _layer(**changes), _x()
    rows = slice(9, 23)
    y_full, full = layer(x)
    y, trace = layer(x, stat_rows=rows)
    _, alone = layer(x[rows])
    assert torch.equal(y, y_full)  # the output covers every row
    _same_stats(trace, alone)
    assert trace.tokens == 14 and trace.sums.tokens == 14
    for name in ("router_logits", "probs", "routed", "served", "gates", "top_k_index", "top_k_weights"):
        assert torch.equal(getattr(trace, name), getattr(full, name)[rows]), name
    torch.testing.assert_close(trace.contributions, full.contributions[rows])
    assert trace.sums.near_zero.sum() > 0  # the near-zero count was exercised, not vacuous


@pytest.mark.parametrize("policy", ["position", "probs"])
def test_stat_rows_with_capacity_rank_capacity_among_those_rows_alone(policy):
    """A window's scored rows compete for capacity among themselves (C from their count), as if routed alone; the
    rows before them (context, scored in an earlier window) are served in full, so they use up no capacity."""
    layer, x = _layer(capacity_factor=0.75, drop_policy=policy), _x()
    rows = slice(12, 30)
    y, trace = layer(x, stat_rows=rows)
    y_alone, alone = layer(x[rows])
    y_free, free = layer.reconfigured(layer.cfg.replace(capacity_factor=None))(x)
    assert alone.sums.demand.sum() > alone.sums.served.sum()  # the capacity drops something
    assert torch.equal(trace.served, alone.served) and trace.capacity == alone.capacity == math.ceil(0.75 * 18 * 2 / 6)
    torch.testing.assert_close(y[rows], y_alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[:12], y_free[:12], rtol=1e-5, atol=1e-6)  # the context rows: nothing dropped
    assert trace.sums.served.tolist() == alone.served.sum(dim=0).tolist()
    assert trace.sums.demand.tolist() == free.routed[rows].sum(dim=0).tolist()


def test_stat_rows_covering_everything_equal_no_stat_rows():
    layer, x = _layer(capacity_factor=1.0, shared_experts=1), _x()
    _, everything = layer(x, stat_rows=slice(0, 30))
    _, plain = layer(x, stat_rows=None)
    _same_stats(everything, plain)


def test_stat_rows_must_be_contiguous():
    with pytest.raises(ValueError, match="contiguous"):
        _layer()(_x(), stat_rows=slice(0, 30, 2))


# --- run_model and counterfactuals on a real (tiny) model ------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    m = tiny_model("mixtral", layers=2)
    m.config.max_position_embeddings = CONTEXT
    instrument(m)
    return m


def _ids(n: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(7))


def _direct(model, ids: torch.Tensor):
    """One plain forward of ids through the instrumented model: (logits (S, V), traces by layer)."""
    with torch.inference_mode(), collect() as sink:
        logits = model(input_ids=ids[None], use_cache=False).logits[0].float()
    return logits, [t for _, t in sorted(sink, key=lambda item: item[0])]


@pytest.mark.parametrize("n", [11, CONTEXT])
def test_a_text_that_fits_is_the_one_forward_result(model, n):
    ids = _ids(n)
    run = run_model(model, ids)  # context: the config's max_position_embeddings
    logits, traces = _direct(model, ids)
    assert run.windows == 1 and run.context == CONTEXT
    assert torch.equal(run.logits, logits)
    for mine, theirs in zip(run.traces, traces):
        assert torch.equal(mine.top_k_index, theirs.top_k_index)
        assert mine.summary().keys() == theirs.summary().keys()
        assert all(mine.summary()[k] == theirs.summary()[k] or k == "forward_ms"
                   or (math.isnan(mine.summary()[k]) and math.isnan(theirs.summary()[k])) for k in mine.summary())


def test_a_text_of_three_contexts_is_read_in_windows_each_token_from_its_scoring_window(model):
    n = 3 * CONTEXT
    ids = _ids(n)
    lengths = []
    hook = model.model.register_forward_pre_hook(lambda m, a, kw: lengths.append(tuple(kw["input_ids"].shape)),
                                                 with_kwargs=True)
    try:
        run = run_model(model, ids)
    finally:
        hook.remove()
    stride = CONTEXT // 2
    assert run.windows == 1 + math.ceil((n - CONTEXT) / stride) == 5
    assert lengths == [(5, CONTEXT)] and run.context == CONTEXT  # dropless: the five windows as one batch
    assert run.logits.shape[0] == n and run.token_loss().shape == (n - 1,)
    assert all(t.tokens == n and t.sums.tokens == n for t in run.traces)
    windows = [Window(s, s + CONTEXT, 0) for s in range(0, n - CONTEXT + 1, stride)]  # starts 0, 8, ..., 32
    for t, w in enumerate(_scoring_by_brute_force(windows, n)):
        logits, traces = _direct(model, ids[w.start:w.end])
        torch.testing.assert_close(run.logits[t], logits[t - w.start], rtol=1e-5, atol=1e-5)
        for merged, direct in zip(run.traces, traces):
            assert merged.top_k_index[t, 0] == direct.top_k_index[t - w.start, 0]
            torch.testing.assert_close(merged.router_logits[t], direct.router_logits[t - w.start])
    for trace in run.traces:  # the merged statistics describe the merged rows
        assert trace.sums.demand.tolist() == trace.routed.sum(dim=0).tolist()
        assert torch.equal(trace.coactivation, trace.served.float().t() @ trace.served.float())


def _naive_position_capacity(routed: torch.Tensor, factor: float, top_k: int) -> torch.Tensor:
    """Token by token: an expert serves the first ceil(factor·T·K/E) tokens that choose it, in text order."""
    T, E = routed.shape
    C = math.ceil(factor * T * top_k / E)
    taken, served = [0] * E, torch.zeros_like(routed)
    for t in range(T):
        for e in range(E):
            if routed[t, e] and taken[e] < C:
                served[t, e], taken[e] = True, taken[e] + 1
    return served


def test_a_counterfactual_on_a_long_text_ranks_capacity_among_each_windows_scored_tokens(model):
    """Every window's scored tokens face the same rule: capacity over them alone (the first window's are all its
    tokens), so a later window does not report more drops because its context used up the capacity."""
    n = 3 * CONTEXT
    ids = _ids(n)
    cf = Counterfactual(capacity_factor=0.5, drop_policy="position")
    run = run_counterfactual(model, ids, cf)
    assert run.windows == 5 and run.context == CONTEXT and run.token_loss().shape == (n - 1,)
    assert sum(t.summary()["dropped"] for t in run.traces) > 0
    windows = plan_windows(n, CONTEXT)
    for w in windows:
        for trace in run.traces:
            scored = slice(w.score_from, w.end)
            assert torch.equal(trace.served[scored], _naive_position_capacity(trace.routed[scored], 0.5, 2))
    first = run_counterfactual(model, ids[:CONTEXT], cf)  # the first window is one forward of its tokens
    for merged, direct in zip(run.traces, first.traces):
        assert torch.equal(merged.served[:CONTEXT], direct.served)
    torch.testing.assert_close(run.logits[:CONTEXT], first.logits, rtol=1e-5, atol=1e-5)


def test_an_explicit_context_overrides_the_config(model):
    ids = _ids(12)
    run = run_model(model, ids, context=8)
    assert run.context == 8 and run.windows == 2  # [0, 8) and [4, 12), scoring 8..11 in the second
    logits, _ = _direct(model, ids[4:12])
    torch.testing.assert_close(run.logits[8:], logits[4:], rtol=1e-5, atol=1e-5)


def test_routing_only_layers_are_windowed_like_engine_layers():
    import dataclasses

    from moe.hf.instrument import ADAPTERS, LayerRouting

    model = tiny_model("mixtral", layers=2)
    instrument(model, dataclasses.replace(ADAPTERS["mixtral"], exact=False))
    n = 3 * CONTEXT
    ids = _ids(n)
    run = run_model(model, ids, context=CONTEXT)
    assert run.routing_only == [0, 1] and run.windows == 5
    assert all(t.tokens == n and t.sums.demand.sum() == 2 * n for t in run.traces)
    for w in plan_windows(n, CONTEXT):
        _, records = _direct(model, ids[w.start:w.end])
        assert all(isinstance(r, LayerRouting) for r in records)
        rows = slice(w.score_from - w.start, w.end - w.start)
        for merged, record in zip(run.traces, records):
            assert torch.equal(merged.top_k_index[w.score_from:w.end], record.top_k_index[rows])
            torch.testing.assert_close(merged.router_logits[w.score_from:w.end], record.router_logits[rows])


def test_batch_rows_put_each_windows_scored_rows_first_in_text_order():
    windows = plan_windows(20, 8)  # starts 0, 4, 8, 12: scoring 0-7, 8-11, 12-15, 16-19
    rows = batch_rows(windows)
    assert rows.scored == 20
    assert rows.order[:20].tolist() == list(range(8)) + [12, 13, 14, 15] + [20, 21, 22, 23] + [28, 29, 30, 31]
    assert sorted(rows.order.tolist()) == list(range(32)) and rows.order[rows.back].tolist() == list(range(32))
    assert [len(b) for b in batches(plan_windows(3000, 512), tokens=4096)] == [8, 3]
    assert [len(b) for b in batches(plan_windows(9000, 4096), tokens=4096)] == [1, 1, 1, 1]


def test_the_batched_windows_give_what_the_windows_give_one_by_one(model, monkeypatch):
    """The same text with batching turned off (one forward per window, the traces merged): equal per-token routing,
    logits and statistics up to float rounding of the batched matrix products."""
    import moe.hf.instrument as instrument_module

    ids = _ids(3 * CONTEXT)
    batched = run_model(model, ids)
    monkeypatch.setattr(instrument_module, "batchable", lambda model: False)
    single = run_model(model, ids)
    assert batched.windows == single.windows == 5
    torch.testing.assert_close(batched.logits, single.logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(batched.traces, single.traces):
        assert torch.equal(a.top_k_index, b.top_k_index) and torch.equal(a.served, b.served)
        assert torch.equal(a.coactivation, b.coactivation)
        sa, sb = a.summary(), b.summary()
        for key in sa:
            if key not in ("forward_ms", "forwards"):
                np.testing.assert_allclose(sa[key], sb[key], rtol=1e-5, atol=1e-6, err_msg=key)
