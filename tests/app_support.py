"""The whole app under Streamlit's AppTest, opened from a link (query parameters), as a visitor would."""
from __future__ import annotations

import base64
import json
import pathlib

import numpy as np
from streamlit.testing.v1 import AppTest

APP = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")
SMALL = {"d_model": "8", "d_expert": "8", "batch": "1", "seq_len": "16"}  # a layer that runs in milliseconds


def open_app(query: dict | None = None, timeout: float = 180) -> AppTest:
    """Run app.py once with these query parameters (the link it was opened from)."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def chart_traces(at: AppTest, i: int) -> dict:
    """The i-th chart's traces by name, as the page sent them to the browser (typed arrays decoded)."""
    spec = json.loads(at.get("plotly_chart")[i].proto.spec)
    return {t.get("name"): {k: plotly_list(v) for k, v in t.items()} for t in spec["data"]}


def plotly_list(value):
    """Plotly's JSON writes numeric arrays as {"dtype", "bdata" (base64), "shape"}: back to a list."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).tolist()
    return value
