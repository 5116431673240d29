"""Definitions live in the engine, once; the dashboard reads the same texts."""
import pathlib

import dashboard.definitions
import moe.definitions
from moe import PER_EXPERT_COLUMNS, SUMMARY_KEYS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_reported_number_has_an_engine_definition():
    missing = [k for k in [*PER_EXPERT_COLUMNS[1:], *SUMMARY_KEYS] if k not in moe.definitions.DEFINITIONS]
    assert not missing


def test_the_dashboard_shows_the_engine_texts_without_a_copy():
    assert dashboard.definitions.DEFINITIONS is moe.definitions.DEFINITIONS
    source = (ROOT / "dashboard" / "definitions.py").read_text()
    assert "coefficient of variation" not in source  # no second copy of any text
    assert dashboard.definitions.caption("cv") == f"`cv`: {moe.definitions.DEFINITIONS['cv']}"


def test_engine_docstrings_point_to_files_that_exist():
    for path in (ROOT / "moe").glob("*.py"):
        text = path.read_text()
        assert "METRICS.md" not in text, path
    assert "moe/definitions.py" in (ROOT / "moe" / "stats.py").read_text()
