"""The Model page's loss: the chart's rolling mean, context line and title (bits per token and per byte), the
byte counts behind it, the per-token download's loss column, and the page's note on the model's context."""
import io

import numpy as np
import pandas as pd
import pytest

from dashboard.figures.model import (ROLLING_TOKENS, loss_per_token_and_byte, rolling_mean, token_loss_figure,
                                     utf8_bytes)
from moe.definitions import DEFINITIONS
from tests.model_support import saved_model

pytestmark = pytest.mark.usefixtures("tmp_is_a_root")  # tests/conftest.py


def _naive_rolling(values, window):
    out = []
    for i in range(len(values)):
        last = values[max(0, i - window + 1): i + 1]
        out.append(sum(last) / len(last))
    return out


def test_rolling_mean_is_the_mean_of_the_last_window_values():
    values = np.random.default_rng(0).exponential(3.0, size=100)
    for window in (1, 5, 32, 200):
        assert np.allclose(rolling_mean(values, window), _naive_rolling(list(values), window))
    assert rolling_mean(np.array([2.0, 4.0, 9.0]), 2).tolist() == [2.0, 3.0, 6.5]
    assert f" {ROLLING_TOKENS} " in DEFINITIONS["rolling_loss"]  # the definition names the chart's window


def test_loss_chart_has_the_rolling_mean_and_the_title_in_bits_per_token_and_per_byte():
    tokens = ["a", "é", "€", "bc", "d"]  # predicted: é (2 bytes), € (3), bc (2), d (1)
    bits = np.array([1.0, 4.0, 3.0, 2.0])
    fig = token_loss_figure(bits * np.log(2), tokens)
    bar, line = fig.data
    assert np.allclose(bar.y, bits) and list(bar.x) == list(line.x) == [1, 2, 3, 4]
    assert np.allclose(line.y, _naive_rolling(list(bits), ROLLING_TOKENS))
    per_token, per_byte = bits.mean(), bits.sum() / (2 + 3 + 2 + 1)
    assert (per_token, per_byte) == pytest.approx((2.5, 10 / 8))
    title = f"Next-token loss (mean {per_token:.2f} bits per token, {per_byte:.2f} bits per byte)"
    assert fig.layout.title.text == title
    # a tokenizer's own byte counts win over the strings' (a lone byte of "é" decodes to U+FFFD, 3 bytes)
    one_byte = token_loss_figure(bits * np.log(2), tokens, token_bytes=[1, 1, 1, 1, 1])
    assert one_byte.layout.title.text == "Next-token loss (mean 2.50 bits per token, 2.50 bits per byte)"
    assert utf8_bytes(["a", "é", "\ufffd"]) == [1, 2, 3]
    assert np.isnan(loss_per_token_and_byte(np.array([1.0]), [0])[1])  # no bytes: no number, not a division error


def test_the_context_line_is_drawn_only_when_the_text_is_longer():
    tokens = [chr(97 + i % 26) for i in range(40)]
    loss = np.ones(39)
    fig = token_loss_figure(loss, tokens, context=16)
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == fig.layout.shapes[0].x1 == 16
    assert fig.layout.annotations[0].text == "context 16"
    assert not token_loss_figure(loss, tokens, context=40).layout.shapes  # fits: no line
    assert not token_loss_figure(loss, tokens).layout.shapes  # context unknown: no line


def test_context_note_says_the_context_and_the_windows():
    from dashboard.views.model import context_note

    assert context_note(128, 1, 100).startswith("Context 128 tokens: the model's trained length")
    assert "windows" not in context_note(128, 1, 100)
    assert ("Read in 5 windows of 128 tokens (stride 64): each token's routing and loss come from the window where "
            "it has the most left context.") in context_note(128, 5, 400)
    assert "not recorded" in context_note(None, 1, 300)
    from moe.hf.windows import plan_windows
    for context, n in ((1, 4), (3, 10), (128, 400)):  # the stride named is the one the windows take (1: not 0)
        starts = [w.start for w in plan_windows(n, context)]
        assert f"(stride {starts[1] - starts[0]})" in context_note(context, len(starts), n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("loss") / "tiny", layers=2)


def test_token_bytes_count_each_byte_token_once(model_dir):
    from moe.hf.token_text import token_bytes
    from moe.hf.load import load_model

    tokenizer = load_model(model_dir).tokenizer
    text = "é€ a\n"
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # the byte tokenizer: one token per byte
    assert token_bytes(tokenizer, ids) == [1] * len(ids)
    assert token_bytes(tokenizer, [tokenizer.eos_token_id]) == [0]  # a special token stands for no text


