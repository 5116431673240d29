"""Loading the binary files routing sources write (`torch.save` `.pt`, NumPy `.npy`/`.npz`) as untrusted input.

- `.pt` only through `torch.load(..., weights_only=True)`, its pickle bounded first (moe.traces.tensors): a pickle
  that would run code (or build anything but tensors, numbers, strings, lists, tuples, dicts) is refused, never run.
- `.npy`/`.npz` only with `allow_pickle=False`; every array's shape and dtype are read from its header and checked
  against the memory budget before a byte of data is read (a compressed `.npz` cannot expand past it).
- What is loaded here decodes to at most a quarter of the memory budget (`TraceLimits`); a counts table's reader
  (moe.traces.counts) allows its rows half, freed before the statistics take the other half.
- Parquet (`parquet_file`, `parquet_bytes`, `label_codes`): a few kilobytes of dictionary-encoded pages can name a
  100 KB label on millions of rows, or millions of equal numbers, so neither the file's size nor its "uncompressed"
  sizes bound what pyarrow builds. Text columns are read as dictionaries (each label once), and the bytes a read
  builds are bounded from the footer's row and value counts before any page is decoded, and by the pages pyarrow
  will decompress, read from their own headers (moe.traces.parquet_pages), whatever the footer says.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import zipfile

import numpy as np

from moe.memory import BUDGET_ENV, describe_over
from moe.traces.parquet_pages import MAX_PAGES, ChunkPages, chunk_pages
from moe.traces.records import MAX_LAYERS, TraceLimits, open_regular
from moe.traces.tensors import OverBudget, check_pickles, check_tensors
from moe.traces.zipfiles import DAMAGED, open_zip

ZIP_MAGIC = b"PK\x03\x04"
MAX_NPZ_ARRAYS = 256
NPY_MAGIC = b"\x93NUMPY"
PARQUET_MAGIC = b"PAR1"
# Bytes a row group takes while pyarrow decodes it, per byte of its columns (its pages and buffers beside them):
# measured 1.15-1.17 for 4 M-row groups of four integer or dictionary columns.
DECODE_FACTOR = 1.25
# Bytes a label column's pages may hold a value (or a dictionary entry): a layer name of up to 32 characters and its
# 4-byte length, with room to spare; text far longer is refused before it is decoded.
LABEL_PAGE_BYTES = 48
# Bytes a label column takes while decoded and converted, per byte of its pages (decompressed pages, the dictionary
# built from them, and the labels' Python strings): a 470 MB label took 4.8 times its size.
TEXT_FACTOR = 5
# Bytes pyarrow may take per value it hashes while it builds a text column's dictionary (values of plain pages: a
# writer falls back to them when a chunk has many distinct values): measured ~57 for 4 M distinct labels.
DICTIONARY_BUILD_BYTES = 64
# Bytes a page takes while pyarrow decodes it, per byte its header says it decompresses to (pyarrow allocates that
# much first): measured 1.01 for a 1 GB page of one column; columns are decoded side by side, so each counts.
PAGE_FACTOR = 1.25


def _cap(limits: TraceLimits | None) -> int:
    return (limits or TraceLimits.from_env()).budget // 4


def _too_big(path: str, size: int, cap: int) -> ValueError:
    return OverBudget("{!r} decodes to {}, over the {} a routing file may take under the memory budget; give a "
                      "shorter dump or raise {}".format(path, *describe_over(size, cap), BUDGET_ENV))


def load_pt(path: str, limits: TraceLimits | None = None, cap: int | None = None, opened=None):
    """The torch.save file's object, loaded weights_only (in `cap` bytes); `opened`: the caller's open file (closed)."""
    import torch
    cap = _cap(limits) if cap is None else cap
    with opened or open_regular(path) as f:
        head, size, archive = f.read(4), f.seek(0, 2), None  # seek returns the new position: the size
        if head == ZIP_MAGIC:  # torch.save's zip format stores tensors uncompressed: sum the members
            try:
                archive = open_zip(f, path)
                size = sum(info.file_size for info in archive.infolist())
            except DAMAGED:
                raise _damaged(path, "torch.save file") from None
        if size > cap:
            raise _too_big(path, size, cap)
        check_pickles(f, archive, path, cap)  # what unpickling would build
        f.seek(0)
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"{path!r} holds Python objects that would run code when loaded, so it is refused "
                             f"(only tensors, numbers, strings, lists and dicts are read: torch.load with "
                             f"weights_only=True); save the dump with plain tensors") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile, AttributeError,
                TypeError, IndexError):
            raise _damaged(path, "torch.save file") from None
    return check_tensors(obj, path, cap)


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
            archive, total = open_zip(f, path), 0
            if len(archive.infolist()) > MAX_NPZ_ARRAYS:  # each is opened twice: 60,000 copies of one took 15 s
                raise ValueError(f"{path!r} holds {len(archive.infolist()):,} arrays, over the {MAX_NPZ_ARRAYS} a "
                                 f"routing .npz may hold (a Megatron-Core dump holds 11)")
            for info in archive.infolist():
                with archive.open(info) as member:
                    shape, dtype = _npy_header(io.BufferedReader(member), path)
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if total > cap:
                raise _too_big(path, total, cap)
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except DAMAGED:  # a damaged archive, or a member that does not decompress
            raise _damaged(path, "NumPy .npz file") from None
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise ValueError(f"{path!r} holds Python objects (a pickled array), which are never loaded; save "
                                 f"numbers only") from None
            raise


def parquet_file(f, where: str, limits: TraceLimits):
    """pyarrow's ParquetFile for the open file f, once its footer fits the budget, with every text column read as a
    dictionary (indices, and each distinct label once); ValueError (one line) for a damaged file."""
    import pyarrow.parquet as pq
    f.seek(0, 2)
    if f.tell() >= 12:
        f.seek(-8, 2)
        tail = f.read(8)
        footer = int.from_bytes(tail[:4], "little") if tail[4:] == PARQUET_MAGIC else 0
        if footer > f.tell() - 12:  # longer than the file: damaged, not a matter of the budget
            raise ValueError(f"{where} is not a readable Parquet file (its footer is longer than the file)")
        if footer > limits.line_bytes:
            raise ValueError("{} has a Parquet footer of {}, over the {} the memory budget allows; give a smaller "
                             "file or raise {}".format(where, *describe_over(footer, limits.line_bytes), BUDGET_ENV))
    try:
        source = _native(f)
        schema = pq.ParquetFile(source).schema_arrow
        text = [field.name for field in schema if is_text(field.type)]
        pf = pq.ParquetFile(source, read_dictionary=text)
    except Exception as err:  # pyarrow raises its own types for a damaged file
        raise ValueError(f"{where} is not a readable Parquet file ({type(err).__name__}); copy it again") from None
    if len(set(pf.schema_arrow.names)) < len(pf.schema_arrow.names):
        raise ValueError(f"{where} names a column twice; give the file as written")
    return pf


def _native(f):
    """f reopened through its descriptor, for pyarrow to read natively: with a Python object, a worker still holding
    it after a failed read took the GIL at exit and aborted (exit 134, half the runs of a damaged 30-group file)."""
    import pyarrow as pa
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no such folder, or f has no descriptor
            return pa.OSFile(f"{folder}/{f.fileno()}")
    return f  # pyarrow seeks before each read


def is_text(kind) -> bool:
    """Text or bytes (some writers store text without its UTF-8 annotation), plain, large or as views."""
    import pyarrow as pa
    return any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                                       pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view))


def is_label(kind) -> bool:
    """A column type layer names may have: integers, or text (as `parquet_file` reads it: a dictionary of text)."""
    import pyarrow as pa
    return pa.types.is_integer(kind) or is_text(kind) or (pa.types.is_dictionary(kind) and is_text(kind.value_type))


def _cost(kind) -> tuple[int, int, bool, bool] | None:
    """(bytes per value, bytes of offsets per row, text, list) of a column of this type as `parquet_file` reads it,
    or None for a type whose size the footer does not bound (nested deeper, or lists of text)."""
    import pyarrow as pa
    if pa.types.is_dictionary(kind):  # its index (its dictionary: parquet_bytes)
        return (kind.index_type.bit_width // 8, 0, True, False) if is_text(kind.value_type) else None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = _cost(kind.value_type)
        if inner is None or inner[1] or inner[2] or inner[3]:
            return None
        return inner[0], 0 if pa.types.is_fixed_size_list(kind) else 8, False, True
    if pa.types.is_boolean(kind) or pa.types.is_null(kind):  # an empty column: nothing but its rows
        return 1, 0, False, False
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind):
        return max(kind.bit_width // 8, 1), 0, False, False
    return None


def parquet_bytes(f, pf, columns: list[str], where: str, largest_group: bool = False) -> int:
    """At most the bytes pyarrow builds reading `columns` of pf (a `parquet_file` of the open file f): the whole file,
    or with `largest_group` its largest row group (a reader that takes one row group at a time). Per row group: each
    column's values (one per row, from the footer; a list's from its chunk) times their width, list offsets per row
    and validity bits, DECODE_FACTOR times over; the pages pyarrow decompresses, from their own headers
    (`parquet_pages.chunk_pages`: the largest page and the dictionary page, PAGE_FACTOR times over); and a text
    column's pages TEXT_FACTOR times over (their dictionary, labels of a layer name's length: `_label_pages`), and
    DICTIONARY_BUILD_BYTES for each value pyarrow may hash to build it (a value takes 4 bytes or more of the pages).
    ValueError for a column that is missing, of a type it cannot bound, of text far longer than layer names, or with
    a page header that cannot be read."""
    schema, meta = pf.schema_arrow, pf.metadata
    costs = {}
    for name in columns:
        costs[name] = _cost(schema.field(name).type) if name in schema.names else None
        if costs[name] is None:
            raise ValueError(f"{where} has no column {name!r} of numbers, labels or lists of numbers; give the file as "
                             f"written")
    sizes, left, walked = [], MAX_PAGES, []  # page headers the file may still make us walk; byte ranges walked
    for group in map(meta.row_group, range(meta.num_row_groups)):
        rows, size = group.num_rows, 0
        for chunk in map(group.column, range(group.num_columns)):
            cost = costs.get(chunk.path_in_schema.split(".")[0])
            if cost is None:
                continue
            width, offsets, text, listed = cost
            values = max(chunk.num_values, rows) if listed else rows
            pages = _pages(f, chunk, where, left, walked)
            left -= pages.pages
            size += int(DECODE_FACTOR * (values * width + rows * offsets + (rows + values) // 8 + 128))
            size += int(PAGE_FACTOR * (pages.largest + pages.dictionary))
            if text:
                held = _label_pages(chunk, pages, values, where)
                size += TEXT_FACTOR * held + DICTIONARY_BUILD_BYTES * min(values, held // 4)
        sizes.append(size)
    return max(sizes, default=0) if largest_group else sum(sizes)


def chunk_bytes(f, pf, columns: list[str], where: str) -> list[int]:
    """Per row group, the decompressed bytes of the pages pyarrow reads of `columns` (their headers' sizes, not the
    footer's), each text column's checked as `_label_pages` does (a reader that bounds rows otherwise)."""
    meta, out, left, walked = pf.metadata, [], MAX_PAGES, []
    text = {name for name in columns if name in pf.schema_arrow.names
            and (_cost(pf.schema_arrow.field(name).type) or (0, 0, False))[2]}
    for group in map(meta.row_group, range(meta.num_row_groups)):
        total = 0
        for chunk in map(group.column, range(group.num_columns)):
            if chunk.path_in_schema.split(".")[0] not in columns:
                continue
            pages = _pages(f, chunk, where, left, walked)
            left -= pages.pages
            if chunk.path_in_schema in text:
                _label_pages(chunk, pages, max(chunk.num_values, group.num_rows), where)
            total += pages.uncompressed
        out.append(total)
    return out


def _pages(f, chunk, where: str, max_pages: int, walked: list) -> ChunkPages:
    """`chunk_pages`, its ValueError as one line naming the column."""
    try:
        return chunk_pages(f, chunk, max_pages, walked)
    except ValueError as err:
        raise ValueError(f"{where} is not a readable Parquet file (column {chunk.path_in_schema!r}: {err}); copy it "
                         f"again") from None


def _label_pages(chunk, pages: ChunkPages, values: int, where: str) -> int:
    """A text column chunk's decompressed pages (from their headers), refused (ValueError) past what labels of a layer
    name's length take: a dictionary of MAX_LAYERS labels and an index or a label a value, LABEL_PAGE_BYTES each at
    most."""
    if pages.uncompressed > (values + MAX_LAYERS) * LABEL_PAGE_BYTES:
        raise ValueError(f"{where}: column {chunk.path_in_schema!r} holds text far longer than layer names (1 to 32 "
                         f"characters); give the file as written")
    return pages.uncompressed


def label_codes(column, where: str) -> tuple[list[str], np.ndarray]:
    """The distinct labels of a column of text (dictionaries, as `parquet_file` reads them) or integers, in order of
    first appearance, and each row's index among them (N,) int64; ValueError for an empty (null) label or more than
    MAX_LAYERS labels. Each chunk's dictionary is converted once (its size checked first), never one string a row."""
    import pandas as pd
    import pyarrow as pa
    column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    if column.null_count:
        raise ValueError(f"{where} has empty (null) labels; give a label on every row")
    index: dict[str, int] = {}
    codes = np.empty(len(column), dtype=np.int64)
    at = 0
    for indices, dictionary in _dictionaries(column, where):
        labels = dictionary.to_pylist() if hasattr(dictionary, "to_pylist") else dictionary.tolist()
        if None in labels:
            raise ValueError(f"{where} has empty (null) labels; give a label on every row")
        mapped = np.array([index.setdefault(_text(v), len(index)) for v in labels] or [0], dtype=np.int64)
        if len(index) > MAX_LAYERS:
            raise _too_many(where)
        codes[at: at + len(indices)] = mapped[indices]
        at += len(indices)
    seen = pd.unique(codes)                                                           # in order of first appearance
    rank = np.zeros(len(index), dtype=np.int64)
    rank[seen] = np.arange(len(seen))
    names = list(index)
    np.take(rank, codes, out=codes)                                                   # in place
    return [names[k] for k in seen], codes


def _dictionaries(column, where: str):
    """Each chunk of the column as (indices, its dictionary), the dictionary's size checked before a value of it
    becomes a Python object. A chunk that is not a dictionary is encoded a slice at a time, so the hash table stays
    small: numbers with pandas (pyarrow's memo table took ~250 bytes a distinct value), text with pyarrow."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            slices = [chunk]
        elif pa.types.is_integer(chunk.type):
            slices = (chunk.slice(start, 1 << 20) for start in range(0, len(chunk), 1 << 20))
        else:
            slices = (pc.dictionary_encode(chunk.slice(start, 1 << 16)) for start in range(0, len(chunk), 1 << 16))
        for part in slices:
            if pa.types.is_dictionary(part.type):
                indices, dictionary = part.indices.to_numpy(zero_copy_only=False), part.dictionary
            else:
                indices, dictionary = pd.factorize(part.to_numpy(zero_copy_only=False))
            if len(dictionary) > MAX_LAYERS:
                raise _too_many(where)
            yield indices, dictionary


def _text(value) -> str:
    """A label as text: bytes decoded as UTF-8 (undecodable bytes become U+FFFD, which no layer name holds)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _too_many(where: str) -> ValueError:
    return ValueError(f"{where} names more than {MAX_LAYERS:,} different labels; a label names a layer: give the "
                      f"file as written")
