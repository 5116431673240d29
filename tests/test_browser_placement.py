"""The Placement section in headless Chromium, drawn from a routing log on disk by a one-call script (as the Runs
page calls it): the verdict, four drawn charts with their definitions, and plan files that, downloaded, the
engine reads back."""
from __future__ import annotations

import numpy as np
import pytest

from browser_support import ROOT, streamlit_server, wait_for_run
from moe.parallel.export import read_plan
from moe.traces.log import RoutingLog
from moe.traces.store import write_log

pytestmark = pytest.mark.browser
E, LAYERS = 8, ["3", "7"]
SCRIPT = """import sys
sys.path.insert(0, {root!r})
from dashboard.views import placement
from moe.traces.opener import open_trace
placement.render(open_trace({path!r}).log(), "runs")
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("placement")
    rng = np.random.default_rng(4)
    counts = np.stack([rng.multinomial(400, rng.dirichlet(np.full(E, 0.4)), size=24) for _ in LAYERS], axis=1)
    write_log(RoutingLog("moe-scope-recorder", LAYERS, np.arange(24), counts, top_k=2), str(folder / "log"))
    script = folder / "section.py"
    script.write_text(SCRIPT.format(root=str(ROOT), path=str(folder / "log")))
    with streamlit_server(script) as url:
        yield url


def test_the_section_draws_the_verdict_the_charts_and_downloads_plans_the_engine_reads(browser, app, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app)
    page.get_by_text("Placement", exact=True).wait_for(timeout=90_000)
    wait_for_run(page)
    page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_role("combobox", name="Layer").click()  # as a person picks a layer
    page.get_by_role("option", name="3", exact=True).click()
    # The verdict names the layer picked. (Not any text with 'layer 3': the downloads' caption may name it before.)
    page.wait_for_function("() => (document.querySelector('[data-testid=\"stAlert\"]') || {innerText: ''})"
                           ".innerText.includes('p50 balancedness of layer 3')", timeout=60_000)
    wait_for_run(page)
    alert = page.locator('[data-testid="stAlert"]').first.inner_text()
    assert "p50 balancedness of layer 3" in alert
    assert page.locator('[data-testid="stPlotlyChart"]').count() == 4
    text = page.locator('[data-testid="stMain"]').inner_text()
    for name in ("balancedness_vllm", "replay_next_window", "replay_rank_load", "hot_expert_persistence"):
        assert f"{name}:" in text
    for label, fmt in (("SGLang --init-expert-location (JSON)", "sglang"), ("moe-scope plan (JSON)", "moe-scope")):
        with page.expect_download() as info:
            page.get_by_role("button", name=label).click()
        path = tmp_path / f"{fmt}.json"
        info.value.save_as(path)
        plan = read_plan(str(path), E, 8)
        rows = int(max(LAYERS, key=int)) + 1 if fmt == "sglang" else len(LAYERS)  # SGLang: a row per layer id
        assert plan.n_experts == E and len(plan.layouts) == rows
        assert all(set(lay.slot_expert.tolist()) == set(range(E)) and lay.n_slots == E + 8 for lay in plan.layouts)
    page.close()
