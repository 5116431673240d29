"""The real page in headless Chromium: it renders charts, shows no error, and redraws on a slider move."""
import re
import subprocess
import sys
import urllib.parse

import pandas as pd
import pytest
import torch

from browser_support import ROOT, wait_for_charts, wait_for_run

from moe import MoELayer
from moe.scenarios import make_batch
from dashboard import loaders
from dashboard.links import spec_from_controls, to_query
from dashboard.presets import CONTROL_DEFAULTS, DEFAULT_PRESET
from dashboard.views.kpis import fmt, kpi_values

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts"




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
    wait_for_charts(page, 4)  # the Overview's four charts, drawn after the run
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


# Points drawn in the live load-share chart (one path per expert, grows with the history).
POINTS = """() => {
    const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')];
    const chart = charts.find(c => (c.querySelector('.gtitle')?.textContent || '').startsWith('Load share'));
    return chart && chart.calcdata ? chart.calcdata[0].length : -1;
}"""
# The step in the status line ("step 12 · playing · ...").
STEP = """() => {
    const p = [...document.querySelectorAll('[data-testid="stMarkdownContainer"] p')]
        .find(el => /^step \\d+ ·/.test(el.innerText.trim()));
    return p ? parseInt(p.innerText.trim().slice(5)) : -1;
}"""


def _points(page) -> int:
    return page.evaluate(POINTS)


def test_live_view_plays_and_the_charts_advance(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
    wait_for_run(page)
    page.get_by_text("Live", exact=True).click()
    page.get_by_role("button", name="Play").click()
    # The status line, not any "playing" text: the view's caption says "Playing continues…" before Play.
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"] p')]"
                           ".some(p => /^step \\d+ · playing/.test(p.innerText.trim()))", timeout=30_000)
    page.wait_for_function("() => document.body.innerText.includes('Load share per expert')", timeout=30_000)
    page.wait_for_function(f"() => ({POINTS})() > 0", timeout=30_000)
    first_step, first_points = _step_count(page), _points(page)
    assert first_step >= 1
    # Wait for the condition, not for a fixed time: the history grows in the chart and in the status line.
    page.wait_for_function(f"first => ({POINTS})() > first", arg=first_points, timeout=60_000)
    page.wait_for_function(f"first => ({STEP})() > first", arg=first_step, timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0

    # Switching balancing while playing acts on the next step and is marked on the charts.
    page.locator('[data-testid="stRadio"]', has_text="Balancing").get_by_text("aux", exact=True).click()
    page.wait_for_function("() => document.body.innerText.includes('balance = aux')", timeout=30_000)
    page.wait_for_function("() => [...document.querySelectorAll('.annotation-text')]"
                           ".some(el => el.textContent.includes('→ aux'))", timeout=30_000)
    page.get_by_role("button", name="Pause").click()
    page.wait_for_selector("text=paused", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "live.png"))
    page.close()


# --- four sessions on one server -------------------------------------------------------------------

SESSIONS = [  # four links, small configs; the last forward is large (512·2·3·512·1024 ≈ 1.6e9 multiply-adds)
    {"temperature": 0.5, "n_experts": 6, "top_k": 1},
    {"temperature": 1.5, "n_experts": 10, "top_k": 3, "seed": 3},
    {"temperature": 2.0, "n_experts": 12, "score": "sigmoid"},
    {"temperature": 3.0, "d_model": 512, "d_expert": 1024},
]
ROUNDS = [  # (slider, key, staggered): every page presses at once, or one after another
    ("temperature", "ArrowRight", False),
    ("n_experts", "ArrowRight", True),
    ("temperature", "ArrowLeft", False),
]
THREADS = re.compile(r"ms forward on (\d+) threads?\b")


def _link(server: str, values: dict) -> str:
    query = to_query({**CONTROL_DEFAULTS, **values}, DEFAULT_PRESET)
    return f"{server}/?{urllib.parse.urlencode(query)}"


