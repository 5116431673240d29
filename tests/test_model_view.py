"""The Model view: pure figure builders, and the section under AppTest on a tiny saved model."""
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from dashboard.figures.model import (load_heatmap_figure, nmi_figure, share_range, sweep_figure, token_html,
                                     token_layer_grid_figure, token_loss_figure)
from tests.model_support import saved_model

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py

# grid, load, flow, loss, NMI; with the counterfactual on, its two load heatmaps and its loss comparison
CHARTS = ("model_grid", "model_load", "model_flow", "model_loss", "model_nmi")
CF_CHARTS = ("cf_load_own", "cf_load_new", "cf_loss")


def test_token_html_colours_each_token_by_its_expert_and_escapes():
    html = token_html(["<a>", "\n", "b"], [2, 0, 1], ["#111111", "#222222", "#333333"])
    assert html.count("<span") == 3
    assert "&lt;a&gt;" in html and "<a>" not in html
    # each span names its expert's class; the class's one rule gives that expert's colour
    assert 'title="expert 2" class="moe-tok-e2">&lt;a&gt;</span>' in html
    assert ".moe-tok-e2{background:#33333355;border-bottom:3px solid #333333}" in html
    assert ".moe-tok-e0{background:#11111155;border-bottom:3px solid #111111}" in html
    assert "↵<br>" in html


def test_grid_and_load_heatmaps_carry_the_tables_values():
    grid = pd.DataFrame([[0, 1, 2], [2, 2, 1]], index=pd.Index([0, 3], name="layer"))
    fig = token_layer_grid_figure(grid, ["a", "b", "c"], ["#000", "#111", "#222"])
    assert np.array_equal(np.asarray(fig.data[0].z), grid.values)
    assert list(fig.data[0].y) == ["layer 0", "layer 3"]
    long = pd.DataFrame({"layer": [0, 0, 1, 1], "expert": [0, 1, 0, 1], "load_share": [0.25, 0.75, 0.5, 0.5]})
    heat = load_heatmap_figure(long)
    assert np.allclose(np.asarray(heat.data[0].z), [[0.25, 0.75], [0.5, 0.5]])
    nmi = nmi_figure(pd.DataFrame({"layer": [0, 1], "this text": [0.1, 0.3], "at initialisation": [0.0, 0.02]}))
    assert [bar.name for bar in nmi.data] == ["this text", "at initialisation"]
    assert list(nmi.data[0].y) == [0.1, 0.3]


def test_grid_hover_names_layer_position_token_and_expert():
    """The hover line of cell (layer, s) reads `layer 3 · pos 1 · '\\\\n' · expert 2`: the template fills in the
    row, the position and z; the cell's text is the token as repr shows it, quoted."""
    grid = pd.DataFrame([[0, 1, 2], [2, 2, 1]], index=pd.Index([0, 3], name="layer"))
    tokens = ["a", "\n", " b"]
    trace = token_layer_grid_figure(grid, tokens, ["#000", "#111", "#222"]).data[0]
    assert trace.hovertemplate == "%{y} · pos %{x} · %{text} · expert %{z}<extra></extra>"
    assert [list(row) for row in trace.text] == [["'a'", "'\\\\n'", "' b'"]] * 2
    assert list(trace.x) == [0, 1, 2]


def test_own_and_counterfactual_heatmaps_share_one_colour_scale():
    """Today's failure: 0–0.4 against 0.05–0.2, the same yellow meaning different shares."""
    own = pd.DataFrame({"layer": [0, 0, 1, 1], "expert": [0, 1, 0, 1], "load_share": [0.4, 0.6, 0.5, 0.5]})
    new = pd.DataFrame({"layer": [0, 0, 1, 1], "expert": [0, 1, 0, 1], "load_share": [0.1, 0.9, 0.45, 0.55]})
    before = new.copy()
    zrange = share_range(own, new)
    assert zrange == (0.0, 0.9)
    a, b = (load_heatmap_figure(t, label, zrange).data[0] for t, label in ((own, "own"), (new, "counterfactual")))
    assert (a.zmin, a.zmax) == (b.zmin, b.zmax) == (0.0, 0.9)
    assert a.zmin <= min(own["load_share"].min(), new["load_share"].min())
    assert a.zmax >= max(np.max(a.z), np.max(b.z))
    assert new.equals(before)  # inputs untouched
    assert load_heatmap_figure(own).data[0].zmax is None  # alone: its own scale, from 0
    zero = own.assign(load_share=0.0)
    assert share_range(zero) == (0.0, 1.0)  # nothing routed: still a drawable range


