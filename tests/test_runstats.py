"""The Runs page's statistics (moe.traces.runstats) against naive loops that share no code with them."""
import math

import numpy as np
import pytest

from moe.traces.runstats import (co_occurrence, dead_experts, hot_mask, hot_persistence, hot_top_n, layer_percentiles,
                                 slot_usage)


def _counts(seed: int = 0, S: int = 7, L: int = 3, E: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 20, size=(S, L, E))
    counts[rng.random((S, L, E)) < 0.2] = 0   # some dead experts
    counts[2, 1] = 0                          # a layer without a token at step 2: its max/mean is undefined
    return counts


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), by hand."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def test_percentiles_across_layers_match_a_loop():
    counts = _counts()
    S, L, E = counts.shape
    steps = np.arange(S) * 10
    table = layer_percentiles(steps, counts).set_index(["step", "stat"])
    for s in range(S):
        cells = [float(counts[s, l, e]) for l in range(L) for e in range(E)]
        ratios = []
        for l in range(L):
            row = [float(x) for x in counts[s, l]]
            mean = sum(row) / E
            if mean > 0:
                ratios.append(max(row) / mean)
        for stat, values in (("tokens_per_expert", cells), ("max_over_mean", ratios)):
            got = table.loc[(s * 10, stat)]
            assert got["p50"] == pytest.approx(_percentile(values, 50))
            assert got["p95"] == pytest.approx(_percentile(values, 95))
            assert got["max"] == pytest.approx(max(values))
    assert len(table) == 2 * S


def test_a_step_without_any_token_has_no_max_over_mean_percentile():
    counts = np.zeros((2, 2, 4), dtype=np.int64)
    counts[1] = [[1, 1, 1, 1], [4, 0, 0, 0]]
    table = layer_percentiles(np.array([0, 1]), counts).set_index(["step", "stat"])
    assert np.isnan(table.loc[(0, "max_over_mean"), "p50"]) and table.loc[(0, "tokens_per_expert"), "max"] == 0
    assert table.loc[(1, "max_over_mean"), "max"] == 4.0 and table.loc[(1, "max_over_mean"), "p50"] == 2.5


def test_dead_experts_match_a_loop():
    counts = _counts(1)
    S, L, E = counts.shape
    table = dead_experts(np.arange(S), [f"l{i}" for i in range(L)], counts)
    want = [(s, f"l{l}", sum(1 for e in range(E) if counts[s, l, e] == 0)) for s in range(S) for l in range(L)]
    assert list(zip(table["step"], table["layer"], table["dead"])) == want


def _naive_hot(load: np.ndarray, n: int) -> list[list[bool]]:
    """Per step: rank experts by (−count, index), take the first n with a token."""
    out = []
    for row in load.tolist():
        ranked = sorted(range(len(row)), key=lambda e: (-row[e], e))[:n]
        out.append([e in ranked and row[e] > 0 for e in range(len(row))])
    return out


def _naive_runs(hot: list[list[bool]]) -> tuple[list[int], list[int]]:
    E = len(hot[0])
    longest, current = [0] * E, [0] * E
    for e in range(E):
        run = 0
        for row in hot:
            run = run + 1 if row[e] else 0
            longest[e] = max(longest[e], run)
        current[e] = run
    return longest, current


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hot_persistence_matches_a_loop(seed):
    rng = np.random.default_rng(seed)
    load = rng.integers(0, 5, size=(30, 12))   # small counts: many ties, broken by the lower index
    load[:12, 3] += 10                         # expert 3 hot for the first 12 steps
    load[4, :] = 0                             # a step without tokens: nobody is hot
    n = hot_top_n(12)
    hot = _naive_hot(load, n)
    assert hot_mask(load, n).tolist() == hot
    table = hot_persistence(load, n)
    longest, current = _naive_runs(hot)
    assert table["longest_run"].tolist() == longest and table["current_run"].tolist() == current
    steps = [sum(row[e] for row in hot) for e in range(12)]
    assert table["hot_steps"].tolist() == steps
    assert table["hot_share"].tolist() == pytest.approx([h / 30 for h in steps])
    assert table.loc[3, "longest_run"] >= 4    # steps 0..3 before the empty step 4


def test_the_top_n_is_a_tenth_of_the_experts_rounded_up_and_checked():
    assert [hot_top_n(e) for e in (1, 8, 10, 11, 64, 256)] == [1, 1, 1, 2, 7, 26]
    with pytest.raises(ValueError, match="from 1 to E=4"):
        hot_mask(np.ones((2, 4)), 5)


def test_slot_usage_and_co_occurrence_match_loops():
    rng = np.random.default_rng(3)
    E, K = 6, 3
    ids = np.stack([rng.choice(E, K, replace=False) for _ in range(50)])
    ids[::7, 2] = -1                           # padded slots
    usage = np.zeros((K, E), dtype=int)
    co = np.zeros((E, E), dtype=int)
    for token in ids.tolist():
        chosen = sorted({e for e in token if e >= 0})
        for k, e in enumerate(token):
            if e >= 0:
                usage[k][e] += 1
        for a in chosen:
            for b in chosen:
                co[a][b] += 1
    assert slot_usage(ids, E).tolist() == usage.tolist()
    assert co_occurrence(ids, E).tolist() == co.tolist()


def test_co_occurrence_in_chunks_equals_one_block():
    rng = np.random.default_rng(4)
    ids = rng.integers(-1, 8, size=(101, 2))
    whole = co_occurrence(ids, 8)
    assert (co_occurrence(ids, 8, chunk_entries=4 * 7) == whole).all()  # 7 tokens per block (K² = 4 pairs each)
    assert (co_occurrence(ids, 8) == whole).all() and whole.trace() == (ids >= 0).any(1).sum() + \
        ((ids[:, 0] >= 0) & (ids[:, 1] >= 0) & (ids[:, 0] != ids[:, 1])).sum()


def test_nan_percentiles_of_rows_are_numpys_without_a_call_per_row():
    """np.nanpercentile(axis=1) calls a function per row: an auditor's counts file of 50,000 one-row steps (2 KB) took
    the Runs page 28 s on every rerun. nan_percentile_rows gives numpy's numbers exactly (ties, NaNs, rows of one
    value), grouping the rows by how many values they hold."""
    from moe.traces.runstats import nan_percentile_rows
    rng = np.random.default_rng(0)
    for _ in range(200):
        S, n = int(rng.integers(1, 30)), int(rng.integers(1, 12))
        v = rng.integers(0, 5, (S, n)).astype(float) * rng.random((S, n)) ** rng.integers(0, 2)
        v[rng.random((S, n)) < rng.random()] = np.nan
        v[np.isnan(v).all(axis=1), 0] = 1.5
        for q in (0, 33.3, 50, 95, 100):
            np.testing.assert_array_equal(nan_percentile_rows(v, q), np.nanpercentile(v, q, axis=1))
    assert np.isnan(nan_percentile_rows(np.full((2, 3), np.nan), 50)).all()
