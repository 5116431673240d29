"""The extremes the definitions state hold for top-k > 1: checked against the engine on collapsed routers.

A hot expert with a huge logit bias is every token's first choice with probability ≈ 1: aux = E/K, its load
share 1/K, max/mean E/K. Identical tokens choose the same K experts: load entropy K/E. Top-1 reads E and 1."""
import pytest

from moe import MoELayer
from moe.definitions import DEFINITIONS
from moe.knobs import from_knobs
from moe.scenarios import make_batch
from moe.traces.parquet import TraceWriter
from moe.traces.summary import summarize
from moe.train.trainer import TrainConfig, Trainer

E = 8
# definition key -> the extreme its text states (a formula in E and K, written in a code span)
STATED = {"aux_loss": "E/K", "max_over_mean": "E/K", "utilization": "E/K", "load_share": "1/K",
          "load_entropy": "K/E", "live_load_share": "1/K", "trace_max_over_mean": "E/K"}


def _value(formula: str, K: int) -> float:
    top, bottom = formula.split("/")
    return {"E": E, "K": K, "1": 1}[top] / {"E": E, "K": K}[bottom]


def _config(K: int, **knobs):
    return from_knobs({"d_model": 8, "d_expert": 8, "n_experts": E, "top_k": K, "tokens": 64, **knobs})


def _hot(K: int):
    """A forward whose router sends every token to expert 0 first, with probability ≈ 1."""
    cfg, scenario, params, tokens = _config(K, hot_expert=0, hot_bias=50.0)
    return MoELayer(cfg)(make_batch(scenario, cfg.d_model, tokens, seed=0, **params).x)[1]


@pytest.mark.parametrize("key", list(STATED))
def test_definitions_state_the_top_k_extreme(key):
    assert f"`{STATED[key]}`" in DEFINITIONS[key], DEFINITIONS[key]


@pytest.mark.parametrize("K", [1, 2])
def test_a_collapsed_router_reaches_the_stated_maxima(K):
    trace = _hot(K)
    summary, table = trace.summary(), trace.per_expert()
    assert summary["aux_loss"] == pytest.approx(_value(STATED["aux_loss"], K), rel=1e-4)
    assert summary["max_over_mean"] == pytest.approx(_value(STATED["max_over_mean"], K))
    assert table["load_share"].max() == pytest.approx(_value(STATED["load_share"], K))
    assert table["utilization"].max() == pytest.approx(_value(STATED["utilization"], K))
    assert table["load_share"].idxmax() == 0


@pytest.mark.parametrize("K", [1, 2])
def test_identical_tokens_reach_the_stated_load_entropy(K):
    cfg, _, _, tokens = _config(K, scenario="identical")
    trace = MoELayer(cfg)(make_batch("identical", cfg.d_model, tokens, seed=0).x)[1]
    assert trace.summary()["load_entropy"] == pytest.approx(_value(STATED["load_entropy"], K))
    assert trace.summary()["max_over_mean"] == pytest.approx(_value(STATED["max_over_mean"], K))


@pytest.mark.parametrize("K", [1, 2])
def test_live_load_share_of_a_collapsed_router_is_one_over_k(K):
    cfg = _config(K, hot_expert=0, hot_bias=50.0)[0]
    row = Trainer(TrainConfig(model=cfg, tokens=64, scenario="gaussian")).step()
    assert row["load_share_0"] == pytest.approx(_value(STATED["live_load_share"], K))
    assert row["aux_loss"] == pytest.approx(_value(STATED["aux_loss"], K), rel=1e-4)


@pytest.mark.parametrize("K", [1, 2])
def test_trace_max_over_mean_of_a_collapsed_router(tmp_path, K):
    with TraceWriter(tmp_path / "run.parquet") as writer:
        writer.write(_hot(K), step=0, layer=0)
    rows = summarize(str(tmp_path / "run.parquet"), n_experts=E).rows
    assert rows["max_over_mean"].max() == pytest.approx(_value(STATED["trace_max_over_mean"], K))


def test_no_text_claims_the_top_1_maxima_for_every_k():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    texts = [*DEFINITIONS.values(), (root / "README.md").read_text(), (root / "docs" / "ENGINE_API.md").read_text()]
    for text in texts:
        assert "up to E when" not in text and "band filling the chart" not in text, text[:200]
