"""The Model view in the URL: its widget values <-> query parameters (short keys, checked, echoed with quote()).

Keys are read once per session (the link that opened the page) and written after every Model-view run.
A custom text travels only while it is at most TEXT_LINK_CHARS characters; longer texts keep the example name.
A model directory from a link (mdir) is never loaded on open: it is kept aside (LINK_DIR_KEY) until the visitor
clicks Load, and then opened only under the server's roots (moe.roots). A bundled model travels by its name
(mmodel) instead, and opens at once: it ships with moe-scope.
"""
from __future__ import annotations

import math
import re

from moe.config import DROP_POLICIES
from moe.hf.counterfactual import BIASES
from moe.hf.load import BUNDLED_MODELS, bundled_name
from moe.hf.tables import LAYER_COLUMNS

from dashboard.quoting import quote

EXAMPLES = {
    "prose": "The with statement is used to wrap the execution of a block with methods defined by a context "
             "manager. This allows common try, except, finally usage patterns to be encapsulated.",
    "code": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "numbers": "x = 3.14159 * 2 ** 10 + 0x1F - 1_000_000 // 7  # 2026-11-29, 42%",
}
OTHER_DIR = "another directory"  # the bundled-model box when the directory is none of the bundled models
BUNDLE_CHOICES = (*BUNDLED_MODELS, OTHER_DIR)
MAX_TOKENS_LIMIT = 4096
TEXT_LINK_CHARS = 500
LINK_DIR_KEY = "model_link_dir"  # session state: the link's model directory, waiting for a click
# query key -> (session-state key, type)
MODEL_LINK: dict[str, tuple[str, type]] = {
    "mmodel": ("model_bundle", str), "mdir": ("model_path", str), "mex": ("model_example", str), "mtext": ("model_text", str),
    "mtok": ("model_max_tokens", int), "mlayer": ("model_layer", int),
    "msort": ("model_sort", str), "mdesc": ("model_sort_desc", bool),
    "cfon": ("cf_on", bool), "cflayer": ("cf_layer", str), "cfk": ("cf_top_k", int), "cfcap": ("cf_capacity", float),
    "cfdrop": ("cf_drop", str), "cftemp": ("cf_temperature", float), "cfe": ("cf_bias_expert", int),
    "cfbias": ("cf_bias", str), "cfsweep": ("cf_sweep", bool),
}
MODEL_LINK_KEYS = tuple(MODEL_LINK)
CHOICES = {"model_bundle": tuple(BUNDLED_MODELS), "cf_drop": DROP_POLICIES, "cf_bias": tuple(BIASES), "model_sort": tuple(LAYER_COLUMNS)}
LIMITS = {"model_max_tokens": (1, MAX_TOKENS_LIMIT), "model_layer": (0, 1 << 10), "cf_top_k": (0, 1 << 10),
          "cf_capacity": (0.0, 64.0), "cf_temperature": (0.01, 100.0), "cf_bias_expert": (-1, 1 << 16)}


def value_limit(key: str) -> int:
    """The longest value a Model link's `key` may hold (longer ones are ignored, named)."""
    return TEXT_LINK_CHARS if key == "mtext" else 1000 if key == "mdir" else 64


# The longest query a Model link may hold once every value is read: each key with its longest value, every
# character percent-encoded as a 4-byte UTF-8 character (12 characters), and the separators; plus view=Model.
MAX_LINK_CHARS = len("view=Model") + sum(len(key) + 2 + 12 * value_limit(key) for key in MODEL_LINK)


def bundle_choice(path: str) -> str:
    """The bundled-model box's value for a model directory: the bundled model's name, or OTHER_DIR."""
    return bundled_name(path) or OTHER_DIR


def _parse(state_key: str, kind: type, text: str):
    if kind is bool:
        if text not in ("0", "1"):
            raise ValueError
        return text == "1"
    if kind is str:
        if state_key in CHOICES and text not in CHOICES[state_key]:
            raise ValueError
        if state_key == "cf_layer" and text != "all":  # a decoder layer: ASCII digits in range, or "all"
            _parse("model_layer", int, text)
        return text
    if kind is int and not re.fullmatch(r"-?[0-9]{1,9}", text):  # int() would take " 1", "1_0" and "٣"
        raise ValueError
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise ValueError
    low, high = LIMITS[state_key]
    if not low <= value <= high:
        raise ValueError
    return value


def from_link(query: dict[str, str], examples: dict[str, str]) -> tuple[dict, list[str]]:
    """(session-state values, problems) from the link; bad entries are skipped and named (Markdown-safe)."""
    values, problems = {}, []
    for key, (state_key, kind) in MODEL_LINK.items():
        if key not in query:
            continue
        text = query[key]
        limit = value_limit(key)
        try:
            if len(text) > limit or (key == "mex" and text not in examples):
                raise ValueError
            values[state_key] = _parse(state_key, kind, text)
        except ValueError:
            problems.append(f"ignored {key}={quote(text)} in the link")
    if "model_path" in values:  # shown with a Load button, not loaded
        values[LINK_DIR_KEY] = values.pop("model_path")
    if "model_bundle" in values:  # a bundled model ships with moe-scope: opened at once
        values["model_path"] = BUNDLED_MODELS[values["model_bundle"]]
    if "model_example" in values and "model_text" not in values:
        values["model_text"] = examples[values["model_example"]]
    return values, problems


def text_left_out(state: dict, examples: dict[str, str]) -> bool:
    """True when the typed text is too long for the link (the example's own text travels as its name)."""
    text = str(state.get("model_text", ""))
    return text != examples.get(state.get("model_example")) and len(text) > TEXT_LINK_CHARS


def text_link_note(state: dict, examples: dict[str, str]) -> str:
    """What the page says when the link leaves the text out ("" when the link holds it)."""
    if not text_left_out(state, examples):
        return ""
    return (f"The text ({len(str(state['model_text'])):,} characters) is not in this page's link: a link holds "
            f"texts of up to {TEXT_LINK_CHARS:,} characters, so the link opens with the example prompt "
            f"{state.get('model_example')!r} instead. Paste the text again after sharing the link.")


def to_link(state: dict, defaults: dict, examples: dict[str, str]) -> dict[str, str]:
    """The query parameters for the Model view's current values: only those that differ from the defaults."""
    query = {}
    for key, (state_key, _) in MODEL_LINK.items():
        value = state.get(state_key, defaults.get(state_key))
        if key == "mmodel":  # the directory decides (the box follows it); only a bundled model has a name
            value = bundle_choice(str(state.get("model_path", defaults.get("model_path"))))
            if value == OTHER_DIR:
                continue
        if key == "mdir" and bundled_name(str(value)) is not None:
            continue  # a bundled model travels by its name (mmodel), opened without a Load click
        if key == "mtext" and (value == examples.get(state.get("model_example")) or text_left_out(state, examples)):
            continue  # the example's own text (named by mex), or too long for a link (text_link_note says so)
        if value != defaults.get(state_key):
            query[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return query
