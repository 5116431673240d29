"""Compiled loops (numba) for the engine's sequential steps: `jit` for a function, `ufunc` for an elementwise rule
usable from numpy and from compiled code. Both release the GIL where they can and cache the machine code beside the
module (or in the user's cache folder where the package is read-only); where no cache folder can be written they
compile once per process instead of failing at import. numba checks a cached kernel against its own source file
only: a kernel must call compiled functions of its own module, or an edit of theirs is not seen (moe.parallel.chunks
keeps the replica split rule beside the loops that apply it)."""
from __future__ import annotations

from numba import njit, vectorize


def jit(function):
    """`function` compiled (nogil), cached when a cache folder is writable."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True)(function)


def ufunc(function):
    """`function` of scalars as a ufunc compiled on first use for the types it meets, cached when possible."""
    try:
        return vectorize(cache=True)(function)
    except RuntimeError:
        return vectorize()(function)
