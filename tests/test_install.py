"""`pip install .` gives a working `moe-scope`: a wheel built from a copy of the checkout, installed without its
dependencies into a throwaway virtual environment that sees this environment's packages through a .pth file (so
nothing is downloaded and the project's environment is not touched), then run from a folder outside the checkout:
a command's strict JSON, the bundled model, and the dashboard served with the shipped Streamlit settings."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request

import pytest

from moe.cli.entry import serves

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install
SKIP_COPY = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "artifacts",
                                   ".pytest_cache")


def test_no_arguments_or_streamlit_options_serve_and_anything_else_is_a_command():
    assert serves([]) and serves(["--server.port", "8502"]) and serves(["--server.headless=true"])
    assert not serves(["report", "--tokens", "8"]) and not serves(["--help"]) and not serves(["-h"])


def test_the_help_says_that_moe_scope_alone_serves_the_dashboard():
    """`moe-scope --help` listed only the headless commands."""
    from moe.cli.main import build_parser
    assert "`moe-scope` alone (or with Streamlit options such as --server.port 8502) serves the dashboard" in (
        build_parser("moe-scope").format_help().replace("\n", " "))
    assert "serves the dashboard" not in build_parser().format_help()  # python -m moe does not


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    if importlib.util.find_spec("setuptools") is None:  # requirements-test.txt pins it; a bare venv may lack it
        pytest.skip("setuptools is not installed in this environment (pip install -r requirements-test.txt)")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP_COPY)  # the build writes build/ beside its sources
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
          src], cwd=tmp)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    site = pathlib.Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=tmp).strip())
    (site / "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, streamlit, ...
    wheel = next((tmp / "dist").glob("moe_scope-*.whl"))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=tmp)
    work = tmp / "elsewhere"  # no checkout, no .streamlit folder
    work.mkdir()
    return {"bin": venv / "bin", "site": site, "work": work}


def _env(home: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the installed package may be found
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1"}  # HOME: no ~/.streamlit of the user's


def _run(cmd: list, cwd: pathlib.Path, env: dict | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _env(cwd), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _refuse_constant(name: str):
    raise AssertionError(f"the document holds a bare {name}: not strict JSON")


def test_the_installed_command_prints_a_strict_json_report_from_any_folder(installed):
    where = _run([installed["bin"] / "python", "-c", "import moe; print(moe.__file__)"], cwd=installed["work"])
    assert pathlib.Path(where.strip()).is_relative_to(installed["site"])  # the wheel's copy, not the checkout
    out = _run([installed["bin"] / "moe-scope", "report", "--format", "json", "--tokens", "64"], cwd=installed["work"])
    doc = json.loads(out, parse_constant=_refuse_constant)
    assert doc["config"]["tokens"] == 64 and doc["config"]["n_experts"] == 8 and len(doc["per_expert"]) == 8
    assert sum(row["served"] for row in doc["per_expert"]) == 64 * doc["config"]["top_k"]  # dropless: T·K
    assert doc["summary"]["capacity"] is None  # dropless: no capacity, written as null


def test_the_bundled_models_and_the_streamlit_settings_are_installed(installed):
    for model in ("pydoc-mixtral", "pydoc-deepseek"):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                     "training.json"):
            shipped = installed["site"] / "moe" / "models" / model / name
            assert shipped.read_bytes() == (ROOT / "moe" / "models" / model / name).read_bytes()
    config = installed["site"] / "dashboard" / ".streamlit" / "config.toml"
    assert config.read_text() == (ROOT / ".streamlit" / "config.toml").read_text()  # the checkout's link: one file
    out = _run([installed["bin"] / "moe-scope", "model-report", "--text", "def f(x): return x", "--max-tokens", "16"],
               cwd=installed["work"])
    doc = json.loads(out, parse_constant=_refuse_constant)
    assert doc["model"] == "pydoc-mixtral" and doc["tokens"] == 16 and len(doc["layers"]) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_moe_scope_serves_the_dashboard_with_the_shipped_settings(installed):
    port = _free_port()
    log = installed["work"] / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(installed["bin"] / "moe-scope"), "--server.port", str(port)],
                                  cwd=installed["work"], env=_env(installed["work"]), stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        health = _wait_for_health(port, server, time.monotonic() + 90)
        assert health == "ok"
        text = log.read_text()
        # server.address = "localhost" in the shipped config: Streamlit prints that one address as "URL: ...";
        # without the setting it prints "Local URL: ..." (and a "Network URL" when it finds one)
        urls = [line.strip() for line in text.splitlines() if "URL:" in line]
        assert urls == [f"URL: http://localhost:{port}"], text
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_health(port: int, server: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        assert server.poll() is None, f"moe-scope exited with {server.returncode}"
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the dashboard did not answer /_stcore/health in 90 s")


def test_the_installed_page_runs_without_an_exception(installed):
    """The installed dashboard/app.py renders its first page (Streamlit's AppTest), run from outside the checkout."""
    code = ("import sys; from moe.cli.entry import app_path; from streamlit.testing.v1 import AppTest; "
            "at = AppTest.from_file(str(app_path()), default_timeout=120).run(); "
            "print(app_path()); print([e.value for e in at.exception]); print(len(at.get('plotly_chart')))")
    path, exceptions, charts = _run([installed["bin"] / "python", "-c", code], cwd=installed["work"]).splitlines()
    assert pathlib.Path(path).is_relative_to(installed["site"]) and exceptions == "[]" and int(charts) > 0
