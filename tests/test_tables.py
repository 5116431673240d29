"""The dashboard's derived tables against plain Python loops over a small real trace."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from moe import MoEConfig, MoELayer
from moe.scenarios import make_batch
from dashboard import tables as tb
from dashboard.figures.row_groups import spans

T = 60
CONFIGS = {
    "topk_capacity": dict(n_experts=6, top_k=2, capacity_factor=0.8),  # drops, tokens with no expert
    "sigmoid_dropless": dict(n_experts=5, top_k=3, score="sigmoid"),
    "expert_choice": dict(n_experts=4, top_k=1, router="expert_choice"),
    "one_expert": dict(n_experts=1, top_k=1),
}


def make_trace(name: str, tokens: int = T):
    cfg = MoEConfig(d_model=12, d_expert=24, **CONFIGS[name])
    x = torch.randn(tokens, cfg.d_model, generator=torch.Generator().manual_seed(1))  # (T, D)
    _, trace = MoELayer(cfg)(x)
    return trace.cpu()


def rows(t: torch.Tensor) -> list[list]:
    return t.tolist()


@pytest.fixture(scope="module", params=list(CONFIGS))
def trace(request):
    return make_trace(request.param)


def test_token_table(trace):
    probs, routed, served = rows(trace.probs), rows(trace.routed), rows(trace.served)
    table = tb.token_table(trace)
    assert len(table) == trace.tokens
    for t in range(trace.tokens):
        row = table.iloc[t]
        p = probs[t]
        entropy = -sum(v * math.log(v) for v in p if v > 0)
        ordered = sorted(p, reverse=True)
        confidence = min(ordered[0] / ordered[1], 100.0) if len(p) > 1 else float("nan")
        assert row["token"] == t
        assert row["served"] == tuple(e for e in range(len(p)) if served[t][e])
        assert row["dropped"] == tuple(e for e in range(len(p)) if routed[t][e] and not served[t][e])
        assert row["n_served"] == sum(served[t])
        assert row["max_prob"] == pytest.approx(max(p))
        assert row["entropy"] == pytest.approx(entropy, rel=1e-9, abs=1e-12)
        if math.isnan(confidence):
            assert math.isnan(row["confidence"])
        else:
            assert row["confidence"] == pytest.approx(confidence, rel=1e-9)
        assert set(row["experts"]) == {e for e in range(len(p)) if routed[t][e]}
        if trace.top_k_index is not None:
            assert list(row["experts"]) == trace.top_k_index[t].tolist()
            assert list(row["weights"]) == pytest.approx(trace.top_k_weights[t].tolist())
        else:  # expert_choice: ordered by probability, weights are the gates
            assert [p[e] for e in row["experts"]] == sorted((p[e] for e in row["experts"]), reverse=True)
            assert list(row["weights"]) == pytest.approx([trace.gates[t, e].item() for e in row["experts"]])
    mean_conf = trace.summary()["mean_confidence"]
    if not math.isnan(mean_conf):
        assert table["confidence"].mean() == pytest.approx(mean_conf, rel=1e-5)


def test_token_detail(trace):
    E = trace.probs.shape[1]
    for t in (0, trace.tokens // 2, trace.tokens - 1):
        detail = tb.token_detail(trace, t)
        assert detail["expert"].tolist() == list(range(E))
        for e in range(E):
            row = detail.iloc[e]
            assert row["prob"] == pytest.approx(trace.probs[t, e].item())
            assert row["logit"] == pytest.approx(trace.router_logits[t, e].item())
            assert row["routed"] == trace.routed[t, e].item()
            assert row["served"] == trace.served[t, e].item()
            assert row["dropped"] == (trace.routed[t, e].item() and not trace.served[t, e].item())
            assert row["gate"] == pytest.approx(trace.gates[t, e].item())
            assert row["contribution"] == pytest.approx(trace.contributions[t, e].item())
    for bad in (-1, trace.tokens, 1.5, True):
        with pytest.raises(ValueError, match="token index"):
            tb.token_detail(trace, bad)


def test_conditional_coactivation(trace):
    served = rows(trace.served)
    E = len(served[0])
    cond = tb.conditional_coactivation(trace).to_numpy()
    for i in range(E):
        n_i = sum(1 for row in served if row[i])
        for j in range(E):
            both = sum(1 for row in served if row[i] and row[j])
            if n_i == 0:
                assert math.isnan(cond[i, j])
            else:
                assert cond[i, j] == pytest.approx(both / n_i)
                assert (cond[i, i] == 1.0)


def test_topk_combinations(trace):
    served = rows(trace.served)
    counter = Counter(tuple(e for e, s in enumerate(row) if s) for row in served)
    expected = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    for n in (3, 15):
        combos = tb.topk_combinations(trace, n=n)
        assert list(combos["combo"]) == [c for c, _ in expected[:n]]
        assert combos["count"].tolist() == [k for _, k in expected[:n]]
        assert combos["share"].tolist() == pytest.approx([k / len(served) for _, k in expected[:n]])
        for combo, label in zip(combos["combo"], combos["label"]):
            assert label == (" + ".join(map(str, combo)) if combo else "none")


def test_topk_combinations_counts_empty_sets():
    trace = make_trace("topk_capacity")
    combos = tb.topk_combinations(trace, n=100)
    empty = sum(1 for row in rows(trace.served) if not any(row))
    assert empty > 0  # capacity 0.8 leaves some tokens with no expert
    assert combos.loc[combos["label"] == "none", "count"].item() == empty
    assert combos["count"].sum() == trace.tokens


def test_cluster_share():
    cfg = MoEConfig(d_model=12, d_expert=24, n_experts=5, top_k=2, capacity_factor=1.0)
    batch = make_batch("clusters", cfg.d_model, T, seed=0)
    _, trace = MoELayer(cfg)(batch.x)
    trace = trace.cpu()
    share = tb.cluster_share(trace, batch.labels, batch.label_names)
    labels, served = batch.labels.tolist(), rows(trace.served)
    assert list(share.index) == list(batch.label_names)
    for c in range(len(batch.label_names)):
        counts = [sum(1 for t in range(T) if labels[t] == c and served[t][e]) for e in range(5)]
        total = sum(counts)
        for e in range(5):
            assert share.iloc[c, e] == pytest.approx(counts[e] / total)
    np.testing.assert_allclose(share.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="labels"):
        tb.cluster_share(trace, batch.labels[:-1], batch.label_names)


def test_heatmap_not_aggregated_below_limit(trace):
    matrix, labels, note = tb.contribution_matrix(trace, max_rows=trace.tokens)
    np.testing.assert_array_equal(matrix, trace.contributions.double().numpy())
    assert labels == [str(t) for t in range(trace.tokens)] and note == ""


@pytest.mark.parametrize("max_rows", (1, 7, 25, 59))
def test_heatmap_aggregates_above_limit(max_rows):
    trace = make_trace("topk_capacity")
    contrib, probs = rows(trace.contributions), rows(trace.probs)
    for fn, source in ((tb.contribution_matrix, contrib), (tb.probability_matrix, probs)):
        matrix, labels, note = fn(trace, max_rows=max_rows)
        assert matrix.shape == (max_rows, len(source[0])) and len(labels) == max_rows
        assert f"{T} tokens shown as {max_rows} rows" in note
        covered = []
        for r, label in enumerate(labels):  # each row is the mean over the tokens its label names
            a, b = (int(v) for v in label.split("–"))
            covered += list(range(a, b + 1))
            for e in range(len(source[0])):
                mean = sum(source[t][e] for t in range(a, b + 1)) / (b - a + 1)
                assert matrix[r, e] == pytest.approx(mean)
        assert covered == list(range(T))  # every token in exactly one bin, in order
        sizes = [int(l.split("–")[1]) - int(l.split("–")[0]) + 1 for l in labels]
        assert max(sizes) - min(sizes) <= 1


def test_heatmap_rows_caps_cells():
    assert tb.heatmap_rows(8) == 2000
    assert tb.heatmap_rows(256) * 256 <= tb.HEATMAP_MAX_CELLS
    assert tb.heatmap_rows(10**7) == 1


def test_histograms_count_every_token(trace):
    table = tb.token_table(trace)
    ent = tb.entropy_histogram(trace, bins=10)
    assert ent["count"].sum() == trace.tokens
    assert ent["left"].iloc[0] == 0.0
    assert ent["right"].iloc[-1] == pytest.approx(max(math.log(trace.probs.shape[1]), 1e-6))
    conf = tb.confidence_histogram(trace, bins=10)
    finite = int(np.isfinite(table["confidence"]).sum())
    assert conf["count"].sum() == finite
    for _, row in conf.iterrows():  # each bin holds the tokens inside it
        inside = ((table["confidence"] >= row["left"]) & (table["confidence"] < row["right"])).sum()
        last = row["right"] == conf["right"].iloc[-1]
        inside += int(last and (table["confidence"] == row["right"]).sum())
        assert row["count"] == inside


def test_logit_quantiles(trace):
    logits = rows(trace.router_logits)
    q = tb.logit_quantiles(trace)
    for e in range(len(logits[0])):
        col = sorted(row[e] for row in logits)
        n = len(col)
        median = (col[(n - 1) // 2] + col[n // 2]) / 2
        mean = sum(col) / n
        assert q.loc[e, "min"] == pytest.approx(col[0]) and q.loc[e, "max"] == pytest.approx(col[-1])
        assert q.loc[e, "median"] == pytest.approx(median)
        assert q.loc[e, "mean"] == pytest.approx(mean)
        assert q.loc[e, "std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in col) / n))
        assert q.loc[e, "q1"] <= q.loc[e, "median"] <= q.loc[e, "q3"]


def test_tables_do_not_mutate_the_trace():
    trace = make_trace("topk_capacity")
    before = {name: getattr(trace, name).clone() for name in
              ("probs", "router_logits", "routed", "served", "gates", "contributions", "coactivation")}
    tb.token_table(trace), tb.conditional_coactivation(trace), tb.topk_combinations(trace)
    matrix, _, _ = tb.contribution_matrix(trace, max_rows=7)
    full, _, _ = tb.contribution_matrix(trace)
    full[:] = -1.0  # the returned matrix is a copy, not a view of the trace
    tb.token_detail(trace, 0), tb.logit_quantiles(trace), tb.entropy_histogram(trace)
    for name, value in before.items():
        assert torch.equal(getattr(trace, name), value), name


def test_entropy_and_confidence_edge_cases():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.7, 0.3, 0.0]])
    np.testing.assert_allclose(tb.token_entropy(probs), [0.0, math.log(2), -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))])
    np.testing.assert_allclose(tb.token_confidence(probs), [100.0, 1.0, 0.7 / 0.3])
    assert np.isnan(tb.token_confidence(np.ones((3, 1)))).all()
    assert isinstance(tb.token_table(make_trace("one_expert")), pd.DataFrame)


def test_nonfinite_input_is_reported_not_hidden():
    cfg = MoEConfig(d_model=12, d_expert=24, n_experts=4, top_k=2)
    x = torch.randn(20, cfg.d_model, generator=torch.Generator().manual_seed(3))  # (T, D)
    x[5, 0] = float("nan")
    _, trace = MoELayer(cfg)(x)
    trace = trace.cpu()
    table = tb.token_table(trace)
    assert math.isnan(table.loc[5, "entropy"]) and math.isnan(table.loc[5, "confidence"])
    assert tb.entropy_histogram(trace)["count"].sum() == 19  # the NaN token is left out of the bins
    q = tb.logit_quantiles(trace)
    assert (q["n"] == 19).all()
    finite = [row for t, row in enumerate(rows(trace.router_logits)) if t != 5]
    for e in range(4):
        assert q.loc[e, "max"] == pytest.approx(max(r[e] for r in finite))


# --- sorted heatmap rows, routing NMI, experts per token ----------------------------------------

def test_token_order_groups_by_topic_then_top1_expert():
    cfg = MoEConfig(d_model=12, d_expert=24, n_experts=4, top_k=2, capacity_factor=0.6)
    batch = make_batch("clusters", cfg.d_model, T, seed=0, n_clusters=3)
    trace = MoELayer(cfg)(batch.x)[1].cpu()
    perm, groups, text = tb.token_order(trace, batch.labels, batch.label_names)
    gates, labels = trace.gates.tolist(), batch.labels.tolist()

    def key(t):  # plain Python: topic, then the largest gate's expert ("none" = E, last), then index
        top = max(range(4), key=lambda e: (gates[t][e], -e)) if max(gates[t]) > 0 else 4
        return (labels[t], top, t)
    assert list(perm) == sorted(range(T), key=key)
    assert groups == [batch.label_names[labels[t]] for t in perm] and "topic" in text
    perm2, groups2, _ = tb.token_order(trace)
    assert list(perm2) == sorted(range(T), key=lambda t: key(t)[1:])
    assert set(groups2) <= {f"expert {e}" for e in range(4)} | {"none"}


def test_sorted_matrix_rows_and_group_spans():
    matrix = np.arange(12.0).reshape(6, 2)  # (T=6, E=2)
    perm, groups = np.array([5, 0, 3, 1, 2, 4]), ["a", "a", "b", "b", "b", "c"]
    shown, labels, note, row_groups = tb.sorted_matrix(matrix, perm, groups, max_rows=10)
    np.testing.assert_array_equal(shown, matrix[[5, 0, 3, 1, 2, 4]])
    assert labels == ["5", "0", "3", "1", "2", "4"] and not note and row_groups == groups
    assert spans(row_groups) == [("a", 0, 1), ("b", 2, 4), ("c", 5, 5)]  # every group, however thin
    shown, labels, note, row_groups = tb.sorted_matrix(matrix, perm, groups, max_rows=3)
    # one bin per group: equal bins of two rows put token 2 (group b) and token 4 (group c) in one row labelled
    # "b", and group c had no row of its own
    np.testing.assert_allclose(shown, [(matrix[5] + matrix[0]) / 2, (matrix[3] + matrix[1] + matrix[2]) / 3,
                                       matrix[4]])
    assert note and row_groups == ["a", "b", "c"]
    # a bin holds the tokens of its sorted rows: 5 and 0, not "rows 0–1" (the hover said "token rows 0–1")
    assert labels == ["0, 5", "1–3", "4"]
    assert "each the mean of 1–3 tokens next to each other in this order (hover names them)" in note
    assert note.endswith("A bin never mixes two groups.")
    shown, labels, note, row_groups = tb.sorted_matrix(matrix, np.arange(6), groups, max_rows=2)
    assert labels == ["0–2", "3–5"] and row_groups == ["a", "b"]  # more groups than rows: equal bins across them
    assert "never mixes" not in note


def test_group_bins_never_cross_a_group_and_keep_the_row_limit():
    rng = np.random.default_rng(3)
    for _ in range(300):
        sizes = rng.integers(1, 60, size=rng.integers(1, 12))
        groups = [f"g{i}" for i, n in enumerate(sizes) for _ in range(n)]
        T, max_rows = len(groups), int(rng.integers(len(sizes), len(groups) + 1))
        edges = tb.group_bin_edges(groups, max_rows)
        assert edges[0] == 0 and edges[-1] == T and (np.diff(edges) >= 1).all() and len(edges) - 1 <= max_rows
        for a, b in zip(edges[:-1], edges[1:]):
            assert len(set(groups[a:b])) == 1  # one group per bin
        assert {groups[a] for a in edges[:-1]} == set(groups)  # every group keeps a row
        matrix = rng.random((T, 3))
        perm = rng.permutation(T)
        shown, _, _, row_groups = tb.sorted_matrix(matrix, perm, groups, max_rows)
        naive = [matrix[perm[a:b]].mean(axis=0) for a, b in zip(edges[:-1], edges[1:])]
        np.testing.assert_allclose(shown, naive)
        assert row_groups == [groups[a] for a in edges[:-1]]
    assert tb.bin_tokens(np.array([9, 1, 4, 7, 30])) == "1, 4, 7, … (+2)" and tb.bin_tokens(np.array([3])) == "3"


def _nmi_by_hand(pairs):
    """NMI of (label, expert) pairs from a contingency table built with plain dicts."""
    n = len(pairs)
    joint, pl, pe = Counter(pairs), Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    mi = sum(c / n * math.log((c / n) / ((pl[a] / n) * (pe[b] / n))) for (a, b), c in joint.items())
    h = lambda cnt: -sum(c / n * math.log(c / n) for c in cnt.values())  # noqa: E731
    return 2 * mi / (h(pl) + h(pe))


class _Served:  # the two fields routing_nmi reads
    def __init__(self, served):
        self.served = torch.tensor(served)


def test_routing_nmi_against_a_hand_built_contingency_table():
    # 4 tokens, 2 topics, 3 experts; token 3 is served by two experts (two assignments)
    served = [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1]]
    labels = torch.tensor([0, 0, 1, 1])
    pairs = [(0, 0), (0, 0), (1, 1), (1, 1), (1, 2)]
    assert tb.routing_nmi(_Served(served), labels) == pytest.approx(_nmi_by_hand(pairs), rel=1e-12)
    # on paper: I = 0.4·ln 2.5 + 0.6·ln(5/3) = 0.6730, H(L) = 0.6730, H(E) = 1.0549, NMI = 1.3460/1.7279
    assert _nmi_by_hand(pairs) == pytest.approx(0.7790, abs=1e-4)
    one_to_one = tb.routing_nmi(_Served([[1, 0], [0, 1]]), torch.tensor([0, 1]))
    independent = tb.routing_nmi(_Served([[1, 0], [0, 1], [1, 0], [0, 1]]), torch.tensor([0, 0, 1, 1]))
    assert one_to_one == pytest.approx(1.0) and independent == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(tb.routing_nmi(_Served([[1], [1]]), torch.tensor([0, 0])))


def test_experts_per_token(trace):
    table = tb.experts_per_token(trace)
    n = [sum(row) for row in rows(trace.served)]
    counts = Counter(n)
    assert table["n"].tolist() == list(range(len(table)))
    assert table["tokens"].tolist() == [counts.get(k, 0) for k in range(len(table))]
    assert table["tokens"].sum() == trace.tokens and len(table) - 1 >= max(n)
    np.testing.assert_allclose(table["share"], table["tokens"] / trace.tokens)
