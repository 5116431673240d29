"""The Model page's caches follow the model on disk, and a failed counterfactual never shows another model's
(or another text's) last good numbers."""
import numpy as np
import pytest
import torch

from moe.hf.counterfactual import Counterfactual
from tests.model_support import saved_model, tiny_model

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py

TEXT = "def f(x):\n    return x + 1\n"


def _direct(path: str, text: str, cf: Counterfactual | None = None, max_tokens: int = 10 ** 6) -> np.ndarray:
    """The per-token loss of a fresh load of `path` (no cache): the independent computation."""
    from moe.hf.counterfactual import run_counterfactual
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    loaded = load_model(path)
    ids = torch.tensor(loaded.tokenizer(text)["input_ids"][:max_tokens])
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


def test_a_failed_counterfactual_shows_the_last_good_one_only_for_the_same_model_and_text(tmp_path):
    """Both bundled models read bytes: a Mixtral counterfactual has as many tokens as a DeepSeek one, so the token
    count alone cannot tell them apart. top_k 5 runs on Mixtral (8 experts) and fails on this DeepSeek-V3 model
    (8 experts in 4 groups, 2 kept: at most top-4)."""
    from streamlit.testing.v1 import AppTest

    from moe.metrics import nats_to_bits
    from tests.test_model_view import _view_app

    mixtral, deepseek = saved_model(tmp_path / "mx"), saved_model(tmp_path / "ds", family="deepseek_v3")
    at = AppTest.from_function(_view_app, args=(mixtral,), default_timeout=120)
    at.query_params.update({"mex": "prose", "mtok": "32", "cfon": "1", "cfk": "5"})
    at.run()
    assert not at.exception and not at.error
    assert "Counterfactual" in [m.label for m in at.metric]
    at.text_input(key="model_path").set_value(deepseek).run()  # another model, the same text and settings
    assert not at.exception
    assert [e.value for e in at.error if "Could not run this counterfactual" in e.value]
    assert not [i.value for i in at.info if "last good counterfactual" in i.value]
    assert "Counterfactual" not in [m.label for m in at.metric]  # no Mixtral numbers under the DeepSeek model
    # the same model and text: a good counterfactual, then a failing one, shows the good one's numbers
    at.number_input(key="cf_top_k").set_value(3).run()
    at.number_input(key="cf_top_k").set_value(5).run()
    assert [i.value for i in at.info if "last good counterfactual" in i.value]
    expected = nats_to_bits(float(np.mean(_direct(deepseek, at.session_state["model_text"], Counterfactual(top_k=3),
                                                  max_tokens=32))))
    shown = next(m.value for m in at.metric if m.label == "Counterfactual")
    assert shown == f"{expected:.3f} bits"


def test_the_counterfactual_caption_says_how_a_capacity_is_counted_on_a_text_read_in_windows(tmp_path):
    from streamlit.testing.v1 import AppTest

    from tests.test_model_view import _view_app

    path = saved_model(tmp_path / "mx")  # 128 positions: a 304-byte text is read in 4 windows
    at = AppTest.from_function(_view_app, args=(path,), default_timeout=120)
    at.query_params.update({"mtext": "x = 1  # a step\n" * 19, "mtok": "400", "cfon": "1", "cfcap": "1.0"})
    at.run()
    assert not at.exception and not at.error
    note = ("The text is read in 4 windows: the capacity is ranked among each window's scored tokens alone (C from "
            "their count); its context tokens, scored in an earlier window, are served in full.")
    assert [c.value for c in at.caption if note in c.value]
    at.number_input(key="cf_capacity").set_value(0.0).run()  # dropless: nothing to say
    assert not [c.value for c in at.caption if "ranked among each window" in c.value]
