"""No process-wide side effects in the request path: the thread count and the collector are left alone."""
import gc
import pathlib
import tomllib

import torch

from dashboard import loaders
from dashboard.presets import CONTROL_DEFAULTS
from dashboard.links import spec_from_controls

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_forward_in_the_request_path_leaves_the_thread_count_alone_and_records_it():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = loaders.run(spec_from_controls({**CONTROL_DEFAULTS, "batch": 1, "seq_len": 8}))
        assert torch.get_num_threads() == 2
        assert small.threads == 2  # a small forward runs with the process's count, not one thread
    finally:
        torch.set_num_threads(old)


def test_the_dashboard_never_freezes_or_collects_in_the_request_path():
    frozen = gc.get_freeze_count()
    loaders.run(spec_from_controls({**CONTROL_DEFAULTS, "batch": 1, "seq_len": 8}))
    assert gc.get_freeze_count() == frozen
    sources = [p.read_text() for p in [ROOT / "app.py", *sorted((ROOT / "dashboard").rglob("*.py"))]]
    assert not any("gc.freeze" in s or "set_num_threads" in s for s in sources)


def test_streamlit_settings_skip_the_post_run_collection_and_bind_to_localhost():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False
    assert config["server"]["address"] == "localhost"
