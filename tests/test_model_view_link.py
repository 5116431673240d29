"""The Model view under AppTest with paths from a link or the text box: nothing is loaded before a click,
only directories under the server's roots are opened, and every value or file-borne message shows quoted."""
import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.quoting import quote
from moe.roots import OUTSIDE
from tests.test_model_load import copy_model
from tests.test_model_view import CHARTS

INJECTION = "![x](http://127.0.0.1:9/pixel)"


def md_text(text: str) -> str:
    from dashboard.quoting import md_text
    return md_text(text)


def _kept() -> list[str]:
    from moe.hf import cache as model_cache
    return model_cache.kept_paths()


def _clear() -> None:
    try:
        from moe.hf import cache as model_cache
    except ImportError:  # the code before the byte-bounded cache
        return
    model_cache.clear()


@pytest.fixture()
def root(tmp_path, monkeypatch):
    """A root the server may open (MOE_SCOPE_ROOTS) holding a good model; `outside` is not under any root."""
    allowed = tmp_path / "allowed"
    copy_model(allowed / "good")
    shutil.copytree(allowed / "good", tmp_path / "outside")
    monkeypatch.setenv("MOE_SCOPE_ROOTS", str(allowed))
    _clear()
    yield allowed
    _clear()


def _app() -> None:
    from dashboard import state
    from dashboard.views import model

    state.init()  # as the app does first: the link, the defaults
    model.render()


def _open(query: dict) -> AppTest:
    at = AppTest.from_function(_app, default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def _click(at: AppTest, label: str) -> AppTest:
    return next(b for b in at.button if b.label == label).click().run()


def test_a_linked_directory_waits_for_a_click_then_loads(root):
    path = str(root / "good")
    at = _open({"mdir": path, "mtok": "16"})
    assert not at.exception
    assert quote(path) in at.info[0].value
    assert not at.get("plotly_chart") and _kept() == []  # nothing loaded on open
    at = _click(at, "Load")
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == len(CHARTS)
    assert _kept() == [path]
    assert at.query_params["mdir"] == path  # the link keeps naming it


def test_keeping_the_default_model_drops_the_linked_directory(root):
    at = _open({"mdir": str(root / "good")})
    at = _click(at, "Keep the default model")
    assert not at.exception and not at.info
    assert "mdir" not in at.query_params
    assert str(root / "good") not in _kept()


@pytest.mark.parametrize("name", ["outside", "missing", "injection"])
def test_outside_missing_and_injected_paths_read_the_same_and_are_never_echoed(root, name):
    value = {"outside": str(root.parent / "outside"), "missing": str(root / "none"), "injection": INJECTION}[name]
    at = _open({"mdir": value})
    assert quote(value) in at.info[0].value  # the link's value, in a code span
    assert "](" not in at.info[0].value.replace(quote(value), "")
    at = _click(at, "Load")
    assert not at.exception
    assert len(at.error) == 1 and "not under a directory this server may open" in at.error[0].value
    assert at.error[0].value == f"Could not route this text: {md_text(OUTSIDE)}"
    assert not at.get("plotly_chart") and _kept() == []


def test_a_typed_path_outside_the_roots_is_refused(root):
    at = AppTest.from_function(_app, default_timeout=120)
    at.session_state["model_path"] = str(root.parent / "outside")
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "not under a directory this server may open" in at.error[0].value
    assert at.error[0].value == f"Could not route this text: {md_text(OUTSIDE)}"
    assert _kept() == []


def test_a_loader_message_holding_a_path_is_escaped(root):
    bad = root / "![x](pixel.png)"
    shutil.copytree(root / "good", bad)
    (bad / "config.json").write_text("{")
    at = AppTest.from_function(_app, default_timeout=120)
    at.session_state["model_path"] = str(bad)
    at.run()
    assert not at.exception
    error = at.error[0].value
    assert "not valid JSON" in error and "\\!\\[x\\]\\(pixel.png\\)" in error and "![x](" not in error


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"nmi_trained": "x", "nmi_init": []}',
                                     '{"nmi_trained": [Infinity, 1, 2, 3], "nmi_init": [0, 0, 0, 0]}'])
def test_a_malformed_training_json_is_a_note_not_a_traceback(root, content):
    (root / "good" / "training.json").write_text(content)
    at = AppTest.from_function(_app, default_timeout=120)
    at.session_state["model_path"] = str(root / "good")
    at.session_state["model_max_tokens"] = 16
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == len(CHARTS)
    assert any("training.json in this model directory is not a training report" in c.value for c in at.caption)


def test_out_of_memory_in_the_view_names_the_budget(root, monkeypatch):
    from dashboard import loaders

    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(loaders, "run_model", no_memory)
    at = AppTest.from_function(_app, default_timeout=120)
    at.session_state["model_path"] = str(root / "good")
    at.session_state["model_text"] = "a fresh text"  # not in analyse's cache
    at.run()
    assert not at.exception
    assert "out of memory while loading the model or routing the text" in at.error[0].value
    assert "MOE\\_SCOPE\\_MEMORY\\_GB" in at.error[0].value or "MOE_SCOPE_MEMORY_GB" in at.error[0].value


def test_md_text_leaves_prose_and_escapes_every_opener():
    assert md_text("supported families: mixtral, it's 1.5") == "supported families: mixtral, it's 1.5"
    assert md_text(INJECTION) == "\\!\\[x\\]\\(http://127.0.0.1:9/pixel\\)"
    assert md_text("<img src=x> `c` *e* :red[r] $m$") == "\\<img src=x\\> \\`c\\` \\*e\\* :red\\[r\\] \\$m\\$"


def test_the_training_report_of_the_bundled_model_still_shows(root):
    saved = json.loads((root / "good" / "training.json").read_text())
    at = AppTest.from_function(_app, default_timeout=120)
    at.session_state["model_path"] = str(root / "good")
    at.session_state["model_max_tokens"] = 16
    at.run()
    nmi = next(c for c in at.get("plotly_chart") if c.key == "model_nmi")
    names = [bar["name"] for bar in json.loads(nmi.proto.spec)["data"]]
    assert names == ["this text", "held-out (training)", "at initialisation"] and "nmi_trained" in saved
