"""`.pt` dumps whose tensors claim more than the file holds (moe.traces.tensors): a stride-0 view stores one element
for any shape, and many records can name one stored tensor. Readers copy what the tensors claim, so every reference
counts its whole shape against the budget, in one line, before any reader runs. Before this check a 1.7 KB SGLang
stat dump took the reader to 3.9 GB and a 16 MB per_token dump of 30 records sharing one tensor to 2.8 GB, under a
1 GB budget. Tensors that cannot become NumPy arrays (bits, quantized, sparse) were TypeError tracebacks."""
from __future__ import annotations

import tracemalloc

import pytest
import torch

from moe.traces.formats import read_log
from moe.traces.records import TraceLimits
from moe.traces.safeload import load_pt
from moe.traces import tensors
from moe.traces.tensors import MAX_OBJECTS, check_tensors

LIMITS = TraceLimits(budget=1 << 30)  # a routing file may take a quarter: 256 MiB


def _stat(path, logical_count) -> str:
    """An SGLang stat dump (tests/fixtures_sglang.write_stat's keys) holding this count tensor."""
    torch.save(dict(rank=0, logical_count=logical_count, average_utilization_rate_over_window=None), str(path))
    return str(path)


def test_a_view_that_claims_gigabytes_is_refused_from_its_shape(tmp_path):
    huge = torch.ones(1, dtype=torch.int32).expand(100, 64, 16384)                     # 400 MiB claimed, 4 B stored
    path = _stat(tmp_path / "stride0.pt", huge)
    assert (tmp_path / "stride0.pt").stat().st_size < 4096
    with pytest.raises(ValueError, match=r"holds tensors of 400\.0 MiB or more \(each counted whole.*over the "
                                         r"256\.0 MiB a routing file may take"):
        read_log(path, limits=LIMITS)
    small = _stat(tmp_path / "small.pt", torch.ones(1, dtype=torch.int32).expand(4, 2, 8))  # 256 B: read as it is
    assert read_log(small, limits=LIMITS).counts.sum() == 4 * 2 * 8


def test_every_reference_to_one_tensor_counts(tmp_path):
    ids = torch.zeros(1, 1 << 20, 1, dtype=torch.int32)                               # 4 MiB stored once
    records = [{"forward_pass_id": i, "rank": 0, "gatherer_key": "primary", "topk_ids_of_layer": ids}
               for i in range(65)]                                                     # 65 references: 260 MiB
    path = tmp_path / "shared.pt"
    torch.save(dict(records=records, last_physical_to_logical_map=torch.tensor([[0, 1]])), str(path))
    # 4 MiB past 256 MiB reads apart from the cap (it read "256.0 MiB …, over the 256.0 MiB")
    with pytest.raises(ValueError, match=r"holds tensors of 256\.00002 MiB or more .*, over the 256\.00000 MiB"):
        load_pt(str(path), LIMITS)
    assert len(load_pt(str(path), TraceLimits(budget=2 << 30))["records"]) == 65       # 512 MiB allowed: loaded


@pytest.mark.parametrize("tensor, kind", [
    (torch.zeros(2, 3, 4, dtype=torch.uint8).view(torch.bits8), "a strided tensor of bits8"),
    (torch.quantize_per_tensor(torch.zeros(2, 3, 4), 0.1, 0, torch.qint8), "a strided tensor of qint8"),
    (torch.zeros(2, 3, 4, dtype=torch.int32).to_sparse(), "a sparse_coo tensor of int32"),
    (torch.zeros(2, 3, 4, dtype=torch.complex64), "a strided tensor of complex64"),
    (torch.zeros(2, 3, 4, dtype=torch.int32, device="meta"), "a meta tensor of int32"),
    (torch.nested.nested_tensor([torch.zeros(2, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)]),
     "a nested tensor of int32")])
def test_a_tensor_that_is_not_plain_numbers_is_one_line(tmp_path, tensor, kind):
    path = _stat(tmp_path / "odd.pt", tensor)
    with pytest.raises(ValueError, match=rf"^'.*odd.pt' holds {kind}; a routing dump holds plain integer or float "
                                         rf"tensors$"):
        read_log(path, limits=LIMITS)


def test_an_object_that_refers_to_itself_is_refused_not_walked_forever(monkeypatch):
    """Items are counted before they are stacked: a list holding itself 1,000 times (a 3 KB .pt) grew the walk's
    stack by 7.6 KB per object popped, about 8 GB before the count of popped objects stopped it."""
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match=f"holds more than {MAX_OBJECTS:,} objects"):
        check_tensors({"records": loop}, "t.pt", 1 << 30)
    wide = []
    wide.extend([wide] * 1000)
    with pytest.raises(ValueError, match=f"holds more than {MAX_OBJECTS:,} objects"):
        check_tensors(wide, "t.pt", 1 << 30)
    check_tensors([0] * (MAX_OBJECTS - 1), "t.pt", 1)                                 # every item counted: just fits
    with pytest.raises(ValueError, match="holds more than"):
        check_tensors([0] * MAX_OBJECTS, "t.pt", 1)
    monkeypatch.setattr(tensors, "MAX_OBJECTS", 10_000)
    tracemalloc.start()
    with pytest.raises(ValueError, match="holds more than 10,000 objects"):
        tensors.check_tensors(wide, "t.pt", 1 << 30)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000, peak                                    # counting pops: 10,000 × 1,000 stacked, 80 MB
    check_tensors({"records": [[torch.zeros(3)] * 3] * 3, "n": 1}, "t.pt", 9 * 3 * 4)   # 108 bytes: exactly the cap
    with pytest.raises(ValueError, match="holds tensors of 108 B"):
        check_tensors({"records": [[torch.zeros(3)] * 3] * 3}, "t.pt", 107)
