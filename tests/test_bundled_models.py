"""Both bundled models (pydoc-mixtral, pydoc-deepseek) load offline with AutoModelForCausalLM, fit the size limit,
have the architecture their card promises, and run through the engine exactly (logits within 1e-4)."""
import json
import pathlib

import pytest
import torch

from moe.hf.instrument import run_model
from moe.hf.load import BUNDLED_MODELS, bundled_name, load_model

NAMES = list(BUNDLED_MODELS)
TEXT = "def area(r):\n    return 3.14159 * r ** 2  # the circle's area, in square units\n"


@pytest.fixture(scope="module", params=NAMES)
def bundled(request):
    path = pathlib.Path(BUNDLED_MODELS[request.param])
    assert (path / "model.safetensors").is_file(), f"{request.param} is committed"
    return path


def test_each_loads_offline_within_16_mib_and_instruments_exactly(bundled):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert sum(f.stat().st_size for f in bundled.iterdir()) <= 16 * 1024 * 1024
    plain = AutoModelForCausalLM.from_pretrained(bundled, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(bundled, local_files_only=True)
    ids = torch.tensor(tok(TEXT)["input_ids"])  # (S,)
    assert ids.tolist() == list(TEXT.encode())
    with torch.inference_mode():
        expected = plain(input_ids=ids[None]).logits[0]  # (S, V)
    loaded = load_model(str(bundled), tokens=64)
    run = run_model(loaded.model, ids, context=loaded.context)
    assert len(run.layers) == plain.config.num_hidden_layers >= 4 and not run.routing_only
    assert (run.logits - expected).abs().max() / expected.abs().max() < 1e-4


def test_the_deepseek_model_is_the_architecture_its_card_names():
    path = pathlib.Path(BUNDLED_MODELS["pydoc-deepseek"])
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["model_type"] == "deepseek_v3"
    assert (config["n_routed_experts"], config["n_group"], config["topk_group"], config["num_experts_per_tok"],
            config["n_shared_experts"], config["first_k_dense_replace"]) == (8, 4, 2, 2, 1, 0)
    report = json.loads((path / "training.json").read_text())
    assert report["config"]["arch"] == "deepseek_v3" and "aux_coef" not in report["config"]
    assert report["bits_per_byte"] <= 0.7 * report["unigram_bits"]
    from safetensors.torch import load_file

    biases = [t for k, t in sorted(load_file(path / "model.safetensors").items()) if "e_score_correction_bias" in k]
    assert len(biases) == config["num_hidden_layers"] and all(b.abs().max() > 0 for b in biases)  # trained, moved


def test_bundled_name_knows_the_bundled_directories_only(tmp_path):
    for name, path in BUNDLED_MODELS.items():
        assert bundled_name(path) == name and bundled_name(path + "/") == name
    assert bundled_name(str(tmp_path)) is None and bundled_name("\0") is None
