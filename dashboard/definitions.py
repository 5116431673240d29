"""Definitions shown next to the charts: the texts live in the engine (moe/definitions.py), written once."""
from __future__ import annotations

from moe.definitions import DEFINITIONS

__all__ = ["DEFINITIONS", "caption"]


def caption(*keys: str) -> str:
    """The definitions of `keys`, one markdown line each (a KeyError names an unknown key)."""
    return "  \n".join(f"`{key}`: {DEFINITIONS[key]}" for key in keys)
