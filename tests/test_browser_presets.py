"""The #9 presets in headless Chromium: the DeepSeek-V3-like page shows the engine's numbers and its charts."""
import urllib.parse

import pytest

from browser_support import ROOT, wait_for_charts, wait_for_run

from dashboard import loaders
from dashboard.links import spec_from_controls
from dashboard.presets import preset_values
from dashboard.views.kpis import kpi_values

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts"
DEEPSEEK = "DeepSeek-V3-like (group-limited, shared expert, sigmoid + bias)"




def _kpi(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]', has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text()


def _open(browser, server, query: dict):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/?{urllib.parse.urlencode(query)}")
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
    wait_for_run(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    return page, errors


@pytest.mark.parametrize("view", ["Overview", "Experts"])
def test_deepseek_v3_preset_shows_the_engines_numbers(browser, server, view):
    page, errors = _open(browser, server, {"preset": DEEPSEEK, "view": view})
    expected = {label: value for label, value, _ in kpi_values(loaders.run(spec_from_controls(preset_values(DEEPSEEK))))}
    for label in ("aux loss", "top-k margin", "bias overlap", "shared share", "shared RMS"):
        assert _kpi(page, label) == expected[label], label
    charts = page.locator('[data-testid="stPlotlyChart"]')
    wait_for_charts(page, 5 if view == "Overview" else 3)  # Plotly's containers come after the run, in batches
    assert charts.count() == (5 if view == "Overview" else 3)  # Overview: the four charts and the shared share
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"deepseek_v3_{view.lower()}.png"), full_page=True)
    assert errors == []
    page.close()
