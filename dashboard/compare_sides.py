"""The Compare page's sides: a pasted Playground link → its controls and RunSpec (links.from_query, limits.sanitize),
both sides in the Compare page's own link (`?a=<A's query>&b=<B's query>`), and the Δ table of the headline numbers.

A side travels as the Playground query it was pasted with (what follows the `?`, URL-encoded once more as the
value of `a` or `b`): Playground links hold only the differences from their preset, so it stays short, and a bad
value comes back from the link with the same note.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import pandas as pd

from moe import available_devices

from dashboard.limits import sanitize
from dashboard.links import MAX_LINK_PARAMS, MAX_VALUE_CHARS, RunSpec, from_query, spec_from_controls, to_query
from dashboard.model_link import MAX_LINK_CHARS as MAX_MODEL_LINK_CHARS
from dashboard.presets import DEFAULT_PRESET
from dashboard.quoting import quote

SIDES = ("A", "B")
LINK_KEYS = {"A": "a", "B": "b"}              # the Compare page's query keys, one per side
STATE_KEYS = {"A": "compare_a", "B": "compare_b"}  # the text inputs' session keys
# The most a side's query may hold: links.py's parameter and value limits, plus room for each key and separator,
# or a Model link's longest (model_link.MAX_LINK_CHARS: a model side keeps only the values it read).
MAX_SIDE_CHARS = max(MAX_LINK_PARAMS * (MAX_VALUE_CHARS + 32), MAX_MODEL_LINK_CHARS)
# (row label, summary key = definition key): the headline numbers of a synthetic forward (no loss: that is a model's)
HEADLINE = (("aux loss", "aux_loss"), ("CV", "cv"), ("max/mean load", "max_over_mean"),
            ("dead experts (fraction)", "dead_fraction"), ("dropped (fraction)", "dropped_fraction"))


@dataclass(frozen=True)
class Side:
    """One side as parsed: its query (what the link keeps), the spec to run (None when there is none) and the
    notes and error to show (Markdown-safe: every value from the link is quoted)."""
    query: str
    spec: RunSpec | None = None
    notes: list[str] = field(default_factory=list)
    error: str = ""


# pages whose links hold no layer: a side pasted from one is refused (the Expert parallel page's link holds the
# Playground's layer, the Model page's a model side)
NO_LAYER_PAGES = {"runs": "Runs", "compare": "Compare", "about": "About"}
HOST_PORT = re.compile(r"[A-Za-z0-9.\-]+:[0-9]{1,5}")  # an address alone without a `/`: `localhost:8501`


def split_link(text: str) -> tuple[str, str]:
    """(address, query) of a pasted link: a whole URL or a path with its query (`http://h:8501/model?…`,
    `h:8501?…`, `model?…`), an address alone (a URL or path: it holds a `/` and no `=`; or a host and port,
    `localhost:8501`), or the query alone (with or without its `?`); the `#fragment` and surrounding spaces go. Text
    before the first `?` that holds `=` or `&` is no address: the whole text is the query (a `?` in a value); so is
    any other text (`router:hash` is a query the Playground does not know, and says so)."""
    text = text.strip().split("#", 1)[0]
    head, sep, tail = text.partition("?")
    if sep and not ("=" in head or "&" in head):
        return head, tail
    if not sep and not ("=" in text or "&" in text) and ("/" in text or HOST_PORT.fullmatch(text)):
        return text, ""
    return "", text[1:] if text.startswith("?") else text


def link_page(address: str) -> str:
    """The page an address names, lower-cased: its last path segment (`runs`, `model`, …; a page's name before a
    `?`, `model?…`), "" for the root (`http://h:8501`, `h:8501/`)."""
    path = address.split("://", 1)[-1].rstrip("/")
    if "/" not in path:
        return "" if ":" in path or "." in path else path.lower()  # a host (and port), or a page's name alone
    return path.rsplit("/", 1)[-1].lower()


def query_part(text: str) -> str:
    """The query of a pasted link (split_link)."""
    return split_link(text)[1]


def parse_side(text: str) -> Side:
    """A pasted link → Side; never raises (a bad value is a note, a config the engine refuses is the error). A
    Playground address without a query is the Playground's default layer; a link to a page that holds no layer is
    the error."""
    address, query = split_link(text)
    page = link_page(address)
    if page in NO_LAYER_PAGES:
        return Side("", error=f"this is a link to the {NO_LAYER_PAGES[page]} page, which holds no layer; paste a "
                              "Playground link (or a Model page link on both sides)")
    if not query:
        if not address:
            return Side(query)
        query = urlencode({"preset": DEFAULT_PRESET})  # the Playground's address alone: its default layer
    if len(query) > MAX_SIDE_CHARS:
        return Side("", error=f"the link has {len(query):,} characters after its `?`; at most {MAX_SIDE_CHARS:,} "
                              "are read")
    pairs = parse_qsl(query, keep_blank_values=True)
    preset, values, problems = from_query(dict(pairs))  # the last value of a repeated key, as st.query_params
    values, notes = sanitize(values, available_devices())
    try:
        spec = spec_from_controls(values)
    except ValueError as err:
        return Side(query, notes=problems + notes, error=f"this configuration is not valid: {err}")
    return Side(query, spec, problems + notes)


def playground_query(values: dict, preset: str) -> str:
    """The Playground's controls as the query a side keeps (links.to_query: the differences from the preset)."""
    return urlencode(to_query(values, preset))


def sides_from_query(query: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(session values of the two text inputs, problems) from the Compare page's link; too long a side is named
    and left out."""
    values, problems = {}, []
    for side, key in LINK_KEYS.items():
        text = query.get(key)
        if text is None:
            continue
        if len(text) > MAX_SIDE_CHARS:
            problems.append(f"ignored {key}={quote(text)}: {len(text):,} characters; at most {MAX_SIDE_CHARS:,}")
            continue
        values[STATE_KEYS[side]] = text
    return values, problems


def sides_to_query(sides: dict[str, Side]) -> dict[str, str]:
    """The Compare page's link: each non-empty side's query."""
    return {LINK_KEYS[name]: side.query for name, side in sides.items() if side.query}


def delta_table(summary_a: dict, summary_b: dict) -> pd.DataFrame:
    """The headline numbers of the two forwards: a row each, columns A, B and B − A (summary values, unrounded)."""
    rows = [(label, float(summary_a[key]), float(summary_b[key])) for label, key in HEADLINE]
    table = pd.DataFrame(rows, columns=["number", "A", "B"]).set_index("number")
    table["B − A"] = table["B"] - table["A"]
    return table


def describe(spec: RunSpec) -> str:
    """One line naming what a side runs (Markdown: no value from the link is echoed, only parsed numbers and
    the engine's option names)."""
    cfg = spec.config
    return (f"E={cfg.n_experts}, K={cfg.top_k}, router={cfg.router}, score={cfg.score}, "
            f"capacity={'dropless' if cfg.capacity_factor is None else cfg.capacity_factor}, "
            f"d_model={cfg.d_model}, d_expert={cfg.d_expert}, {spec.tokens:,} tokens ({spec.scenario})")
