"""What pyarrow decompresses to read a Parquet column chunk, read from the chunk's own page headers, not from the
footer. A page header states its decompressed size, and pyarrow allocates that much before it decodes a value: a
180 KB file whose footer honestly says "10 rows" held three zstd pages of 2 GB of zeros and took a reader to 4.4 GB
under a 1 GB budget. A footer can also understate a chunk's pages. So the pages pyarrow will read are walked here,
as its reader walks them (parquet-cpp `SerializedPageReader`, pyarrow 26): from the dictionary page (or the first
data page) on, page after page, until the data pages hold the footer's value count or the chunk's bytes end.

Page headers are Thrift compact-protocol structs (parquet-format `PageHeader`): 1 type, 2 uncompressed_page_size,
3 compressed_page_size (i32 each), 5 data_page_header, 7 dictionary_page_header, 8 data_page_header_v2 (structs, each
with 1 num_values, i32). Page types: 0 data, 1 index, 2 dictionary, 3 data v2. They are read as Thrift C++ reads
them (TCompactProtocol and parquet's generated PageHeader::read): field ids are 16-bit, a field of the wrong type is
skipped, a field given twice keeps its last value. A reader that differs is a hole: a header could show it 4 KB and
pyarrow 300 MB.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

MAX_HEADER_BYTES = 1 << 20  # a page header longer than this is refused (ours hold a few integers and min/max)
MAX_PAGES = 1 << 18         # page headers walked in one file at most: 256 GB of pyarrow's 1 MB pages (~1 s to walk)
_BLOCK = 1 << 16            # bytes read at a time while walking headers (small pages: many headers a read)
_MAX_DEPTH = 16             # nested structs deeper than any page header are refused
PADDING = 100               # parquet-cpp's kMaxDictHeaderSize (PARQUET-816): read past a chunk for old writers' files
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
_I32, _STRUCT = 5, 12       # compact types of the fields kept
_COUNT = {1: (_I32, None)}  # DataPageHeader, DictionaryPageHeader, DataPageHeaderV2: 1 num_values
_PAGE_HEADER = {1: (_I32, None), 2: (_I32, None), 3: (_I32, None), 5: (_STRUCT, _COUNT), 7: (_STRUCT, _COUNT),
                8: (_STRUCT, _COUNT)}


@dataclass(frozen=True)
class ChunkPages:
    """The pages of one column chunk that pyarrow reads: their decompressed bytes in total, the largest, the
    dictionary page's (0 without one), and how many headers were walked. A dictionary page's entry count is not
    needed: pyarrow 26 refuses one that its bytes cannot hold ("Unexpected end of stream") before it builds the
    dictionary."""
    uncompressed: int
    largest: int
    dictionary: int
    pages: int = 0


class _Short(Exception):
    """The bytes at hand end inside the header (read more)."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """An unsigned varint of at most 10 bytes (Thrift's limit), and the offset after it."""
    value = shift = 0
    while True:
        if i >= len(buf):
            raise _Short
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise ValueError("a varint longer than 10 bytes")


def _i32(raw: int) -> int:
    """A varint as Thrift C++ reads an i32 (or i16) from it: its low 32 bits, zigzag-decoded."""
    raw &= 0xFFFFFFFF
    return (raw >> 1) ^ -(raw & 1)


def _i16(n: int) -> int:
    """n cast to a signed 16-bit integer, as Thrift C++ holds a field id."""
    return ((n + 0x8000) & 0xFFFF) - 0x8000


def _skip(buf: bytes, i: int, kind: int, depth: int) -> int:
    """The offset after a value of compact type `kind` at i. Every element of a collection takes a byte or more, so
    a count past the bytes at hand ends the header early."""
    if kind in (1, 2):                       # bool, in the field header itself
        return i
    if kind == 3:                            # byte
        if i >= len(buf):
            raise _Short
        return i + 1
    if kind in (4, 5, 6):                    # i16, i32, i64: varints
        return _varint(buf, i)[1]
    if kind in (7, 8):                       # double; binary: its length, then its bytes
        n, i = (8, i) if kind == 7 else _varint(buf, i)
        if i + n > len(buf):
            raise _Short
        return i + n
    if depth >= _MAX_DEPTH:
        raise ValueError("a page header nested too deep")
    if kind in (9, 10):                      # list, set: a byte of size and element type, the size past 14 apart
        if i >= len(buf):
            raise _Short
        head, i = buf[i], i + 1
        n, item = head >> 4, head & 0x0F
        if n == 15:
            n, i = _varint(buf, i)
        return _items(buf, i, item, n, depth + 1)
    if kind == 11:                           # map: its size, then a byte of key and value types
        n, i = _varint(buf, i)
        if n:
            if i >= len(buf):
                raise _Short
            key, item = buf[i] >> 4, buf[i] & 0x0F
            i += 1
            for _ in range(n):
                i = _items(buf, _items(buf, i, key, 1, depth + 1), item, 1, depth + 1)
        return i
    if kind == 12:
        return _struct(buf, i, depth + 1, {})[1]
    raise ValueError(f"a page header with a field of unknown type {kind}")


def _items(buf: bytes, i: int, kind: int, n: int, depth: int) -> int:
    """The offset after n collection elements of type `kind` at i (a bool element is a byte of its own)."""
    if kind in (1, 2):
        if i + n > len(buf):
            raise _Short
        return i + n
    for _ in range(n):
        i = _skip(buf, i, kind, depth)
    return i


def _struct(buf: bytes, i: int, depth: int, schema: dict) -> tuple[dict, int]:
    """The struct at i, read as Thrift C++ reads it: field ids are 16-bit; a field named in `schema` (id -> (compact
    type, nested schema)) is kept only when it has that type (a later one replaces an earlier), any other skipped;
    type 0 ends the struct. Returns {field id: value} and the offset after it."""
    if depth > _MAX_DEPTH:
        raise ValueError("a page header nested too deep")
    fields, last = {}, 0
    while True:
        if i >= len(buf):
            raise _Short
        head, i = buf[i], i + 1
        kind, delta = head & 0x0F, head >> 4
        if kind == 0:
            return fields, i
        if delta:
            field = _i16(last + delta)
        else:
            raw, i = _varint(buf, i)
            field = _i16(_i32(raw))
        want = schema.get(field)
        if want is not None and want[0] == kind == _STRUCT:
            fields[field], i = _struct(buf, i, depth + 1, want[1])
        elif want is not None and want[0] == kind:
            raw, i = _varint(buf, i)
            fields[field] = _i32(raw)
        else:
            i = _skip(buf, i, kind, depth)
        last = field


def page_header(buf: bytes, i: int = 0) -> tuple[dict, int]:
    """The page header at buf[i:] (the fields this module reads), and the offset after it. _Short when buf ends
    inside it; ValueError when it is not a page header."""
    header, after = _struct(buf, i, 0, _PAGE_HEADER)
    if any(header.get(field, -1) < 0 for field in (1, 2, 3)):
        raise ValueError("a page header without its type and sizes")
    return header, after


def _values(header: dict) -> int:
    """The values a data page holds (0 for the other pages)."""
    if header[1] not in (DATA_PAGE, DATA_PAGE_V2):
        return 0
    value = header.get({DATA_PAGE: 5, DATA_PAGE_V2: 8}[header[1]], {}).get(1, -1)
    if value < 0:
        raise ValueError("a data page without its value count")
    return value


def chunk_pages(f, chunk, max_pages: int = MAX_PAGES, walked: list | None = None) -> ChunkPages:
    """The pages pyarrow reads of `chunk` (pyarrow's ColumnChunkMetaData) in the open file f, from their headers (at
    most max_pages of them: ValueError past that, a file of tiny pages or of chunks that share their pages).
    `walked`: the byte ranges [start, end) walked so far in this file, sorted (the call adds its own); ValueError
    when this chunk's pages lie in one of them. Chunks of a file never share bytes, and an auditor's 1 MB file whose
    column chunks all named one 1 MB page header made this walk parse it again for each (1.2-1.6 s of CPU apiece).
    pyarrow 26 reads the chunk's bytes from its first page (`ComputeColumnChunkRange` in parquet-cpp's
    file_reader.cc: the dictionary page when it comes first) with up to PADDING bytes more for files that claim an
    old writer, and stops at the footer's value count (`SerializedPageReader::NextPage`, column_reader.cc).
    ValueError when a header cannot be read, or runs past the chunk."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and (chunk.dictionary_page_offset or 0) > 0:
        start = min(start, chunk.dictionary_page_offset)
    if start < 0:
        raise ValueError("a column chunk at a negative offset")
    f.seek(0, 2)
    end = min(start + max(chunk.total_compressed_size, 0) + PADDING, f.tell())
    wanted, seen, total, largest, dictionary, n_pages = chunk.num_values, 0, 0, 0, 0, 0
    pos, base, buf = start, start, b""
    if walked is not None and wanted > 0:  # a chunk of no values (an empty row group) reads nothing: offset 0
        _claim(walked, start)
    while pos < end and seen < wanted:
        if n_pages >= max_pages:
            raise ValueError(f"more than {MAX_PAGES:,} pages in one file")
        try:
            header, after = page_header(buf, pos - base)
        except _Short:
            have = base + len(buf) - pos                                             # bytes at hand from pos on
            if base + len(buf) >= end:
                raise ValueError("a page header runs past its column chunk") from None
            if have >= MAX_HEADER_BYTES:
                raise ValueError("a page header longer than 1 MiB") from None
            f.seek(pos)
            base, buf = pos, f.read(min(max(_BLOCK, 2 * have), end - pos, MAX_HEADER_BYTES))
            if not buf:
                raise ValueError("a page header runs past its column chunk") from None
            continue
        total, largest = total + header[2], max(largest, header[2])
        dictionary += header[2] if header[1] == DICTIONARY_PAGE else 0
        seen, n_pages = seen + _values(header), n_pages + 1
        pos = base + after + header[3]
    if walked is not None and n_pages:
        _claim(walked, start, pos)
    return ChunkPages(total, largest, dictionary, n_pages)


def _claim(walked: list, start: int, end: int | None = None) -> None:
    """ValueError when [start, end) (or, without end, the byte at start) lies in a range of `walked` (sorted, disjoint)
    or, with end, overlaps one; with end, the range is added in order."""
    i = bisect.bisect_right(walked, (start, float("inf")))
    hit = i > 0 and walked[i - 1][1] > start or end is not None and i < len(walked) and walked[i][0] < end
    if hit:
        raise ValueError("two column chunks share their pages (the file's footer is not as written)")
    if end is not None:
        walked.insert(i, (start, end))
