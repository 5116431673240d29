"""Zip archives as untrusted input (torch.save's format, NumPy's .npz): Python's zipfile builds an object for every
member of the central directory before anything else is checked (a 78 MB file of a million empty members took 900 MB
and 19 s; a 22 MB .npz of 100,000 one-byte arrays 631 MB and 23 s), so the directory's size, as the end-of-central-
directory record (or its zip64 form) states it, is bounded first, read by zipfile's own `_EndRecData` (what
`ZipFile` reads next; CPython 3.11's zipfile.py, a private name, so a test checks it is there). And a member whose
compressed bytes are damaged raises zlib's or lzma's own error, which `DAMAGED` names with the rest, so it is one
line, not a traceback.
"""
from __future__ import annotations

import lzma
import zipfile
import zlib

MAX_CENTRAL_BYTES = 4 << 20  # a central directory of ~50,000 members; a routing dump has a few (one per tensor)
DAMAGED = (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error, lzma.LZMAError)


def open_zip(f, path: str) -> zipfile.ZipFile:
    """zipfile.ZipFile(f) once the central directory's size, as zipfile itself reads it from the end record (its
    `_EndRecData`: a reader of our own disagreed with it on four crafted files and let a million members through), is
    at most MAX_CENTRAL_BYTES (ValueError, one line); BadZipFile without an end record."""
    end = zipfile._EndRecData(f)
    if not end:
        raise zipfile.BadZipFile("no end of central directory record")
    size = end[zipfile._ECD_SIZE]
    if size > MAX_CENTRAL_BYTES:
        raise ValueError(f"{path!r} is a zip archive whose member list takes {size:,} bytes (more than "
                         f"{MAX_CENTRAL_BYTES:,}: tens of thousands of members); a routing dump holds a few")
    f.seek(0)
    return zipfile.ZipFile(f)
