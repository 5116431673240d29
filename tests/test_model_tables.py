"""moe.hf.tables and moe.hf.text against simple, independent computations."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from moe.hf.instrument import instrument, run_model
from moe.hf.text import CHAR_CLASSES, byte_class, unigram_entropy_bits
from moe.metrics import normalized_mutual_information
from moe.hf.tables import (class_nmi, expert_vocabulary, flow_matrix, layer_table, load_share_long,
                              token_routing, highest_aux_layer)
from tests.model_support import tiny_model

TEXT = "def add(a, b):\n    return a + b  # 42 apples\n" * 3


@pytest.fixture(scope="module")
def run():
    model = tiny_model("mixtral", layers=3)
    instrument(model)
    return run_model(model, torch.tensor(list(TEXT.encode())))


def _tokens():
    return [chr(b) for b in TEXT.encode()]


def test_nmi_matches_the_definition():
    a = [0, 0, 1, 1, 2, 2, 2, 0]
    b = [1, 1, 0, 0, 1, 0, 0, 1]
    n = len(a)
    pa, pb, pab = Counter(a), Counter(b), Counter(zip(a, b))
    mi = sum(c / n * math.log((c / n) / (pa[x] / n * pb[y] / n)) for (x, y), c in pab.items())
    h = lambda p: -sum(c / n * math.log(c / n) for c in p.values())  # noqa: E731
    assert normalized_mutual_information(a, b) == pytest.approx(2 * mi / (h(pa) + h(pb)))
    assert normalized_mutual_information(a, [5, 5, 7, 7, 9, 9, 9, 5]) == pytest.approx(1.0)  # a relabelling
    assert normalized_mutual_information([1, 1, 1], [0, 1, 2]) == 0.0
    with pytest.raises(ValueError, match="equal length"):
        normalized_mutual_information([1], [1, 2])


def test_unigram_entropy_and_byte_classes():
    assert unigram_entropy_bits([1, 2, 3, 4]) == pytest.approx(2.0)
    assert unigram_entropy_bits([7, 7, 7]) == pytest.approx(0.0)
    names = [CHAR_CLASSES[byte_class(ord(c))] for c in "a7 \n.é"[:5]] + [CHAR_CLASSES[byte_class(0xC3)]]
    assert names == ["letter", "digit", "space", "newline", "punctuation", "other"]


def test_layer_table_and_highest_aux_layer(run):
    table = layer_table(run)
    assert table["layer"].tolist() == [0, 1, 2]
    for i, trace in enumerate(run.traces):
        demand = trace.routed.sum(dim=0).double().numpy()
        f, P = demand / (trace.tokens * 2), trace.probs.double().mean(dim=0).numpy()
        assert table.loc[i, "aux_loss"] == pytest.approx(8 * float((f * P).sum()), rel=1e-6)
        assert table.loc[i, "cv"] == pytest.approx(demand.std() / demand.mean(), rel=1e-9)
    assert highest_aux_layer(table) == int(table["layer"][table["aux_loss"].values.argmax()])


def test_load_share_sums_to_one_per_layer(run):
    long = load_share_long(run)
    assert len(long) == 3 * 8
    assert np.allclose(long.groupby("layer")["load_share"].sum(), 1.0)
    first = run.traces[0].served.sum(dim=0).double()
    assert np.allclose(long[long.layer == 0]["load_share"], (first / first.sum()).numpy())


def test_token_routing_lists_each_token_at_each_layer(run):
    tokens = _tokens()
    frame = token_routing(run, tokens)
    assert len(frame) == 3 * len(tokens)
    row = frame[(frame.layer == 1) & (frame.position == 5)].iloc[0]
    assert row.token == tokens[5]
    assert [int(e) for e in row.experts.split()] == run.traces[1].top_k_index[5].tolist()
    assert sum(float(w) for w in row.weights.split()) == pytest.approx(1.0, abs=1e-3)


def test_expert_vocabulary_counts_top1_tokens(run):
    tokens = _tokens()
    vocab = expert_vocabulary(run, tokens, list(TEXT.encode()), top=3)
    assert sorted(vocab.layer.unique()) == list(run.layers)
    for pos, layer in enumerate(run.layers):
        top1 = run.traces[pos].top_k_index[:, 0].tolist()
        at = vocab[vocab.layer == layer]
        assert sorted(at.expert.unique()) == sorted(set(top1))  # every expert that is some token's top-1
        for expert, group in at.groupby("expert"):
            naive = Counter(t for t, e in zip(tokens, top1) if e == expert)
            assert group["count"].tolist() == sorted(naive.values(), reverse=True)[:3]
            assert all(naive[t] == c for t, c in zip(group.token, group["count"]))


def test_expert_vocabulary_counts_ids_not_their_text():
    """The bytes of "é", "ï" and "ü" each decode alone to U+FFFD: counted by their text they were one token
    '\ufffd' with the sum of their counts; by id, each byte is its own row with its own count."""
    from dashboard.loaders import vocabulary_cells
    text = "café naïve über " * 4
    ids = list(text.encode())
    tokens = [bytes([b]).decode("utf-8", "replace") for b in ids]  # what decoding one byte token alone gives
    model = tiny_model("mixtral", layers=2)
    instrument(model)
    run = run_model(model, torch.tensor(ids))
    vocab = expert_vocabulary(run, tokens, ids, top=100)
    for pos, layer in enumerate(run.layers):
        top1 = run.top1()[pos].tolist()
        naive = Counter((e, i) for e, i in zip(top1, ids))
        at = vocab[vocab.layer == layer]
        assert {(e, i): c for e, i, c in zip(at.expert, at.id, at["count"])} == dict(naive)
    assert (vocab.token == "\ufffd").any() and vocab[vocab.token == "\ufffd"].id.nunique() > 1
    cells = " ".join(" ".join(frame.iloc[:, 1]) for frame in vocabulary_cells(run, tokens, ids).values())
    assert "\ufffd #195 (" in cells and "\ufffd (" not in cells  # 0xC3, the lead byte of é, ï and ü
    assert "c (" in cells  # a text only one id has: no id shown


def test_flow_matrix_is_the_conditional_top1_distribution(run):
    flow = flow_matrix(run, 0)
    a, b = run.traces[0].top_k_index[:, 0].tolist(), run.traces[1].top_k_index[:, 0].tolist()
    for i in range(8):
        nexts = [y for x, y in zip(a, b) if x == i]
        if not nexts:
            assert np.isnan(flow[i]).all()
            continue
        assert flow[i].sum() == pytest.approx(1.0)
        assert flow[i, nexts[0]] == pytest.approx(nexts.count(nexts[0]) / len(nexts))
    with pytest.raises(ValueError, match="next MoE layer"):
        flow_matrix(run, 2)


def test_class_nmi_uses_the_first_character_class(run):
    tokens = _tokens()
    classes = [byte_class(ord(t)) for t in tokens]
    expected = [normalized_mutual_information(t.top_k_index[:, 0].numpy(), classes) for t in run.traces]
    assert class_nmi(run, tokens) == pytest.approx(expected)
