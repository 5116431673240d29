"""Parquet files as an attacker writes them, for the page-header tests: a Thrift compact-protocol codec of its own
(written from the protocol's description, independent of moe.traces.parquet_pages) that decodes a footer or a page
header into [field id, type, value] lists and encodes it back, and builders of files whose pages decompress far past
what their rows need."""
from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte, i = buf[i], i + 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _unzig(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _read(buf: bytes, i: int, kind: int):
    if kind in (1, 2):
        return kind == 1, i
    if kind == 3:
        return struct.unpack_from("b", buf, i)[0], i + 1
    if kind in (4, 5, 6):
        value, i = _varint(buf, i)
        return _unzig(value), i
    if kind == 7:
        return struct.unpack_from("<d", buf, i)[0], i + 8
    if kind == 8:
        n, i = _varint(buf, i)
        return bytes(buf[i:i + n]), i + n
    if kind in (9, 10):
        head, i = buf[i], i + 1
        n, item = head >> 4, head & 0x0F
        if n == 15:
            n, i = _varint(buf, i)
        items = []
        for _ in range(n):
            if item in (1, 2):
                items.append(buf[i] == 1)
                i += 1
            else:
                value, i = _read(buf, i, item)
                items.append(value)
        return (item, items), i
    if kind == 12:
        return decode(buf, i)
    raise ValueError(f"type {kind} is not used by Parquet's metadata")


def decode(buf: bytes, i: int = 0) -> tuple[list, int]:
    """The struct at buf[i:] as [[field id, type, value], ...], and the offset after it."""
    fields, last = [], 0
    while True:
        head, i = buf[i], i + 1
        if head == 0:
            return fields, i
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field = last + delta
        else:
            raw, i = _varint(buf, i)
            field = _unzig(raw)
        value, i = _read(buf, i, kind)
        fields.append([field, kind, value])
        last = field


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zig(n: int) -> bytes:
    return _uvarint((n << 1) ^ (n >> 63))


def _write(kind: int, value) -> bytes:
    if kind == 3:
        return struct.pack("b", value)
    if kind in (4, 5, 6):
        return _zig(value)
    if kind == 7:
        return struct.pack("<d", value)
    if kind == 8:
        return _uvarint(len(value)) + value
    if kind in (9, 10):
        item, items = value
        out = bytearray([(len(items) << 4) | item] if len(items) < 15 else [0xF0 | item])
        if len(items) >= 15:
            out += _uvarint(len(items))
        for x in items:
            out += bytes([1 if x else 2]) if item in (1, 2) else _write(item, x)
        return bytes(out)
    if kind == 12:
        return encode(value)
    raise ValueError(kind)


def encode(fields: list) -> bytes:
    """The struct [[field id, type, value], ...] in the compact protocol (fields in the order given)."""
    out, last = bytearray(), 0
    for field, kind, value in fields:
        if kind in (1, 2):
            kind = 1 if value else 2
        delta = field - last
        out += bytes([(delta << 4) | kind]) if 0 < delta <= 15 else bytes([kind]) + _zig(field)
        if kind not in (1, 2):
            out += _write(kind, value)
        last = field
    return bytes(out) + b"\0"


def field(fields: list, fid: int) -> list:
    """The [field id, type, value] entry of field fid (KeyError when absent)."""
    for entry in fields:
        if entry[0] == fid:
            return entry
    raise KeyError(fid)


def footer(data: bytes) -> list:
    """A Parquet file's FileMetaData as fields."""
    size = int.from_bytes(data[-8:-4], "little")
    return decode(data[-8 - size:-8])[0]


def pages(data: bytes, chunk: list) -> list[tuple[int, list, int]]:
    """Every page header of a column chunk (its ColumnMetaData fields) from its first page to the end of its
    compressed bytes: (offset, header fields, header length)."""
    start = field(chunk, 9)[2]
    dictionary = [e for e in chunk if e[0] == 11]
    if dictionary and 0 < dictionary[0][2] < start:
        start = dictionary[0][2]
    end, out, pos = start + field(chunk, 7)[2], [], start
    while pos < end:
        header, after = decode(data, pos)
        out.append((pos, header, after - pos))
        pos = after + field(header, 3)[2]
    return out


def chunks(meta: list) -> list[list]:
    """Every ColumnMetaData (fields) of a FileMetaData, row group after row group."""
    return [field(column, 3)[2] for group in field(meta, 4)[2][1] for column in field(group, 1)[2][1]]


def _plain(values: np.ndarray) -> bytes:
    """A column's values as a PLAIN page holds them: little-endian numbers, booleans packed 8 a byte."""
    if values.dtype == np.bool_:
        return np.packbits(values, bitorder="little").tobytes()
    return values.astype(values.dtype.newbyteorder("<")).tobytes()


def _pages_of(raw: bytes, n: int, page_bytes: int, trick: str | None) -> bytes:
    """One column's pages (headers and zstd bodies): n values PLAIN (raw), then zeros up to page_bytes. A `trick`
    writes a header that Thrift C++ (pyarrow) reads one way and a careless reader another: "wrap" gives the size
    4096 and then again, as field id 65538 (a 16-bit 2), page_bytes; "typed" gives page_bytes and then again as an
    i64 4096 (a field of the wrong type is skipped); "values" puts half the values in a first page whose count is
    given again as an i64 n (skipped), so the big page after it is read too."""
    def header(size: int, body: bytes, count: int, more: list = (), inner: list = ()) -> bytes:
        """A data page header, then `more` fields; its data page header's fields, then `inner`."""
        counts = [[1, 5, count], [2, 5, 0], [3, 5, 3], [4, 5, 3], *inner]
        return encode([[1, 5, 0], [2, 5, size], [3, 5, len(body)], [5, 12, counts], *more])

    body = pa.compress(raw + bytes(page_bytes - len(raw)), codec="zstd", asbytes=True)
    if trick == "wrap":
        return header(4096, body, n, [[65538, 5, page_bytes]]) + body
    if trick == "typed":
        return header(page_bytes, body, n, [[2, 6, 4096]]) + body
    if trick == "values":
        cut = len(raw) // n * (n // 2)                                               # the first n // 2 values
        first = pa.compress(raw[:cut], codec="zstd", asbytes=True)
        rest = pa.compress(raw[cut:] + bytes(page_bytes - (len(raw) - cut)), codec="zstd", asbytes=True)
        return header(cut, first, n // 2, inner=[[1, 6, n]]) + first + header(page_bytes, rest, n - n // 2) + rest
    return header(page_bytes, body, n) + body


def page_bomb(path, columns: dict, page_bytes: int, lie: bool = False, trick: str | None = None) -> int:
    """A file of the given columns (numpy arrays of int64, float32 or bool; 10 rows or so) in which each column is
    one PLAIN zstd data page whose header claims, and whose data decompresses to, page_bytes: the values, then
    zeros (`_pages_of`, with its tricks). The footer states the true sizes, or with `lie` a chunk of 100 bytes.
    Returns the file's size."""
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    table = pa.table({name: pa.array(values) for name, values in arrays.items()},
                     schema=pa.schema([pa.field(name, pa.from_numpy_dtype(v.dtype), nullable=False)
                                       for name, v in arrays.items()]))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False, write_statistics=False,
                   store_schema=False)
    data = sink.getvalue().to_pybytes()
    meta = footer(data)
    out = bytearray(b"PAR1")
    group = field(meta, 4)[2][1][0]
    for column, values in zip(field(group, 1)[2][1], arrays.values()):
        written = _pages_of(_plain(values), len(values), page_bytes, trick)
        chunk = field(column, 3)[2]
        field(chunk, 9)[2] = field(column, 2)[2] = len(out)
        field(chunk, 7)[2] = len(written)
        field(chunk, 6)[2] = 100 if lie else len(written) + page_bytes
        out += written
    for entry in [e for e in group if e[0] not in (1, 2, 3)]:  # offsets and sizes of the file as pyarrow wrote it
        group.remove(entry)
    tail = encode(meta)
    out += tail + len(tail).to_bytes(4, "little") + b"PAR1"
    with open(path, "wb") as f:
        f.write(out)
    return len(out)


def dictionary_claim(path, columns: list[str], entries: int) -> None:
    """A file of int64 `columns`, 10 rows of 0 each: per column a PLAIN dictionary page that holds one 8-byte entry
    but whose header announces `entries`, and one data page of RLE_DICTIONARY indices (bit width 1, one run of ten
    0s), neither compressed."""
    table = pa.table({name: np.zeros(10, np.int64) for name in columns},
                     schema=pa.schema([pa.field(name, pa.int64(), nullable=False) for name in columns]))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none", write_statistics=False, store_schema=False)
    meta = footer(sink.getvalue().to_pybytes())
    group = field(meta, 4)[2][1][0]
    out = bytearray(b"PAR1")
    for column in field(group, 1)[2][1]:
        values, indices = bytes(8), b"\x01\x14\x00"                                 # width 1; (10 << 1), value 0
        first = len(out)
        out += encode([[1, 5, 2], [2, 5, 8], [3, 5, 8], [7, 12, [[1, 5, entries], [2, 5, 0]]]]) + values
        data = len(out)
        out += encode([[1, 5, 0], [2, 5, 3], [3, 5, 3], [5, 12, [[1, 5, 10], [2, 5, 8], [3, 5, 3], [4, 5, 3]]]])
        out += indices
        chunk = [e for e in field(column, 3)[2] if e[0] not in (9, 11, 12)] + [[9, 6, data], [11, 6, first]]
        chunk.sort(key=lambda e: e[0])
        field(chunk, 6)[2] = field(chunk, 7)[2] = len(out) - first
        column[:] = [[2, 6, first] if e[0] == 2 else [3, 12, chunk] if e[0] == 3 else e for e in column]
    group[:] = [e for e in group if e[0] in (1, 2, 3)]
    tail = encode(meta)
    with open(path, "wb") as f:
        f.write(out + tail + len(tail).to_bytes(4, "little") + b"PAR1")


def many_pages(path, pages: int, groups: int = 1, columns: tuple = ("x",), damaged: bool = False, rows: int = 10,
               shared: bool = True) -> None:
    """A file of int64 `columns`: `groups` row groups of `rows` rows whose chunks all point at the same bytes (or,
    without `shared`, each at a copy of its own): `pages` index pages (a 7-byte header each, no values: pyarrow skips
    them), then one data page of `rows` 0s (`damaged`: of no bytes at all, which pyarrow fails to read)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({name: np.zeros(rows, np.int64) for name in columns},  # optional columns when damaged
                            schema=pa.schema([pa.field(name, pa.int64(), nullable=damaged) for name in columns])),
                   sink, compression="none", write_statistics=False, store_schema=False)
    meta = footer(sink.getvalue().to_pybytes())
    index = encode([[1, 5, 1], [2, 5, 0], [3, 5, 0]])
    size, levels = (0, 0) if damaged else (8 * rows, 3)  # damaged: no bytes, and levels in an encoding never used
    data = encode([[1, 5, 0], [2, 5, size], [3, 5, size],
                   [5, 12, [[1, 5, rows], [2, 5, 0], [3, 5, levels], [4, 5, levels]]]])
    chunk_bytes = index * pages + data + bytes(size)
    group = field(meta, 4)[2][1][0]
    group[:] = [e for e in group if e[0] in (1, 2, 3)]
    copies = 1 if shared else groups * len(columns)
    out = bytearray(b"PAR1") + chunk_bytes * copies
    made = []
    for g in range(groups if not shared else 1):
        group = decode(encode(group))[0]                                             # a copy of its own
        for c, column in enumerate(field(group, 1)[2][1]):
            chunk, at = field(column, 3)[2], 4 + (0 if shared else (g * len(columns) + c) * len(chunk_bytes))
            field(chunk, 9)[2] = field(column, 2)[2] = at
            for entry in chunk:  # the dictionary page offset pyarrow wrote (its pages are gone): the chunk's start
                if entry[0] == 11:
                    entry[2] = at
            field(chunk, 6)[2] = field(chunk, 7)[2] = len(chunk_bytes)
        made.append(group)
    field(meta, 4)[2] = (12, made * groups if shared else made)
    field(meta, 3)[2] = rows * groups
    tail = encode(meta)
    with open(path, "wb") as f:
        f.write(out + tail + len(tail).to_bytes(4, "little") + b"PAR1")
