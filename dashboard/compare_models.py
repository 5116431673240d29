"""The Compare page's model sides: a pasted Model-page link → what it runs (model directory, text, max tokens and,
when its counterfactual is on, the counterfactual routing), the tables of that forward, and a model's headline
numbers (DEFINITIONS["compare_model_headline"]).

A side is a model side when its link is the Model page's (`/model?…`, or an old `?view=Model&…`) or holds a Model
key (moe.hf's example, text, model directory, counterfactual settings). The directory is opened only under the
server's roots (moe.roots), as on the Model page; every value from the link is parsed by the Model page's own codec
(dashboard.model_link) and never echoed unquoted.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import numpy as np

from moe.hf.counterfactual import BIASES, Counterfactual
from moe.metrics import nats_to_bits, safe_ratio
from moe.roots import resolve_allowed

from dashboard.compare_sides import link_page, split_link
from dashboard.figures.model import loss_per_token_and_byte  # the loss chart's title: one definition
from dashboard.model_link import EXAMPLES, LINK_DIR_KEY, MODEL_LINK, from_link
from dashboard.quoting import quote

MAX_TEXT_CHARS = 100_000  # the Model page's own cut (dashboard/views/model.py)
# (row label, key): a model forward's headline numbers; loss is a model's own (a synthetic layer has none)
MODEL_HEADLINE = (("aux loss (pooled, all layers)", "aux_loss"), ("CV (mean over layers)", "cv"),
                  ("max/mean load (mean over layers)", "max_over_mean"),
                  ("dead experts (fraction, mean over layers)", "dead_fraction"),
                  ("dropped (fraction, all layers)", "dropped_fraction"), ("loss (bits per token)", "loss_bits"),
                  ("loss (bits per byte)", "loss_bits_per_byte"))


@dataclass(frozen=True)
class ModelSpec:
    """What a model side runs: hashable (the caches key on its fields)."""
    path: str
    text: str
    max_tokens: int
    cf_values: tuple = ()  # the counterfactual controls as linked ((key, value), …; none: the model's own routing)

    @property
    def cf(self) -> Counterfactual | None:
        """The counterfactual as linked (fitted to the model once it is loaded: fitted_counterfactual); None when
        the link's controls change nothing."""
        cf = counterfactual_from(dict(self.cf_values)) if self.cf_values else None
        return cf if cf is not None and cf.changed() else None

    def describe(self) -> str:
        what = "its own routing" if self.cf is None else "a counterfactual routing"
        return (f"model {quote(pathlib.Path(self.path).name)}, {len(self.text):,} characters of text "
                f"(at most {self.max_tokens:,} tokens), {what}")


@dataclass(frozen=True)
class ModelSide:
    query: str
    spec: ModelSpec | None = None
    notes: list[str] = field(default_factory=list)
    error: str = ""
    linked_dir: bool = False  # the directory came from the link (mdir): loaded only after a click, as on the Model page


def is_model_link(text: str) -> bool:
    """A Model-page link: its path ends in /model, or its query names the Model view or holds a Model key."""
    address, query = split_link(text)
    pairs = dict(parse_qsl(query, keep_blank_values=True))
    return link_page(address) == "model" or pairs.get("view") == "Model" or any(key in pairs for key in MODEL_LINK)


def counterfactual_from(values: dict) -> Counterfactual:
    """The Model page's counterfactual controls (session values cf_*) → Counterfactual (0 / -1 / 1.0: unchanged)."""
    capacity = float(values["cf_capacity"])
    return Counterfactual(
        layers=None if values["cf_layer"] == "all" else (int(values["cf_layer"]),),
        top_k=int(values["cf_top_k"]) or None, capacity_factor=capacity or None,
        drop_policy=values["cf_drop"] if capacity else None,
        temperature=None if values["cf_temperature"] == 1.0 else float(values["cf_temperature"]),
        bias_expert=None if values["cf_bias_expert"] < 0 else int(values["cf_bias_expert"]),
        bias=BIASES[values["cf_bias"]])


