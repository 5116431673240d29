"""`.pt` dumps whose tensors claim more than the file holds (moe.traces.tensors): a stride-0 view stores one element
for any shape, and many records can name one stored tensor. Readers copy what the tensors claim, so every reference
counts its whole shape against the budget, in one line, before any reader runs. Before this check a 1.7 KB SGLang
stat dump took the reader to 3.9 GB and a 16 MB per_token dump of 30 records sharing one tensor to 2.8 GB, under a
1 GB budget. Tensors that cannot become NumPy arrays (bits, quantized, sparse) were TypeError tracebacks."""
from __future__ import annotations

import os
import tracemalloc

import pytest
import torch

from moe.memory import describe_bytes

from moe.traces.formats import read_log
from moe.traces.records import TraceLimits
from moe.traces.safeload import load_pt
from moe.traces import tensors
from moe.traces.tensors import MAX_OBJECTS, check_tensors
from moe.traces.tensors import _inner as tensors_inner

LIMITS = TraceLimits(budget=1 << 30)  # a routing file may take a quarter: 256 MiB


def _refusal(call) -> tuple[str, int]:
    """The ValueError `call` raises and the peak memory it traced meanwhile."""
    tracemalloc.start()
    try:
        call()
    except ValueError as err:
        return str(err), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError("no ValueError")


def _stat(path, logical_count) -> str:
    """An SGLang stat dump (tests/fixtures_sglang.write_stat's keys) holding this count tensor."""
    torch.save(dict(rank=0, logical_count=logical_count, average_utilization_rate_over_window=None), str(path))
    return str(path)


def test_a_view_that_claims_gigabytes_is_refused_from_its_shape(tmp_path):
    huge = torch.ones(1, dtype=torch.int32).expand(100, 64, 16384)                     # 800 MiB as int64, 4 B stored
    path = _stat(tmp_path / "stride0.pt", huge)
    assert (tmp_path / "stride0.pt").stat().st_size < 4096
    with pytest.raises(ValueError, match=r"holds tensors of 800\.0 MiB or more \(each counted whole.*over the "
                                         r"256\.0 MiB a routing file may take"):
        read_log(path, limits=LIMITS)
    small = _stat(tmp_path / "small.pt", torch.ones(1, dtype=torch.int32).expand(4, 2, 8))  # 512 B: read as it is
    assert read_log(small, limits=LIMITS).counts.sum() == 4 * 2 * 8


def test_every_reference_to_one_tensor_counts(tmp_path):
    ids = torch.zeros(1, 1 << 19, 1, dtype=torch.int64)                               # 4 MiB stored once
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
    with pytest.raises(ValueError, match=f"holds more than {MAX_OBJECTS:,} containers and tensors"):
        check_tensors({"records": loop}, "t.pt", 1 << 30)
    wide = []
    wide.extend([wide] * 1000)
    with pytest.raises(ValueError, match=f"holds more than {MAX_OBJECTS:,} containers and tensors"):
        check_tensors(wide, "t.pt", 1 << 30)
    check_tensors([[]] * (MAX_OBJECTS - 1), "t.pt", 1)                                # every container counted: fits
    with pytest.raises(ValueError, match="holds more than"):
        check_tensors([[]] * MAX_OBJECTS, "t.pt", 1)
    # numbers and strings hold no tensor: SGLang's per_token records keep input_ids and positions as lists of ints
    check_tensors({"input_ids": list(range(2 * MAX_OBJECTS)), "mode": ["x"] * MAX_OBJECTS}, "t.pt", 1)
    # a container met again is counted again but scanned once (a list of 10^6 ints held 100 times: 30 s, 100 scans)
    scans = []
    monkeypatch.setattr(tensors, "_inner", lambda c, t: scans.append(id(c)) or tensors_inner(c, t))
    ints = list(range(1000))
    check_tensors({"records": [ints, [ints, torch.zeros(2)]] * 50}, "t.pt", 50 * 8)     # 50 references of 8 B
    assert sorted(scans.count(i) for i in set(scans)) == [1, 1, 1, 50]  # dict, records, ints once; the 2-item pair
    #                                                    each time: only containers of more than RESCAN_ITEMS are kept
    with pytest.raises(ValueError, match="holds tensors of 400 B"):                   # each reference still counted
        check_tensors({"records": [ints, [ints, torch.zeros(2)]] * 50}, "t.pt", 50 * 8 - 1)
    monkeypatch.setattr(tensors, "MAX_OBJECTS", 10_000)
    tracemalloc.start()
    with pytest.raises(ValueError, match="holds more than 10,000 containers and tensors"):
        tensors.check_tensors(wide, "t.pt", 1 << 30)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000, peak                                    # counting pops: 10,000 × 1,000 stacked, 80 MB
    check_tensors({"records": [[torch.zeros(3)] * 3] * 3, "n": 1}, "t.pt", 9 * 3 * 4)   # 108 bytes: exactly the cap
    with pytest.raises(ValueError, match="holds tensors of 108 B"):
        check_tensors({"records": [[torch.zeros(3)] * 3] * 3}, "t.pt", 107)


