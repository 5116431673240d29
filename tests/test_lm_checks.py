"""`train-lm` refuses before it builds anything: where it writes, the memory budget, and its integer flags."""
import json
import os

import pytest

from moe.cli.main import main
from moe.hf.lm_config import LMTrainConfig

GiB = 1024 ** 3


@pytest.fixture
def no_training(monkeypatch):
    """Any run that gets as far as training fails the test at once (instead of training for 20 minutes)."""
    def refuse(*args, **kwargs):
        raise AssertionError("train-lm started training instead of refusing")
    monkeypatch.setattr("moe.cli.train_lm.train_lm", refuse)
    monkeypatch.setattr("moe.hf.lm_train.build_model", refuse)


def _refusal(argv, capsys) -> str:
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert out.out == "" and len(lines) == 1 and lines[0].startswith("python -m moe: error:"), out.err
    return lines[0]


def test_out_must_be_a_new_or_empty_directory_or_one_train_lm_wrote(tmp_path, capsys, no_training):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("mine")
    cases = {str(tmp_path / "file.txt"): "is a file, not a directory", "/dev/null": "is a device or special file",
             "/": "holds other files", str(tmp_path / "other"): "holds other files",
             str(tmp_path / "file.txt" / "sub"): "cannot be",
             "/proc/moe-scope-check/model": "cannot be created under '/proc'",  # root may "write" there: tried
             "   ": "--out is empty"}  # it trained, then saved into a folder named with spaces
    for out, message in cases.items():
        assert message in _refusal(["train-lm", "--out", out, "--steps", "3"], capsys)
    assert (tmp_path / "other" / "notes.md").read_text() == "mine" and os.listdir(tmp_path / "other") == ["notes.md"]
    # accepted: a new (nested) directory, an empty one, and one that train-lm wrote before
    (tmp_path / "empty").mkdir()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "model.safetensors").write_bytes(b"")
    (earlier / "training.json").write_text(json.dumps({"config": {"steps": 1}}))
    from moe.hf.lm_config import check_out_dir

    for out in (tmp_path / "new" / "deeper", tmp_path / "empty", earlier):
        check_out_dir(str(out))
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".moe")]
    (earlier / "training.json").write_text("[1, 2]")  # not a train-lm report
    with pytest.raises(ValueError, match="holds other files"):
        check_out_dir(str(earlier))


def test_an_over_budget_batch_is_refused_up_front_with_a_batch_that_fits(tmp_path, capsys, monkeypatch, no_training):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "1")
    line = _refusal(["train-lm", "--out", str(tmp_path / "m"), "--batch", "100000000"], capsys)
    assert "training this model needs about" in line and "over the budget of 1.0 GiB" in line
    fits = int(line.split("--batch ≤ ")[1].split(" ")[0].replace(",", ""))
    assert "(now 100,000,000)" in line and fits >= 1
    from moe.hf.lm_config import check_lm_training_budget

    check_lm_training_budget(LMTrainConfig(batch=fits), budget=GiB)  # following the advice passes
    with pytest.raises(ValueError):
        check_lm_training_budget(LMTrainConfig(batch=fits + 1), budget=GiB)
    assert not (tmp_path / "m").exists()
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.1")
    assert "raise MOE_SCOPE_MEMORY_GB" in _refusal(["train-lm", "--out", str(tmp_path / "m")], capsys)


def test_the_estimate_grows_with_the_batch_and_the_default_run_fits_the_default_budget():
    from moe.hf.lm_config import check_lm_training_budget, estimate_lm_training_bytes

    small, big = (estimate_lm_training_bytes(LMTrainConfig(batch=b))["total"] for b in (16, 1024))
    # the default run (its curriculum ends at 512-byte sequences) peaked at 860 MiB RSS (/usr/bin/time -v)
    assert 860 * 2 ** 20 < small < 1.5 * GiB < 4 * GiB < big
    parts = estimate_lm_training_bytes(LMTrainConfig())
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    check_lm_training_budget(LMTrainConfig(), budget=4 * GiB)


# 10**20 steps, a 2**40 seed and 100000 threads were all taken before (the threads set process-wide at once)
@pytest.mark.parametrize("flag,value", [("--steps", str(10 ** 20)), ("--steps", "1e20"), ("--batch", "2.5"),
                                        ("--seed", str(2 ** 40)), ("--threads", "100000")])
def test_integer_flags_are_positive_integers_with_a_sane_maximum(flag, value, tmp_path, capsys, no_training):
    line = _refusal(["train-lm", "--out", str(tmp_path / "m"), flag, value], capsys)
    assert f"argument {flag}: expected an integer from" in line
