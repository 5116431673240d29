"""The Compare page's sides: a pasted Playground link → its controls and RunSpec (links.from_query, limits.sanitize),
both sides in the Compare page's own link (`?a=<A's query>&b=<B's query>`), and the Δ table of the headline numbers.

A side travels as the Playground query it was pasted with (what follows the `?`, URL-encoded once more as the
value of `a` or `b`): Playground links hold only the differences from their preset, so it stays short, and a bad
value comes back from the link with the same note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import pandas as pd

from moe import available_devices

from dashboard.limits import sanitize
from dashboard.links import MAX_LINK_PARAMS, MAX_VALUE_CHARS, RunSpec, from_query, spec_from_controls, to_query
from dashboard.quoting import quote

SIDES = ("A", "B")
LINK_KEYS = {"A": "a", "B": "b"}              # the Compare page's query keys, one per side
STATE_KEYS = {"A": "compare_a", "B": "compare_b"}  # the text inputs' session keys
# The most a side's query may hold: links.py's parameter and value limits, plus room for each key and separator.
MAX_SIDE_CHARS = MAX_LINK_PARAMS * (MAX_VALUE_CHARS + 32)
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


def query_part(text: str) -> str:
    """The query of a pasted Playground link: a whole URL, a path with its query, or the query alone (with or
    without its `?`); the `#fragment` and surrounding spaces go."""
    text = text.strip().split("#", 1)[0]
    return text.split("?", 1)[1] if "?" in text else text


def parse_side(text: str) -> Side:
    """A pasted link → Side; never raises (a bad value is a note, a config the engine refuses is the error)."""
    query = query_part(text)
    if not query:
        return Side(query)
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
