"""The Model page in headless Chromium: type a text, see its tokens coloured by expert and the heatmaps;
the routing download holds that text; a counterfactual changes the loss comparison."""
import pathlib

import pandas as pd
import pytest

from browser_support import streamlit_server, wait_for_run
from moe.hf.load import BUNDLED_MODEL

pytestmark = pytest.mark.browser
# The data of the drawn charts whose title starts with a prefix
CHART_DATA = """prefix => [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')]
    .filter(g => (g.querySelector('.gtitle')?.textContent || '').startsWith(prefix) && g.data).map(g => g.data)"""
SWEEP_TITLE = "The counterfactual at each MoE layer alone"
CF_TITLE = "() => [...document.querySelectorAll('.gtitle')].map(t => t.textContent).find(t => t.startsWith('Next-token loss: own')) || ''"



def test_typing_a_text_colours_its_tokens_and_a_counterfactual_changes_the_loss(browser):
    assert pathlib.Path(BUNDLED_MODEL, "model.safetensors").is_file(), "the bundled model is committed"
    with streamlit_server() as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url)
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
        wait_for_run(page)
        page.get_by_test_id("stSidebarNav").get_by_text("Model", exact=True).click()  # the navigation's page
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
        # the downloads are built on the click, from the text on the page: 11 byte tokens at each of 4 layers
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Per-token routing CSV").click()
        routing = pd.read_csv(download.value.path(), keep_default_na=False)
        assert len(routing) == 11 * 4 and sorted(routing.layer.unique()) == [0, 1, 2, 3]
        assert "".join(routing[routing.layer == 0].sort_values("position").token) == "x = 12 + 30"
        loss = routing[routing.layer == 0].sort_values("position").next_token_loss_bits  # the next token's, in bits
        assert loss.iloc[-1] == "" and all(float(b) > 0 for b in loss.iloc[:-1])  # the last predicts nothing
        page.get_by_text("Compare a counterfactual routing").click()
        page.wait_for_function(f"() => ({CF_TITLE})() !== ''", timeout=60_000)
        wait_for_run(page, 60_000)
        assert page.locator('[data-testid="stPlotlyChart"]').count() == 8
        before = page.evaluate(CF_TITLE)
        assert "Δ +0.000" in before  # no change yet: the counterfactual is the model's own routing
        top_k = page.get_by_label("top_k (0 = the model's own)")
        top_k.fill("1")
        top_k.press("Enter")
        page.wait_for_function(f"() => !({CF_TITLE})().includes('Δ +0.000') && ({CF_TITLE})() !== ''",
                               timeout=60_000)
        wait_for_run(page, 60_000)
        assert page.evaluate(CF_TITLE) != before
        assert "cfk=1" in page.url
        # the own and counterfactual heatmaps are drawn on one colour scale
        heatmaps = [f"({CHART_DATA})('Load share per layer ({label})')" for label in ("own routing", "counterfactual")]
        page.wait_for_function(f"() => {' + '.join(f'{h}.length' for h in heatmaps)} === 2", timeout=30_000)
        scales = page.evaluate(f"() => [{', '.join(heatmaps)}].map(([d]) => [d[0].zmin, d[0].zmax])")
        assert scales[0] == scales[1] and scales[0][0] == 0 and scales[0][1] > 0
        page.get_by_text("Sweep: apply to each layer alone").click()
        page.wait_for_function(f"() => ({CHART_DATA})('{SWEEP_TITLE}').length === 1", timeout=60_000)
        wait_for_run(page, 60_000)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)  # the sweep's table
        assert page.locator('[data-testid="stDataFrame"]').count() == 1 and "cfsweep=1" in page.url
        bars = page.evaluate(f"() => ({CHART_DATA})('{SWEEP_TITLE}')[0][0].x")
        assert bars == ["layer 0", "layer 1", "layer 2", "layer 3"]  # one bar per MoE layer
        assert page.locator('[data-testid="stException"]').count() == 0
        page.close()
