"""What every command shares: the parser class whose errors are one line, and the one family of argument types.

Each type is an argparse `type=` callable: it returns the parsed value or raises ArgumentTypeError, which the
parser turns into `argument --flag: <message>` (a UsageError, printed as one line with exit status 2).
"""
from __future__ import annotations

import argparse
import math
import os


class UsageError(Exception):
    """A bad command-line value; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse prints the usage and the message and exits; the commands want one line and a status of their own."""

    def error(self, message: str):
        raise UsageError(message)


def integer(text: str) -> int:
    """Any decimal integer."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None


def _bounded_int(text: str, lo: int, hi: int | None, expected: str) -> int:
    """A decimal integer in lo..hi (hi None: no upper bound); else ArgumentTypeError saying what was expected."""
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text[:40]!r}")
    return value


def positive_int(text: str) -> int:
    """A decimal integer ≥ 1."""
    return _bounded_int(text, 1, None, "a positive integer")


def non_negative_int(text: str) -> int:
    """A decimal integer ≥ 0 (an index)."""
    return _bounded_int(text, 0, None, "an integer ≥ 0")


def int_in(lo: int, hi: int):
    """A type: a decimal integer in lo..hi."""
    return lambda text: _bounded_int(text, lo, hi, f"an integer from {lo} to {hi:,}")


def finite_float(text: str) -> float:
    """A number that is not NaN or ±inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
    return value


def check_paths_given(**paths) -> None:
    """ValueError for a path option given empty (`--out ""`): it would be skipped, or name a folder of spaces.
    Keyword: the option's name with _ for -, value None when the option is left out."""
    for name, path in paths.items():
        if path is not None and not path.strip():
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is empty; give a path, or leave {flag} out")


def check_file_out(flag: str, path: str | None) -> None:
    """ValueError (one line) unless a file can be written at `path` (None: the option is left out): not a folder,
    and its folder exists. Checked before the work whose result it holds, not after."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path[:80]!r} is a folder; give a file path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ValueError(f"{flag} {path[:80]!r}: its folder does not exist; give a file path in an existing folder")


MAX_TIMEOUT_S = 86_400.0  # a collective's timeout: at most a day (torch keeps it in milliseconds, a C int)


def timeout_seconds(text: str) -> float:
    """A timeout in seconds: a number above 0 and at most MAX_TIMEOUT_S."""
    value = finite_float(text)
    if not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"expected seconds above 0 and at most {MAX_TIMEOUT_S:,.0f}, "
                                         f"got {text[:40]!r}")
    return value


def finite_floats(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers, e.g. `0,0,1.5,0` (one per expert)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text[:80]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {text[:80]!r}")
    return values


def non_negative_ints(text: str) -> tuple[int, ...]:
    """Comma-separated decimal integers ≥ 0, e.g. `0,8,32` (one value is one too)."""
    return tuple(non_negative_int(part.strip()) for part in text.split(","))


def one_line(err: BaseException) -> str:
    """An error's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


def positive_float(text: str) -> float:
    """A finite number > 0 (a duration)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text[:40]!r}")
    return value
