"""The Model view under AppTest: bad inputs keep the last good result, counterfactuals, and the link."""
import base64
import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.model_support import saved_model
from tests.test_model_view import CF_CHARTS, CHARTS

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    good, dense = root / "tiny", root / "dense"
    saved_model(good)
    saved_model(dense, "llama")
    broken = root / "broken"
    shutil.copytree(good, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    jamba = root / "jamba"
    shutil.copytree(good, jamba)
    config = json.loads((jamba / "config.json").read_text())
    (jamba / "config.json").write_text(json.dumps({**config, "model_type": "jamba"}))
    return {"good": str(good), "dense": str(dense), "broken": str(broken), "jamba": str(jamba),
            "missing": str(root / "none")}


def _app(path: str) -> None:
    import streamlit as st

    from dashboard import state
    from dashboard.views import model

    st.session_state.setdefault("model_path", path)
    state.init()  # as the app does first: the link, the defaults
    model.render()


def _run(path: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_function(_app, args=(path,), default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def _cf_losses(at: AppTest) -> tuple[np.ndarray, np.ndarray]:
    """The counterfactual loss chart's two series (own, counterfactual), as the browser receives them."""
    chart = next(e for e in at.get("plotly_chart") if e.key == "cf_loss")
    data = json.loads(chart.proto.spec)["data"]

    def values(y):  # plotly sends numeric arrays as {"dtype": "f8", "bdata": base64}
        return np.frombuffer(base64.b64decode(y["bdata"]), y["dtype"]) if isinstance(y, dict) else np.asarray(y)
    return values(data[0]["y"]), values(data[1]["y"])


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


@pytest.mark.parametrize("bad,message", [("dense", "supported families"), ("jamba", "supported families: mixtral"),
                                         ("broken", "truncated"),
                                         ("missing", "not under a directory this server may open")])
def test_a_bad_model_directory_is_named_and_the_last_good_result_stays(dirs, bad, message):
    at = _run(dirs["good"])
    assert not at.exception and len(at.get("plotly_chart")) == len(CHARTS)
    at.text_input(key="model_path").set_value(dirs[bad]).run()
    assert not at.exception
    assert message in at.error[0].value and "last good" in at.info[0].value
    assert len(at.get("plotly_chart")) == len(CHARTS)


def test_a_huge_text_is_cut_with_a_notice(dirs):
    at = _run(dirs["good"])
    at.number_input(key="model_max_tokens").set_value(64)
    at.text_area(key="model_text").set_value("ab " * 350_000).run()  # ~1 MB
    assert not at.exception
    notes = " ".join(w.value for w in at.warning)
    assert "1,050,000 characters" in notes and "showing the first 64" in notes
    assert any(m.value.count("<span") == 64 for m in at.markdown)


def test_a_counterfactual_changes_the_loss_and_own_settings_reproduce_it(dirs):
    at = _run(dirs["good"])
    assert not any(e.key in CF_CHARTS for e in at.get("plotly_chart"))  # off by default: no second forward
    at.toggle(key="cf_on").set_value(True).run()
    assert [e.key for e in at.get("plotly_chart")] == [*CHARTS, *CF_CHARTS]
    own, new = _cf_losses(at)
    assert np.array_equal(own, new) and _metric(at, "Dropped") == "0"
    at.number_input(key="cf_top_k").set_value(1).run()
    assert not at.exception
    own_again, new = _cf_losses(at)
    assert np.array_equal(own_again, own) and np.abs(new - own).max() > 1e-4
    at.number_input(key="cf_top_k").set_value(0)
    at.number_input(key="cf_capacity").set_value(0.5).run()
    assert not at.exception and int(_metric(at, "Dropped").replace(",", "")) > 0


def test_the_link_restores_the_view_and_bad_entries_are_named(dirs):
    at = _run(dirs["good"], {"mex": "prose", "mtok": "16", "cfon": "1", "cfk": "1", "cflayer": "1", "cfe": "9",
                             "cftemp": "nan", "mtext": "x" * 600})
    assert not at.exception
    ss = at.session_state
    assert ss["model_example"] == "prose" and ss["model_max_tokens"] == 16 and ss["cf_top_k"] == 1 and ss["cf_on"]
    assert ss["cf_layer"] == "1" and ss["cf_bias_expert"] == -1  # expert 9 does not exist: reset, with a note
    notes = " ".join(w.value for w in at.warning)
    assert "ignored cftemp=`nan`" in notes and "ignored mtext=" in notes and "cf_bias_expert = 9" in notes
    assert any(m.value.count("<span") == 16 for m in at.markdown)
    assert {"mex": "prose", "mtok": "16", "cfon": "1", "cfk": "1", "cflayer": "1"}.items() <= at.query_params.items()


def _layer_rows(at: AppTest):
    """The per-layer table as shown (the one with an aux_loss column)."""
    return next(t.value for t in at.table if "aux_loss" in t.value.columns)


def test_the_layer_table_sorts_by_any_column_keeps_the_worst_row_marked_and_the_link_carries_it(dirs):
    at = _run(dirs["good"], {"mtok": "48"})
    rows = _layer_rows(at)
    assert rows["layer"].tolist() == [0, 1]  # by layer, lowest first
    worst = int(rows.loc[rows["aux_loss"].idxmax(), "layer"])
    assert rows.loc[rows["highest_aux"], "layer"].tolist() == [worst]
    for column in ("aux_loss", "cv", "z_loss"):
        orders = []
        for highest_first in (False, True):
            at.selectbox(key="model_sort").set_value(column)
            at.toggle(key="model_sort_desc").set_value(highest_first).run()
            rows = _layer_rows(at)
            assert rows[column].tolist() == sorted(rows[column], reverse=highest_first)  # every row kept, in order
            assert sorted(rows["layer"]) == [0, 1] and rows.loc[rows["highest_aux"], "layer"].tolist() == [worst]
            orders.append(rows["layer"].tolist())
        assert orders[0] == orders[1][::-1]  # the toggle turns the order round: the sort is applied
    assert {"msort": "z_loss", "mdesc": "1"}.items() <= at.query_params.items()
    opened = _run(dirs["good"], {"mtok": "48", "msort": "aux_loss", "mdesc": "1"})
    assert _layer_rows(opened)["layer"].iloc[0] == worst
    bad = _run(dirs["good"], {"msort": "nonsense"})
    assert "ignored msort=`nonsense`" in " ".join(w.value for w in bad.warning)
    assert _layer_rows(bad)["layer"].tolist() == [0, 1]


def test_the_apps_link_carries_the_model_views_keys_without_unknown_parameter_notes():
    import pathlib

    from moe.hf.load import BUNDLED_MODEL

    assert pathlib.Path(BUNDLED_MODEL, "model.safetensors").is_file(), "the bundled model is committed"
    app = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=180)
    for key, value in {"view": "Model", "mtok": "24", "mex": "prose", "cfon": "1", "cfcap": "0.5"}.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception
    assert not [w.value for w in at.warning if "link" in w.value]  # the page's link parser knows these keys
    assert at.session_state["model_max_tokens"] == 24 and at.session_state["cf_capacity"] == 0.5
    assert int(next(m.value for m in at.metric if m.label.startswith("Dropped")).replace(",", "")) > 0
    assert dict(at.query_params.items()) == {"mtok": "24", "mex": "prose", "cfon": "1", "cfcap": "0.5"}  # its keys only


def test_the_sigmoid_model_highlights_max_over_mean_and_shows_no_hf_aux():
    """pydoc-deepseek trains with no aux loss and transformers' DeepSeek-V3 computes no load_balancing_loss: the page
    highlights the layer with the highest max/mean (checked against the table) and shows the sigmoid caveat."""
    import pathlib

    at = AppTest.from_file(str(pathlib.Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.query_params["view"] = "Model"
    at.query_params["mmodel"] = "pydoc-deepseek"
    at.run()
    assert not at.exception and not at.error, at.error
    rows = at.table[0].value
    worst = int(rows.loc[rows["max_over_mean"].astype(float).idxmax(), "layer"])
    assert rows.loc[rows["highest_max_over_mean"], "layer"].tolist() == [worst]
    assert "highest_aux" not in rows.columns
    assert [m.label for m in at.metric if "load_balancing_loss" in m.label] == []
    assert any("aux loss with a sigmoid router" in c.value for c in at.caption)
