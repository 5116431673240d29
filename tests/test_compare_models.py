"""Compare, model sides: two models on one text, and a model against its counterfactual, each side a Model-page link.
The Δ table's numbers are checked against the model's own forward computed here (moe.hf, no dashboard cache), the
load heatmaps share one colour scale, the loss charts one y range, and both sides round-trip through the link."""
from __future__ import annotations

import base64
from urllib.parse import urlencode

import numpy as np
import plotly.io as pio
import pytest
import torch
from dashboard.compare_models import counterfactual_from, is_model_link, model_headline, parse_model_side
from dashboard.model_link import EXAMPLES
from dashboard.quoting import quote
from dashboard.state import model_defaults
from moe.hf.counterfactual import run_counterfactual
from moe.hf.instrument import run_model
from moe.hf.load import BUNDLED_MODELS, load_model
from moe.hf.report import encode_text
from moe.stats import StatsAccumulator

from app_support import open_app
from model_support import saved_model

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py

OWN = urlencode({"view": "Model", "mex": "prose"})
COLD = urlencode({"view": "Model", "mex": "prose", "cfon": "1", "cfe": "0", "cfbias": "cold"})


def _compare(a: str, b: str):
    return open_app({"view": "Compare", "a": a, "b": b})


def _charts(at) -> dict:
    return {e.key: pio.from_json(e.proto.spec) for e in at.get("plotly_chart")}


def _array(value) -> np.ndarray:
    """A figure's data array (plotly's JSON sends numpy arrays as base64 `bdata` with their shape)."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value, dtype=float)


def _independent(path: str, text: str, cf=None) -> dict:
    """The headline numbers from the model's own forward, computed without the dashboard."""
    loaded = load_model(path)
    ids, _ = encode_text(loaded.tokenizer, text, 512)
    run = run_model(loaded.model, ids, loaded.context) if cf is None else \
        run_counterfactual(loaded.model, ids, cf, loaded.context)
    summaries = [t.summary() for t in run.traces]
    acc = StatsAccumulator()
    for t in run.traces:
        acc.update(t)
    bits = torch.nn.functional.cross_entropy(run.logits[:-1], ids[1:], reduction="sum").item() / np.log(2)
    predicted_bytes = len(bytes(ids[1:].tolist()))  # the byte tokenizer: a token is the byte of its id
    return {"aux_loss": acc.summary()["aux_loss"],
            **{k: float(np.mean([s[k] for s in summaries])) for k in ("cv", "max_over_mean", "dead_fraction")},
            "dropped_fraction": sum(s["dropped"] for s in summaries) / sum(s["demand"] for s in summaries),
            "loss_bits": bits / (ids.numel() - 1), "loss_bits_per_byte": bits / predicted_bytes}


def test_a_model_against_its_counterfactual_matches_the_models_own_forwards():
    at = _compare(OWN, COLD)
    assert not at.exception and not at.error
    table = at.table[0].value
    path = model_defaults()["model_path"]
    own = _independent(path, EXAMPLES["prose"])
    cold = _independent(path, EXAMPLES["prose"], counterfactual_from({**model_defaults(), "cf_bias_expert": 0,
                                                                       "cf_bias": "cold"}))
    rows = dict(zip(table.index, zip(table["A"], table["B"], table["B − A"])))
    keys = ["aux_loss", "cv", "max_over_mean", "dead_fraction", "dropped_fraction", "loss_bits", "loss_bits_per_byte"]
    assert len(rows) == len(keys) and list(rows)[-1] == "loss (bits per byte)"
    for (label, (a, b, d)), key in zip(rows.items(), keys):
        assert a == pytest.approx(own[key], rel=1e-5, abs=1e-7), label
        assert b == pytest.approx(cold[key], rel=1e-5, abs=1e-7), label
        assert d == pytest.approx(b - a)
    assert cold["max_over_mean"] != own["max_over_mean"]  # expert 0 never chosen: the load really moved
    charts = _charts(at)
    za, zb = (charts[f"compare_model_load_{n}"].data[0] for n in "AB")
    a_share, b_share = _array(za.z), _array(zb.z)
    assert (za.zmin, za.zmax) == (zb.zmin, zb.zmax) and za.zmax >= max(a_share.max(), b_share.max())
    assert np.allclose(b_share[:, 0], 0.0) and a_share[:, 0].min() > 0  # B: expert 0 gets no token at any layer
    ya, yb = (charts[f"compare_model_loss_{n}"].layout.yaxis.range for n in "AB")
    assert tuple(ya) == tuple(yb)


