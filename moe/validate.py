"""Type checks for config dataclasses: every field is checked (and coerced) from its declared type; and the two
value checks every other input uses (`int_at_least`, `finite_number`).

`check_fields(obj)` reads the dataclass's type hints, so a field added later is covered without
touching this file. Accepted: Python and numpy numbers where a number goes (coerced to int/float),
bool only where a bool goes, str only where a str goes, a sequence of numbers (never a string)
where a tuple goes, None where the type allows it. Range checks stay with the config itself.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing

import numpy as np

SEED_LIMIT = 2 ** 64       # torch.Generator.manual_seed takes seeds below 2**64
BIAS_LIMIT = 1e4           # |logit_bias|, |expert_bias|: larger values overflow float16/float32 logits
_FINITE_TUPLES = ("logit_bias", "expert_bias")


def int_at_least(name: str, value, minimum: int) -> int:
    """`value` as an int >= minimum (Python or numpy integers, never a bool); else a ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def finite_number(name: str, value, *, minimum: float | None = None, positive: bool = False) -> float:
    """`value` as a finite float (>= minimum, or > 0 when positive); else a ValueError naming `name`."""
    try:
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    except OverflowError:  # an int too large for a float (10**400) is no finite number either
        ok = False
    if not ok or (minimum is not None and value < minimum) or (positive and value <= 0):
        bound = " > 0" if positive else "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_fields(obj) -> None:
    """Raise ValueError naming the field when a value does not fit its declared type; coerce numbers."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        coerced = _coerce(f.name, value, hints.get(f.name, typing.Any), f.default)
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)  # frozen dataclasses: set once, in __post_init__
    seed = getattr(obj, "seed", None)
    if isinstance(seed, int) and seed >= SEED_LIMIT:
        raise ValueError(f"seed must be below 2**64 (torch generators take 64-bit seeds), got {seed!r}")
    for name in _FINITE_TUPLES:
        values = getattr(obj, name, None)
        if values is not None and any(abs(v) > BIAS_LIMIT for v in values if math.isfinite(v)):
            raise ValueError(f"{name} values must lie within ±{BIAS_LIMIT:g} (larger ones overflow the "
                             f"logits to inf/NaN); got {values!r}")


def _coerce(name: str, value, hint, default=None):
    if hint is typing.Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in typing.get_args(hint)
        if value is None and optional:
            return None
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if len(options) == 1:
            return _coerce(name, value, options[0], default)  # its own, more precise message
        for option in options:
            try:
                return _coerce(name, value, option, default)
            except ValueError:
                continue
        allowed = " or ".join([_describe(o) for o in options] + (["None"] if optional else []))
        raise ValueError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:
        return _tuple(name, value, typing.get_args(hint))
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        raise ValueError(f"{name} must be {_integer(default)}, got {value!r} ({type(value).__name__})")
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{name} must be a {hint.__name__}, got {type(value).__name__}")
    return value


def _tuple(name: str, value, args: tuple):
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, np.ndarray)):
        raise ValueError(f"{name} must be a sequence (tuple or list) of values, got {value!r} "
                         f"({type(value).__name__})")
    items = list(value.tolist() if isinstance(value, np.ndarray) else value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(items))
    if args and len(args) != len(items):
        raise ValueError(f"{name} must have {len(args)} values, got {len(items)}")
    return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(items, args))) if args else tuple(items)


def _integer(default) -> str:
    """How to name an integer field: its default's sign says which range the config checks."""
    if isinstance(default, int) and not isinstance(default, bool):
        return "a positive integer" if default > 0 else "a non-negative integer" if default == 0 else "an integer"
    return "an integer"


def _describe(hint) -> str:
    return {bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(
        hint, "a sequence of values" if typing.get_origin(hint) is tuple else getattr(hint, "__name__", str(hint)))
