"""Live's "Sidebar layer" training is refused with advice when it would exceed the memory budget."""
import pathlib

import pytest
from streamlit.testing.v1 import AppTest

from moe import MoEConfig
from moe.memory import BudgetError
from moe.train.trainer import TrainConfig, Trainer

APP = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")


def test_trainer_refuses_before_building(monkeypatch):
    cfg = TrainConfig(model=MoEConfig(), scenario="gaussian", tokens=512)
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.05")
    with pytest.raises(BudgetError, match=r"training this configuration needs .* to fit, set tokens ≤ ") as err:
        Trainer(cfg)
    with pytest.raises(BudgetError, match="over the budget"):
        cfg.replace(tokens=513)  # the config itself is refused before its validation draw
    Trainer(cfg.replace(tokens=err.value.changes["tokens"]))  # following the advice trains


def test_trainer_update_to_more_tokens_is_checked(monkeypatch):
    trainer = Trainer(TrainConfig(model=MoEConfig(), scenario="gaussian", tokens=16))
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.05")
    with pytest.raises(BudgetError, match="over the budget"):
        trainer.update(tokens=100_000)
    assert trainer.config.tokens == 16  # unchanged


def test_sidebar_layer_training_over_budget_shows_the_advice(monkeypatch):
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.05")  # the sidebar's forward (36 MiB) fits, training does not
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.radio(key="view").set_value("Live").run()
    at.selectbox(key="live_setup").set_value("Sidebar layer").run()
    assert not at.exception
    assert "trainer" not in at.session_state
    assert any("training this configuration needs" in e.value and "to fit, set tokens ≤" in e.value
               for e in at.error)


def test_a_diverging_run_stops_with_a_message_instead_of_nan_rows():
    trainer = Trainer(TrainConfig(scenario="gaussian", tokens=16, probe_tokens=16, pool_batches=1,
                                  input_offset=1e30))  # tokens of norm ~1e30: the loss overflows
    with pytest.raises(ValueError, match=r"training diverged at step 1: the loss is .*lower lr"):
        trainer.step()
    assert trainer.history_frame().empty  # no NaN row recorded


def test_a_budget_too_small_for_the_defaults_is_said_in_one_line_not_a_traceback(monkeypatch, tmp_path):
    """The live-training preset was a TrainConfig built at import, and a TrainConfig checks the budget: under 2 MiB
    the page and every CLI command (trace-report too) died at import with a traceback. Now the page says what does
    not fit, trace-report runs, and `train --preset` refuses in one line."""
    import subprocess
    import sys
    monkeypatch.setenv("MOE_SCOPE_MEMORY_GB", "0.002")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert [e.value for e in at.error if "over the budget of 2.0 MiB" in e.value]
    (tmp_path / "c.csv").write_text("layer,expert,count\n0,0,3\n0,1,1\n")
    run = [sys.executable, "-m", "moe"]
    done = subprocess.run(run + ["trace-report", str(tmp_path / "c.csv")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and '"n_experts": 2' in done.stdout, done.stderr[-300:]
    done = subprocess.run(run + ["train", "--preset", "collapse", "--steps", "1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "training this configuration needs about" in done.stderr and "over the budget of 2.0 MiB" in done.stderr