def test_two_models_on_one_text_and_the_link_round_trips(tmp_path):
    other = saved_model(tmp_path / "tiny")
    b = urlencode({"view": "Model", "mex": "prose", "mdir": other})
    at = _compare(OWN, b)
    assert not at.exception and not at.error
    assert not at.table and "compare_model_load_B" not in _charts(at)  # a linked directory waits for its click
    at.button(key="compare_load_B").click().run()
    assert not at.exception and not at.error
    query = dict(at.query_params.items())
    again = _compare(query["a"], query["b"])
    again.button(key="compare_load_B").click().run()
    assert again.table[0].value.equals(at.table[0].value)
    tiny = _independent(other, EXAMPLES["prose"])
    assert at.table[0].value["B"].iloc[-1] == pytest.approx(tiny["loss_bits"], rel=1e-5)


def test_the_two_bundled_models_on_one_text_by_name():
    at = _compare(OWN, urlencode({"view": "Model", "mex": "prose", "mmodel": "pydoc-deepseek"}))
    assert not at.exception and not at.error
    table = at.table[0].value
    deepseek = _independent(BUNDLED_MODELS["pydoc-deepseek"], EXAMPLES["prose"])
    mixtral = _independent(model_defaults()["model_path"], EXAMPLES["prose"])
    assert table["B"].iloc[-1] == pytest.approx(deepseek["loss_bits"], rel=1e-5)
    assert table["A"].iloc[-1] == pytest.approx(mixtral["loss_bits"], rel=1e-5)
    assert table["B"].iloc[2] == pytest.approx(deepseek["max_over_mean"], rel=1e-5)
    assert [c.value for c in at.caption if "pydoc-deepseek" in c.value]
    assert [c.value for c in at.caption if c.value.startswith("**aux loss with a sigmoid router:**")]


def test_a_playground_side_against_a_model_side_is_one_error():
    at = _compare(urlencode({"d_model": "8", "d_expert": "8", "batch": "1", "seq_len": "16"}), OWN)
    assert not at.exception
    assert [e.value for e in at.error if "compare two of a kind" in e.value]


def test_a_model_side_outside_the_roots_is_an_error_that_does_not_echo_the_path():
    side = parse_model_side(urlencode({"mdir": "/etc"}), model_defaults())
    assert side.spec is None and side.error and "/etc" not in side.error.replace("`/etc`", "")


@pytest.mark.parametrize("text, model", [
    ("http://h:8501/model?mex=code", True), ("http://h:8501/model", True), ("?view=Model", True),
    ("cfon=1", True), ("http://h:8501/?d_model=8", False), ("preset=balanced&top_k=3", False),
    ("mex=prose&mtext=1/2", True), ("mex=prose&mtext=why?", True), ("http://h:8501/model/", True),
    ("model?mex=code", True), ("localhost:8501?mex=numbers", True), ("127.0.0.1:8501?top_k=3", False)])
def test_model_links_are_told_from_playground_links(text, model):
    assert is_model_link(text) is model


def test_the_headline_of_tables_is_their_plain_arithmetic():
    import pandas as pd
    tables = {"pooled_aux": 1.25, "dropped": [1, 3], "demand": [10, 30], "loss": np.log(2) * np.array([1.0, 3.0]),
              "table": pd.DataFrame({"cv": [0.1, 0.3], "max_over_mean": [1.0, 2.0], "dead_fraction": [0.0, 0.5]}),
              "token_bytes": [5, 2, 6]}  # the first token is not predicted: 4 bits over 2 + 6 bytes
    assert model_headline(tables) == pytest.approx({"aux_loss": 1.25, "cv": 0.2, "max_over_mean": 1.5,
                                                    "dead_fraction": 0.25, "dropped_fraction": 0.1, "loss_bits": 2.0,
                                                    "loss_bits_per_byte": 0.5})


@pytest.mark.parametrize("layer", ["x", "1.5", "٣", " 1", "1_0"])
def test_a_bad_counterfactual_layer_in_a_model_side_is_a_note_and_the_default(layer):
    """parse_model_side never raises: a layer that is not `all` or ASCII digits is ignored (named, quoted) and the
    counterfactual applies to every layer, as the Model page's default does."""
    query = urlencode({"view": "Model", "mex": "prose", "cfon": "1", "cfk": "1", "cflayer": layer})
    side = parse_model_side(query, model_defaults())
    assert side.spec is not None and side.spec.cf is not None and side.spec.cf.layers is None
    assert side.notes == [f"ignored cflayer={quote(layer)} in the link"]
    at = open_app({"view": "Compare", "a": query})
    assert not at.exception
    notes = [m.value for m in [*at.warning, *at.info, *at.caption, *at.markdown] if "cflayer" in m.value]
    assert len(notes) == 1 and "\n" not in notes[0].strip()
    assert side.notes[0] in notes[0]


