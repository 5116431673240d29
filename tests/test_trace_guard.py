"""Hostile or careless trace files: every one is refused in one line before it costs more than the budget.

Each test here failed on dc51461 (a traceback, a silently wrong number, a read past the budget, a hang).
"""
import io
import json
import os
import subprocess
import sys
import tracemalloc
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe.cli.main import main
from moe.traces.log import ExpertsNeeded
from moe.traces.summary import summarize
from trace_support import megatron_records, swap_link_on_open, write_megatron

E, K = 8, 2


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["trace-report", *args])
    return code, out.getvalue(), err.getvalue()


def _refused(path, *args: str) -> str:
    """The CLI's one line for a refused file (exit status 2)."""
    code, _, err = _cli(str(path), *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    return err


def _megatron(tmp_path, **change) -> str:
    rec = {**next(megatron_records(1, 1, 3, E, K)), **change}
    path = tmp_path / "router_trace_rank0.jsonl"
    write_megatron(path, [{k: v for k, v in rec.items() if v is not ...}])
    return str(path)


# --- the expert count: recorded, given, or asked for -------------------------------------------------

def test_the_count_comes_from_the_file_when_it_records_it_and_says_so(tmp_path):
    rec = {**next(megatron_records(1, 1, 3, E, K)), "logit_offset": 0, "logit_bytes": 2 * 3 * E,
           "logit_shape": [3, E]}  # logits recorded; the sidecar was not copied along
    write_megatron(tmp_path / "t.jsonl", [rec])
    s = summarize(str(tmp_path / "t.jsonl"))
    assert (s.n_experts, s.n_experts_source, s.has_logits) == (E, "logit_shape", False)
    with pytest.raises(ValueError, match="the file records 8 experts .* but n_experts=64 was given"):
        summarize(str(tmp_path / "t.jsonl"), n_experts=64)
    doc = json.loads(_cli(str(tmp_path / "t.jsonl"))[1])
    assert doc["n_experts"] == E and doc["n_experts_source"] == "logit_shape"


def test_a_count_the_file_does_not_record_is_asked_for_and_bounded_by_its_ids(tmp_path):
    path = _megatron(tmp_path)
    with pytest.raises(ExpertsNeeded, match="does not record the number of experts"):
        summarize(path)
    code, out, _ = _cli(path, "--n-experts", "8")
    doc = json.loads(out)
    assert code == 0 and doc["n_experts_source"] == "given" and doc["max_expert_id"] <= 7
    assert "at least the largest expert index + 1" in _refused(path, "--n-experts", "2")
    assert "from 1 to 16384" in _refused(path, "--n-experts", "65536")


# --- memory: no E × E work, caps from the budget ------------------------------------------------------

CHILD = """
import io, json, resource, sys
from contextlib import redirect_stdout
from moe.cli.main import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "added": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024}))
"""


def _child(*argv: str, gb: str = "1") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MOE_SCOPE_MEMORY_GB": gb, "OMP_NUM_THREADS": "1"})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_largest_summary_the_budget_allows_is_written_within_the_budget(tmp_path):
    """An auditor's 653 KB counts file of 16,384 layers × 8 steps × 16 experts: its statistics just fit the half of
    a 1 GB budget that `check_summary` allows, and `trace-report` then peaked at 1,226,712 KB writing its JSON
    (json's indented encoder kept the text's pieces). The whole process, imports included, must stay under the
    budget, and the document must hold every layer."""
    layers, steps, experts = 16384, 8, 16
    cell = np.arange(layers * steps * experts)
    path, out = tmp_path / "layers.parquet", tmp_path / "out.json"
    pq.write_table(pa.table({"step": cell // (experts * layers), "layer": (cell // experts) % layers,
                             "expert": cell % experts, "count": 1 + cell % 7}), path)
    code = ("import re, sys\nfrom moe.cli.main import main\nsys.stdout = open(sys.argv[1], 'w')\n"
            "status = main(['trace-report', sys.argv[2]])\nsys.stdout.close()\n"
            "peak = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
            "sys.stderr.write(f'{status} {peak}\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MOE_SCOPE_MEMORY_GB": "1", "OMP_NUM_THREADS": "1"})
    status, peak_kb = proc.stderr.split()[-2:]
    assert status == "0" and int(peak_kb) * 1024 < 2 ** 30, proc.stderr[-600:]
    doc = json.loads(out.read_text())
    assert doc["steps"] == steps and len(doc["load"]) == layers
    assert doc["load"]["16383"][7][15] == 1 + (len(cell) - 1) % 7                   # the last cell of the file


def test_a_67_byte_trace_with_thousands_of_experts_costs_no_e_squared_memory(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"step":0,"layer":0,"num_tokens":1,"topk":2,"top_indices":[[0,1]]}\n')
    r = _child("trace-report", str(path), "--n-experts", "4096")
    assert r["code"] == 0 and r["added"] < 48 * 2 ** 20, r  # dc51461: an (E, E) co-activation, ~200 MB here