def test_the_view_has_context_windows_and_byte_counts(model_dir):
    from dashboard.loaders import analyse
    from moe.hf.windows import plan_windows

    text = "def f(x):\n    return x  # é\n" * 10  # 290 bytes: longer than the tiny model's 128 positions
    view = analyse(model_dir, text, 400)
    assert sum(view["token_bytes"]) == len(text.encode("utf-8")) == len(view["tokens"]) == 290
    assert view["context"] == 128 < len(view["tokens"]) and view["windows"] == len(plan_windows(290, 128)) == 4


def test_the_per_token_download_has_each_tokens_next_token_loss(model_dir):
    from dashboard.loaders import model_exports
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    text, max_tokens = "for i in range(3):\n    print(i)\n", 24
    routing = pd.read_csv(io.StringIO(model_exports(model_dir, text, max_tokens)["routing_csv"]))
    loaded = load_model(model_dir)
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"][0, :max_tokens]
    logp = run_model(loaded.model, ids).logits.log_softmax(-1).double()  # (S, V)
    for layer, rows in routing.groupby("layer"):
        rows = rows.sort_values("position")
        assert rows.position.tolist() == list(range(max_tokens))
        expected = [-float(logp[s, ids[s + 1]]) / np.log(2) for s in range(max_tokens - 1)]
        assert np.allclose(rows.next_token_loss_bits.to_numpy()[:-1], expected, atol=1e-4)
        assert np.isnan(rows.next_token_loss_bits.to_numpy()[-1])  # the last token predicts nothing in the text


def test_the_page_states_the_context_and_defines_the_loss_numbers(model_dir):
    from streamlit.testing.v1 import AppTest

    from dashboard.loaders import analyse
    from dashboard.views.model import context_note
    from tests.test_model_view import _view_app

    at = AppTest.from_function(_view_app, args=(model_dir,), default_timeout=120)
    at.query_params.update({"mex": "prose", "mtok": "32"})
    at.run()
    assert not at.exception
    view = analyse(model_dir, at.session_state["model_text"], 32)
    captions = [c.value for c in at.caption]
    assert context_note(view["context"], view["windows"], len(view["tokens"])) in captions
    loss_caption = next(c for c in captions if c.startswith("Next-token loss of token s+1"))
    assert DEFINITIONS["rolling_loss"] in loss_caption and DEFINITIONS["text_bits_per_byte"] in loss_caption


def _metaspace_tokenizer():
    """A SentencePiece-style word-level tokenizer built here (no download): `▁` stands for the space before a word
    and decoding one token alone drops it (decode(["▁cat"]) == "cat")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "▁the": 1, "▁cat": 2, "▁sat": 3, "▁é": 4, "<|endoftext|>": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>")


@pytest.mark.parametrize("text, expected", [
    ("the cat sat", [3, 4, 4]),               # "the", " cat", " sat": the spaces are the text's, counted once
    ("the  cat é sat ", [3, 1, 4, 3, 4, 1]),  # two spaces (one an unknown piece), é is 2 bytes, a trailing space
])
def test_token_bytes_of_a_sentencepiece_tokenizer_sum_to_the_texts_bytes(text, expected):
    from moe.hf.token_text import token_bytes

    tokenizer = _metaspace_tokenizer()
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode([ids[1]]) in ("cat", "[UNK]")  # decoding alone loses the space: not the measure
    counts = token_bytes(tokenizer, ids, text)
    assert counts == expected and sum(counts) == len(text.encode("utf-8"))
    assert token_bytes(tokenizer, ids[:2], text) == expected[:2]  # a text cut to max_tokens: its first tokens


def test_token_bytes_of_the_bundled_byte_tokenizer_are_unchanged_with_the_text(model_dir):
    from moe.hf.token_text import token_bytes
    from moe.hf.load import load_model

    tokenizer = load_model(model_dir).tokenizer
    text = "é€ a\n"
    ids = tokenizer(text)["input_ids"]
    assert token_bytes(tokenizer, ids, text) == token_bytes(tokenizer, ids) == [1] * len(text.encode("utf-8"))


def test_the_page_says_type_a_text_for_an_empty_text_not_the_cli_flags(model_dir):
    from dashboard.loaders import analyse, counterfactual
    from moe.hf.counterfactual import Counterfactual

    calls = (lambda: analyse(model_dir, " \n", 32), lambda: counterfactual(model_dir, "", 32, Counterfactual(top_k=1)))
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == "the text is empty; type a text to route"


def test_the_reports_per_token_top1_is_the_per_token_downloads_heaviest_expert(model_dir, capsys):
    """model-report's JSON has each token's routing next to its loss: token_top1[i][s] is the expert with the largest
    weight in the page's per-token download at (layers[i], position s), and (this softmax model) the argmax of that
    layer's router logits."""
    import json

    from dashboard.loaders import model_exports
    from moe.cli.main import main
    from moe.hf.instrument import run_model
    from moe.hf.load import load_model

    text, max_tokens = "while True:\n    x += 1  # é\n", 24
    files = model_exports(model_dir, text, max_tokens)
    report = json.loads(files["summary_json"])
    routing = pd.read_csv(io.StringIO(files["routing_csv"]))
    layers = [entry["layer"] for entry in report["layers"]]
    assert len(report["token_top1"]) == len(layers) and report["tokens"] == max_tokens
    for i, layer in enumerate(layers):
        rows = routing[routing.layer == layer].sort_values("position")
        heaviest = [int(e.split()[max(range(len(w.split())), key=lambda k: float(w.split()[k]))])
                    for e, w in zip(rows.experts, rows.weights)]
        assert report["token_top1"][i] == heaviest
    loaded = load_model(model_dir)
    run = run_model(loaded.model, loaded.tokenizer(text, return_tensors="pt")["input_ids"][0, :max_tokens])
    assert report["token_top1"] == [t.router_logits.argmax(-1).tolist() for t in run.traces]
    assert main(["model-report", "--model", model_dir, "--text", text, "--max-tokens", str(max_tokens)]) == 0
    assert json.loads(capsys.readouterr().out)["token_top1"] == report["token_top1"]


