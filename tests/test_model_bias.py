"""The Model view's bias section on the bundled DeepSeek-style model: the figures carry the model's own bias
tensors (read from model.safetensors), and per layer the bias overlap, top-k margin and shared expert's share
equal an independent computation from the plain transformers model's routers and shared experts."""
import pathlib

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from dashboard.figures.model_bias import balance_figure, bias_heatmap_figure
from moe.hf.instrument import run_model
from moe.hf.load import BUNDLED_MODELS, load_model
from moe.hf.tables import balance_table, expert_bias_long

DEEPSEEK = BUNDLED_MODELS["pydoc-deepseek"]
TEXT = "The with statement wraps a block: with open(path) as f:\n    data = f.read()  # 42 bytes\n"
APP = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="module")
def run_and_ids():
    loaded = load_model(DEEPSEEK, tokens=128)
    ids = torch.tensor(loaded.tokenizer(TEXT)["input_ids"])  # (S,)
    return run_model(loaded.model, ids, context=loaded.context), ids


def test_the_bias_heatmap_is_the_models_e_score_correction_bias(run_and_ids):
    from safetensors.torch import load_file

    run, _ = run_and_ids
    saved = load_file(pathlib.Path(DEEPSEEK, "model.safetensors"))
    expected = np.stack([saved[f"model.layers.{i}.mlp.gate.e_score_correction_bias"].numpy() for i in run.layers])
    fig = bias_heatmap_figure(expert_bias_long(run))
    z = np.asarray(fig.data[0].z, dtype=float)  # (layers, E)
    np.testing.assert_array_equal(z, expected.astype(float))
    assert fig.data[0].zmid == 0 and fig.data[0].zmax == -fig.data[0].zmin == np.abs(expected).max()
    assert list(fig.data[0].y) == [f"layer {i}" for i in run.layers]


def _independent(ids) -> pd.DataFrame:
    """Per MoE layer from the plain model: hooks record each router's input and choice and each block's input and
    output; the unbiased top-2, margin and shared share are computed here, sharing no code with the engine."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DEEPSEEK, local_files_only=True).eval()
    seen = {}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, {}).update(x=a[0][0], y=out[0]))
        layer.mlp.gate.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, {}).update(chosen=out[2]))
    with torch.no_grad():
        model(input_ids=ids[None])
        rows = []
        for i, layer in enumerate(model.model.layers):
            x, y, chosen = seen[i]["x"], seen[i]["y"], seen[i]["chosen"]  # (S, D), (S, D), (S, 2)
            scores = torch.sigmoid(x.double() @ layer.mlp.gate.weight.double().T)  # (S, E)
            top = scores.sort(dim=1, descending=True).values  # (S, E)
            unbiased = scores.topk(2, dim=1).indices  # (S, 2)
            overlap = sum(len(set(u) & set(c)) for u, c in zip(unbiased.tolist(), chosen.tolist()))
            shared = layer.mlp.shared_experts(x)  # (S, D)
            s, r = shared.norm(dim=1).sum(), (y - shared).norm(dim=1).sum()
            rows.append({"layer": i, "topk_margin": float(((top[:, 1] - top[:, 2]) / top[:, 1]).mean()),
                         "bias_overlap": overlap / (2 * len(x)), "shared_fraction": float(s / (s + r))})
    return pd.DataFrame(rows)


def test_margin_overlap_and_shared_share_per_layer_match_an_independent_count(run_and_ids):
    run, ids = run_and_ids
    table = balance_table(run)
    expected = _independent(ids)
    assert table["layer"].tolist() == expected["layer"].tolist()
    for column in ("topk_margin", "bias_overlap", "shared_fraction"):
        np.testing.assert_allclose(table[column], expected[column], rtol=1e-4, atol=1e-6, err_msg=column)
    assert (table["bias_overlap"] < 1).any()  # the trained bias changes some choices on this text
    fig = balance_figure(table)
    assert [bar.name for bar in fig.data] == ["top-k margin", "bias overlap", "shared expert's share"]
    for bar, column in zip(fig.data, ("topk_margin", "bias_overlap", "shared_fraction")):
        assert list(bar.y) == table[column].tolist()


def test_a_model_without_bias_or_shared_experts_draws_no_empty_bars():
    table = pd.DataFrame({"layer": [0, 1], "topk_margin": [0.2, 0.3], "bias_overlap": [1.0, 1.0],
                          "shared_fraction": [np.nan, np.nan]})
    assert [bar.name for bar in balance_figure(table).data] == ["top-k margin", "bias overlap"]


def _keys(at) -> list[str]:
    return [e.key for e in at.get("plotly_chart")]


def test_picking_the_deepseek_model_shows_its_bias_and_the_link_carries_the_choice():
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params.update({"view": "Model", "mtok": "48"})
    at.run()
    assert not at.exception and "model_bias" not in _keys(at)  # Mixtral: no bias to show
    at.selectbox(key="model_bundle").set_value("pydoc-deepseek").run()
    assert not at.exception
    assert {"model_bias", "model_balance"} <= set(_keys(at))
    assert at.text_input(key="model_path").value == DEEPSEEK
    assert any("pydoc-deepseek" in c.value and "deepseek_v3" in c.value for c in at.caption)
    assert any("bias_overlap" in c.value and "topk_margin" in c.value for c in at.caption)  # the definitions
    assert at.query_params["mmodel"] == "pydoc-deepseek" and "mdir" not in at.query_params
    again = AppTest.from_file(APP, default_timeout=240)
    again.query_params.update({"view": "Model", "mtok": "48", "mmodel": "pydoc-deepseek"})
    again.run()
    assert not again.exception and "model_bias" in _keys(again)  # opened at once: a bundled model needs no Load
    assert again.selectbox(key="model_bundle").value == "pydoc-deepseek"


def test_the_link_names_a_bundled_model_by_name_and_a_bad_name_is_ignored():
    from dashboard.model_link import EXAMPLES, LINK_DIR_KEY, OTHER_DIR, bundle_choice, from_link, to_link
    from dashboard.state import model_defaults

    defaults = model_defaults()
    assert defaults["model_bundle"] == "pydoc-mixtral" == bundle_choice(defaults["model_path"])
    values, problems = from_link({"mmodel": "pydoc-deepseek"}, EXAMPLES)
    assert values["model_path"] == DEEPSEEK and problems == [] and LINK_DIR_KEY not in values
    state = {**defaults, **values}
    assert to_link(state, defaults, EXAMPLES) == {"mmodel": "pydoc-deepseek"}  # no mdir: the name is enough
    values, problems = from_link({"mmodel": "../etc"}, EXAMPLES)
    assert values == {} and problems == ["ignored mmodel=`../etc` in the link"]
    other = {**defaults, "model_path": "/data/my-model"}
    assert bundle_choice(other["model_path"]) == OTHER_DIR
    assert to_link(other, defaults, EXAMPLES) == {"mdir": "/data/my-model"}  # another directory waits for Load
    assert to_link(defaults, defaults, EXAMPLES) == {}
