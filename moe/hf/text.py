"""Text helpers for the language-model views: the byte tokenizer, character classes and unigram entropy.

One definition each, imported by the trainer, the model report and the dashboard (NMI: moe.metrics).
"""
from __future__ import annotations

import string

import numpy as np

from moe.metrics import entropy, nats_to_bits

EOS = "<|endoftext|>"
VOCAB_SIZE = 257  # 256 bytes (id = byte value) + EOS (id 256)
EOS_ID = 256
CHAR_CLASSES = ("letter", "digit", "space", "newline", "punctuation", "other")
_PUNCT = set(string.punctuation.encode())


def byte_class(b: int) -> int:
    """Index into CHAR_CLASSES of one byte (non-ASCII bytes and EOS are 'other')."""
    if 65 <= b <= 90 or 97 <= b <= 122:
        return 0
    if 48 <= b <= 57:
        return 1
    if b in (32, 9):
        return 2
    if b in (10, 13):
        return 3
    if b in _PUNCT:
        return 4
    return 5


_CLASS_OF = np.array([byte_class(b) for b in range(VOCAB_SIZE)], dtype=np.int64)  # (V,)


def char_classes(ids) -> np.ndarray:
    """Character class index of each byte token id (T,)."""
    return _CLASS_OF[np.asarray(ids, dtype=np.int64)]


def encode(text: str) -> list[int]:
    """Byte token ids of a text (UTF-8 bytes)."""
    return list(text.encode("utf-8"))


def unigram_entropy_bits(ids) -> float:
    """Entropy in bits of the empirical byte distribution of `ids` (the unigram baseline, bits per byte)."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64))
    return nats_to_bits(entropy(counts / counts.sum()))


def byte_tokenizer():
    """A `tokenizers.Tokenizer` whose ids are byte values (0..255), plus EOS = 256; no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    # ByteLevel maps each byte to a printable character (GPT-2's table); id = the byte it stands for.
    table = byte_table()
    vocab = {table[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    assert len(ByteLevel.alphabet()) == 256
    return tok


def byte_table() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the one ByteLevel uses)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def save_tokenizer(out_dir: str) -> None:
    """Write tokenizer.json + tokenizer_config.json so AutoTokenizer.from_pretrained(out_dir) loads it."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer(), eos_token=EOS, pad_token=EOS)
    fast.save_pretrained(out_dir)


def bits_per_byte(mean_nll_nats: float) -> float:
    """Mean next-byte negative log-likelihood (nats) in bits."""
    return nats_to_bits(mean_nll_nats)
