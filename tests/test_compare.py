"""The Compare page: two Playground links side by side. The Δ table holds the two forwards' own summaries (an engine
forward computed here), the paired charts share one y range that shows both sides, both sides round-trip through
the page's link, and a bad link value is a quoted note, never an exception."""
import base64
import dataclasses
from urllib.parse import parse_qsl, urlencode

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest
import torch
from dashboard.compare_sides import MAX_SIDE_CHARS, delta_table, parse_side, query_part
from dashboard.figures.compare import HEADROOM, LoadInput, load_pair
from dashboard.figures.core import shared_range
from dashboard.links import from_query, spec_from_controls
from dashboard.presets import DEFAULT_PRESET
from moe import MoELayer
from moe.scenarios import make_batch

from app_support import SMALL, open_app

SIDE_A = urlencode({**SMALL, "n_experts": "4"})
SIDE_B = urlencode({**SMALL, "seq_len": "64", "n_experts": "8", "top_k": "3", "hot_expert": "1", "hot_bias": "3"})
ROWS = {"aux loss": "aux_loss", "CV": "cv", "max/mean load": "max_over_mean",
        "dead experts (fraction)": "dead_fraction", "dropped (fraction)": "dropped_fraction"}


def _compare(a: str | None = SIDE_A, b: str | None = SIDE_B, **extra):
    query = {"view": "Compare", **extra, **({"a": a} if a is not None else {}), **({"b": b} if b is not None else {})}
    return open_app(query)


def _engine_summary(side_query: str) -> dict:
    """The side's forward without the dashboard's caches: its link's controls, a fresh layer, the scenario's batch."""
    _, values, problems = from_query(dict(parse_qsl(side_query)))
    assert not problems
    spec = spec_from_controls(values)
    layer = MoELayer(spec.config).requires_grad_(False).eval()
    batch = make_batch(spec.scenario, spec.config.d_model, spec.tokens, seed=spec.config.seed, **spec.params)
    with torch.inference_mode():
        _, trace = layer(batch.x.reshape(-1, spec.seq_len, spec.config.d_model))  # (B, S, D)
    return trace.summary()