def cf_misfits(values: dict, layers, n_experts: int) -> list[str]:
    """The counterfactual controls (session values cf_*) that a model with these MoE layers and experts cannot take:
    a layer it does not have, a top_k above its E, a biased expert outside 0..E-1. The Model page and a Compare side
    reset them to their defaults, with `misfit_note`."""
    fits = {"cf_layer": values["cf_layer"] in ["all", *map(str, layers)],
            "cf_top_k": 0 <= values["cf_top_k"] <= n_experts,
            "cf_bias_expert": -1 <= values["cf_bias_expert"] < n_experts}
    return [key for key, good in fits.items() if not good]


def misfit_note(key: str, value, default) -> str:
    """The note for a control reset (its value as the link codec parsed it: an integer, or `all` or digits)."""
    return f"{key} = {value} does not fit this model; reset to {default}."


def fitted_counterfactual(spec: ModelSpec, layers, n_experts: int, defaults: dict
                          ) -> tuple[Counterfactual | None, list[str]]:
    """A side's counterfactual once the loaded model is known, as the Model page runs that link: the controls it
    cannot take reset to `defaults` (the notes say which); None when nothing is left changed."""
    values, notes = dict(spec.cf_values), []
    for key in cf_misfits(values, layers, n_experts):
        notes.append(misfit_note(key, values[key], defaults[key]))
        values[key] = defaults[key]
    cf = counterfactual_from(values)
    return (cf if cf.changed() else None), notes


def parse_model_side(query: str, defaults: dict) -> ModelSide:
    """A Model-page query → ModelSide; never raises (bad values are notes, a directory outside the roots the
    error). `defaults`: the Model page's widget defaults (dashboard.state.model_defaults())."""
    pairs = dict(parse_qsl(query, keep_blank_values=True))
    values, problems = from_link(pairs, EXAMPLES)
    read = {key for key, (state_key, _) in MODEL_LINK.items()
            if key in pairs and (state_key in values or (key == "mdir" and LINK_DIR_KEY in values))}
    # the values read, under view=Model (the Compare link reopens it as a model side): at most MAX_LINK_CHARS
    query = urlencode({"view": "Model", **{key: pairs[key] for key in MODEL_LINK if key in read}})
    merged = {**defaults, **values}
    directory = values.get(LINK_DIR_KEY) or values.get("model_path") or defaults["model_path"]  # mdir, mmodel
    try:
        path = str(resolve_allowed(directory, "dir"))
    except ValueError as err:
        return ModelSide(query, notes=problems, error=str(err))
    cf_values = tuple(sorted((key, value) for key, value in merged.items() if key.startswith("cf_")))
    spec = ModelSpec(path, str(merged["model_text"])[:MAX_TEXT_CHARS], int(merged["model_max_tokens"]),
                     cf_values if merged["cf_on"] else ())
    return ModelSide(query, spec, problems, linked_dir=LINK_DIR_KEY in values)


def model_headline(tables: dict) -> dict[str, float]:
    """A model forward's headline numbers from its tables (the Model page's `analyse` or `counterfactual`)."""
    layer_table = tables["table"]
    # bits per predicted token, and per byte of the predicted tokens (DEFINITIONS["text_bits_per_byte"]); NaN for
    # what the tables cannot give (no token predicted, no byte counts)
    bits = nats_to_bits(np.asarray(tables["loss"], dtype=np.float64))  # (S-1,)
    token_bytes = tables.get("token_bytes")
    per_token, per_byte = loss_per_token_and_byte(bits, token_bytes[1:] if token_bytes is not None else [])
    return {"aux_loss": float(tables["pooled_aux"]),
            **{key: float(layer_table[key].mean()) for key in ("cv", "max_over_mean", "dead_fraction")},
            "dropped_fraction": safe_ratio(sum(tables["dropped"]), sum(tables["demand"])),
            "loss_bits": per_token, "loss_bits_per_byte": per_byte}
