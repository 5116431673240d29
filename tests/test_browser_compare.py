"""The Compare page in a real browser: opened at /compare with two small Playground links, it draws both sides'
charts and the Δ table, the navigation lists it before About, and its URL keeps both sides."""
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest

from browser_support import wait_for_charts, wait_for_run

pytestmark = pytest.mark.browser
SMALL = {"d_model": "8", "d_expert": "8", "batch": "1", "seq_len": "16"}
SIDE_A = urlencode({**SMALL, "n_experts": "4"})
SIDE_B = urlencode({**SMALL, "n_experts": "8"})


def test_compare_draws_both_sides_and_keeps_them_in_its_link(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{server}/compare?a={quote(SIDE_A)}&b={quote(SIDE_B)}")
        page.wait_for_selector('[data-testid="stTable"]', timeout=90_000)
        wait_for_run(page)
        assert page.locator('[data-testid="stPlotlyChart"]').count() == 4  # load and confidence, A and B
        wait_for_charts(page, 4)
        titles = page.locator(".gtitle").evaluate_all("els => els.map(e => e.textContent)")  # SVG text
        assert {"A: demand vs served per expert", "B: demand vs served per expert",
                "A: confidence per token", "B: confidence per token"} <= set(titles)
        table = page.locator('[data-testid="stTable"]')
        assert table.count() == 1 and "B − A" in table.inner_text()
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.url.split("?")[0].endswith("/compare")
        kept = parse_qs(urlsplit(page.url).query)
        assert kept == {"a": [SIDE_A], "b": [SIDE_B]}
        nav = page.get_by_test_id("stSidebarNav").inner_text()
        assert nav.index("Compare") < nav.index("About")
    finally:
        page.close()


def test_compare_a_model_against_its_counterfactual_typed_in_by_hand(browser, server):
    """A person pastes a Model-page link into A and the same link with a cold expert 0 into B: both heatmaps share
    one colour scale, the Δ table has a loss row, and the page's link keeps both sides."""
    own = f"{server}/model?mex=prose"
    cold = f"{server}/model?mex=prose&cfon=1&cfe=0&cfbias=cold"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{server}/compare")
        wait_for_run(page)
        for label, link in (("Link A", own), ("Link B", cold)):
            box = page.get_by_label(label, exact=True).first
            box.fill(link)
            box.press("Enter")
            wait_for_run(page)
        page.wait_for_selector('[data-testid="stTable"]', timeout=120_000)
        wait_for_charts(page, 4, 60_000)
        titles = page.locator(".gtitle").evaluate_all("els => els.map(e => e.textContent)")
        assert any(t.startswith("Load share per layer (A)") for t in titles)
        assert any(t.startswith("Load share per layer (B)") for t in titles)
        table = page.locator('[data-testid="stTable"]').inner_text()
        assert "loss (bits per token)" in table and "B − A" in table
        assert page.locator('[data-testid="stException"]').count() == 0
        kept = parse_qs(urlsplit(page.url).query)
        assert kept["b"] == [urlencode({"view": "Model", "mex": "prose", "cfon": "1", "cfe": "0", "cfbias": "cold"})]
    finally:
        page.close()
