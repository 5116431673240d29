"""Scenario generators: deterministic, the right shapes, and the structure each one promises."""
import re

import pytest
import torch

from moe import scenarios
from moe.scenarios import (SCENARIO_HELP, SCENARIOS, Batch, cluster_centres, clusters, drifting,
                           gaussian, identical, make_batch)

D, T = 16, 400
PARAMS = {"gaussian": {}, "clusters": {"skew": 0.5}, "identical": {}, "drifting": {"step": 7}}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_shapes_dtype_and_device(name):
    batch = make_batch(name, D, T, seed=0, **PARAMS[name])
    assert isinstance(batch, Batch)
    assert batch.x.shape == (T, D)
    assert batch.x.dtype == torch.float32 and batch.x.device.type == "cpu"
    assert torch.isfinite(batch.x).all()
    assert isinstance(batch.description, str) and batch.description
    if batch.labels is not None:
        assert batch.labels.shape == (T,) and batch.labels.dtype == torch.int64
        assert 0 <= int(batch.labels.min()) and int(batch.labels.max()) < len(batch.label_names)
        assert batch.label_names[0] == "topic 0"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_seed_same_tensor_different_seed_different(name):
    a = make_batch(name, D, T, seed=3, **PARAMS[name])
    b = make_batch(name, D, T, seed=3, **PARAMS[name])
    c = make_batch(name, D, T, seed=4, **PARAMS[name])
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    if a.labels is not None:
        assert torch.equal(a.labels, b.labels)


def test_registry_and_help_cover_every_scenario():
    assert set(SCENARIOS) == {"gaussian", "clusters", "identical", "drifting"}
    assert set(SCENARIO_HELP) == set(SCENARIOS)
    assert all(text and "\n" not in text for text in SCENARIO_HELP.values())


def test_gaussian_scale():
    x = gaussian(64, 4000, seed=0, scale=2.0).x
    assert abs(float(x.std()) - 2.0) < 0.05
    assert abs(float(x.mean())) < 0.05


def test_cluster_sizes_equal_without_skew():
    counts = torch.bincount(clusters(D, 1000, seed=0, n_clusters=4).labels, minlength=4)
    assert counts.tolist() == [250, 250, 250, 250]
    counts = torch.bincount(clusters(D, 1001, seed=0, n_clusters=4).labels, minlength=4)
    assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == 1001


def test_cluster_sizes_follow_skew():
    counts = torch.bincount(clusters(D, 1000, seed=0, n_clusters=4, skew=1.0).labels, minlength=4)
    expected = torch.exp(-torch.arange(4.0)) / torch.exp(-torch.arange(4.0)).sum() * 1000
    assert (counts.float() - expected).abs().max() <= 1
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)
    dominated = torch.bincount(clusters(D, 1000, seed=0, n_clusters=4, skew=5.0).labels, minlength=4)
    assert int(dominated[0]) > 0.95 * 1000


def test_cluster_labels_are_shuffled():
    labels = clusters(D, 400, seed=0, n_clusters=4).labels
    assert not torch.equal(labels, torch.sort(labels).values)


def test_clusters_are_separated():
    batch = clusters(32, 800, seed=1, n_clusters=4, spread=0.3)
    centres = cluster_centres(32, 4, seed=1)
    intra = torch.stack([torch.pdist(batch.x[batch.labels == c]).mean() for c in range(4)])
    inter = torch.pdist(centres)
    assert float(intra.max()) < float(inter.min())
    # each token is nearest to its own centre
    assert torch.equal(torch.cdist(batch.x, centres).argmin(dim=1), batch.labels)


def test_zero_spread_puts_tokens_on_their_centres():
    batch = clusters(D, 50, seed=2, n_clusters=3, spread=0.0)
    assert torch.equal(batch.x, cluster_centres(D, 3, seed=2)[batch.labels])


def test_identical_rows_are_all_equal():
    x = identical(D, 100, seed=0).x
    assert torch.equal(x, x[:1].expand_as(x))
    x[0, 0] = 123.0  # a real tensor, not a broadcast view: writing one row leaves the others
    assert x[1, 0] != 123.0


def test_drifting_proportions_move_but_centres_stay():
    period, n = 200, 4
    early = drifting(D, 2000, seed=5, step=0, n_clusters=n, period=period, spread=0.0)
    late = drifting(D, 2000, seed=5, step=period // 2, n_clusters=n, period=period, spread=0.0)
    early_share = torch.bincount(early.labels, minlength=n).float() / 2000
    late_share = torch.bincount(late.labels, minlength=n).float() / 2000
    assert int(early_share.argmax()) == 0 and int(late_share.argmax()) == 2
    assert float((early_share - late_share).abs().max()) > 0.2
    centres = cluster_centres(D, n, seed=5)
    assert torch.equal(early.x, centres[early.labels])
    assert torch.equal(late.x, centres[late.labels])


def test_drifting_is_periodic_in_proportions_and_noise_depends_on_step():
    a = drifting(D, 300, seed=0, step=10, period=50)
    b = drifting(D, 300, seed=0, step=60, period=50)
    assert torch.equal(torch.bincount(a.labels, minlength=4), torch.bincount(b.labels, minlength=4))
    assert not torch.equal(a.x, b.x)


def test_drifting_changes_smoothly():
    shares = [torch.bincount(drifting(D, 1000, seed=0, step=s, period=200).labels, minlength=4)
              .float() / 1000 for s in range(0, 10)]
    steps = torch.stack([(b - a).abs().max() for a, b in zip(shares, shares[1:])])
    assert float(steps.max()) < 0.05


@pytest.mark.parametrize("call, message", [
    (lambda: make_batch("spiral", D, T, seed=0), "unknown scenario 'spiral'; choose one of 'gaussian'"),
    (lambda: make_batch("clusters", D, 0, seed=0), "tokens must be a positive integer, got 0"),
    (lambda: make_batch("clusters", 2.5, T, seed=0), "d_model must be a positive integer, got 2.5"),
    (lambda: make_batch("clusters", D, True, seed=0), "tokens must be a positive integer"),
    (lambda: make_batch("clusters", D, T, seed=0, n_clusters=0), "n_clusters must be a positive integer"),
    (lambda: make_batch("clusters", D, T, seed=0, skew=-1.0), "skew must be a finite number >= 0"),
    (lambda: make_batch("clusters", D, T, seed=0, spread=-0.1), "spread must be a finite number >= 0"),
    (lambda: make_batch("drifting", D, T, seed=0, step=0, spread=float("nan")), "spread must be a finite"),
    (lambda: make_batch("drifting", D, T, seed=0, step=0, n_clusters=-2), "n_clusters must be a positive"),
    (lambda: make_batch("drifting", D, T, seed=0, step=0, period=0), "period must be a positive integer"),
    (lambda: make_batch("drifting", D, T, seed=0), "scenario 'drifting' needs step"),
    (lambda: make_batch("gaussian", D, T, seed=0, skew=1.0), "scenario 'gaussian' does not take skew"),
    (lambda: make_batch("gaussian", D, T, seed=-1), "seed must be an integer >= 0"),
    (lambda: make_batch("gaussian", D, T, seed=0, scale=-1.0), "scale must be a finite number >= 0"),
])
def test_bad_parameters_raise_value_error(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_scenarios_module_imports_no_ui_or_dataframe_libraries():
    source = open(scenarios.__file__, encoding="utf-8").read()
    for name in ("pandas", "streamlit", "plotly"):
        assert f"import {name}" not in source and f"from {name}" not in source
