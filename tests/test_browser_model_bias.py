"""Picking the bundled DeepSeek-style model on the Model page in headless Chromium: the bias heatmap and the
per-layer margin / overlap / shared-share chart appear, the link names the model, and the link reopens it."""
import pytest

from browser_support import wait_for_charts, wait_for_run

pytestmark = pytest.mark.browser
CHARTS = "() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length"
TITLES = "() => [...document.querySelectorAll('.gtitle')].map(t => t.textContent)"
BIAS_TITLE = "Expert bias per layer"


def _model_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => document.body.innerText.includes('Top-1 expert per token and layer')",
                           timeout=120_000)
    wait_for_run(page, 120_000)


def test_picking_the_deepseek_model_draws_its_bias_and_the_link_reopens_it(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    _model_page(page, f"{server}/?view=Model&mtok=64")
    page.wait_for_function(f"() => ({CHARTS})() === 5", timeout=60_000)
    wait_for_charts(page, 5)  # the titles are SVG text: drawn after the run
    assert not any(t.startswith(BIAS_TITLE) for t in page.evaluate(TITLES))  # Mixtral: no bias
    page.get_by_role("combobox", name="Bundled model").click()
    page.get_by_role("option", name="pydoc-deepseek").click()
    page.wait_for_function(f"() => ({CHARTS})() === 7", timeout=120_000)
    wait_for_run(page, 60_000)
    wait_for_charts(page, 7)
    titles = page.evaluate(TITLES)
    assert any(t.startswith(BIAS_TITLE) for t in titles) and any(t.startswith("Per layer: top-k margin") for t in titles)
    body = page.inner_text("body")
    assert "pydoc-deepseek" in body and "bias_overlap" in body and "shared_fraction" in body
    assert "mmodel=pydoc-deepseek" in page.url and "mdir=" not in page.url
    link = page.url
    page.close()
    again = browser.new_page(viewport={"width": 1400, "height": 1400})
    _model_page(again, link)  # a bundled model opens at once: no Load click
    again.wait_for_function(f"() => ({CHARTS})() === 7", timeout=120_000)
    assert again.locator('[data-testid="stException"]').count() == 0
    again.close()
