"""Labels in a real browser: every row group of the Overview heatmap is named (default and Switch presets),
and no two expert tick labels overlap at 32 experts (their rendered boxes are disjoint)."""
from __future__ import annotations

import itertools
import urllib.parse

import pytest

from browser_support import ROOT, wait_for_charts, wait_for_run

from dashboard import loaders
from dashboard.links import spec_from_controls
from dashboard.presets import preset_values
from dashboard.tables import heatmap_rows, sorted_token_matrix

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts"
DEFAULT, SWITCH = "Balanced top-2 (Mixtral-like)", "Switch top-1 with capacity"
DEEPSEEK = "DeepSeek-V3-like (group-limited, shared expert, sigmoid + bias)"

# Rendered texts and their boxes in each chart (the element's st-key): annotations and y ticks (either may name
# the row groups), or one entry per x axis.
KEY = "g => (g.closest('[data-testid=\"stElementContainer\"]').className.match(/st-key-([\\w-]+)/) || [])[1]"
BOX = "t => { const r = t.getBoundingClientRect(); return {text: t.textContent, box: [r.left, r.top, r.right, r.bottom]}; }"
ROW_LABELS = f"""() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(g =>
    [...g.querySelectorAll('.annotation-text, g.ytick text')].map(t => ({{key: ({KEY})(g), ...({BOX})(t)}})))"""
X_AXES = f"""() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(g =>
    [...g.querySelectorAll('g.xaxislayer-above')].map((axis, i) =>
        ({{key: ({KEY})(g) + ' x' + i, ticks: [...axis.querySelectorAll('g.xtick text')].map({BOX})}})))"""


# Charts per view (DeepSeek's Overview adds the shared share): every one is drawn before its labels are read
CHARTS = {"Overview": 4, "Experts": 3, "Contributors": 1, "Router": 4, "Pathways": 3}


def _open(browser, server, preset: str, view: str = "Overview"):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/?{urllib.parse.urlencode({'preset': preset, 'view': view})}")
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
    wait_for_run(page)
    wait_for_charts(page, CHARTS[view] + (preset == DEEPSEEK and view == "Overview"))  # drawn after the run
    assert page.locator('[data-testid="stException"]').count() == 0
    return page


def _disjoint(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _groups(preset: str) -> list[str]:
    result = loaders.run(spec_from_controls(preset_values(preset)))
    groups = sorted_token_matrix(result.trace, "contributions", result.labels, result.label_names,
                                 heatmap_rows(result.config.n_experts))[3]
    return [name for name, _ in itertools.groupby(groups)]


@pytest.mark.parametrize("preset", [DEFAULT, SWITCH])
def test_overview_heatmap_names_every_row_group(browser, server, preset):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = _open(browser, server, preset)
    expected = _groups(preset)
    try:  # a loaded browser may still be drawing the heatmap's labels
        page.wait_for_function(f"() => ({ROW_LABELS})().filter(t => t.key === 'contributors_heatmap').length >= "
                               f"{len(expected)}", timeout=15_000)
    except PlaywrightTimeout:
        pass  # fewer labels than groups: the assertion below says which
    found = [t for t in page.evaluate(ROW_LABELS) if t["key"] == "contributors_heatmap"]
    assert [t["text"] for t in found] == expected  # every group, once, in row order (expert 3 and topic 3 too)
    assert all(_disjoint(a["box"], b["box"]) for a, b in itertools.combinations(found, 2))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"row_groups_{'switch' if preset == SWITCH else 'default'}.png"))
    page.close()


@pytest.mark.parametrize("view", ["Overview", "Experts", "Contributors", "Router", "Pathways"])
def test_expert_tick_labels_never_overlap_at_32_experts(browser, server, view):
    page = _open(browser, server, DEEPSEEK, view)
    axes = [axis for axis in page.evaluate(X_AXES) if axis["ticks"]]
    assert axes  # every expert axis of the view, each checked
    for axis in axes:
        overlaps = [(a["text"], b["text"]) for a, b in itertools.combinations(axis["ticks"], 2)
                    if not _disjoint(a["box"], b["box"])]
        assert overlaps == [], (axis["key"], overlaps[:5])
    page.close()