def test_a_narrow_tensor_counts_as_the_int64_readers_widen_it_to(tmp_path):
    """vLLM's logical → physical map as an int8 view (1 byte stored per element) was widened to int64 and compared
    before it was refused: a 2.2 KB file took the reader to 923 MB under a 256 MiB budget."""
    path = tmp_path / "eplb.pt"
    torch.save({"expert_load_window": torch.ones(1, 1, 1, dtype=torch.int64),
                "physical_to_logical_map": torch.zeros(1, 1, dtype=torch.int64),
                "logical_to_physical_map": torch.full((1, 1, 1), -1, dtype=torch.int8).expand(1, 1, 40 << 20)},
               str(path))
    message, peak = _refusal(lambda: read_log(str(path), limits=LIMITS))
    assert "holds tensors of 320.0 MiB or more" in message and peak < 20 << 20, (message, peak)  # 40 Mi × 8 B
    zeros = tmp_path / "zeros.pt"  # every entry names slot 0: np.nonzero built 24 B an entry before the refusal
    torch.save({"expert_load_window": torch.ones(1, 1, 1, dtype=torch.int64),
                "physical_to_logical_map": torch.zeros(1, 1, dtype=torch.int64),
                "logical_to_physical_map": torch.zeros(1, 1, 1, dtype=torch.int8).expand(1, 1, 20 << 20)}, str(zeros))
    message, peak = _refusal(lambda: read_log(str(zeros), limits=LIMITS))
    assert "is not the inverse" in message and peak < 200 << 20, (message, peak)  # the int64 copy: 160 MiB


def _pickle_of(path, pickle: bytes) -> str:
    """A torch.save zip whose data.pkl is `pickle` (the other members as torch writes them)."""
    import io
    import zipfile
    buf = io.BytesIO()
    torch.save({"x": 1}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, pickle if info.filename.endswith("data.pkl") else src.read(info))
    return str(path)


def test_a_pickle_that_builds_objects_is_bounded_before_it_is_loaded(tmp_path):
    """One byte of EMPTY_LIST builds a list: a 50 MB pickle of them built 4.3 GB before the object count refused it
    (and EMPTY_SET 216 bytes a byte). Now the opcodes are counted first, nothing built."""
    lists = _pickle_of(tmp_path / "lists.pt", b"\x80\x02](" + b"]" * 3_000_000 + b"e.")     # 3 MB, 3 M lists
    sets = _pickle_of(tmp_path / "sets.pt", b"\x80\x02](" + b"\x8f" * 1_000_000 + b"e.")  # 1 MB, 1 M sets
    for path in (lists, sets):
        tracemalloc.start()
        with pytest.raises(ValueError, match=r"holds a pickle that could build 256\.0\d* MiB or more of Python "
                                             r"objects when loaded, over the 256\.0\d* MiB"):
            load_pt(path, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 << 20, peak                                  # the pickle read once, no object built
    with pytest.raises(ValueError, match="holds more than 1,048,576 containers"):  # 384 MB fits a 4 GiB budget's
        load_pt(lists, TraceLimits(budget=4 << 30))                                 # quarter: loaded, then counted
    legacy = tmp_path / "legacy.pt"                                    # the pre-1.6 format: a run of pickles
    torch.save({"records": [{"a": torch.zeros(3)} for _ in range(50)]}, str(legacy),
               _use_new_zipfile_serialization=False)
    assert len(load_pt(str(legacy), TraceLimits(budget=4 << 20))["records"]) == 50
    import pickle
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION
    head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))
    (tmp_path / "legacy_sets.pt").write_bytes(head + b"\x80\x02](" + b"\x8f" * 1_000_000 + b"e.")
    with pytest.raises(ValueError, match="holds a pickle that could build"):  # the object pickle, fourth
        load_pt(str(tmp_path / "legacy_sets.pt"), LIMITS)


