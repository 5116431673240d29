"""Zip archives as untrusted input (moe.traces.zipfiles): a member list too long for a routing dump is refused from
the archive's end record, before Python's zipfile builds an object per member (a 78 MB .pt of a million empty
members took 900 MB and 19 s), and a member whose compressed bytes are damaged is one line (it was a zlib or lzma
traceback)."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from moe.traces.formats import read_log
from moe.traces.zipfiles import MAX_CENTRAL_BYTES, open_zip


def test_a_zip_of_tens_of_thousands_of_members_is_refused_before_they_are_read(tmp_path):
    path = tmp_path / "many.pt"
    buffer = io.BytesIO()
    torch.save({"rank": 0, "logical_count": torch.ones(2, 1, 4, dtype=torch.int32)}, buffer)
    with zipfile.ZipFile(path, "w") as archive:                                        # a torch.save file's members,
        with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as saved:                 # then 70,000 empty ones
            for info in saved.infolist():
                archive.writestr(info, saved.read(info))
        for i in range(70_000):
            archive.writestr(f"archive/extra/{i}", b"")
    with pytest.raises(ValueError, match=rf"is a zip archive whose member list takes [\d,]+ bytes \(more than "
                                         rf"{MAX_CENTRAL_BYTES:,}: tens of thousands"):
        read_log(str(path))
    with open(path, "rb") as f, pytest.raises(ValueError, match="member list takes"):
        open_zip(f, "t")


def test_the_end_record_is_read_as_zipfile_reads_it():
    """A zip64 end record before its locator: zipfile takes the zip64 record's size whatever the plain record says
    (0, or 0xFFFFFFFF) and wherever the locator points, so the bound must too; a reader of our own disagreed with
    zipfile on four crafted files (a plain size of 0, a decoy record, the signature inside the record, the search
    window one byte short) and let them through. zipfile's own reader (a private name) must be there."""
    assert callable(zipfile._EndRecData) and zipfile._ECD_SIZE == 5

    def archive(size: int, plain: int, points_to: int) -> io.BytesIO:
        record = b"PK\x06\x06" + (44).to_bytes(8, "little") + bytes(28) + size.to_bytes(8, "little") + bytes(8)
        decoy = b"PK\x06\x06" + (44).to_bytes(8, "little") + bytes(28) + (10).to_bytes(8, "little") + bytes(8)
        locator = b"PK\x06\x07" + bytes(4) + points_to.to_bytes(8, "little") + (1).to_bytes(4, "little")
        end = b"PK\x05\x06" + bytes(8) + plain.to_bytes(4, "little") + bytes(6)
        return io.BytesIO(b"junk" + decoy + record + locator + end)
    for plain, points_to in ((0xFFFFFFFF, 60), (0, 60), (0xFFFFFFFF, 4)):              # 4: the decoy's offset
        with pytest.raises(ValueError, match="member list takes 10,000,000 bytes"):
            open_zip(archive(10_000_000, plain, points_to), "t")
    with pytest.raises(zipfile.BadZipFile):                                          # a small one: zipfile decides
        open_zip(archive(100, 0xFFFFFFFF, 60), "t")
    with pytest.raises(zipfile.BadZipFile, match="no end of central directory record"):
        open_zip(io.BytesIO(b"not a zip at all"), "t")


@pytest.mark.parametrize("method, at", [(zipfile.ZIP_DEFLATED, 0), (zipfile.ZIP_LZMA, 9)])
def test_an_npz_member_that_does_not_decompress_is_one_line(tmp_path, method, at):
    raw = io.BytesIO()
    np.save(raw, np.zeros(1000, np.int32))
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("loads.npy", raw.getvalue())
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)            # its compressed bytes
    data[start + at: start + 20] = b"\xff" * (20 - at)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"^'.*bad.npz' is not a readable NumPy \.npz file \(truncated or damaged\)"):
        read_log(str(path))