def _byte_fallback_tokenizer():
    """Mixtral's / Llama's kind of tokenizer, built here (no download): BPE with byte fallback (`<0xC3>`), `▁` for a
    space (prepended to the first word), a BOS; trained on a few words so that accented letters are pieces ("é",
    "naï") and other characters byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]
                                  + [f"<0x{b:02X}>" for b in range(256)])
    tok.train_from_iterator(["the cat sat on the mat", "a dog and a cat", "naïve café"] * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("text", ["café", "the naïve cat", "über naïve café déjà", "hello world 東京 naïve",
                                  " leading space", "the cat\n\nthe dog ", "\nthe cat", "\tthe cat", "\xa0the cat",
                                  "a ▁ literal"])
def test_token_bytes_of_a_byte_fallback_tokenizer_sum_to_the_texts_bytes(text):
    """Pieces made of Latin-1 letters ("é", "naï") lie in the byte-level alphabet and were counted one byte a
    character ("café" 4 bytes, not 5); a `▁` before byte tokens took their character's bytes, which the byte tokens
    counted again. The auditor's page read 6.73 bits per byte where the text's 25 bytes give 5.92."""
    from moe.hf.token_text import token_bytes, token_spans

    tokenizer = _byte_fallback_tokenizer()
    ids = tokenizer(text)["input_ids"]
    spans = token_spans(tokenizer, ids, text)
    assert b"".join(spans) == text.encode("utf-8") and spans[0] == b""  # the BOS stands for no text
    assert token_bytes(tokenizer, ids, text) == [len(s) for s in spans]
    raws = tokenizer.convert_ids_to_tokens(ids)
    for raw, span in zip(raws, spans):  # a piece of letters stands for exactly them: "é" is 2 bytes, "naï" 4
        if raw != "<s>" and not raw.startswith("<0x") and "▁" not in raw:
            assert span == raw.encode("utf-8"), (raws, spans)
        if raw.startswith("<0x"):  # a byte token: its own byte
            assert span == bytes([int(raw[3:5], 16)]), (raws, spans)
    if text == "café":
        assert raws[-1] == "é" and spans[-1] == "é".encode("utf-8")


def test_the_nmi_classes_a_token_by_the_first_byte_it_stands_for():
    """decode(["▁cat"]) is "cat": classed by it, a word after a space was a letter and a lone `▁` 'other'."""
    from moe.hf.tables import token_classes
    from moe.hf.text import CHAR_CLASSES
    from moe.hf.token_text import token_spans

    tokenizer = _byte_fallback_tokenizer()
    text = "the cat sat on the mat"
    ids = tokenizer(text)["input_ids"]
    names = [CHAR_CLASSES[c] for c in token_classes(token_spans(tokenizer, ids, text))]
    raws = tokenizer.convert_ids_to_tokens(ids)
    assert raws[:3] == ["<s>", "▁the", "▁cat"] and names[:3] == ["other", "letter", "space"]  # "the" opens the text
    assert all(name == "space" for raw, name in zip(raws[2:], names[2:]) if raw.startswith("▁"))