def _shared_tuples(levels: int, keys: int = 0) -> bytes:
    """A pickle of a dict whose keys are tuples T_{i+1} = (T_i, T_i), built from memo references (10 bytes a level);
    then `keys` more entries keyed by the last of them again (5 bytes each)."""
    p = bytearray(b"\x80\x02}K\x00K\x00\x86q\x00K\x00s")                         # {(0, 0): 0}
    for i in range(levels):
        p += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"K\x00s"
    p += (b"h" + bytes([levels]) + b"K\x00s") * keys
    return bytes(p + b".")


def test_a_pickle_of_shared_tuples_is_refused_before_it_is_hashed(tmp_path):
    """An auditor's 1 KB pickle: T_{i+1} = (T_i, T_i) as dict keys. A tuple's hash walks its nested items (CPython
    does not cache it), 2^30 for T_30: torch.load held the GIL for 52 s (the other sessions of the server stopped).
    Keyed 20,000 times by T_15 (32,768 items; 100 KB): 16 s, loaded. Both are refused at the scan, in a moment; the
    same keys shallower load, and so does torch.save's own sharing (one tensor in every record)."""
    import time
    deep = _pickle_of(tmp_path / "deep.pt", _shared_tuples(30))
    again = _pickle_of(tmp_path / "again.pt", _shared_tuples(15, keys=20_000))
    # a reviewer's: torch.Size (a tuple REDUCE builds) of a list of 16,384 ints, memoized before the list grew, then
    # doubled 17 times (33 KB; 14 s when a REDUCE counted as one item)
    size = bytearray(b"\x80\x02](q\x00" + b"K\x01" * 16_384 + b"e" + b"ctorch\nSize\nh\x00\x85Rq\x01")
    size += b"h\x01h\x01\x86q\x01" * 17 + b"}h\x01K\x00s."
    # and a reviewer's next ones: the list filled after the tuple of arguments took it (L = []; T = (L,); L += n
    # ints; torch.Size(*T) a dict key 40,000 times: 14 s), and a dict filled after (D = {}; T = (D,); D[T_17] = 0;
    # OrderedDict(*T) 5,000 times: 8 s)
    later = bytearray(b"\x80\x02]q\x00\x85q\x01h\x00(" + b"K\x01" * 65_536 + b"ectorch\nSize\nh\x01Rq\x02")
    later += b"}(" + b"h\x02K\x00" * 40_000 + b"u."
    grown = bytearray(b"\x80\x02}q\x00\x85q\x01K\x00K\x00\x86q\x02")               # D, T = (D,), T_0 = (0, 0)
    for i in range(17):
        grown += b"h" + bytes([i + 2]) + b"h" + bytes([i + 2]) + b"\x86q" + bytes([i + 3])
    grown += b"h\x00h\x13K\x00s0" + b"ccollections\nOrderedDict\nh\x01R0" * 5_000 + b"h\x00."
    # and _codecs.encode(S, "latin1") of one memoized 4 MiB string, 300 times: 7 bytes a copy (1.5 GB from 4 MB)
    copies = bytearray(b"\x80\x02c_codecs\nencode\nq\x00X" + (4 << 20).to_bytes(4, "little") + b"a" * (4 << 20))
    copies += b"q\x01X\x06\x00\x00\x00latin1q\x02]q\x03(" + b"h\x00h\x01h\x02\x86R" * 300 + b"e."
    for path in (deep, again, _pickle_of(tmp_path / "size.pt", bytes(size)),
                 _pickle_of(tmp_path / "later.pt", bytes(later)), _pickle_of(tmp_path / "grown.pt", bytes(grown)),
                 _pickle_of(tmp_path / "copies.pt", bytes(copies))):
        t = time.process_time()
        with pytest.raises(ValueError, match=r"holds a pickle whose tuples, strings and calls, counted at every shared "
                                             r"reference, come to [\d,]+ or more items in [\d,]+ bytes"):
            load_pt(path, LIMITS)
        assert time.process_time() - t < 5                                            # 52 s before (T_30)
    assert len(load_pt(_pickle_of(tmp_path / "ok.pt", _shared_tuples(8)), LIMITS)) == 9   # 2^8 items: loaded
    shared = torch.zeros(4)                                      # torch.save's own sharing: one tensor, many records
    torch.save({"records": [{"ids": shared, "shape": (1, 2)} for _ in range(20_000)]}, str(tmp_path / "real.pt"))
    assert len(load_pt(str(tmp_path / "real.pt"), LIMITS)["records"]) == 20_000


