"""Start the app with `streamlit run` on a free loopback port and drive it with Playwright + Chromium.

Shared by the browser tests and benchmarks/bench_browser.py. Debian's /usr/bin/chromium is used when
present (this project's machines), else Playwright's own browser (`playwright install chromium`).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEBIAN_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(script: str | pathlib.Path = "app.py", timeout: float = 60.0):
    """Yield the base URL of `streamlit run script` on 127.0.0.1; stop it afterwards."""
    with streamlit_process(script, timeout) as (url, _):
        yield url


@contextlib.contextmanager
def streamlit_process(script: str | pathlib.Path = "app.py", timeout: float = 60.0):
    """Yield (base URL, server process) of `streamlit run script` on 127.0.0.1; stop it afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a long run's output never blocks the server
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                output = log.read() if proc.poll() is not None else "(still running)"
                raise RuntimeError(f"streamlit did not start on {url}: {output}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def launch_chromium(playwright):
    """Debian's Chromium when present, else Playwright's own build."""
    if os.path.exists(DEBIAN_CHROMIUM):
        return playwright.chromium.launch(executable_path=DEBIAN_CHROMIUM, args=CHROMIUM_FLAGS)
    return playwright.chromium.launch(args=CHROMIUM_FLAGS)


def wait_for_run(page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit has finished the current script run (no 'running' status widget)."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.getAttribute('data-test-script-state') === 'notRunning';
        }""", timeout=timeout_ms)


DRAWN_CHARTS = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
    .filter(c => c.querySelector('.js-plotly-plot .main-svg')).length"""


def wait_for_charts(page, n: int, timeout_ms: int = 30_000) -> None:
    """Wait until at least n charts are drawn. Plotly puts two or three `.main-svg` in each chart, so counting
    those counts some charts twice: here each chart container counts once, when its plot is drawn."""
    page.wait_for_function(f"n => ({DRAWN_CHARTS})() >= n", arg=n, timeout=timeout_ms)


def open_runs_path(page, url: str, path) -> None:
    """As a person does: the Runs page, "Path on the server", the path typed and Enter; waits for the run."""
    page.goto(url + "/runs")
    wait_for_run(page)
    page.get_by_text("Path on the server", exact=True).click()
    wait_for_run(page)
    page.get_by_label("Path of the trace file or directory on the server").fill(str(path))
    page.keyboard.press("Enter")
    wait_for_run(page)
