"""The pages in a real browser: the sidebar's navigation changes the page, its URL and the sidebar's controls
(the Playground's controls only on the Playground, their values kept while another page is open); a link from
before the pages (?view=Traces) opens the page the view became."""
import pytest

from browser_support import wait_for_run

pytestmark = pytest.mark.browser
PRESET = '[data-testid="stSidebar"] [data-testid="stSelectbox"]:has-text("Preset")'
N_EXPERTS = '[data-testid="stSidebar"] input[type="range"][aria-label="n_experts"]'


def _open(browser, url: str, ready: str):
    """A new tab on `url`, once `ready` (a selector) shows and the run has finished."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector(ready, timeout=90_000)
    wait_for_run(page)
    return page


def _nav(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()


def test_the_navigation_changes_the_page_and_its_sidebar_controls(browser, server):
    page = _open(browser, server + "/?n_experts=6&d_model=8&d_expert=8", '[data-testid="stPlotlyChart"] .main-svg')
    try:
        assert page.locator(PRESET).count() == 1 and page.locator(N_EXPERTS).input_value() == "6"
        _nav(page, "Runs")
        page.wait_for_function("() => document.body.innerText.includes('Routing traces')", timeout=60_000)
        wait_for_run(page)
        assert page.url.split("?")[0].endswith("/runs")
        assert page.locator(PRESET).count() == 0 and page.locator(N_EXPERTS).count() == 0  # not this page's
        assert page.get_by_text("Ran on", exact=False).count() == 0  # nor the layer's header line
        _nav(page, "About")
        page.wait_for_function("() => location.pathname.endsWith('/about')", timeout=60_000)
        page.get_by_text("What every number on this page means", exact=False).wait_for(timeout=60_000)  # its run
        wait_for_run(page)
        assert page.locator(PRESET).count() == 0
        _nav(page, "Playground")
        page.wait_for_selector(N_EXPERTS, timeout=60_000)
        wait_for_run(page)
        assert page.locator(N_EXPERTS).input_value() == "6"  # kept while the other pages were open
        page.wait_for_function("() => location.search.includes('n_experts=6')", timeout=30_000)  # and in the link
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        page.close()


def test_an_old_traces_link_opens_the_runs_page(browser, server):
    page = _open(browser, server + "/?view=Traces", "text=Routing traces")
    try:
        assert page.url.split("?")[0].endswith("/runs") and page.locator(PRESET).count() == 0
    finally:
        page.close()
