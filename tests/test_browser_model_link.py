"""A Model-view link in headless Chromium: the directory it names waits for a Load click, and a Markdown image
injected through it shows as quoted text while the browser requests nothing from the injected URL."""
import urllib.parse

import pytest

from browser_support import wait_for_run
from dashboard.quoting import quote
from moe.hf.load import BUNDLED_MODEL
from moe.roots import OUTSIDE

pytestmark = pytest.mark.browser
INJECTED_URL = "http://127.0.0.1:9/pixel"
INJECTION = f"![x]({INJECTED_URL})"
CHARTS = "() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length"
# The containers of the model's grid and load charts: sent with the run that makes them (Plotly draws them later)
MODEL_CHARTS = ".st-key-model_grid, .st-key-model_load"


def _open(browser, server, mdir: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{server}/?view=Model&mtok=16&mdir={urllib.parse.quote(mdir, safe='')}")
    page.wait_for_selector('[data-testid="stAlert"]', timeout=90_000)  # the Load notice (or, before, an error)
    wait_for_run(page, 90_000)
    page.wait_for_timeout(500)
    return page, requests


def _click_load(page) -> None:
    page.get_by_role("button", name="Load").click()
    page.wait_for_function("() => !document.body.innerText.includes('This link names the model directory')",
                           timeout=60_000)
    wait_for_run(page, 120_000)


def test_an_injected_image_shows_quoted_and_fetches_nothing(browser, server):
    page, requests = _open(browser, server, INJECTION)
    assert not [url for url in requests if url.startswith("http://127.0.0.1:9")]
    notice = page.locator('[data-testid="stAlertContentInfo"]')
    assert notice.locator("code").inner_text() == INJECTION  # the value, as typed, in a code span
    assert page.locator('img[src*="127.0.0.1:9"]').count() == 0
    _click_load(page)
    error = page.locator('[data-testid="stAlertContentError"]').inner_text()
    assert OUTSIDE in error and "pixel" not in error  # refused without echoing the value
    assert page.locator(MODEL_CHARTS).count() == 0  # their containers come with the run, before Plotly draws
    page.wait_for_timeout(500)
    assert not [url for url in requests if url.startswith("http://127.0.0.1:9")]
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def test_a_linked_model_directory_loads_only_after_the_click(browser, server):
    page, requests = _open(browser, server, BUNDLED_MODEL)
    shown = quote(BUNDLED_MODEL).strip("`")  # shortened to the quote length, in a code span
    assert page.locator('[data-testid="stAlertContentInfo"] code').inner_text() == shown
    page.wait_for_timeout(1000)
    assert page.locator(MODEL_CHARTS).count() == 0  # nothing loaded before the click (no chart's container)
    assert "Top-1 expert per token and layer" not in page.inner_text("body")
    _click_load(page)
    assert page.locator(MODEL_CHARTS).count() == 2  # the check above can fail: the same selector, after the load
    page.wait_for_function(f"() => ({CHARTS})() === 5", timeout=120_000)
    assert "pydoc-mixtral" in page.inner_text("body")
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()