def test_one_huge_json_line_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.25")  # one line may take 2 MiB
    idx = np.zeros((600_000, 1), np.int64).tolist()
    rec = {"step": 0, "layer": 0, "num_tokens": 600_000, "topk": 1, "top_indices": idx}
    (tmp_path / "t.jsonl").write_text(json.dumps(rec) + "\n")  # ~3 MB on one line
    assert "line 1 is longer than 2.0 MiB" in _refused(tmp_path / "t.jsonl", "--n-experts", "8")
    with open(tmp_path / "sparse.jsonl", "wb") as f:  # 64 MB of zeros after a "{", no newline
        f.write(b"{")
        f.truncate(64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="line 1 is longer than"):
            summarize(str(tmp_path / "sparse.jsonl"), n_experts=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # dc51461 read the whole 64 MB line, then called it truncated


def _parquet(path, tokens: int, n_experts: int = E, row_group_size: int | None = None, **columns) -> None:
    T = tokens
    routed = np.zeros((T, n_experts), bool)
    routed[:, :K] = True
    table = {"step": np.zeros(T * n_experts, np.int64), "layer": np.full(T * n_experts, "0"),
             "token": np.repeat(np.arange(T), n_experts), "expert": np.tile(np.arange(n_experts), T),
             "router_logit": np.zeros(T * n_experts, np.float32), "routed": routed.ravel()}
    pq.write_table(pa.table({**table, **columns}), path, row_group_size=row_group_size, compression="zstd")


def test_a_small_parquet_that_expands_past_the_budget_is_refused_from_its_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.02")  # ~55,000 (token, expert) entries per record
    _parquet(tmp_path / "one.parquet", 50_000)  # 400,000 rows, one row group, a few KB compressed
    assert os.path.getsize(tmp_path / "one.parquet") < 200_000
    assert "row group 0: 400,000 rows make 400,000 entries" in _refused(tmp_path / "one.parquet")
    _parquet(tmp_path / "many.parquet", 50_000, row_group_size=8_000)  # small row groups, one record
    # refused at the first batch past the cap of 55,924: batches end with their row group (layer names are read as a
    # dictionary, one per row group), so at 7 × 8,000 rows
    assert "step 0, layer 0: 56,000 rows (tokens × experts) make 56,000 entries" in _refused(tmp_path / "many.parquet")


# --- one clear line instead of a traceback ------------------------------------------------------------

@pytest.mark.parametrize("ids", ["1e30", "Infinity", "0.9"])
def test_expert_ids_that_are_not_integers_are_refused(tmp_path, ids):
    path = tmp_path / "t.jsonl"
    path.write_text('{"step":0,"layer":0,"num_tokens":1,"topk":2,"top_indices":[[1,%s]]}\n' % ids)
    assert "'top_indices' must hold integers" in _refused(path, "--n-experts", "8")  # 0.9 was read as 0


@pytest.mark.parametrize("change, message", [
    ('"logit_offset": 1e400', "field 'logit_offset' must be an integer >= 0, got a non-finite number"),
    ('"logit_bytes": null', "field 'logit_bytes' must be an integer"),
    ('"logit_shape": ["a", "b"]', "field 'logit_shape' must be an integer >= 0, got a string"),
])
def test_bad_sidecar_fields_are_one_line(tmp_path, change, message):
    (tmp_path / "logits_rank0.bin").write_bytes(bytes(2 * 3 * E))
    rec = json.dumps({"step": 0, "layer": 0, "rank": 0, "num_tokens": 3, "topk": K, "logit_offset": 0,
                      "logit_bytes": 2 * 3 * E, "logit_shape": [3, E], "top_indices": [[0, 1]] * 3})
    key = change.split(":")[0]
    line = rec.replace(key + ": " + json.dumps(json.loads(rec)[key.strip('"')]), change)
    (tmp_path / "t.jsonl").write_text(line + "\n")
    assert message in _refused(tmp_path / "t.jsonl", "--n-experts", "8")
    (tmp_path / "t.jsonl").write_text(rec.replace(', "logit_bytes": 48', "") + "\n")  # the field missing
    assert "misses field(s) ['logit_bytes']" in _refused(tmp_path / "t.jsonl", "--n-experts", "8")


# --- refused instead of silently accepted -------------------------------------------------------------

def test_parquet_columns_of_the_wrong_type_or_range_are_refused(tmp_path):
    n = 4 * E
    cases = {"routed": pa.array(np.where(np.tile(np.arange(E), 4) < K, "True", "False")),  # strings
             "expert": pa.array(np.tile(np.arange(E), 4) + 0.25),  # fractions
             "step": pa.array(np.full(n, -1, np.int64)),  # negative
             "step ": pa.array(np.full(n, 2 ** 64 - 1, np.uint64))}  # read as int64: -1
    for name, column in cases.items():
        _parquet(tmp_path / "t.parquet", 4, **{name.strip(): column})
        line = _refused(tmp_path / "t.parquet")
        assert ("wrong type" in line) if name in ("routed", "expert") else ("column 'step' holds" in line), line


def test_megatron_fields_of_the_wrong_type_are_refused_without_echoing_them(tmp_path):
    line = _refused(_megatron(tmp_path, block="mtp", mtp_idx=[1]), "--n-experts", "8")
    assert "field 'mtp_idx' must be an integer >= 0, got a list" in line
    line = _refused(_megatron(tmp_path, layer="**x**](http://e)"), "--n-experts", "8")
    assert "field 'layer' must be an integer >= 0, got a string" in line and "**x**" not in line


def test_the_sidecar_is_read_only_inside_the_traces_directory(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    (run / "logits_rank").mkdir(parents=True)
    other.mkdir()
    (other / "logits_rank0.bin").write_bytes(bytes(2 * 3 * E))  # someone else's file
    rec = {"step": 0, "layer": 0, "rank": "/../../other/logits_rank0", "num_tokens": 3, "topk": K,
           "logit_offset": 0, "logit_bytes": 2 * 3 * E, "logit_shape": [3, E], "top_indices": [[0, 1]] * 3}
    write_megatron(run / "t.jsonl", [rec])
    assert "field 'rank' must be an integer >= 0, got a string" in _refused(run / "t.jsonl", "--n-experts", "8")
    (run / "logits_rank0.bin").symlink_to(other / "logits_rank0.bin")
    write_megatron(run / "t.jsonl", [{**rec, "rank": 0}])
    assert "links outside the trace's directory" in _refused(run / "t.jsonl", "--n-experts", "8")



def test_a_sidecar_link_swapped_in_while_it_is_opened_is_refused(tmp_path, monkeypatch):
    """The sidecar's link was checked, then opened by name: a link out of the directory swapped in between was read.
    The file opened is checked on its descriptor."""
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    (other / "logits_rank0.bin").write_bytes(bytes(2 * 3 * E))
    (run / "logits_rank0.bin").write_bytes(bytes(2 * 3 * E))
    rec = {"step": 0, "layer": 0, "rank": 0, "num_tokens": 3, "topk": K, "logit_offset": 0, "logit_bytes": 2 * 3 * E,
           "logit_shape": [3, E], "top_indices": [[0, 1]] * 3}
    write_megatron(run / "t.jsonl", [rec])
    assert _cli(str(run / "t.jsonl"), "--n-experts", "8")[0] == 0                    # its own sidecar: read
    swap_link_on_open(monkeypatch, "logits_rank0.bin", other / "logits_rank0.bin")     # the writer's swap
    assert "links outside the trace's directory" in _refused(run / "t.jsonl", "--n-experts", "8")


def test_the_cli_refuses_a_fifo_instead_of_waiting_on_it(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    proc = subprocess.run([sys.executable, "-m", "moe", "trace-report", str(tmp_path / "pipe"), "--n-experts", "8"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not a regular file" in proc.stderr


def test_trace_report_json_is_strict(tmp_path):
    import moe.traces.summary as trace_report
    code, out, _ = _cli(_megatron(tmp_path), "--n-experts", "8")
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert code == 0 and doc["rows"][0]["aux_loss"] is None  # no logits: unknown, written as null
    assert not hasattr(trace_report, "json_dumps")  # one writer: moe.jsonio.dumps


def test_a_parquet_file_with_damaged_pages_is_one_line(tmp_path):
    _parquet(tmp_path / "t.parquet", 1000)
    data = bytearray((tmp_path / "t.parquet").read_bytes())
    data[200:2000] = bytes((v * 7 + 13) % 256 for v in data[200:2000])  # the pages; the footer intact
    (tmp_path / "t.parquet").write_bytes(bytes(data))
    assert "is not a readable Parquet file" in _refused(tmp_path / "t.parquet")  # dc51461: an OSError traceback


def test_the_fast_paths_count_table_is_checked_before_it_is_made(tmp_path):
    """One-token records, each its own step, naming ids up to 16,383: the block's (cells, largest id + 1) table was
    made before the counts' cap was checked, 2.2 × a 256 MiB budget."""
    from moe.traces.formats import read_log
    from moe.traces.records import TraceLimits
    ids = list(range(0, 16384, 512))
    ids[-1] = 16383
    with open(tmp_path / "router_trace_rank0.jsonl", "w") as f:
        for step in range(5000):
            f.write(json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": 0, "rank": 0,
                                "num_tokens": 1, "topk": 32, "top_indices": [ids]}) + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="token counts per \\(step, layer\\) and expert need more than"):
            read_log(str(tmp_path / "router_trace_rank0.jsonl"), 16384, limits=TraceLimits(256 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 160 << 20, peak


def test_a_parquet_footer_longer_than_the_file_is_a_damaged_file_not_a_budget_matter(tmp_path):
    """An auditor's 15-byte counts part ("PAR1", a footer length of 1.6 GiB, "PAR1") was refused as over the budget,
    with the advice to raise MOE_SCOPE_MEMORY_GB."""
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1" + b"x" * 3 + (0x6666_6666).to_bytes(4, "little") + b"PAR1")
    line = _refused(path)
    assert "is not a readable Parquet file (its footer is longer than the file)" in line
    assert "MOE_SCOPE_MEMORY_GB" not in line

