"""Zip archives as untrusted input (torch.save's format, NumPy's .npz): Python's zipfile builds an object for every
member of the central directory before anything else is checked (a 78 MB file of a million empty members took 900 MB
and 19 s; a 22 MB .npz of 100,000 one-byte arrays 631 MB and 23 s), so the directory's size, as the end-of-central-
directory record (or its zip64 form) states it, is bounded first. And a member whose compressed bytes are damaged
raises zlib's or lzma's own error, which `DAMAGED` names with the rest, so it is one line, not a traceback.
"""
from __future__ import annotations

import lzma
import zipfile
import zlib

MAX_CENTRAL_BYTES = 4 << 20  # a central directory of ~50,000 members; a routing dump has a few (one per tensor)
DAMAGED = (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error, lzma.LZMAError)
_END, _LOCATOR, _END64 = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"


def open_zip(f, path: str) -> zipfile.ZipFile:
    """zipfile.ZipFile(f) once the central directory's stated size is at most MAX_CENTRAL_BYTES (ValueError, one
    line); an archive without an end record is left to zipfile, which refuses it (BadZipFile)."""
    size = _central_size(f)
    if size is not None and size > MAX_CENTRAL_BYTES:
        raise ValueError(f"{path!r} is a zip archive whose member list takes {size:,} bytes (more than "
                         f"{MAX_CENTRAL_BYTES:,}: tens of thousands of members); a routing dump holds a few")
    f.seek(0)
    return zipfile.ZipFile(f)


def _central_size(f) -> int | None:
    """The central directory's size as the archive's last end record states it (where zipfile looks: the last 22 bytes
    and a comment of up to 64 KiB), from its zip64 record when it defers to one."""
    end = f.seek(0, 2)
    f.seek(max(0, end - 22 - 0xFFFF))
    tail = f.read()
    at = tail.rfind(_END)
    if at < 0 or len(tail) - at < 22:
        return None
    size = int.from_bytes(tail[at + 12: at + 16], "little")
    if size == 0xFFFFFFFF and at >= 20 and tail[at - 20: at - 16] == _LOCATOR:  # zip64: the record it locates
        f.seek(int.from_bytes(tail[at - 12: at - 4], "little"))
        record = f.read(56)
        if record[:4] == _END64 and len(record) == 56:
            size = int.from_bytes(record[40:48], "little")
    return size
