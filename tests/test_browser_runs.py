"""The Runs page follows a routing log in a real browser: a step the test writes with LogWriter shows without a
reload, and the run is marked idle once the writer stops (the page's **Idle after (s)** set small for the test)."""
import time

import numpy as np
import pytest

from browser_support import open_runs_path, streamlit_server, wait_for_run
from moe.traces.store import LogWriter

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def log_server(tmp_path_factory):
    """The app, started with the log's directory among its roots (MOE_SCOPE_ROOTS, fixed at start)."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_SCOPE_ROOTS", str(folder))
        with streamlit_server() as url:
            yield url, folder


def test_a_new_step_shows_without_a_reload_and_the_run_goes_idle(browser, log_server):
    url, folder = log_server
    path = folder / "live"
    writer = LogWriter(str(path), layers=["0", "1"], n_experts=8, top_k=2)
    writer.write_step(0, np.arange(16).reshape(2, 8))
    writer.flush()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        open_runs_path(page, url, path)
        page.get_by_text("Follow", exact=True).click()
        page.get_by_text("live: step 0").wait_for(timeout=30_000)
        idle = page.get_by_role("spinbutton", name="Idle after (s)", exact=True)
        idle.fill("4")
        idle.press("Enter")
        wait_for_run(page)
        page.evaluate("window.__not_reloaded = true")  # a reload would drop it
        shown_after = []
        for step in (1, 2, 3):
            time.sleep(0.3 * step)  # flushes at different points of the page's one-second poll
            writer.write_step(step, np.full((2, 8), step, dtype=np.int64))
            writer.flush()
            started = time.monotonic()
            page.get_by_text(f"live: step {step}").wait_for(timeout=10_000)
            shown_after.append(time.monotonic() - started)
        assert page.evaluate("window.__not_reloaded === true")
        metric = page.locator('[data-testid="stMetric"]').filter(has_text="Steps")
        metric.filter(has_text="4").wait_for(timeout=10_000)  # the status line can arrive before the metric redraws
        assert "4" in metric.inner_text()
        page.get_by_text("idle: no new step for").wait_for(timeout=20_000)  # the writer stopped
        assert "last step 3" in page.get_by_text("idle: no new step for").inner_text()
        print("new step shown " + ", ".join(f"{t:.2f}" for t in shown_after) + " s after its flush")
    finally:
        writer.close()
        page.close()
