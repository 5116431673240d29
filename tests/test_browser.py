"""The real page in headless Chromium: it renders charts, shows no error, and redraws on a slider move."""
import os
import pathlib

import pandas as pd
import pytest
import torch

from browser_support import ROOT, launch_chromium, streamlit_server, wait_for_run

from dashboard.presets import CONTROL_DEFAULTS
from dashboard.sections.kpis import fmt
from dashboard.state import spec_from_controls
from moe import MoELayer
from moe.scenarios import make_batch

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="module")
def browser():
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
    with streamlit_server() as url:
        yield url


def _engine_trace(values: dict):
    """The engine's trace for these control values, computed in this process."""
    spec = spec_from_controls(values)
    x = make_batch(spec.scenario, spec.config.d_model, spec.tokens, seed=spec.config.seed, **spec.params).x
    with torch.inference_mode():
        return MoELayer(spec.config)(x)[1]


def _engine_per_expert(values: dict) -> pd.DataFrame:
    return _engine_trace(values).per_expert()


def _engine_summary(values: dict) -> dict:
    return _engine_trace(values).summary()


def _kpi(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]', has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text()


def test_page_renders_charts_and_redraws_when_top_k_moves(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
    wait_for_run(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 2
    assert _kpi(page, "tokens") == "512"
    aux_before = _kpi(page, "aux loss")

    # Move the top_k slider one step right with the keyboard, as a person would.
    top_k = page.locator('[data-testid="stSidebar"] input[type="range"][aria-label="top_k"]')
    assert top_k.input_value() == "2"
    top_k.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        """([label, before]) => {
            const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
                .find(el => el.querySelector('[data-testid="stMetricLabel"]')?.innerText.trim() === label);
            return m && m.querySelector('[data-testid="stMetricValue"]').innerText.trim() !== before;
        }""", arg=["aux loss", aux_before], timeout=30_000)
    wait_for_run(page)
    assert top_k.input_value() == "3"
    assert "top_k=3" in page.url or "top_k%3D3" in page.url
    assert page.locator('[data-testid="stPlotlyChart"] .main-svg').count() >= 2
    assert page.locator('[data-testid="stException"]').count() == 0
    assert errors == []

    # top_k reran only the results fragment (downloads included): the CSV is the result shown now.
    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("button", name="Per-expert table (CSV)").click()
    shown = pd.read_csv(download.value.path())
    expected = _engine_per_expert({**CONTROL_DEFAULTS, "top_k": 3})
    assert shown["served"].tolist() == expected["served"].tolist()
    assert shown["served"].sum() == 512 * 3
    assert (shown["contribution"] - expected["contribution"]).abs().max() < 1e-3

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    page.close()


def _press(page, label: str, key: str) -> None:
    """Focus a sidebar slider and press a key, then wait for the URL to change and the run to end."""
    before = page.url
    page.locator(f'[data-testid="stSidebar"] input[type="range"][aria-label="{label}"]').focus()
    page.keyboard.press(key)
    page.wait_for_function("before => location.href !== before", arg=before, timeout=30_000)
    wait_for_run(page)


def test_results_only_and_full_reruns_mix_without_losing_values(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
    wait_for_run(page)
    _press(page, "temperature", "ArrowRight")  # results only: 1.0 -> 1.05
    _press(page, "n_experts", "ArrowRight")    # full rerun: 8 -> 9
    _press(page, "top_k", "ArrowRight")        # results only: 2 -> 3
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
                           ".some(el => el.innerText.trim().endsWith('/ 9'))", timeout=30_000)
    slider = lambda label: page.locator(f'[data-testid="stSidebar"] input[type="range"][aria-label="{label}"]')
    assert (slider("temperature").input_value(), slider("n_experts").input_value(),
            slider("top_k").input_value()) == ("1.05", "9", "3")
    for part in ("temperature=1.05", "n_experts=9", "top_k=3"):
        assert part in page.url
    s = _engine_summary({**CONTROL_DEFAULTS, "temperature": 1.05, "n_experts": 9, "top_k": 3})
    assert _kpi(page, "aux loss") == fmt(s['aux_loss']) and _kpi(page, "CV") == fmt(s['cv'])
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def _step_count(page) -> int:
    text = page.locator('[data-testid="stMarkdownContainer"] p', has_text="playing").first.inner_text()
    return int(text.split("·")[0].strip().removeprefix("step "))


def _points(page) -> int:
    """Points drawn in the live load-share chart (one path per expert, grows with the history)."""
    return page.evaluate("""() => {
        const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')];
        const chart = charts.find(c => (c.querySelector('.gtitle')?.textContent || '').startsWith('Load share'));
        return chart && chart.calcdata ? chart.calcdata[0].length : -1;
    }""")


def test_live_view_plays_and_the_charts_advance(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
    wait_for_run(page)
    page.get_by_text("Live", exact=True).click()
    page.get_by_role("button", name="Play").click()
    page.wait_for_selector("text=playing", timeout=30_000)
    page.wait_for_function("() => document.body.innerText.includes('Load share per expert')", timeout=30_000)
    first_step, first_points = _step_count(page), _points(page)
    page.wait_for_timeout(3000)
    later_step, later_points = _step_count(page), _points(page)
    assert later_step > first_step >= 1
    assert later_points > first_points > 0
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_role("button", name="Pause").click()
    page.wait_for_selector("text=paused", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "live.png"))
    page.close()
