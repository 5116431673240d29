"""The text each token of a routed text stands for, as UTF-8 bytes (`token_spans`): what bits per byte divides by
(DEFINITIONS["text_bits_per_byte"], `token_bytes`) and whose first byte classes the token for the Model page's
character-class NMI (moe.hf.tables.class_nmi).

Decoding one token alone is not enough: `decode(["▁cat"])` is "cat", without its space, and a lone byte of a
multi-byte character decodes to U+FFFD (3 bytes). So:
- a byte-level tokenizer (its decoder is ByteLevel: GPT-2, Qwen, OLMoE, DeepSeek-V3, the bundled byte tokenizer)
  spells every byte as one character of GPT-2's table: a token is exactly the bytes its characters stand for;
- any other (SentencePiece-style: a `▁word`, `<0xNN>` byte fallback, an unknown piece) is measured on the text by
  the fast tokenizer's offsets: each token stands for the text from the end of the tokens before it to its own
  end, so every byte is counted once (a space before a word goes to the word) and the spans of a whole text join
  to the text; a `<0xNN>` token, which carries the offsets of the whole character it is one byte of, stands for
  the next byte of it, and a lone `▁` whose offsets hold no space (the space SentencePiece prepends to a text;
  a text that starts with a newline or a tab spells it with its own tokens) for nothing;
- without offsets (a slow tokenizer, or ids that are not the text's first tokens): `<0xNN>` one byte, `▁` a space,
  a special token none, any other its decoded text.
"""
from __future__ import annotations

import json
import re

from moe.hf.report import tokenize
from moe.hf.text import byte_table

BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens: one byte each


def token_spans(tokenizer, ids, text: str | None = None) -> list[bytes]:
    """The UTF-8 bytes each of `ids` stands for (module docstring); `text`: the text they were read from."""
    ids = [int(i) for i in ids]
    raws = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", []))
    if is_byte_level(tokenizer, raws, special):
        table = {char: byte for byte, char in byte_table().items()}
        return [b"" if i in special else bytes(table[ch] for ch in raw) if set(raw) <= table.keys()
                else tokenizer.decode([i]).encode("utf-8") for i, raw in zip(ids, raws)]  # an added token: its text
    offsets, whole = _offsets(tokenizer, text, ids)
    if offsets is None:
        return [_alone(tokenizer, i, raw, special) for i, raw in zip(ids, raws)]
    data, at = text.encode("utf-8"), [0]
    for char in text:
        at.append(at[-1] + len(char.encode("utf-8")))                                 # character -> byte offset
    spans, covered, last = [], 0, None                                                # covered: bytes counted
    for n, (raw, (start, end)) in enumerate(zip(raws, offsets)):
        stop = at[end]
        if BYTE_FALLBACK.fullmatch(raw):  # one byte of the character whose offsets it carries
            stop = min(covered + 1, stop)
        elif raw == "▁" and start < end and text[start:end] not in (" ", "▁"):  # a space prepended, not the text's
            stop = at[start]  # (▁ spells a space: a newline or a tab is spelt by its own tokens)
        spans.append(data[covered:max(covered, stop)])
        covered = max(covered, stop)
        last = n if end else last
    if whole and last is not None:
        spans[last] += data[covered:]  # what no token covers after the last (a trailing space)
    return spans


def token_bytes(tokenizer, ids, text: str | None = None) -> list[int]:
    """UTF-8 bytes each token stands for (token_spans): those of a whole text sum to the text's bytes."""
    return [len(span) for span in token_spans(tokenizer, ids, text)]


def is_byte_level(tokenizer, raws: list[str], special: set) -> bool:
    """Whether every token spells bytes as GPT-2's table does: a fast tokenizer whose decoder is (or holds)
    ByteLevel; a slow one whose tokens all lie in that table."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        decoder = backend.decoder
        return decoder is not None and _holds(json.loads(decoder.__getstate__()), "ByteLevel")
    chars = set(byte_table().values())
    return all(raw in special or (raw and set(raw) <= chars) for raw in raws)


def _holds(node: dict, kind: str) -> bool:
    return node.get("type") == kind or any(_holds(child, kind) for child in node.get("decoders") or [])


def _alone(tokenizer, i: int, raw: str, special: set) -> bytes:
    match = BYTE_FALLBACK.fullmatch(raw)
    if match:
        return bytes([int(match.group(1), 16)])
    if i in special:
        return b""
    if "▁" in raw:
        return raw.replace("▁", " ").encode("utf-8")
    return tokenizer.decode([i]).encode("utf-8")


def _offsets(tokenizer, text: str | None, ids: list[int]) -> tuple[list | None, bool]:
    """(the (start, end) characters of each of `ids` in `text` by the fast tokenizer's offset mapping, whether
    `ids` are all of the text's tokens); (None, False) when the tokenizer gives none or `ids` are not the text's
    first tokens."""
    if text is None or not getattr(tokenizer, "is_fast", False):
        return None, False
    encoded = tokenize(tokenizer, text, return_offsets_mapping=True)
    if list(encoded["input_ids"][:len(ids)]) != ids:
        return None, False
    return [tuple(o) for o in encoded["offset_mapping"][:len(ids)]], len(encoded["input_ids"]) == len(ids)
