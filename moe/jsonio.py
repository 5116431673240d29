"""Strict JSON: the one writer every command and download uses, and the one strict reader of saved files.

NaN and ±inf have no JSON spelling (`JSON.parse` and every strict parser refuse a bare `NaN`), so they
are written as null. `allow_nan=False` stays on, so a value that slips past `strict` fails loudly here
instead of reaching a reader as invalid JSON.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any


def strict(value: Any) -> Any:
    """`value` with every non-finite float (also numpy and torch scalars) replaced by None, recursively."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy / torch arrays and scalars
        return strict(value.tolist())
    if hasattr(value, "__float__"):
        return strict(float(value))
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """One strict JSON document (NaN and ±inf → null). With an indent, json encodes in Python and `json.dumps` keeps
    every piece (a number, a comma, an indent) as its own string until it joins them: about 13 times the text's size
    (a 32 MB document grew 414 MB); its pieces are written to one growing buffer here instead (70 MB)."""
    value = strict(value)
    if indent is None:  # the C encoder, which joins as it goes
        return json.dumps(value, allow_nan=False)
    out = io.StringIO()
    for piece in json.JSONEncoder(indent=indent, allow_nan=False).iterencode(value):
        out.write(piece)
    return out.getvalue()


def loads_strict(text: str) -> Any:
    """JSON that a strict parser accepts: a bare NaN, Infinity or -Infinity is a ValueError whose message is that
    word (json.loads alone takes them); malformed text is json.JSONDecodeError (a ValueError) as usual."""
    def refuse(constant: str):
        raise ValueError(constant)
    return json.loads(text, parse_constant=refuse)


def dumps_lines(rows) -> str:
    """JSON Lines: one strict JSON document per row, newline-terminated."""
    return "".join(dumps(row) + "\n" for row in rows)
