"""Numbers of the Runs page and trace-report an auditor found wrong, each checked against a computation from its
definition (moe/definitions.py): a tie of max/mean broken by rounding, a step's rows in the order its records came,
sigmoid probabilities that underflowed to 0 / 0, and non-finite logits counted but never shown."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from moe.metrics import max_over_mean, max_over_mean_rows, rank_max_over_mean
from moe.traces.opener import open_trace
from trace_support import traces_app


def test_equal_ratios_are_equal_floats_so_the_first_of_a_tie_is_the_worst(tmp_path):
    """6,6,6,0,0 and 1,1,1,0,0 both have max/mean exactly 5/3: computed as max / (Σ / n) they differed in the last
    bit (1.6666666666666665 against …67), so the "first on ties" worst (step, layer) was step 1."""
    a, b = [6, 6, 6, 0, 0], [1, 1, 1, 0, 0]
    assert Fraction(max(a) * 5, sum(a)) == Fraction(max(b) * 5, sum(b)) == Fraction(5, 3)
    assert max_over_mean(a) == max_over_mean(b) == float(Fraction(5, 3))
    assert (max_over_mean_rows(np.array([a, b])) == float(Fraction(5, 3))).all()
    assert (rank_max_over_mean(np.array([a, b])) == float(Fraction(5, 3))).all()
    rng = np.random.default_rng(0)
    for _ in range(200):  # every ratio is the correctly rounded exact fraction
        row = rng.integers(0, 10 ** int(rng.integers(1, 9)), size=int(rng.integers(1, 300)))
        if row.sum():
            assert max_over_mean(row) == float(Fraction(int(row.max()) * len(row), int(row.sum())))
    path = tmp_path / "tie.csv"
    pd.DataFrame({"step": [0] * 5 + [1] * 5, "layer": ["a"] * 10, "expert": list(range(5)) * 2,
                  "count": a + b}).to_csv(path, index=False)
    assert open_trace(str(path)).worst()["step"] == 0


def _logits_trace(path, records: list[tuple[int, str, list[list[float]], list[int]]]) -> None:
    """A per-(token, expert) Parquet trace, rows in the given order: (step, layer, logits (T, E), top-1 expert)."""
    rows = {"step": [], "layer": [], "token": [], "expert": [], "router_logit": [], "routed": []}
    for step, layer, logits, chosen in records:
        for t, (row, pick) in enumerate(zip(logits, chosen)):
            for e, x in enumerate(row):
                for key, value in zip(rows, (step, layer, t, e, x, e == pick)):
                    rows[key].append(value)
    pq.write_table(pa.table({**rows, "router_logit": np.asarray(rows["router_logit"], np.float32)}), path)


def test_a_steps_rows_follow_the_layers_order_whatever_order_its_records_came_in(tmp_path):
    """Step 1 writes layer b before a; both of its rows have max/mean 2: the worst is (1, a), the first in step-major,
    layer order (as the same routing read from a counts file says), not (1, b)."""
    two = [[1.0, 0.0], [2.0, 0.0]]                                                    # both tokens to expert 0
    _logits_trace(tmp_path / "t.parquet", [(0, "a", [[0.0, 1.0], [1.0, 0.0]], [1, 0]),
                                           (0, "b", [[0.0, 1.0], [1.0, 0.0]], [1, 0]),
                                           (1, "b", two, [0, 0]), (1, "a", two, [0, 0])])
    s = open_trace(str(tmp_path / "t.parquet"))
    assert s.layers == ["a", "b"]
    assert list(zip(s.rows["step"], s.rows["layer"])) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert s.worst()["step"] == 1 and s.worst()["layer"] == "a"


def test_sigmoid_probabilities_of_very_negative_logits_do_not_underflow_to_nothing(tmp_path):
    """Logits −100, −101, −102: float32's sigmoid is 0 there, so s / Σ s was 0 / 0 and the whole (step, layer) lost its
    aux loss and confidence. The definitions, in float64: probs = sigmoid(x) / Σ sigmoid(x)."""
    logits = [[-100.0, -101.0, -102.0], [0.0, 0.0, 0.0]]
    _logits_trace(tmp_path / "s.parquet", [(0, "0", logits, [0, 1])])
    row = open_trace(str(tmp_path / "s.parquet"), score="sigmoid").rows.iloc[0]
    x = np.array(logits, dtype=np.float64)
    s = 1 / (1 + np.exp(-x))
    probs = s / s.sum(axis=1, keepdims=True)                                          # (T, E)
    demand = np.array([1, 1, 0])                                                      # top-1: experts 0 and 1
    aux = 3 * (demand / 2 * probs.mean(axis=0)).sum()
    top = np.sort(probs, axis=1)[:, ::-1]
    confidence = np.minimum(top[:, 0] / top[:, 1], 100).mean()
    assert row["aux_loss"] == pytest.approx(aux, rel=1e-5)
    assert row["mean_confidence"] == pytest.approx(confidence, rel=1e-5)


def test_the_runs_page_reports_logits_that_are_not_finite(tmp_path, tmp_is_a_root):
    """The count was in trace-report's per_layer JSON only; the page showed blank numbers without saying why."""
    _logits_trace(tmp_path / "bad.parquet", [(0, "0", [[np.nan, 0.0], [1.0, 0.0]], [1, 0]),
                                             (0, "1", [[-np.inf, 0.0], [np.inf, 0.0]], [1, 0])])
    _logits_trace(tmp_path / "good.parquet", [(0, "0", [[0.5, 0.0], [1.0, 0.0]], [0, 0])])
    _logits_trace(tmp_path / "one.parquet", [(0, "0", [[np.nan, 0.0], [1.0, 0.0]], [1, 0])])
    shown = {}
    for name in ("bad", "good", "one"):
        at = AppTest.from_function(traces_app, default_timeout=60).run()
        at.radio(key="trace_source").set_value("Path on the server").run()
        at.text_input(key="trace_path").set_value(str(tmp_path / f"{name}.parquet")).run()
        assert not at.exception and not at.error, at.error
        shown[name] = [w.value for w in at.warning]
    assert any("3 router logits of this trace are not finite, in 2 layers (`0`: 1, `1`: 2)" in w for w in shown["bad"])
    # what the note says of the numbers is what they are: layer 1's +inf logit gives an inf z-loss, not a blank one
    rows = open_trace(str(tmp_path / "bad.parquet")).rows.set_index("layer")
    assert np.isnan(rows.loc["1", "aux_loss"]) and np.isnan(rows.loc["1", "mean_confidence"])
    assert rows.loc["1", "z_loss"] == np.inf and np.isnan(rows.loc["0", "z_loss"])
    assert any("leaves the aux loss and confidence of its (step, layer) blank, and its z-loss NaN or +inf" in w
               for w in shown["bad"])
    assert not any("not finite" in w for w in shown["good"])
    assert any("1 router logit of this trace is not finite, in 1 layer (`0`: 1)" in w for w in shown["one"])