def test_a_pickle_of_colliding_int_keys_or_a_bytearray_is_refused_before_it_is_loaded(tmp_path):
    """A reviewer's: 40,000 distinct int keys i·(2^61 − 1) + 7 share one hash (CPython hashes ints modulo that prime),
    so each insert compares with every earlier one: 14 s for 600 KB. And bytearray(2^29), 30 bytes, built 512 MiB
    past the cap. Integers past int64 and uint64 and bytearray are refused by the scan (a reviewer's seeds of 63
    bits were refused at 2^61; torch's own magic number is read)."""
    import time
    def long1(v: int) -> bytes:                                                       # LONG1: length, then bytes
        n = v.bit_length() // 8 + 1
        return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)
    keys = b"\x80\x02}(" + b"".join(long1(i * ((1 << 61) - 1) + 7) + b"K\x00" for i in range(1, 40_001)) + b"u."
    big = b"\x80\x02cbuiltins\nbytearray\n\x8a\x04\x00\x00\x00\x20\x85R."
    for name, data, words in (("keys.pt", keys, "an integer of 6[1-9] bits"), ("big.pt", big, "bytearray")):
        t = time.process_time()
        with pytest.raises(ValueError, match=rf"holds a pickle that names {words}"):
            load_pt(_pickle_of(tmp_path / name, data), LIMITS)
        assert time.process_time() - t < 5
    torch.save({"a": torch.zeros(2)}, str(tmp_path / "legacy.pt"), _use_new_zipfile_serialization=False)
    assert load_pt(str(tmp_path / "legacy.pt"), LIMITS)["a"].shape == (2,)           # MAGIC_NUMBER: 77 bits, read
    wide = [2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1, 2 ** 61]                             # int64, uint64 (a seed): read
    for new_format in (True, False):
        torch.save({"ints": wide}, str(tmp_path / "wide.pt"), _use_new_zipfile_serialization=new_format)
        assert load_pt(str(tmp_path / "wide.pt"), LIMITS)["ints"] == wide


def test_sglang_dumps_whose_rows_outgrow_their_tensors_are_refused_before_they_are_built(tmp_path):
    """A 2.3 KB per_token dump of ids (1, T, 0) was counted 0 bytes whatever T, and the reader built L·T rows (5.8 GB
    at T = 1e8); an int8 view of ids (1, T, 1) and a stat dump of 8 M one-byte rows likewise grew past the budget
    (the stat dump's per-step statistics took a server past 4.6 GB) before anything refused them."""
    p2l = torch.zeros(1, 1, dtype=torch.int64)

    def per_token(name, ids):
        torch.save({"records": [{"forward_pass_id": 0, "rank": 0, "topk_ids_of_layer": ids}],
                    "last_physical_to_logical_map": p2l}, str(tmp_path / name))
        return str(tmp_path / name)
    zero = per_token("zero.pt", torch.zeros(1, 100_000_000, 0, dtype=torch.int32))
    with pytest.raises(ValueError, match="topk_ids_of_layer has 0 slots per token, SGLang writes top_k"):
        read_log(zero, limits=LIMITS)
    narrow = per_token("narrow.pt", torch.zeros(1, 1, 1, dtype=torch.int8).expand(1, 20_000_000, 1))
    message, peak = _refusal(lambda: read_log(narrow, limits=LIMITS))
    assert "the per-token rows would take 1.6 GiB, over a quarter of the memory budget" in message and peak < 64 << 20
    # three records of 2 M rows: the refusal names all 6 M (it named the first two, where the sum crossed the cap)
    ids = torch.zeros(1, 1, 1, dtype=torch.int8).expand(1, 2_000_000, 1)
    torch.save({"records": [{"forward_pass_id": f, "rank": 0, "topk_ids_of_layer": ids} for f in range(3)],
                "last_physical_to_logical_map": p2l}, str(tmp_path / "three.pt"))
    message, _ = _refusal(lambda: read_log(str(tmp_path / "three.pt"), limits=LIMITS))
    assert f"the per-token rows would take {describe_bytes(6_000_000 * 88)}," in message, message
    stat = _stat(tmp_path / "stat.pt", torch.ones(1, 1, 1, dtype=torch.int8).expand(8_000_000, 1, 1))
    message, peak = _refusal(lambda: read_log(stat, limits=LIMITS))
    assert "8,000,000 steps × 1 layers × 1 experts need about" in message and peak < 64 << 20, (message, peak)


