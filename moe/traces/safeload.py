"""Loading the binary files routing sources write (`torch.save` `.pt`, NumPy `.npy`/`.npz`) as untrusted input.

- `.pt` only through `torch.load(..., weights_only=True)`: a pickle that would run code (or build any object
  that is not a tensor, number, string, list, tuple or dict) is refused in one line, never run.
- `.npy`/`.npz` only with `allow_pickle=False`; every array's shape and dtype are read from its header and
  checked against the memory budget before a byte of data is read (a compressed `.npz` cannot expand past it).
- The decoded size of everything loaded is at most a quarter of the memory budget (`TraceLimits`).
"""
from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np

from moe.memory import BUDGET_ENV, describe_bytes
from moe.traces.records import TraceLimits, open_regular

ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"


def _cap(limits: TraceLimits | None) -> int:
    return (limits or TraceLimits.from_env()).budget // 4


def _too_big(path: str, size: int, cap: int) -> ValueError:
    return ValueError(f"{path!r} decodes to {describe_bytes(size)}, over the {describe_bytes(cap)} a routing file may "
                      f"take under the memory budget; give a shorter dump or raise {BUDGET_ENV}")


def load_pt(path: str, limits: TraceLimits | None = None):
    """The object a `torch.save` file holds, loaded with weights_only=True (tensors stay tensors)."""
    import torch
    cap = _cap(limits)
    with open_regular(path) as f:
        head = f.read(4)
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        if head == ZIP_MAGIC:  # torch.save's zip format stores tensors uncompressed: sum the members
            try:
                size = sum(info.file_size for info in zipfile.ZipFile(f).infolist())
            except (zipfile.BadZipFile, OSError, EOFError):
                raise _damaged(path, "torch.save file") from None
            f.seek(0)
        if size > cap:
            raise _too_big(path, size, cap)
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"{path!r} holds Python objects that would run code when loaded, so it is refused "
                             f"(only tensors, numbers, strings, lists and dicts are read: torch.load with "
                             f"weights_only=True); save the dump with plain tensors") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile, AttributeError,
                TypeError, IndexError):
            raise _damaged(path, "torch.save file") from None


def _damaged(path: str, what: str) -> ValueError:
    return ValueError(f"{path!r} is not a readable {what} (truncated or damaged); copy the file again")


def _npy_header(f, path: str) -> tuple[tuple, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
    except (ValueError, OSError, EOFError, SyntaxError):
        raise _damaged(path, "NumPy array file") from None
    if dtype.hasobject:
        raise ValueError(f"{path!r} holds Python objects (a pickled array), which are never loaded; save numbers "
                         f"only (np.save with allow_pickle=False)")
    return shape, dtype


def load_npy(path: str, limits: TraceLimits | None = None) -> np.ndarray:
    """One `.npy` array (allow_pickle=False), its decoded size checked from the header before reading."""
    cap = _cap(limits)
    with open_regular(path) as f:
        shape, dtype = _npy_header(f, path)
        size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if size > cap:
            raise _too_big(path, size, cap)
        f.seek(0)
        try:
            return np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise _damaged(path, "NumPy array file") from None


def load_npz(path: str, limits: TraceLimits | None = None) -> dict[str, np.ndarray]:
    """Every array of a `.npz` (allow_pickle=False), their decoded sizes checked from the headers first."""
    cap = _cap(limits)
    with open_regular(path) as f:
        try:
            archive = zipfile.ZipFile(f)
            total = 0
            for info in archive.infolist():
                with archive.open(info) as member:
                    shape, dtype = _npy_header(io.BufferedReader(member), path)
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if total > cap:
                raise _too_big(path, total, cap)
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (zipfile.BadZipFile, OSError, EOFError, KeyError):
            raise _damaged(path, "NumPy .npz file") from None
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise ValueError(f"{path!r} holds Python objects (a pickled array), which are never loaded; save "
                                 f"numbers only") from None
            raise


def sniff(path: str, n: int = 64) -> bytes:
    """The first n bytes of a regular file (format detection)."""
    with open_regular(path) as f:
        return f.read(n)
