"""The whole app under Streamlit's AppTest, opened from a link (query parameters), as a visitor would."""
from __future__ import annotations

import pathlib

from streamlit.testing.v1 import AppTest

APP = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")
SMALL = {"d_model": "8", "d_expert": "8", "batch": "1", "seq_len": "16"}  # a layer that runs in milliseconds


def open_app(query: dict | None = None, timeout: float = 180) -> AppTest:
    """Run app.py once with these query parameters (the link it was opened from)."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()