def test_the_rank_files_of_a_directory_share_one_cap(tmp_path):
    """Each rank file was loaded within its own quarter of the budget and all were held together: 8 files of views
    claiming 200 MiB each passed one by one. Now each gets what the files before it left."""
    p2l = torch.arange(2)[None]
    for rank in range(8):
        ids = torch.zeros(1, 1, 1, dtype=torch.int64).expand(1, 200 << 17, 1)           # 200 MiB claimed
        torch.save({"records": [{"forward_pass_id": 0, "rank": rank, "topk_ids_of_layer": ids}],
                    "last_physical_to_logical_map": p2l}, str(tmp_path / f"expert_distribution_recorder_1_{rank}.pt"))
    message, peak = _refusal(lambda: read_log(str(tmp_path), limits=LIMITS))
    assert "holds tensors of 200.0 MiB or more" in message and "over the 56.0 MiB" in message, message
    assert message.endswith("(the file before it holds 200.0 MiB of the 256.0 MiB the files of a directory share)")
    assert peak < 32 << 20, peak


def test_float_tensors_count_at_their_own_size():
    """Router weights (float32) are hashed as they are: counting them at 8 bytes refused a router_state dump that
    opened before (12 MiB of weights under a 64 MiB budget)."""
    check_tensors({"weight": torch.zeros(1 << 20, dtype=torch.float32)}, "w.pt", 4 << 20)       # 4 MiB: fits
    with pytest.raises(ValueError, match="holds tensors of 8.0 MiB"):
        check_tensors({"ids": torch.zeros(1 << 20, dtype=torch.int32)}, "i.pt", 4 << 20)     # int64 when read


def test_a_map_with_fewer_slots_than_experts_is_refused_before_its_table(tmp_path):
    """A physical → logical map of 100,000 one-slot rows naming expert 16,383 (a 302 KB SGLang per_pass dump) built a
    (rows, E) table twice before anything was checked: 3.6 GB under a 256 MiB budget."""
    rows = 100_000
    p2l = torch.zeros(rows, 1, dtype=torch.int16)
    p2l[0, 0] = 16_383
    torch.save({"last_physical_to_logical_map": p2l,
                "records": [{"forward_pass_id": 0, "rank": 0, "global_physical_count": torch.zeros(rows, 1,
                                                                                                  dtype=torch.int8)}]},
               str(tmp_path / "expert_distribution_recorder_1.pt"))
    message, peak = _refusal(lambda: read_log(str(tmp_path / "expert_distribution_recorder_1.pt"), limits=LIMITS))
    assert "has 1 physical slots per layer for 16384 logical experts" in message and peak < 64 << 20, (message, peak)


def test_links_to_one_rank_file_and_npz_of_many_arrays_are_refused(tmp_path):
    """Four links to one 20 MB rank file were read as four ranks (a minute each at 4,096 links: hours), and an .npz
    whose central directory names one array 60,000 times opened each twice (15 s) before it was read."""
    import numpy as np
    from fixtures_stacks import mcore_dumps
    paths, _ = mcore_dumps(tmp_path, ep_size=1, layer_numbers=[1], n_experts=4, max_forwards=1)
    os.symlink(paths[0], tmp_path / "mcore_ep_loads_rank1_20261206_130000_pid9.npz")
    with pytest.raises(ValueError, match="under another name \\(a link\\); give each rank's file once"):
        read_log(str(tmp_path), limits=LIMITS)
    os.remove(tmp_path / "mcore_ep_loads_rank1_20261206_130000_pid9.npz")
    os.link(paths[0], tmp_path / "mcore_ep_loads_rank1_20261206_130000_pid9.npz")  # a hard link: realpath differs
    with pytest.raises(ValueError, match="under another name \\(a link\\); give each rank's file once"):
        read_log(str(tmp_path), limits=LIMITS)
    np.savez(tmp_path / "many.npz", **{f"a{i}": np.zeros(1) for i in range(300)})
    from moe.traces.safeload import load_npz
    with pytest.raises(ValueError, match="holds 300 arrays, over the 256 a routing .npz may hold"):
        load_npz(str(tmp_path / "many.npz"), LIMITS)
