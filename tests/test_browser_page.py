"""The first screen in a real browser: the four Overview charts fit a 1400 × 1000 window and no KPI
value is cut off, at the default config and at 256 experts; every chart is laid out in one pass."""
from __future__ import annotations

import pytest

from browser_support import ROOT, streamlit_server, wait_for_charts, wait_for_run

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts"
WINDOW = {"width": 1400, "height": 1000}


@pytest.fixture(scope="module")
def page_at(browser):
    with streamlit_server() as url:
        def open_page(query: str, charts: int = 4):
            page = browser.new_page(viewport=WINDOW)
            page.goto(url + "/" + query)
            page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
            wait_for_run(page)
            wait_for_charts(page, charts)
            return page
        yield open_page


CUT = """() => [...document.querySelectorAll('[data-testid="stMetricValue"]')]
    .filter(el => [el, ...el.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))
    .map(el => el.innerText)"""
CHART_BOTTOMS = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
    .map(el => el.getBoundingClientRect().bottom)"""


@pytest.mark.parametrize("name, query", [("overview", ""), ("overview_e256", "?n_experts=256&top_k=6")])
def test_first_screen_shows_four_charts_and_whole_kpis(page_at, name, query):
    page = page_at(query)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.evaluate(CUT) == []  # every KPI value fits its box
    values = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
    assert all("…" not in v for v in values) and len(values) == 11
    bottoms = page.evaluate(CHART_BOTTOMS)
    assert len(bottoms) == 4 and max(bottoms) <= WINDOW["height"]  # all four on the first screen
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.close()


# For each chart: the margins its figure asks for and the ones Plotly ended with.
MARGINS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(g => {
    const key = (g.closest('[data-testid="stElementContainer"]').className.match(/st-key-([\\w-]+)/) || [])[1];
    const asked = g.layout.margin, used = g._fullLayout._size;
    return [key, ['l', 'r', 't', 'b'].map(k => asked[k]), ['l', 'r', 't', 'b'].map(k => Math.round(used[k]))];
})"""


@pytest.mark.parametrize("query, charts", [
    ("?view=Overview", 4), ("?view=Overview&shared_experts=1", 5), ("?view=Router", 4), ("?view=Pathways", 3), ("?view=Experts", 3),
    ("?view=Model&cfon=1&cfcap=1.0", 8)])
def test_every_chart_is_laid_out_once(page_at, query, charts):
    """Each figure's margins already hold its tick labels, axis titles and colour bar: where one pushes past
    them, Plotly widens the margin and draws the whole chart a second time (twice the redraw time)."""
    page = page_at(query, charts)
    found = page.evaluate(MARGINS)
    assert len(found) == charts
    pushed = [(key, asked, used) for key, asked, used in found if asked != used]
    assert pushed == [], f"margins Plotly had to widen (chart, asked l r t b, used): {pushed}"
    page.close()
