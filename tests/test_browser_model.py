"""The Model view in headless Chromium: type a text, see its tokens coloured by expert and the heatmaps."""
import pathlib

import pytest

from browser_support import launch_chromium, streamlit_server, wait_for_run
from moe.hf_load import BUNDLED_MODEL

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            chromium = launch_chromium(pw)
        except Exception as err:  # no browser on this machine
            pytest.skip(f"no Chromium: {err}")
        yield chromium
        chromium.close()


@pytest.mark.skipif(not pathlib.Path(BUNDLED_MODEL, "model.safetensors").is_file(), reason="no bundled model")
def test_typing_a_text_colours_its_tokens_and_draws_the_heatmaps(browser):
    with streamlit_server() as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url)
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
        wait_for_run(page)
        page.get_by_text("Model", exact=True).click()
        page.wait_for_function("() => document.body.innerText.includes('Top-1 expert per token and layer')",
                               timeout=120_000)
        wait_for_run(page, 120_000)
        box = page.get_by_label("Text")
        box.fill("x = 12 + 30")
        box.press("Control+Enter")
        page.wait_for_function("() => document.querySelectorAll('span[title^=\"expert \"]').length === 11",
                               timeout=60_000)
        wait_for_run(page, 60_000)
        assert page.locator("text=Load share per layer").count() >= 1
        assert page.locator('[data-testid="stPlotlyChart"]').count() == 5
        assert page.locator('[data-testid="stException"]').count() == 0
        page.close()
