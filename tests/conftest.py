"""Fixtures shared by the browser tests: one headless Chromium and one app server per test module."""
import os

import pytest

from browser_support import launch_chromium, streamlit_server


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (or Playwright's); a skip without one, a failure when MOE_REQUIRE_BROWSER is set."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:  # pragma: no cover - playwright is in requirements.txt
        pytest.fail(f"playwright is not installed: {err}")
    with sync_playwright() as pw:
        try:
            chromium = launch_chromium(pw)
        except Exception as err:  # no browser on this machine
            if os.environ.get("MOE_REQUIRE_BROWSER"):
                pytest.fail(f"MOE_REQUIRE_BROWSER is set but Chromium could not start: {err}")
            pytest.skip(f"no Chromium (apt-get install chromium, or playwright install chromium): {err}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server():
    """`streamlit run app.py` on a free loopback port, stopped after the module."""
    with streamlit_server() as url:
        yield url


@pytest.fixture
def tmp_is_a_root(tmp_path_factory, monkeypatch):
    """Test models live under pytest's temporary directory: make it one of the server's roots (MOE_SCOPE_ROOTS)."""
    monkeypatch.setenv("MOE_SCOPE_ROOTS", str(tmp_path_factory.getbasetemp()))


@pytest.fixture(autouse=True)
def a_server_of_its_own():
    """Each test is a server of its own: traces and Playground results that earlier tests' pages kept
    (dashboard.trace_room, dashboard.loaders; collected whenever the garbage collector gets to their sessions) are not
    counted against its reads and replays."""
    from dashboard import loaders, trace_room
    trace_room._HELD.clear()
    trace_room._SIZE.clear()
    loaders._KEPT.clear()
    yield
