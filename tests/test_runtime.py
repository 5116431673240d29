"""No process-wide side effects in the request path: the thread count and the collector are left alone."""
import gc
import pathlib
import tomllib

import torch
from streamlit.testing.v1 import AppTest

from dashboard import loaders
from dashboard.links import spec_from_controls
from dashboard.presets import CONTROL_DEFAULTS

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


def test_the_dashboard_never_freezes_or_collects_in_the_request_path(monkeypatch):
    """Run the page itself (a view with a forward, then About) and record every call that would change the process."""
    calls = []
    for module, name in [(torch, "set_num_threads"), (torch._C, "set_num_threads"),
                         (torch, "set_num_interop_threads"), (gc, "freeze"), (gc, "disable"), (gc, "set_threshold")]:
        monkeypatch.setattr(module, name, lambda *a, _name=name: calls.append((_name, a)))
    threads, frozen = torch.get_num_threads(), gc.get_freeze_count()
    loaders.run(spec_from_controls({**CONTROL_DEFAULTS, "batch": 1, "seq_len": 8}))
    for view in ("Overview", "About"):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        for key, value in {"view": view, "d_model": "8", "d_expert": "8", "batch": "1", "seq_len": "16"}.items():
            at.query_params[key] = value
        at.run()
        assert not at.exception and len(at.main.subheader) > 0, view  # the view rendered
    assert calls == []
    assert gc.get_freeze_count() == frozen and gc.isenabled() and torch.get_num_threads() == threads


def test_streamlit_settings_skip_the_post_run_collection_and_bind_to_localhost():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False
    assert config["server"]["address"] == "localhost"
