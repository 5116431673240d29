"""One name per page everywhere (navigation, heading, header line, README), and the page says when the
Model view's text is too long for the link instead of dropping it silently."""
import pathlib

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.model_link import TEXT_LINK_CHARS
from moe.hf.load import BUNDLED_MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
SMALL = {"d_model": "8", "d_expert": "8", "batch": "1", "seq_len": "16"}


def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    for key, value in {**SMALL, **query}.items():
        at.query_params[key] = value
    return at.run()


def test_the_about_page_has_one_name_everywhere():
    from dashboard import routes
    from dashboard.views import about
    name = about.TITLE
    assert routes.ABOUT == name and routes.OLD_VIEWS[name] == name  # the navigation's title; ?view=About opens it
    at = _app(view="About")
    assert not at.exception
    assert [s.value for s in at.main.subheader] == [name]  # its heading
    assert not at.sidebar.slider and not at.sidebar.selectbox  # the Playground's controls are not on this page
    header = _app().main.caption[0].value
    assert f"*{name}*" in header and "About these numbers" not in header  # the Playground's header line
    readme = (ROOT / "README.md").read_text()
    assert f"and {name} (every" in " ".join(readme.split())  # README's list of pages
    assert f"on the *{name}* page" in header  # the Playground's introduction
    docs = [ROOT / "README.md", ROOT / "docs" / "ENGINE_API.md"]
    assert not [p.name for p in docs if "About these numbers" in p.read_text()]
    old = _app(view="About these numbers")  # the old name: no view of that name, and the page never says it
    assert [w.value for w in old.warning if "unknown view `About these numbers`" in w.value]
    for page in (at, old):
        shown = [e.value for kind in ("caption", "markdown", "subheader", "info") for e in getattr(page, kind)]
        assert not [text for text in shown if "About these numbers" in text]


def test_text_link_note_only_for_typed_texts_over_the_limit():
    from dashboard.model_link import text_link_note
    examples = {"code": "x" * 900, "prose": "short"}
    assert text_link_note({"model_example": "code", "model_text": "x" * 900}, examples) == ""  # named by mex
    assert text_link_note({"model_example": "prose", "model_text": "y" * TEXT_LINK_CHARS}, examples) == ""
    note = text_link_note({"model_example": "prose", "model_text": "y" * (TEXT_LINK_CHARS + 1)}, examples)
    assert "501 characters" in note and "not in this page's link" in note and "'prose'" in note


@pytest.mark.skipif(not pathlib.Path(BUNDLED_MODEL, "model.safetensors").is_file(), reason="bundled model not trained")
def test_a_text_too_long_for_the_link_is_named_on_the_page():
    at = _app(view="Model")
    text = "def f(x):\n    return x + 1\n" * 30
    at.text_area(key="model_text").set_value(text).run()
    assert not at.exception
    notes = [c.value for c in at.caption if "not in this page's link" in c.value]
    assert len(text) > TEXT_LINK_CHARS and len(notes) == 1 and f"({len(text)} characters)" in notes[0]
    assert "mtext" not in at.query_params
    at.text_area(key="model_text").set_value("def g(y): return y").run()
    assert not [c for c in at.caption if "not in this page's link" in c.value]
    assert at.query_params["mtext"] == "def g(y): return y"
