"""examples/ runs as a user would run it, and docs/FIGURES.md shows that code word for word: the charts a
notebook draws hold the forward's own numbers."""
from __future__ import annotations

import base64
import importlib
import json
import os
import pathlib
import re
import runpy
import subprocess
import sys

import numpy as np
import plotly.graph_objects as go
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "figures.py"
DOC = ROOT / "docs" / "FIGURES.md"
NAMES = ("load", "contributions", "entropy")


def _decode(value):
    """Plotly stores numpy arrays in JSON as {"dtype", "bdata" (base64), "shape"}; plain lists stay lists."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = [int(n) for n in str(value.get("shape", len(array))).split(",")]
        return array.reshape(shape)
    return np.asarray(value)


def _plotted(html: str) -> list[dict]:
    """The traces a written HTML file draws: the data argument of its Plotly.newPlot call."""
    start = html.index("Plotly.newPlot(")
    data_at = html.index("[", html.index(",", start))  # after the div id
    data, _ = json.JSONDecoder().raw_decode(html, data_at)
    return data


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Run the example as a script from another directory, writing its HTML files there."""
    cwd = tmp_path_factory.mktemp("figures")
    out = cwd / "new" / "figs"  # not there yet: the example makes it (it ended in a FileNotFoundError traceback)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLE), str(out)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {name: _plotted((out / f"{name}.html").read_text()) for name in NAMES}


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example's variables (its trace and figures), run in this process with the same seeded input."""
    argv = sys.argv
    sys.argv = [str(EXAMPLE), str(tmp_path_factory.mktemp("in_process"))]
    try:
        return runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        sys.argv = argv


def test_the_doc_shows_the_example_word_for_word():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert EXAMPLE.read_text() in blocks
    readme = ROOT.joinpath("README.md").read_text()
    assert "docs/FIGURES.md" in readme.split("## The engine in Python")[1].split("\n## ")[0]


def test_the_load_chart_holds_demand_and_served_of_the_trace(written, example):
    per_expert = example["trace"].per_expert()
    demand, served = written["load"][:2]
    assert (demand["name"], served["name"]) == ("demand (routed)", "served")
    np.testing.assert_array_equal(_decode(demand["y"]), per_expert["demand"].to_numpy())
    np.testing.assert_array_equal(_decode(served["y"]), per_expert["served"].to_numpy())
    np.testing.assert_array_equal(_decode(served["x"]), np.arange(example["cfg"].n_experts))
    assert per_expert["dropped"].sum() > 0  # capacity_factor=1.0 drops some: the two bar sets differ
    lines = {t["name"]: _decode(t["y"])[0] for t in written["load"] if t["type"] == "scatter" and "y" in t}
    trace, cfg = example["trace"], example["cfg"]
    ideal = trace.tokens * cfg.top_k / cfg.n_experts
    assert lines[f"ideal T·K/E = {ideal:.6g}"] == ideal
    assert lines[f"capacity C = {trace.capacity}"] == trace.capacity


def test_the_heatmap_holds_each_tokens_contribution_per_expert(written, example):
    trace = example["trace"]
    (heat,) = written["contributions"]
    z = _decode(heat["z"])
    assert z.shape == (trace.tokens, example["cfg"].n_experts) and example["note"] == ""  # 256 tokens: unbinned
    np.testing.assert_allclose(z, trace.contributions.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert list(heat["y"]) == [str(t) for t in range(trace.tokens)]


def test_the_entropy_histogram_counts_every_token_once(written, example):
    trace, E = example["trace"], example["cfg"].n_experts
    bars = written["entropy"][0]
    probs = trace.probs.detach().double().numpy()
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)  # nats, per token
    counts = _decode(bars["y"])
    assert counts.sum() == trace.tokens
    width = np.log(E) / len(counts)
    mids = _decode(bars["x"])
    recount = [((entropy >= m - width / 2) & (entropy < m + width / 2)).sum() for m in mids]
    assert np.abs(np.asarray(recount) - counts).sum() <= 2  # a value on a bin edge may fall either side
    reference = next(t for t in written["entropy"] if t["name"] == "uniform: ln E")
    np.testing.assert_allclose(_decode(reference["x"]), [np.log(E)] * 2)


def test_every_call_the_doc_names_runs_on_the_example_trace(example):
    """The prose names more calls (`expert_bar_figure(trace.per_expert(), "output_rms", colors)`): each works."""
    names = dict(example)
    for module in ("dashboard.tables", "dashboard.figures.core", "dashboard.figures.router"):
        names.update(vars(importlib.import_module(module)))
    spans = re.findall(r"`([a-z_]+\((?:trace|probability|logit|confidence|entropy|contribution)[^`]*\))`",
                       " ".join(DOC.read_text().split()))
    assert len(spans) >= 5, spans
    for span in spans:
        made = eval(span, names)  # the doc's own text, run against the example's variables
        assert isinstance(made, (go.Figure, tuple)) or hasattr(made, "columns"), span
