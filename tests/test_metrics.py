"""moe.metrics and moe.losses, the single homes of the shared formulas, against plain-Python computations."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from moe.hf.text import unigram_entropy_bits
from moe.losses import aux_loss, aux_loss_from_sums, lse_sq_sum, z_loss, z_loss_from_sums
from moe.metrics import (entropy, max_over_mean, nats_to_bits, nmi_from_counts, normalized_mutual_information,
                         safe_ratio)


def _nmi_naive(a, b):
    """NMI from dict counts; None where it is undefined (no items, or both labelings constant)."""
    n = len(a)
    if n == 0:
        return None
    joint, pa, pb = Counter(zip(a, b)), Counter(a), Counter(b)
    h = lambda cnt: -sum(c / n * math.log(c / n) for c in cnt.values())  # noqa: E731
    if h(pa) + h(pb) == 0:
        return None
    mi = sum(c / n * math.log((c / n) / (pa[x] / n * pb[y] / n)) for (x, y), c in joint.items())
    return 2 * mi / (h(pa) + h(pb))


# --- safe ratio, max/mean, bits, entropy --------------------------------------------------------

def test_safe_ratio_is_nan_where_the_denominator_is_not_positive():
    got = safe_ratio([1.0, 2.0, 3.0, 0.0], [2.0, 0.0, -1.0, 0.0])
    assert got[0] == 0.5 and all(math.isnan(v) for v in got[1:])
    assert safe_ratio(3, 4) == 0.75 and isinstance(safe_ratio(3, 4), float)
    assert math.isnan(safe_ratio(1.0, float("nan")))
    rows = safe_ratio(np.array([[1.0, 3.0], [0.0, 0.0]]), np.array([[4.0], [0.0]]))  # broadcast row totals
    np.testing.assert_array_equal(rows[0], [0.25, 0.75])
    assert np.isnan(rows[1]).all()


def test_max_over_mean_by_hand():
    assert max_over_mean([1, 2, 3]) == pytest.approx(3 / 2)
    assert max_over_mean([5, 5]) == 1.0
    assert math.isnan(max_over_mean([0, 0, 0])) and math.isnan(max_over_mean([]))


def test_nats_to_bits_and_entropy():
    assert nats_to_bits(math.log(8)) == pytest.approx(3.0)
    np.testing.assert_allclose(nats_to_bits(np.array([math.log(2), 0.0])), [1.0, 0.0])
    assert entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2))  # 0·ln 0 = 0
    assert entropy([1.0]) == 0.0 and entropy([]) == 0.0
    ids = [1, 1, 2, 3]
    by_hand = -sum(c / 4 * math.log2(c / 4) for c in Counter(ids).values())
    assert unigram_entropy_bits(ids) == pytest.approx(by_hand)


# --- NMI: one definition for the scenario view, the model view and the LM trainer ----------------

@pytest.mark.parametrize("a, b", [
    ([0, 0, 1, 1], [0, 1, 0, 1]),            # independent
    ([0, 0, 1, 1], [7, 7, 3, 3]),            # a relabelling: 1
    ([0, 1, 2, 0, 1, 2, 0], [1, 1, 0, 0, 1, 0, 1]),
    ([1, 1, 1], [0, 1, 2]),                  # one constant labeling: nothing shared, 0
    ([4, 4, 4], [2, 2, 2]),                  # both constant: 0/0, undefined
    ([3], [5]),                              # one item: both constant
])
def test_nmi_matches_a_naive_computation_including_degenerate_inputs(a, b):
    want = _nmi_naive(a, b)
    got = normalized_mutual_information(a, b)
    if want is None:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-12)


def test_nmi_from_counts_degenerate_tables():
    assert math.isnan(nmi_from_counts(np.zeros((3, 2))))  # nothing counted
    assert math.isnan(nmi_from_counts([[5.0]]))  # one topic, one expert
    assert nmi_from_counts([[2.0, 3.0]]) == 0.0  # one topic, two experts: the labels share nothing
    assert nmi_from_counts([[2.0, 0.0], [0.0, 3.0]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal length"):
        normalized_mutual_information([1], [1, 2])


def test_the_scenario_view_and_the_model_view_agree_on_nmi():
    from dashboard.tables import routing_nmi

    class Served:  # the field routing_nmi reads: one served expert per token here
        def __init__(self, experts, E):
            self.served = torch.nn.functional.one_hot(torch.tensor(experts), E).bool()

    for labels, experts in (([0, 0, 1, 1, 2], [1, 1, 0, 2, 2]), ([0, 0, 0], [1, 1, 1])):
        a = routing_nmi(Served(experts, 3), torch.tensor(labels))
        b = normalized_mutual_information(labels, experts)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# --- losses: one definition for training and for the statistics ---------------------------------

def _aux_naive(probs, routed, K):
    T, E = len(probs), len(probs[0])
    f = [sum(routed[t][e] for t in range(T)) / (T * K) for e in range(E)]
    P = [sum(probs[t][e] for t in range(T)) / T for e in range(E)]
    return E * sum(fe * pe for fe, pe in zip(f, P))


def test_losses_match_naive_formulas_on_tensors_and_on_sums():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    probs = logits.softmax(dim=-1)
    routed = torch.zeros(12, 4, dtype=torch.bool).scatter_(1, probs.topk(2, dim=-1).indices, True)
    want = _aux_naive(probs.tolist(), routed.int().tolist(), 2)
    assert float(aux_loss(probs, routed, 2)) == pytest.approx(want, rel=1e-12)
    from_sums = aux_loss_from_sums(routed.double().sum(0).numpy(), probs.sum(0).numpy(), 12, 2)
    assert float(from_sums) == pytest.approx(want, rel=1e-12)
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits.tolist()]
    assert float(z_loss(logits)) == pytest.approx(sum(v * v for v in lse) / 12, rel=1e-12)
    assert float(z_loss_from_sums(float(lse_sq_sum(logits)), 12)) == pytest.approx(float(z_loss(logits)), rel=1e-12)


def test_aux_loss_is_differentiable_in_probs_only_through_P():
    probs = torch.full((4, 2), 0.5, dtype=torch.float64, requires_grad=True)
    routed = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    aux_loss(probs, routed, 1).backward()
    # d/dp[t,e] of E·Σ f_e·(Σ_t p[t,e])/T = E·f_e/T with f = (3/4, 1/4)
    np.testing.assert_allclose(probs.grad.numpy(), [[2 * 0.75 / 4, 2 * 0.25 / 4]] * 4)


def test_vllm_balancedness_cites_the_fix_and_warns_that_older_logs_differ():
    """vLLM logs Σ_l mean_r / Σ_l max_r since PR #51813; before it the (layers, ranks) tensor was reduced over the
    layer axis, 1.0 for one layer: our per-layer value is the former's one-layer case, never the latter's."""
    from moe.definitions import DEFINITIONS, VLLM_BALANCEDNESS
    from moe.metrics import balancedness_vllm
    per_rank = np.array([[30.0, 10.0]])                                               # (L=1, W=2)
    fixed = per_rank.mean(axis=1).sum() / per_rank.max(axis=1).sum()                  # vLLM after #51813
    before_fix = per_rank.mean(axis=0).sum() / per_rank.max(axis=0).sum()             # over the layer axis
    assert balancedness_vllm(per_rank)[0] == fixed == 20 / 30 and before_fix == 1.0
    assert "PR #51813" in VLLM_BALANCEDNESS and "not comparable" in VLLM_BALANCEDNESS
    assert all(VLLM_BALANCEDNESS in DEFINITIONS[k] for k in ("balancedness_vllm", "run_percentiles"))
    assert "#51813" in balancedness_vllm.__doc__ and "v0.10" not in balancedness_vllm.__doc__
