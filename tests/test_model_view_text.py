"""The Model view's numbers and text as a person reads them: the pooled aux on the table's scale (HF's number
labelled as HF's), whitespace drawn in the expert vocabulary, and invalid characters in the text box."""
import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from moe.definitions import DEFINITIONS
from moe.hf.instrument import run_model
from moe.hf.load import load_model
from tests.model_support import saved_model

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py

TEXT = "for i in range(3):\n\tprint(i,  i)\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("text") / "tiny", layers=3)


def _app(path: str, text: str) -> None:
    import streamlit as st

    from dashboard import state
    from dashboard.views import model

    st.session_state.setdefault("model_path", path)
    st.session_state.setdefault("model_text", text)
    state.init()  # as the app does first: the link, the defaults
    model.render()


def _run(path: str, text: str = TEXT) -> AppTest:
    return AppTest.from_function(_app, args=(path, text), default_timeout=120).run()


def _pooled_switch_aux(path: str, text: str) -> tuple[float, int]:
    """E·Σ_e f̄_e·P̄_e from the raw router logits of every layer, in float64 (shares no code with the engine)."""
    loaded = load_model(path)
    run = run_model(loaded.model, torch.tensor(list(text.encode())))
    logits = [t.router_logits.double() for t in run.traces]  # each (T, E)
    E, K = logits[0].shape[1], run.traces[0].top_k_index.shape[1]
    counts = sum(np.bincount(t.top_k_index.reshape(-1).numpy(), minlength=E) for t in run.traces)  # (E,)
    f = counts / counts.sum()  # all layers' assignments pooled
    P = torch.cat([x.softmax(dim=-1) for x in logits]).mean(dim=0).numpy()  # all layers' tokens pooled
    return float(E * (f * P).sum()), K


@pytest.mark.parametrize("family", ["ernie4_5_moe", "qwen3_moe"])
def test_hfs_number_is_transformers_own_load_balancing_loss(tmp_path, family):
    """Ernie 4.5's router chooses with its correction bias added, transformers' loss counts the top-K of the
    probabilities alone: the page showed top_k × the pooled aux (the auditor: 2.361461 against 2.331489)."""
    from moe.hf.report import encode_text
    path = saved_model(tmp_path / family, family=family, layers=3)
    at = _run(path)
    assert not at.exception
    loaded = load_model(path)
    ids, _ = encode_text(loaded.tokenizer, TEXT, 512)
    model = type(loaded.model).from_pretrained(path).eval()  # not instrumented: transformers' own forward
    model.config.output_router_logits = True
    with torch.no_grad():
        theirs = float(model(input_ids=ids[None], output_router_logits=True).aux_loss)
    pooled, hf = at.metric
    assert hf.value == f"{theirs:.3f}"
    caption = " ".join(c.value for c in at.caption)
    K = loaded.model.config.num_experts_per_tok if family == "qwen3_moe" else loaded.model.config.moe_k
    if family == "ernie4_5_moe":
        assert float(pooled.value) * K != pytest.approx(theirs, abs=2e-3)  # the bias moved its choices
        assert f"is not top_k ({K}) × the pooled aux" in caption
        assert ("adds to its softmax probabilities" in caption and "alongside an aux loss" in caption
                and "sigmoid scores" not in caption)  # the bias section: Ernie's router is softmax, with an aux loss
    else:
        assert f"is top_k ({K}) × the pooled aux" in caption


def test_pooled_aux_is_on_the_tables_scale_and_hfs_number_is_labelled_as_hfs(model_dir):
    at = _run(model_dir)
    assert not at.exception
    expected, K = _pooled_switch_aux(model_dir, TEXT)
    pooled, hf = at.metric
    assert pooled.label == "Pooled aux (all layers, same scale as the table)"
    assert pooled.value == f"{expected:.3f}" and pooled.help == DEFINITIONS["pooled_aux"]
    assert hf.label == "HF load_balancing_loss (transformers' own number)"
    assert hf.value == f"{K * expected:.3f}" and hf.help == DEFINITIONS["pooled_hf_aux"]
    # the table's aux column and the pooled aux are both the Switch scale: 1 = balanced, up to E
    table = at.table[0].value
    assert table["aux_loss"].between(1 - 1e-6, 8).all() and 1 - 1e-6 <= expected <= 8
    caption = " ".join(c.value for c in at.caption)
    assert f"Pooled aux (`E·Σ_e f̄_e·P̄_e`, the aux column's scale): {expected:.3f}" in caption


def test_the_expert_vocabulary_draws_whitespace_as_symbols(model_dir):
    at = _run(model_dir)
    assert not at.exception
    vocab = at.table[1].value
    cells = ", ".join(vocab["most frequent top-1 tokens (count)"]).split(", ")
    tokens = [cell.rsplit(" (", 1)[0] for cell in cells]
    assert tokens and all(tok.strip() for tok in tokens)  # no token is blank: every one can be read
    # the text's spaces, newlines and tab are all top-1 somewhere at layer 0: each shows as its symbol
    assert {"␣", "↵", "⇥"} <= set(tokens)
    assert not any("\\n" in tok or "\\t" in tok for tok in tokens)
    caption = " ".join(c.value for c in at.caption)
    assert "␣ = space" in caption and "⇥ = tab" in caption and "↵ = newline" in caption


def test_replacement_characters_in_the_text_are_counted_on_the_page(model_dir):
    """What the browser sends for a lone surrogate (tests/test_browser_model_text.py): U+FFFD in its place."""
    at = _run(model_dir)
    assert not [i for i in at.info if "U+FFFD" in i.value]
    at.text_area(key="model_text").set_value("ab\ufffdcd").run()
    assert not at.exception and not at.error
    notes = [i.value for i in at.info if "U+FFFD" in i.value]
    assert notes == ["The text holds 1 � (U+FFFD): each stands for a character that was not valid Unicode (half of "
                     "a surrogate pair, or undecodable bytes), replaced as it was typed or pasted."]
    spans = [m.value for m in at.markdown if "<span" in m.value][0]
    assert spans.count("<span") == len("ab\ufffdcd".encode())  # routed: U+FFFD is 3 bytes
    at.text_area(key="model_text").set_value("x\ufffd\ufffd").run()
    assert any("holds 2 �" in i.value for i in at.info)
