"""Every JSON the project writes is strict: NaN and inf are null, so JSON.parse and every strict parser read it.

The configurations here produce NaN on purpose: dropless capacity, no shared experts, no topic labels."""
import json
import math
import tracemalloc

import pytest

from moe.cli.main import main
from moe.jsonio import dumps, strict
from moe.train.trainer import TrainConfig

from dashboard import exports
from dashboard import loaders
from dashboard.links import spec_from_controls
from dashboard.presets import CONTROL_DEFAULTS

TINY = ["--d-model", "8", "--d-expert", "8", "--n-experts", "4"]


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as JSON.parse does."""
    def refuse(name):
        raise ValueError(f"bare {name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _out(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    return out


@pytest.mark.parametrize("extra", [[], ["--router", "expert_choice"], ["--shared-experts", "1"]])
def test_report_json_is_strict_and_nan_is_null(capsys, extra):
    doc = strict_loads(_out(capsys, ["report", *TINY, "--tokens", "16", *extra]))
    if not extra:  # dropless, no shared experts: these are NaN in the engine
        assert doc["summary"]["capacity"] is None and doc["summary"]["shared_output_rms"] is None
    assert len(doc["per_expert"]) == 4


def test_report_json_idle_expert_rows_are_strict(capsys):
    # a hot expert with a huge bias and top-1: the other experts are idle, their output_rms and mean_gate NaN
    doc = strict_loads(_out(capsys, ["report", *TINY, "--tokens", "16", "--top-k", "1", "--hot-expert", "0",
                                     "--hot-bias", "1000"]))
    idle = [row for row in doc["per_expert"] if row["served"] == 0]
    assert len(idle) == 3 and all(row["output_rms"] is None and row["mean_gate"] is None for row in idle)


def test_train_json_is_one_strict_document(capsys):
    doc = strict_loads(_out(capsys, ["train", *TINY, "--tokens", "16", "--steps", "3"]))
    assert [row["step"] for row in doc["rows"]] == [1, 2, 3]
    assert all(row["capacity"] is None for row in doc["rows"])  # dropless: NaN in the engine
    assert doc["config"]["model"]["n_experts"] == 4 and doc["config"]["tokens"] == 16
    assert doc["config"]["steps"] == 3 and doc["config"]["balance"] == TrainConfig.balance


def test_train_jsonl_is_one_strict_document_per_line(capsys):
    lines = _out(capsys, ["train", *TINY, "--tokens", "16", "--steps", "3", "--format", "jsonl"]).splitlines()
    rows = [strict_loads(line) for line in lines]
    assert [row["step"] for row in rows] == [1, 2, 3] and all(row["capacity"] is None for row in rows)


def test_train_help_names_the_three_formats(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{json,jsonl,csv}" in text and "JSON Lines" in text and "one strict JSON document" in text


def test_summary_download_is_strict():
    result = loaders.run(spec_from_controls({**CONTROL_DEFAULTS, "d_model": 8, "d_expert": 8, "batch": 1,
                                            "seq_len": 16}))
    doc = strict_loads(exports.summary_json(result).decode())
    assert doc["summary"]["capacity"] is None and doc["summary"]["shared_fraction"] is None
    assert doc["config"]["capacity_factor"] is None


def test_an_indented_document_is_json_dumps_output_without_its_pieces_kept():
    """With an indent, json.dumps keeps every piece of the text as its own string until it joins them: a counts file
    of 16,384 layers took `trace-report` to 1.23 GB under a 1 GB budget. `dumps` writes the same text, and at most
    three times the text's size is allocated besides the strict copy (json.dumps: 8.9 times here)."""
    doc = {"rows": [{"step": i // 64, "layer": str(i % 64), "x": 0.5 * i, "y": math.nan, "z": [i, i + 1, -math.inf]}
                    for i in range(20_000)], "load": {str(layer): [[e * layer for e in range(16)]] * 8
                                                     for layer in range(2_000)}}
    expected = json.dumps(strict(doc), indent=1, allow_nan=False)
    peak = {}
    for name, write in (("copy", strict), ("text", lambda value: dumps(value, indent=1))):
        tracemalloc.start()
        try:
            text = write(doc)
            peak[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert text == expected and strict_loads(text)["rows"][1]["y"] is None
    assert peak["text"] - peak["copy"] < 3 * len(text), (peak, len(text))  # the strict copy, then the text
    assert dumps(doc) == json.dumps(strict(doc), allow_nan=False)