def test_sweep_bars_carry_the_tables_values():
    table = pd.DataFrame({"layer": [1, 3], "delta_loss_bits": [0.25, -0.01], "dropped_fraction": [0.1, 0.0]})
    fig = sweep_figure(table)
    loss, drop = fig.data
    assert list(loss.x) == list(drop.x) == ["layer 1", "layer 3"]
    assert list(loss.y) == [0.25, -0.01] and list(drop.y) == [0.1, 0.0]
    assert drop.yaxis == "y2" and fig.layout.yaxis2.overlaying == "y" and fig.layout.yaxis2.side == "right"


def test_loss_bars_carry_bits_and_name_the_token_on_hover_only():
    loss = np.log(2) * np.array([1.0, 3.0])  # nats in, bits out
    fig = token_loss_figure(loss, ["a", "\n", "c"])
    bar, rolling = fig.data
    assert np.allclose(bar.y, [1.0, 3.0]) and list(bar.x) == [1, 2]
    assert np.allclose(rolling.y, [1.0, 2.0])  # the rolling mean (tests/test_model_view_loss.py)
    assert list(bar.text) == ["\\n", "c"] and "%{text}" in bar.hovertemplate
    # drawn as one filled step line (bars with no gap, one SVG path): no label drawn on it, no "trace 0"
    assert bar.mode == "lines" and bar.line.shape == "hvh" and bar.fill == "tozeroy"
    assert fig.layout.showlegend is False
    assert fig.layout.title.text == "Next-token loss (mean 2.00 bits per token, 2.00 bits per byte)"  # one byte each


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("view") / "tiny", layers=2)


def _view_app(path: str) -> None:
    import streamlit as st

    from dashboard import state
    from dashboard.views import model

    st.session_state.setdefault("model_path", path)
    state.init()  # as the app does first: the link, the defaults
    model.render()


def test_model_view_draws_tokens_charts_and_keeps_the_last_good_result(model_dir):
    at = AppTest.from_function(_view_app, args=(model_dir,), default_timeout=120).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == len(CHARTS)
    assert any("<span" in m.value for m in at.markdown)
    assert [m.label for m in at.metric] == ["Pooled aux (all layers, same scale as the table)",
                                            "HF load_balancing_loss (transformers' own number)"]
    at.text_area(key="model_text").set_value("   ").run()
    assert not at.exception
    assert "empty" in at.error[0].value and "last good" in at.info[0].value
    assert len(at.get("plotly_chart")) == len(CHARTS)


def test_downloads_are_the_cli_report_and_the_traces_routing(model_dir, capsys):
    """The Model view's files, built on a click: the per-expert CSV and summary JSON are what `model-report`
    prints for the same text; the routing CSV holds every (token, layer) with the forward's top-k."""
    import io
    import json

    from dashboard.loaders import model_exports as exports
    from moe.cli.main import main
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    text, max_tokens = "for i in range(3):\n    print(i)\n", 24
    files = exports(model_dir, text, max_tokens)
    printed = {}
    for fmt in ("csv", "json"):
        assert main(["model-report", "--model", model_dir, "--text", text, "--max-tokens", str(max_tokens),
                     "--format", fmt]) == 0
        printed[fmt] = capsys.readouterr().out
    assert files["per_expert_csv"].strip() == printed["csv"].strip()

    def untimed(doc: str) -> dict:  # forward_ms is a wall-clock time: the one field two runs do not share
        report = json.loads(doc)
        for layer in report["layers"]:
            assert layer["summary"].pop("forward_ms") > 0
        return report
    assert untimed(files["summary_json"]) == untimed(printed["json"])
    assert json.loads(files["summary_json"])["tokens"] == max_tokens
    routing = pd.read_csv(io.StringIO(files["routing_csv"]), keep_default_na=False)
    loaded = load_model(model_dir)
    run = run_model(loaded.model, loaded.tokenizer(text, return_tensors="pt")["input_ids"][0, :max_tokens])
    assert len(routing) == max_tokens * len(run.layers)
    for pos, layer in enumerate(run.layers):
        rows = routing[routing.layer == layer].sort_values("position")
        assert rows.position.tolist() == list(range(max_tokens))
        assert [list(map(int, e.split())) for e in rows.experts] == run.traces[pos].top_k_index.tolist()


