"""The Model page's caches follow the model on disk, and a failed counterfactual never shows another model's
(or another text's) last good numbers."""
import numpy as np
import pytest
import torch

from moe.hf.counterfactual import Counterfactual
from tests.model_support import saved_model, tiny_model

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py

TEXT = "def f(x):\n    return x + 1\n"


def _direct(path: str, text: str, cf: Counterfactual | None = None) -> np.ndarray:
    """The per-token loss of a fresh load of `path` (no cache): the independent computation."""
    from moe.hf.counterfactual import run_counterfactual
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    loaded = load_model(path)
    ids = torch.tensor(loaded.tokenizer(text)["input_ids"])
    run = run_model(loaded.model, ids) if cf is None else run_counterfactual(loaded.model, ids, cf)
    return run.token_loss().numpy()


def test_the_page_caches_follow_a_model_rewritten_in_the_same_directory(tmp_path):
    from dashboard import loaders

    path = saved_model(tmp_path / "m", layers=2)
    cf = Counterfactual(top_k=1)
    before = (loaders.analyse(path, TEXT, 64)["loss"], loaders.counterfactual(path, TEXT, 64, cf)["loss"],
              loaders.counterfactual_sweep(path, TEXT, 64, cf)["delta_loss_bits"].to_numpy())
    assert np.allclose(before[0], _direct(path, TEXT)) and np.allclose(before[1], _direct(path, TEXT, cf))
    tiny_model("mixtral", layers=2, seed=1).save_pretrained(path)  # `train-lm --out` into the same directory
    after = (loaders.analyse(path, TEXT, 64)["loss"], loaders.counterfactual(path, TEXT, 64, cf)["loss"],
             loaders.counterfactual_sweep(path, TEXT, 64, cf)["delta_loss_bits"].to_numpy())
    assert np.allclose(after[0], _direct(path, TEXT)) and np.allclose(after[1], _direct(path, TEXT, cf))
    assert not np.allclose(after[0], before[0]) and not np.allclose(after[1], before[1])
    assert not np.allclose(after[2], before[2])
