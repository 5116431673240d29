"""Browser timings of the dashboard against a trivial one-slider page, measured in one run.

Prints time from page open to the first chart, and the median time from a slider change (a key
press on the temperature slider; on n_experts for the full-rerun row) until the page has finished
changing: the script re-ran with the new value (the floor pages' text, the dashboard's URL) and the
last DOM change before a quiet period of QUIET_MS is taken as the end of the redraw. The floor page
with one Plotly chart shows what a single chart redraw costs in Streamlit before any dashboard work; the
one with four charts is the reference for the Overview (four small multiples): target <= 1.3x.
The last row types a new text into the Model view (bundled model) and is compared with the synthetic-pool
redraw of the default config.
Usage: .venv/bin/python benchmarks/bench_browser.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from browser_support import launch_chromium, streamlit_server, wait_for_run  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent

# Records the time of every DOM change and of every key press.
OBSERVE = """() => {
    window.__lastMutation = 0; window.__keys = []; window.__runs = 0;
    new MutationObserver(() => { window.__lastMutation = performance.now(); })
        .observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
    document.addEventListener('keydown', () => window.__keys.push(performance.now()), true);
    const app = document.querySelector('[data-testid="stApp"]');
    new MutationObserver(() => { if (app.getAttribute('data-test-script-state') === 'running') window.__runs++; })
        .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
# Settled: the script is not running and nothing in the page has changed for QUIET_MS.
QUIET_MS = 600
SETTLED = f"""() => {{
    const app = document.querySelector('[data-testid="stApp"]');
    return app.getAttribute('data-test-script-state') === 'notRunning'
        && performance.now() - window.__lastMutation > {QUIET_MS};
}}"""


def _settled_redraw_s(page) -> float:
    """Wait until the page has settled; seconds from the last key press to the last DOM change."""
    page.wait_for_function(SETTLED, timeout=120_000, polling=20)
    return page.evaluate("window.__lastMutation - window.__keys[window.__keys.length - 1]") / 1e3


def _marker(page, floor: bool) -> str:
    """What proves the script re-ran with the new value: the floor page's text, the dashboard's URL."""
    return page.locator("text=value =").inner_text() if floor else page.url


def measure(browser, url: str, ready_selector: str, repeats: int, floor: bool = False,
            slider_label: str = "temperature") -> dict:
    """Open the page (time to ready_selector), then time slider key presses until the page has settled."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(ready_selector, timeout=120_000, state='attached')
    first = time.perf_counter() - start
    wait_for_run(page, 120_000)
    page.evaluate(OBSERVE)
    slider = page.locator(f'input[type="range"][aria-label="{slider_label}"]')
    times = []
    for i in range(repeats + 1):  # the first press moves off the default (1.0 is not written to the URL)
        before = _marker(page, floor)
        slider.focus()
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        deadline = time.monotonic() + 120
        while _marker(page, floor) == before:  # wait until the rerun with the new value has arrived
            if time.monotonic() > deadline:
                raise TimeoutError("the page did not rerun after the key press")
            page.wait_for_timeout(10)
        elapsed = _settled_redraw_s(page)
        if i:
            times.append(elapsed)
    page.close()
    return {"first_chart_s": first, "redraw_median_s": statistics.median(times), "redraw_all": times}


def measure_text_edit(browser, url: str, repeats: int, lines: int = 1) -> dict:
    """The Model view (bundled model): type a new text (Ctrl+Enter) and time until the page has settled.

    Each text is new (a different number at the end), so every edit pays for a real forward of the model.
    lines > 1 repeats the function body: past the model's context (512 tokens) the text is read in windows.
    """
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    page.goto(url + "/?view=Model&mtok=4096")  # max tokens 4096: a long text is read in windows, never cut
    page.wait_for_function("() => document.body.innerText.includes('Top-1 expert per token and layer')",
                           timeout=180_000)
    first = time.perf_counter() - start
    wait_for_run(page, 120_000)
    page.evaluate(OBSERVE)
    box = page.get_by_label("Text")
    times = []
    for i in range(repeats + 1):  # the first edit warms the counterfactual cache path
        text = "def area(r):\n" + "    r = 3.14159 * r * r\n" * (lines - 1) + f"    return r  # case {i}\n"
        box.fill(text)
        runs = page.evaluate("window.__runs")
        box.press("Control+Enter")
        # the rerun with the new text has started (a text longer than a link holds is not in the URL)
        page.wait_for_function("n => window.__runs > n", arg=runs, timeout=120_000, polling=10)
        elapsed = _settled_redraw_s(page)
        if i:
            times.append(elapsed)
    page.close()
    return {"first_chart_s": first, "redraw_median_s": statistics.median(times), "redraw_all": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--model-only", action="store_true",
                        help="only the default-config redraw and the Model view's text edit (the 2x comparison)")
    parser.add_argument("--text-lines", type=int, default=1,
                        help="lines in the Model view's text; each adds 24 bytes (tokens): 25 lines (613 "
                             "tokens) are read in 2 windows of the bundled model's 512, 85 lines (2,053) in 7")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    chart = '[data-testid="stPlotlyChart"] .main-svg'
    # (name, script, query, ready selector, slider moved)
    cases = [("floor: one-slider page", HERE / "floor_app.py", "", "text=value =", "temperature"),
             ("dashboard, default config", "app.py", "", chart, "temperature"),
             ("dashboard, D768 H3072 E8 K2 T512", "app.py", "?d_model=768&d_expert=3072", chart, "temperature"),
             ("reference: floor + one Plotly chart", HERE / "floor_chart_app.py", "", chart, "temperature"),
             ("reference: floor + four Plotly charts", HERE / "floor_charts4_app.py", "", chart, "temperature"),
             ("dashboard, n_experts (full rerun)", "app.py", "", chart, "n_experts")]
    if args.model_only:
        cases = cases[1:2]
    rows = []
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        for name, script, query, selector, slider in cases:
            with streamlit_server(script) as url:
                r = measure(browser, url + "/" + query, selector, args.repeats, floor=script != "app.py",
                            slider_label=slider)
            rows.append((name, r))
            print(f"  measured {name}: " + ", ".join(f"{t:.3f}" for t in r["redraw_all"]), flush=True)
        with streamlit_server("app.py") as url:
            rows.append(("Model view: text edit redraw", measure_text_edit(browser, url, args.repeats,
                                                                          args.text_lines)))
        print("  measured Model view: " + ", ".join(f"{t:.3f}" for t in rows[-1][1]["redraw_all"]), flush=True)
        browser.close()
    if args.model_only:
        _print_model_ratio(rows)
        return
    floor = rows[0][1]["redraw_median_s"]
    print(f"\n{'page':<36} {'first chart s':>14} {'redraw median s':>16} {'redraw / floor':>15}")
    for name, r in rows:
        print(f"{name:<36} {r['first_chart_s']:>14.3f} {r['redraw_median_s']:>16.3f} "
              f"{r['redraw_median_s'] / floor:>15.2f}")
    print(f"\ndefault redraw / floor = {rows[1][1]['redraw_median_s'] / floor:.2f} (target <= 1.6)")
    print(f"D768 H3072 E8 K2 T512 redraw = {rows[2][1]['redraw_median_s']:.3f} s (target <= 0.8 s)")
    print(f"one changed Plotly chart on the floor page = {rows[3][1]['redraw_median_s'] / floor:.2f} x floor "
          "(what a single chart redraw costs before any dashboard work)")
    four = rows[4][1]["redraw_median_s"]
    print(f"default redraw (Overview, 4 charts) / floor + four Plotly charts = "
          f"{rows[1][1]['redraw_median_s'] / four:.2f} (target <= 1.3)")
    _print_model_ratio(rows)


def _print_model_ratio(rows: list) -> None:
    pool = next(r for name, r in rows if name == "dashboard, default config")["redraw_median_s"]
    text = rows[-1][1]["redraw_median_s"]
    print(f"\nModel view text edit redraw = {text:.3f} s; synthetic-pool redraw (default config) = {pool:.3f} s; "
          f"ratio = {text / pool:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