def _values(array) -> list:
    """A figure's data array as a list (plotly's JSON sends numpy arrays as base64 `bdata`)."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def _charts(at) -> dict:
    """The drawn figures by key (plotly's JSON decoded back into figures: arrays travel base64-encoded)."""
    return {e.key: pio.from_json(e.proto.spec) for e in at.get("plotly_chart")}


def test_the_delta_table_holds_both_forwards_summaries_and_their_difference():
    at = _compare()
    assert not at.exception and not at.error
    table = at.table[0].value
    a, b = _engine_summary(SIDE_A), _engine_summary(SIDE_B)
    assert list(table.index) == list(ROWS) and list(table.columns) == ["A", "B", "B − A"]
    for label, key in ROWS.items():
        assert table.loc[label, "A"] == pytest.approx(a[key], rel=1e-6, abs=1e-9)
        assert table.loc[label, "B"] == pytest.approx(b[key], rel=1e-6, abs=1e-9)
        assert table.loc[label, "B − A"] == pytest.approx(b[key] - a[key], rel=1e-6, abs=1e-9)
    assert table.loc["max/mean load", "B"] > table.loc["max/mean load", "A"]  # B's hot expert: not a no-op side
    shown = "\n".join(c.value for c in at.caption)
    assert all(f"`{key}`:" in shown for key in (*ROWS.values(), "compare_delta"))
    assert "loss" not in [label.split()[0] for label in table.index]  # no model loss for a synthetic layer


def test_delta_table_is_b_minus_a_row_by_row():
    a = {"aux_loss": 1.0, "cv": 0.5, "max_over_mean": 2.0, "dead_fraction": 0.25, "dropped_fraction": 0.0}
    b = {"aux_loss": 1.5, "cv": 0.25, "max_over_mean": 2.0, "dead_fraction": 0.0, "dropped_fraction": 0.125}
    table = delta_table(a, b)
    assert table["B − A"].tolist() == [0.5, -0.25, 0.0, -0.25, 0.125]


def test_the_paired_charts_share_one_y_range_that_covers_both_sides():
    charts = _charts(_compare())
    assert set(charts) == {"compare_load_A", "compare_load_B", "compare_confidence_A", "compare_confidence_B"}
    for pair in ("load", "confidence"):
        a, b = charts[f"compare_{pair}_A"], charts[f"compare_{pair}_B"]
        assert a.layout.yaxis.range == b.layout.yaxis.range
        tallest = [max(max(_values(t.y)) for t in fig.data if t.type == "bar") for fig in (a, b)]
        low, high = a.layout.yaxis.range
        assert low == 0 and high >= max(tallest) and tallest[0] != tallest[1]  # one range, set by the taller side
        if pair == "confidence":
            assert a.layout.xaxis.range == b.layout.xaxis.range  # the same bins
    bars_a, bars_b = (list([t for t in charts[f"compare_load_{s}"].data if t.type == "bar"][0].marker.color)
                      for s in "AB")
    assert bars_b[:4] == bars_a and len(set(bars_b)) == 8  # expert e has one colour on the page


def test_the_link_round_trips_both_sides():
    at = _compare()
    query = dict(at.query_params.items())
    assert query == {"a": SIDE_A, "b": SIDE_B}  # view=Compare is the page's path now
    assert at.session_state["link_notes"] == []  # a and b are the Compare page's: no Playground note names them
    again = _compare(query["a"], query["b"])
    assert dict(again.query_params.items()) == query
    assert again.text_input(key="compare_a").value == SIDE_A and again.text_input(key="compare_b").value == SIDE_B
    assert again.table[0].value.equals(at.table[0].value)
    # a whole pasted URL keeps only its query in the page's link
    at.text_input(key="compare_b").set_value(f"http://localhost:8501/playground?{SIDE_A}#top").run()
    assert dict(at.query_params.items()) == {"a": SIDE_A, "b": SIDE_A}
    assert at.table[0].value["B − A"].abs().max() == 0  # the same layer on both sides


def test_a_bad_link_value_is_a_quoted_note_and_the_other_side_is_drawn():
    at = _compare(b=urlencode({**SMALL, "top_k": "[x](http://h)", "colour": "red"}))
    assert not at.exception
    notes = [w.value for w in at.warning]
    assert "B: ignored top_k=`[x](http://h)`: expected an integer" in notes
    assert "B: ignored unknown link parameter `colour`" in notes
    assert len(at.get("plotly_chart")) == 4  # the bad values are skipped: B runs with the rest of its link


def test_a_side_the_engine_refuses_is_an_error_and_the_other_side_is_still_drawn():
    huge = urlencode({"d_model": "4096", "d_expert": "8192", "n_experts": "256", "batch": "64", "seq_len": "4096"})
    at = _compare(b=huge)
    assert not at.exception
    assert [e.value for e in at.error if e.value.startswith("B: could not run this configuration")]
    assert sorted(e.key for e in at.get("plotly_chart")) == ["compare_confidence_A", "compare_load_A"]
    assert not at.table  # no Δ without both sides


def test_a_too_long_side_in_the_link_is_named_and_not_read():
    at = _compare(b="n_experts=4&" + "x" * MAX_SIDE_CHARS)
    assert not at.exception
    assert [w.value for w in at.warning if w.value.startswith("ignored b=`n_experts=4&xxx")]
    assert at.text_input(key="compare_b").value == "" and "b" not in dict(at.query_params.items())


def test_the_playground_button_makes_its_layer_side_a():
    at = _compare(a=None, b=None, **SMALL, n_experts="6", top_k="3")  # the Playground's controls from the link
    assert dict(at.query_params.items()) == {}
    at.button(key="compare_use_playground").click().run()
    side = parse_side(at.text_input(key="compare_a").value)
    assert side.spec.config.n_experts == 6 and side.spec.config.top_k == 3 and not side.notes
    assert dict(at.query_params.items())["a"] == side.query and not at.exception


@pytest.mark.parametrize("text, query", [("http://h:8501/playground?top_k=3#x", "top_k=3"), ("?top_k=3", "top_k=3"),
                                         ("  top_k=3 ", "top_k=3"), ("/?a=1&b=2", "a=1&b=2"), ("", "")])
def test_query_part_takes_what_follows_the_question_mark(text, query):
    assert query_part(text) == query


@pytest.mark.parametrize("text, query", [("mex=prose&mtext=1/2", "mex=prose&mtext=1/2"),
                                         ("mtext=why?&mex=prose", "mtext=why?&mex=prose"),
                                         ("http://h:8501/playground", ""), ("http://h:8501/runs?x=1", "x=1"),
                                         ("127.0.0.1:8501?top_k=3", "top_k=3"), ("h:8501/?top_k=3", "top_k=3"),
                                         ("router:hash", "router:hash"), ("top_k: 3", "top_k: 3"),
                                         ("localhost:8501", "")])
def test_a_slash_or_question_mark_in_a_bare_query_stays_in_the_query(text, query):
    """A query pasted without its `?` whose value holds `/` was read as an address with no query (so a Model link
    ran as the default synthetic layer, silently); one whose value holds `?` was cut there."""
    assert query_part(text) == query


def test_a_playground_address_without_a_query_is_its_default_layer_and_other_pages_are_refused():
    default = parse_side("?" + urlencode({"preset": DEFAULT_PRESET}))
    for address in ("http://localhost:8501/playground", "http://localhost:8501/", "localhost:8501/playground/"):
        side = parse_side(address)  # was "ignored unknown link parameter `http://localhost:8501/playground`"
        assert side.spec == default.spec and not side.notes and not side.error, address
    for address, page in (("http://localhost:8501/runs", "Runs"), ("http://h/compare?a=top_k%3D3&b=x", "Compare"),
                          ("/about", "About"), ("http://localhost:8501/Runs", "Runs"), ("runs?x=1", "Runs")):
        side = parse_side(address)  # was drawn as the default layer, as if the link had asked for it
        assert side.spec is None and side.error == (f"this is a link to the {page} page, which holds no layer; paste "
                                                    "a Playground link (or a Model page link on both sides)")
    at = _compare(a="http://localhost:8501/runs", b="top_k=3")
    assert not at.exception and [e.value for e in at.error if e.value.startswith("A: this is a link to the Runs")]


def test_parse_side_never_raises_and_quotes_what_it_refuses():
    assert parse_side("").spec is None and not parse_side("").error
    side = parse_side("?n_experts=`1e9`&preset=<b>x</b>")
    assert side.spec is not None  # the default preset, the default n_experts
    assert "ignored n_experts=`ˋ1e9ˋ`: expected an integer" in side.notes
    assert "unknown preset `<b>x</b>` in the link; using" in " ".join(side.notes)
    assert parse_side("x" * (MAX_SIDE_CHARS + 1)).error.startswith("the link has")


def test_the_shared_range_covers_bars_and_reference_lines_of_every_side():
    low = LoadInput("A", pd.DataFrame({"expert": [0, 1], "demand": [3, 1], "served": [2, 1], "dropped": [1, 0]}),
                    ideal=2.0, capacity=9)  # the capacity line is A's tallest
    high = LoadInput("B", pd.DataFrame({"expert": [0, 1, 2], "demand": [6, 0, 0], "served": [6, 0, 0],
                                        "dropped": [0, 0, 0]}), ideal=2.0, capacity=None)
    assert (low.top, high.top) == (9.0, 6.0)
    a, b = load_pair([low, high], ["#111", "#222", "#333"])
    assert list(a.layout.yaxis.range) == list(b.layout.yaxis.range) == [0.0, 9.0 * HEADROOM]
    assert shared_range([0.0, 0.0], HEADROOM) == [0.0, HEADROOM]  # nothing to draw: still a visible axis


def test_a_side_equal_to_the_other_runs_once_and_a_cleared_side_keeps_nothing():
    at = _compare(a=SIDE_A, b=SIDE_A)
    kept = at.session_state["compare_results"]
    assert kept["A"][1] is kept["B"][1]  # one forward for the two equal links, not two
    at.text_input(key="compare_b").set_value("").run()
    assert not at.exception and set(at.session_state["compare_results"]) == {"A"}  # B's result is let go


def test_a_sides_non_finite_warning_is_shown_as_the_playground_shows_it(monkeypatch):
    """The Playground shows RunResult.warnings (NaN/inf values make the numbers moot); the Compare page showed none."""
    from dashboard import loaders
    real = loaders.run

    def with_warning(spec):
        result = real(spec)
        return dataclasses.replace(result, warnings=["1 router logits and 0 output values are not finite"]) \
            if spec.config.n_experts == 4 else result
    monkeypatch.setattr(loaders, "run", with_warning)
    at = _compare()
    assert not at.exception
    assert [w.value for w in at.warning] == ["A: 1 router logits and 0 output values are not finite"]


def test_a_model_side_says_when_its_text_is_cut_to_max_tokens():
    at = _compare(urlencode({"view": "Model", "mex": "prose", "mtok": "8"}),
                  urlencode({"view": "Model", "mex": "prose"}))
    assert not at.exception and not at.error
    cut = [w.value for w in at.warning if "routing the first 8 (max tokens)" in w.value]
    assert len(cut) == 1 and cut[0].startswith("A: the text has ")