def _torch_default_threads() -> int:
    """torch's default intra-op thread count in a fresh process (what the server starts with)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout)


def _slider_value(page, label: str) -> str:
    return page.locator(f'[data-testid="stSidebar"] input[type="range"][aria-label="{label}"]').input_value()


def _check_session(page, values: dict, threads: int) -> None:
    """The page shows its own settings and the engine's numbers for them, from a forward on every thread."""
    for key in ("temperature", "n_experts"):
        assert float(_slider_value(page, key)) == pytest.approx(values[key]), key
    shown = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    assert shown == to_query(values, DEFAULT_PRESET)
    expected = {label: value for label, value, _ in kpi_values(loaders.run(spec_from_controls(values)))}
    for label in ("active experts", "aux loss", "CV", "max/mean load"):
        assert _kpi(page, label) == expected[label], label
    assert THREADS.search(page.inner_text("body")).group(1) == str(threads)


def _press_all(pages, label: str, key: str, staggered: bool) -> None:
    before = [p.url for p in pages]
    for page in pages:
        page.locator(f'[data-testid="stSidebar"] input[type="range"][aria-label="{label}"]').focus()
    for page in pages:  # at the same moment (no wait between pages), or 150 ms apart
        page.keyboard.press(key)
        if staggered:
            page.wait_for_timeout(150)
    for page, url in zip(pages, before):
        page.wait_for_function("before => location.href !== before", arg=url, timeout=60_000)
        wait_for_run(page, timeout_ms=120_000)


def test_four_sessions_from_four_links_keep_their_own_settings_and_numbers(browser, server):
    threads = _torch_default_threads()
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in SESSIONS]
    try:
        pages = [c.new_page() for c in contexts]
        values = [{**CONTROL_DEFAULTS, **v} for v in SESSIONS]
        for page, v in zip(pages, values):
            page.goto(_link(server, v))
        for page, v in zip(pages, values):
            page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=120_000)
            wait_for_run(page, timeout_ms=120_000)
            _check_session(page, v, threads)
        for label, key, staggered in ROUNDS:
            _press_all(pages, label, key, staggered)
            step = {"temperature": 0.05, "n_experts": 1}[label] * (1 if key == "ArrowRight" else -1)
            for page, v in zip(pages, values):
                v[label] = round(v[label] + step, 2) if label == "temperature" else v[label] + step
                _check_session(page, v, threads)
            assert all(p.locator('[data-testid="stException"]').count() == 0 for p in pages)
    finally:
        for context in contexts:
            context.close()


# --- a hostile link -------------------------------------------------------------------------------

HOSTILE_LINK = ("/?router=" + urllib.parse.quote("![p](http://evil.example/pixel.png)")
                + "&preset=" + urllib.parse.quote("[Click here to sign in](http://evil.example/phish)")
                + "&scenario=" + urllib.parse.quote("<img src=http://evil.example/x.png>")
                + "&temperature=nan&top_k=99&view=Router")


def test_a_hostile_link_makes_no_outside_request_and_renders_no_link_or_image(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    try:
        page.goto(server + HOSTILE_LINK)
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
        wait_for_run(page)
        alerts = page.locator('[data-testid="stAlert"]')
        assert alerts.count() >= 4
        assert "evil.example" in page.inner_text("body")  # the values are shown, as text
        for element, attribute in (("a", "href"), ("img", "src"), ("image", "href"), ("iframe", "src")):
            found = page.eval_on_selector_all(element, f"els => els.map(e => e.getAttribute('{attribute}') || '')")
            assert not any("evil" in value for value in found), (element, found)
        assert page.locator('[data-testid="stAlert"] code').count() >= 4  # each value in a code span
        hosts = {urllib.parse.urlsplit(url).hostname for url in requests if not url.startswith(("data:", "blob:"))}
        assert hosts == {"127.0.0.1"}, hosts
        assert "nan" not in page.url and "evil" not in page.url and "view=Router" in page.url
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        context.close()