def test_a_counterfactual_layer_of_digits_is_taken():
    side = parse_model_side(urlencode({"mex": "prose", "cfon": "1", "cfk": "1", "cflayer": "2"}), model_defaults())
    assert side.notes == [] and side.spec.cf.layers == (2,)


@pytest.mark.parametrize("misfit, key, default", [({"cfe": "9"}, "cf_bias_expert", -1), ({"cfk": "9"}, "cf_top_k", 0),
                                                  ({"cflayer": "7"}, "cf_layer", "all")])
def test_a_counterfactual_value_the_model_cannot_take_is_reset_as_the_model_page_resets_it(misfit, key, default):
    """A side runs its link as the Model page does: a value this model (4 MoE layers of 8 experts) cannot take goes
    back to its default with the Model page's note, and the rest of the counterfactual (temperature 2) still runs
    (it was one error, 'could not route this text', and no table)."""
    link = {"view": "Model", "mex": "prose", "cfon": "1", "cftemp": "2", **misfit}
    at = _compare(OWN, urlencode(link))
    assert not at.exception and not at.error
    note = f"B: {key} = {misfit[next(iter(misfit))]} does not fit this model; reset to {default}."
    assert [w.value for w in at.warning] == [note]
    model_page = open_app(link)
    assert [w.value for w in model_page.warning] == [note.removeprefix("B: ")]
    warm = _independent(model_defaults()["model_path"], EXAMPLES["prose"],
                        counterfactual_from({**model_defaults(), "cf_temperature": 2.0}))
    assert at.table[0].value["B"].iloc[-2] == pytest.approx(warm["loss_bits"], rel=1e-5)


def test_a_counterfactual_that_changes_top_k_at_one_layer_is_compared():
    at = _compare(OWN, urlencode({"view": "Model", "mex": "prose", "cfon": "1", "cfk": "1", "cflayer": "2"}))
    assert not at.exception and not at.error
    path = model_defaults()["model_path"]
    loaded = load_model(path)
    ids, _ = encode_text(loaded.tokenizer, EXAMPLES["prose"], 512)
    run = run_counterfactual(loaded.model, ids, counterfactual_from({**model_defaults(), "cf_top_k": 1,
                                                                     "cf_layer": "2"}), loaded.context)
    routed = sum(t.routed.double().sum(0) for t in run.traces)
    slots = sum(t.routed.shape[0] * int(t.routed.sum(1)[0]) for t in run.traces)
    probs = sum(t.probs.double().sum(0) for t in run.traces)
    tokens = sum(t.probs.shape[0] for t in run.traces)
    E = run.traces[0].probs.shape[1]
    assert at.table[0].value["B"].iloc[0] == pytest.approx(float(E * ((routed / slots) * (probs / tokens)).sum()),
                                                           rel=1e-5)


def test_the_longest_model_link_the_model_page_takes_reopens_on_the_compare_page():
    """Every Model key at its longest value, each character a 4-byte one: the side's query for the Compare link was
    written without a bound and refused when the link was opened again (6,155 characters over 6,144)."""
    from dashboard.compare_sides import sides_from_query
    from dashboard.model_link import MODEL_LINK, from_link, value_limit
    q = {"mdir": "/" + "😀" * (value_limit("mdir") - 1), "mtext": "😀" * value_limit("mtext"), "mtok": "4096",
         "cfon": "1", "cfe": "0", "cfbias": "cold", "cftemp": "2.5", "cfk": "3", "cfcap": "1.25", "cfdrop": "probs",
         "cflayer": "1", "junk": "x" * 5000}
    values, problems = from_link(q, EXAMPLES)
    assert not problems and "junk" not in MODEL_LINK
    side = parse_model_side(urlencode(q), model_defaults())  # the directory is outside the roots: an error, kept
    assert "junk" not in side.query and len(side.query) > 6144  # only what the Model page reads is kept
    reopened, problems = sides_from_query({"a": side.query})
    assert reopened == {"compare_a": side.query} and not problems
