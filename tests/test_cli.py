"""`python -m moe report`: the printed numbers are the engine's, and bad arguments exit 2 in one line."""
import argparse
import io
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from moe import MoEConfig, MoELayer
from moe.cli.main import main
from moe.scenarios import make_batch


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_matches_the_engine(capsys):
    code, out, err = _run(capsys, "report", "--n-experts", "6", "--top-k", "2", "--tokens", "96",
                          "--scenario", "clusters", "--seed", "3", "--capacity-factor", "0.75", "--format", "json")
    assert code == 0 and err == ""
    report = json.loads(out)
    cfg = MoEConfig(n_experts=6, top_k=2, capacity_factor=0.75, seed=3)
    _, trace = MoELayer(cfg)(make_batch("clusters", cfg.d_model, 96, seed=3, n_clusters=4, skew=0.0).x)
    assert report["config"]["n_experts"] == 6 and report["config"]["scenario"] == "clusters"
    table = pd.DataFrame(report["per_expert"])
    expected = trace.per_expert()
    assert table["served"].tolist() == expected["served"].tolist()
    assert table["dropped"].sum() > 0  # capacity 0.75 drops
    pd.testing.assert_series_equal(table["output_rms"], expected["output_rms"], rtol=1e-5)
    for key in ("aux_loss", "z_loss", "cv", "dropped_fraction", "mean_confidence"):
        assert report["summary"][key] == pytest.approx(trace.summary()[key], rel=1e-6)


def test_csv_report_has_config_summary_and_table(capsys):
    code, out, _ = _run(capsys, "report", "--tokens", "32", "--format", "csv")
    assert code == 0
    sections = out.split("# per_expert\n")
    table = pd.read_csv(io.StringIO(sections[1]))
    assert list(table["expert"]) == list(range(8))
    assert table["served"].sum() == 32 * 2
    assert "# config" in sections[0] and "aux_loss," in sections[0]


@pytest.mark.parametrize("argv, named", [
    (["report", "--top-k", "9"], "top_k=9"),
    (["report", "--tokens", "-3"], "'-3'"),
    (["report", "--router", "foo"], "'foo'"),
    (["report", "--capacity-factor", "0"], "capacity_factor"),
    (["report", "--capacity-factor", "abc"], "'abc'"),
    (["report", "--hot-expert", "12"], "12"),
    (["report", "--scenario", "clusters", "--skew", "-1"], "skew"),
    (["report", "--device", "tpu"], "'tpu'"),
    (["report", "--n-group", "3"], "n_group=3"),
    (["report", "--n-group", "2", "--topk-group", "3"], "topk_group=3"),
    (["report", "--n-group", "4", "--topk-group", "1", "--top-k", "3"], "top_k=3"),
    (["report", "--n-group", "2", "--topk-group", "2", "--router", "hash"], "router='topk'"),
    (["report", "--n-group", "0"], "'0'"),
    (["report", "--capacity-scope", "token"], "'token'"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, named):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and named in err


class _Writes(io.StringIO):
    """A stderr that keeps every write call apart."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def write(self, text):
        self.calls.append(text)
        return super().write(text)


def test_error_line_is_one_write_call(monkeypatch):
    # The ranks of a torchrun job share one stderr pipe: a line written in two calls (text, then its newline) can
    # have another rank's line land between them, which CI saw as two errors on one line.
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["report", "--device", "tpu"]) == 2
    assert len(stderr.calls) == 1 and stderr.calls[0].startswith("python -m moe: error:")
    assert stderr.calls[0].endswith("\n") and stderr.calls[0].count("\n") == 1


def test_group_limited_report_matches_the_engine(capsys):
    code, out, err = _run(capsys, "report", "--n-experts", "8", "--top-k", "2", "--n-group", "4",
                          "--topk-group", "1", "--tokens", "64", "--capacity-scope", "sequence")
    assert code == 0 and err == ""
    report = json.loads(out)
    cfg = MoEConfig(n_experts=8, top_k=2, n_group=4, topk_group=1, capacity_scope="sequence")
    assert {k: report["config"][k] for k in ("n_group", "topk_group", "capacity_scope")} == \
        {"n_group": 4, "topk_group": 1, "capacity_scope": "sequence"}
    _, trace = MoELayer(cfg)(make_batch("gaussian", cfg.d_model, 64, seed=0).x)
    assert pd.DataFrame(report["per_expert"])["demand"].tolist() == trace.per_expert()["demand"].tolist()
    for key in ("aux_loss", "topk_margin", "bias_overlap"):
        assert report["summary"][key] == pytest.approx(trace.summary()[key], rel=1e-6)


def test_module_entry_point_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "moe", "report", "--top-k", "0"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "top-k" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_request_without_gpu_is_a_clean_error(capsys):
    code, _, err = _run(capsys, "report", "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err


def test_report_seq_len_makes_capacity_per_sequence(capsys):
    """--seq-len splits the tokens into sequences; with capacity_scope=sequence, C comes from S tokens."""
    import json

    from moe.cli.main import main
    flags = ["report", "--tokens", "256", "--n-experts", "8", "--top-k", "1", "--capacity-factor", "1.0",
             "--scenario", "clusters", "--skew", "2"]
    assert main(flags + ["--seq-len", "64", "--capacity-scope", "sequence"]) == 0
    per_seq = json.loads(capsys.readouterr().out)
    assert main(flags) == 0
    batch = json.loads(capsys.readouterr().out)
    assert per_seq["summary"]["capacity"] == 8 and batch["summary"]["capacity"] == 32  # ceil(1.0·S·K/E), S or T
    assert per_seq["config"]["seq_len"] == 64
    assert main(flags + ["--seq-len", "100"]) == 2
    assert "multiple of 100" in capsys.readouterr().err
    # an auditor's: without --seq-len, sequence capacity was the batch's (C = 32) without a word; ep-report refused
    assert main(flags + ["--capacity-scope", "sequence"]) == 2
    assert "--capacity-scope sequence needs --seq-len S" in capsys.readouterr().err


def test_an_os_error_from_a_reader_is_one_line(tmp_path, capsys):
    """A Megatron record whose logit_offset lies past its sidecar's end: seek() raised OSError (Errno 22), and the
    CLI printed a traceback with exit status 1. The reader now reads no bytes there, and the CLI takes any OSError as
    one line."""
    (tmp_path / "router_trace_rank0.jsonl").write_text(json.dumps(
        {"layer": 0, "step": 0, "rank": 0, "num_tokens": 1, "topk": 1, "top_indices": [[0]],
         "logit_offset": 2 ** 63 - 1, "logit_bytes": 16, "logit_shape": [1, 8]}) + "\n")
    (tmp_path / "logits_rank0.bin").write_bytes(bytes(16))
    code, out, err = _run(capsys, "trace-report", str(tmp_path / "router_trace_rank0.jsonl"))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "the logits sidecar holds 0 bytes at offset 9223372036854775807, not [1, 8] in bfloat16" in err


def test_any_os_error_is_one_line(monkeypatch, capsys):
    import moe.cli.main as cli

    def broken(args):
        raise PermissionError(13, "Permission denied", "/srv/traces/x.pt")
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda prog="python -m moe": parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(run=broken))
    assert cli.main(["report"]) == 2
    assert capsys.readouterr().err == "python -m moe: error: [Errno 13] Permission denied: '/srv/traces/x.pt'\n"
