"""`python -m moe`: the memory guard runs before anything is built, nonsense exits 2 in one line,
and every scenario runs from the CLI with the same knob mapping as the dashboard."""
import json

import pytest

from moe.cli.main import main
from moe.knobs import from_knobs
from moe.scenarios import SCENARIOS
from dashboard.links import spec_from_controls
from dashboard.presets import CONTROL_DEFAULTS

TINY = ["--d-model", "8", "--d-expert", "8", "--n-experts", "4", "--tokens", "24"]


def _fails_in_one_line(capsys, argv, *named):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("python -m moe: error: ") and "Traceback" not in err
    for text in named:
        assert text in err, err
    return err


@pytest.mark.parametrize("argv, named", [
    (["report", "--d-model", "4096", "--d-expert", "8192", "--n-experts", "64"],
     ("over the budget of 1.0 GiB", "--d-expert ≤ 2,048 (now 8,192)", "--d-model ≤ 512 (now 4,096)")),
    (["report", "--tokens", "1000000000"], ("--tokens ≤ ", "(now 1,000,000,000)")),
    (["train", "--clusters", "1000000"], ("training this configuration", "--clusters ≤ ", "(now 1,000,000)")),
    (["train", "--tokens", "1000000000"], ("--tokens ≤ ",)),
])
def test_over_budget_is_refused_before_building(capsys, monkeypatch, argv, named):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "1")
    _fails_in_one_line(capsys, argv, *named)


def test_following_the_cli_advice_runs(capsys, monkeypatch):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.05")
    err = _fails_in_one_line(capsys, ["report", "--d-model", "128", "--d-expert", "2048", "--tokens", "4096"])
    advice = err.split("to fit, set ")[1]
    argv = ["report", "--d-model", "128", "--d-expert", "2048", "--tokens", "4096"]
    for item in advice.split(", "):  # "--d-expert ≤ 512 (now 2,048)"
        flag, value = item.split(" (now")[0].split(" ≤ ")
        argv[argv.index(flag) + 1] = value.replace(",", "")
    assert main(argv) == 0


@pytest.mark.parametrize("argv, named", [
    (["report", "--routed-scaling-factor", "-1"], ("routed_scaling_factor must be finite and > 0",)),
    (["report", "--routed-scaling-factor", "0"], ("routed_scaling_factor",)),
    (["train", "--lr", "1e30"], ("lr must be in (0, 1]",)),
    (["report", "--hot-expert", "0", "--hot-bias", "1e308"], ("logit_bias values must lie within",)),
    (["report", "--seed", str(2 ** 64)], ("seed must be below 2**64",)),
    (["train", "--seed", str(2 ** 64)], ("seed must be below 2**64",)),
    (["report", "--scenario", "drifting", "--skew", "1"], ("--skew does not apply to scenario 'drifting'",)),
    (["train", "--scenario", "gaussian", "--clusters", "3"], ("--clusters does not apply",)),
])
def test_nonsense_exits_2_in_one_line(capsys, argv, named):
    _fails_in_one_line(capsys, argv, *named)


def test_bad_budget_variable_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "lots")
    _fails_in_one_line(capsys, ["report", *TINY], "MOE_SCOPE_MEMORY_GB='lots' is not a memory budget")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_reports_like_the_dashboard(capsys, scenario):
    code = main(["report", "--scenario", scenario, *TINY, "--seed", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    report = json.loads(out)
    spec = spec_from_controls({**CONTROL_DEFAULTS, "scenario": scenario, "d_model": 8, "d_expert": 8,
                               "n_experts": 4, "batch": 1, "seq_len": 24, "seed": 2})
    assert report["config"]["scenario"] == scenario and report["config"]["tokens"] == spec.tokens == 24
    for key, value in spec.params.items():
        assert report["config"][key] == value
    assert sum(row["demand"] for row in report["per_expert"]) == 24 * 2


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_trains(capsys, scenario):
    code = main(["train", "--scenario", scenario, "--d-model", "8", "--d-expert", "8", "--tokens", "16",
                 "--steps", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    rows = json.loads(out)["rows"]  # --format json: one document
    assert [r["step"] for r in rows] == [1, 2] and all(r["tokens"] == 16 for r in rows)


def test_knob_defaults_make_the_default_run():
    cfg, scenario, params, tokens = from_knobs({})
    assert (scenario, params, tokens) == ("gaussian", {}, 4 * 128)
    cfg, _, params, _ = from_knobs({"scenario": "drifting", "drift_step": 7, "n_clusters": 3, "skew": 2.0})
    assert params == {"n_clusters": 3, "spread": 0.3, "step": 7}  # skew is not drifting's


def test_hot_expert_and_spread_make_the_bias():
    cfg = from_knobs({"n_experts": 4, "hot_expert": 2, "hot_bias": 1.5})[0]
    assert cfg.logit_bias == (0.0, 0.0, 1.5, 0.0) and cfg.expert_bias is None
    spread = from_knobs({"n_experts": 4, "bias_spread": 0.5, "seed": 3})[0]
    assert spread.logit_bias == from_knobs({"n_experts": 4, "bias_spread": 0.5, "seed": 3})[0].logit_bias
    assert len(set(spread.logit_bias)) == 4
    with pytest.raises(ValueError, match=r"hot_expert 4 is not an expert index in 0..3"):
        from_knobs({"n_experts": 4, "hot_expert": 4})
    with pytest.raises(ValueError, match="unknown knob 'widht'"):
        from_knobs({"widht": 3})


def test_bad_budget_variable_in_a_fresh_process_is_one_line():
    import os
    import subprocess
    import sys
    env = {**os.environ, "MOE_SCOPE_MEMORY_GB": "-2"}
    proc = subprocess.run([sys.executable, "-m", "moe", "train", "--steps", "1"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "MOE_SCOPE_MEMORY_GB='-2' is not a memory budget" in proc.stderr