def test_model_view_refuses_a_missing_directory_without_a_traceback(tmp_path):
    at = AppTest.from_function(_view_app, args=(str(tmp_path / "none"),), default_timeout=60).run()
    assert not at.exception
    assert "not under a directory this server may open" in at.error[0].value


def test_the_app_has_a_model_page_on_the_bundled_model():
    import pathlib

    from moe.hf.load import BUNDLED_MODEL

    if not pathlib.Path(BUNDLED_MODEL, "model.safetensors").is_file():
        pytest.skip("bundled model not trained")
    app = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=180)
    at.query_params["view"] = "Model"  # the link of the old single page opens the Model page
    at.run()
    assert not at.exception
    assert any("pydoc-mixtral" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == len(CHARTS)


def _sweep_table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "delta_loss_bits" in d.value.columns)


def test_the_sweep_shows_one_row_per_moe_layer_equal_to_each_layer_changed_alone(model_dir):
    from moe.hf.counterfactual import Counterfactual, run_counterfactual
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    at = AppTest.from_function(_view_app, args=(model_dir,), default_timeout=120)
    at.query_params.update({"mex": "prose", "mtok": "32"})
    at.run()
    at.toggle(key="cf_on").set_value(True).run()
    assert not at.dataframe  # the sweep is off by default: no forward per layer
    at.number_input(key="cf_top_k").set_value(1)
    at.toggle(key="cf_sweep").set_value(True).run()
    assert not at.exception
    table = _sweep_table(at)
    assert table["layer"].tolist() == [0, 1]  # one row per MoE layer
    assert "cf_sweep_chart" in [e.key for e in at.get("plotly_chart")]
    assert any(c.value.startswith("Sweep: the counterfactual's settings") for c in at.caption)
    assert at.query_params["cfsweep"] == "1"  # the sweep is in the link
    loaded = load_model(model_dir)
    ids = torch.tensor(loaded.tokenizer(at.session_state["model_text"])["input_ids"][:32])
    own = run_model(loaded.model, ids).mean_loss_bits()
    for k in (0, 1):
        alone = run_counterfactual(loaded.model, ids, Counterfactual(layers=(k,), top_k=1))
        assert table["delta_loss_bits"][k] == pytest.approx(alone.mean_loss_bits() - own)
    assert table["dropped_fraction"].tolist() == [0.0, 0.0]  # dropless


def test_the_bundled_models_page_sweeps_every_moe_layer_from_a_link():
    import pathlib

    from moe.hf.instrument import engine_blocks
    from moe.hf.load import BUNDLED_MODEL, load_model

    if not pathlib.Path(BUNDLED_MODEL, "model.safetensors").is_file():
        pytest.skip("bundled model not trained")
    app = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=180)
    at.query_params.update({"view": "Model", "mtok": "48", "cfon": "1", "cfcap": "1.0", "cfsweep": "1"})
    at.run()
    assert not at.exception
    table = _sweep_table(at)
    moe_layers = sorted(b.layer_index for b in engine_blocks(load_model(BUNDLED_MODEL).model))
    assert table["layer"].tolist() == moe_layers and len(moe_layers) >= 2
    assert table["dropped_fraction"].between(0, 1).all() and (table["dropped_fraction"] > 0).any()


def test_vocabulary_cells_escape_markdown_so_tokens_show_as_typed():
    from dashboard.loaders import md_literal as _md_literal

    raw = r"a_b *x* \n [l](u) `c` # $1 <b> | ~ é 7"
    escaped = _md_literal(raw)
    # every ASCII punctuation character gets one backslash before it; letters, digits, spaces and é do not
    assert escaped == "".join("\\" + ch if (ch.isascii() and not ch.isalnum() and ch != " ") else ch for ch in raw)
