"""Hostile links under AppTest: the page renders, says every correction quoted, and rewrites the URL clean."""
import re

import pytest
from dashboard.presets import CONTROL_DEFAULTS
from streamlit.testing.v1 import AppTest

from app_support import open_app

FLOAT_KEYS = [k for k, v in CONTROL_DEFAULTS.items() if isinstance(v, float)]
MARKDOWN_OUTSIDE_CODE = re.compile(r"!?\[[^\]]*\]\([^)]*\)|<[a-z]")  # a link, an image or a tag


def _open(query: dict) -> AppTest:
    return open_app(query, timeout=120)


def _outside_code(text: str) -> str:
    """The note's text with every code span removed: what Markdown would render."""
    return re.sub(r"`[^`]*`", "", text)


def _assert_page_ok(at: AppTest) -> list[str]:
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) >= 1
    notes = [w.value for w in at.warning]
    for note in notes:
        assert not MARKDOWN_OUTSIDE_CODE.search(_outside_code(note)), note
        assert len(note) < 400, note
    return notes


HOSTILE = {
    "image": {"router": "![p](http://host/pixel.png)"},
    "link": {"preset": "[Click here to sign in](http://host/phish)"},
    "tag": {"scenario": "<img src=http://host/x.png onerror=alert(1)>"},
    "backticks": {"dtype": "`x` ![p](http://host/p.png) `"},
    "nan": {k: "nan" for k in FLOAT_KEYS},
    "inf": {k: ("-inf" if i % 2 else "inf") for i, k in enumerate(FLOAT_KEYS)},
    "100 KB": {"seed": "9" * 100_000, "router": "x" * 100_000},
    "ints out of range": {"n_experts": "100000", "top_k": "-5", "hot_expert": "999", "batch": "0",
                          "seed": "-1", "drift_step": "99999999"},
    "unknown": {"bogus](http://host)": "1", "view": "[x](http://host/v)"},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_link_renders_the_page_and_quotes_every_value(name):
    query = HOSTILE[name]
    at = _open(query)
    notes = _assert_page_ok(at)
    assert len(notes) >= 1
    url = at.query_params.to_dict() if hasattr(at.query_params, "to_dict") else dict(at.query_params)
    for key, value in query.items():
        assert url.get(key) != value or key == "preset"  # refused values are not written back
    assert not any(v in ("nan", "inf", "-inf") for v in url.values())


def test_every_float_key_refuses_nan_and_keeps_its_default():
    at = _open(HOSTILE["nan"])
    _assert_page_ok(at)
    for key in FLOAT_KEYS:
        assert at.session_state[key] == CONTROL_DEFAULTS[key]
    assert len([w for w in at.warning if "expected a finite number" in w.value]) == len(FLOAT_KEYS)


def test_out_of_range_ints_are_clamped_and_said():
    at = _open({"n_experts": "4", "top_k": "7", "hot_expert": "6"})
    notes = _assert_page_ok(at)
    assert at.session_state["top_k"] == 4 and at.session_state["hot_expert"] == -1
    assert any(n.startswith("top_k=`7`") for n in notes) and any(n.startswith("hot_expert=`6`") for n in notes)


def test_notes_stay_until_the_user_changes_something_and_the_view_is_in_the_url():
    at = _open({"view": "Router", "temperature": "nan"})
    notes = _assert_page_ok(at)
    assert at.session_state["view"] == "Router" and at.query_params["view"] == "Router"
    assert notes == ["ignored temperature=`nan`: expected a finite number"]
    at.run()  # a rerun without a change keeps the notes
    assert [w.value for w in at.warning] == notes
    at.slider(key="n_experts").set_value(9).run()  # a change rewrites the URL: the notes are gone
    assert not at.exception and [w.value for w in at.warning] == []
    assert at.query_params["n_experts"] == "9" and at.query_params["view"] == "Router"


def test_an_unknown_view_gets_a_note_and_the_default_view():
    at = _open({"view": "Nope"})
    notes = _assert_page_ok(at)
    assert notes[0].startswith("unknown view `Nope` in the link; showing `Overview`")
    assert "view" not in at.query_params
