"""Pooling hides a bad layer: one collapsed router barely moves HF's pooled aux, the per-layer table flags it."""
import torch

from moe.hf.instrument import engine_blocks, instrument, run_model
from moe.hf.tables import highest_aux_layer, layer_table
from tests.model_support import VOCAB, tiny_model

IDS = torch.randint(0, VOCAB, (96,), generator=torch.Generator().manual_seed(5))
E, K = 8, 2


def _collapse(model, layer: int) -> None:
    """Give one layer's router a large bias towards experts 0 and 1: every token goes there, with p ≈ 1/2 each."""
    block = next(b for b in engine_blocks(model) if b.layer_index == layer)
    bias = (20.0, 20.0) + (0.0,) * (E - 2)
    block.engine = block.engine.reconfigured(block.engine.cfg.replace(logit_bias=bias))


def _switch_aux(run) -> list[float]:
    """E·Σ_e f_e·P_e per layer, computed here from the routed mask and the probabilities (independent of stats)."""
    out = []
    for t in run.traces:
        f = t.routed.float().sum(0) / (t.tokens * K)
        out.append(float(E * (f * t.probs.mean(0)).sum()))
    return out


def test_one_collapsed_layer_hides_in_the_pooled_aux_but_not_in_the_table():
    model = tiny_model("mixtral", layers=4)
    instrument(model)
    healthy = run_model(model, IDS)
    _collapse(model, 2)
    bad = run_model(model, IDS)

    per_layer = _switch_aux(bad)
    assert per_layer[2] > 3.9                       # collapsed: E·(2·½·½) = 4, the maximum for top-2 of 8
    assert max(_switch_aux(healthy)) < 1.6          # the healthy layers sit near 1
    table = layer_table(bad)
    assert torch.allclose(torch.tensor(table["aux_loss"].tolist()), torch.tensor(per_layer), rtol=1e-5)
    assert highest_aux_layer(table) == 2 and table.loc[2, "dead_fraction"] == 0.75
    # HF's pooled number (top_k × the Switch aux of the pooled statistics) moves far less than the bad layer
    pooled_healthy, pooled_bad = healthy.pooled_hf_aux() / K, bad.pooled_hf_aux() / K
    assert pooled_bad < 1.35 * pooled_healthy
    assert per_layer[2] > 3 * pooled_bad


def test_pooled_aux_of_a_counterfactual_that_changes_top_k_at_one_layer():
    """Each layer counts its own K in f̄ = Σ assignments / Σ T·K (it raised: 'cannot merge statistics of a layer with
    top_k=1'); checked against the routed masks and probabilities of the traces, pooled by hand."""
    from moe.hf.counterfactual import Counterfactual, run_counterfactual
    model = tiny_model("mixtral", layers=4)
    instrument(model)
    run = run_counterfactual(model, IDS, Counterfactual(layers=(2,), top_k=1))
    assert [int(t.routed.sum(1).max()) for t in run.traces] == [K, K, 1, K]
    routed = sum(t.routed.double().sum(0) for t in run.traces)                      # (E,) assignments
    slots = sum(t.routed.shape[0] * int(t.routed.sum(1)[0]) for t in run.traces)    # Σ T·K
    probs = sum(t.probs.double().sum(0) for t in run.traces)                        # (E,)
    tokens = sum(t.probs.shape[0] for t in run.traces)
    assert abs(run.pooled_aux() - float(E * ((routed / slots) * (probs / tokens)).sum())) < 1e-6
    same = run_model(model, IDS)  # one K everywhere: the pooled statistics' own aux, as before
    acc = same.traces[0].sums
    for t in same.traces[1:]:
        acc = acc + t.sums
    from moe.stats import summary_dict
    assert abs(same.pooled_aux() - summary_dict(acc)["aux_loss"]) < 1e-12


def test_the_pooled_aux_tops_out_at_e_over_k_as_its_definition_says():
    """Every layer sends every token to expert 0 with p ≈ 1: f̄_0 = 1/K, P̄_0 ≈ 1, so E/K (= 4 here; the definition
    said E)."""
    from moe.definitions import DEFINITIONS
    model = tiny_model("mixtral", layers=4)
    instrument(model)
    for block in engine_blocks(model):
        block.engine = block.engine.reconfigured(block.engine.cfg.replace(logit_bias=(40.0,) + (0.0,) * (E - 1)))
    run = run_model(model, IDS)
    assert abs(run.pooled_aux() - E / K) < 1e-3
    assert "at most `E/K`" in DEFINITIONS["pooled_aux"]
