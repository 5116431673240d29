"""Browser timings of the dashboard against a trivial one-slider page, measured in one run.

Prints time from page open to the first chart, and the median time from a slider change (a key
press on the temperature slider) until the script run has finished and the page has painted.
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

# Records every script-state change of the app with its time, and the time of each key press.
OBSERVE = """() => {
    window.__states = []; window.__keys = [];
    const app = document.querySelector('[data-testid="stApp"]');
    new MutationObserver(() => window.__states.push([app.getAttribute('data-test-script-state'), performance.now()]))
        .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
    document.addEventListener('keydown', () => window.__keys.push(performance.now()), true);
}"""
# True once a run started after the last key press and has finished.
DONE = """() => {
    const t0 = window.__keys[window.__keys.length - 1];
    const after = window.__states.filter(([, t]) => t >= t0);
    return after.some(([s]) => s === 'running') && after.length && after[after.length - 1][0] === 'notRunning';
}"""
PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))"


def measure(browser, url: str, chart_selector: str | None, repeats: int) -> dict:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(chart_selector or '[data-testid="stSlider"]', timeout=120_000)
    first = time.perf_counter() - start
    wait_for_run(page, 120_000)
    page.evaluate(OBSERVE)
    slider = page.locator('input[type="range"][aria-label="temperature"]')
    times = []
    for i in range(repeats):
        slider.focus()
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(DONE, timeout=120_000, polling=5)
        painted = page.evaluate(PAINTED)
        times.append((painted - page.evaluate("window.__keys[window.__keys.length - 1]")) / 1e3)
    page.close()
    return {"first_chart_s": first, "redraw_median_s": statistics.median(times), "redraw_all": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    chart = '[data-testid="stPlotlyChart"] .main-svg'
    cases = [("floor: one-slider page", HERE / "floor_app.py", "", None),
             ("dashboard, default config", "app.py", "", chart),
             ("dashboard, D768 H3072 E8 K2 T512", "app.py", "?d_model=768&d_expert=3072", chart)]
    rows = []
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        for name, script, query, selector in cases:
            with streamlit_server(script) as url:
                r = measure(browser, url + "/" + query, selector, args.repeats)
            rows.append((name, r))
            print(f"  measured {name}: " + ", ".join(f"{t:.3f}" for t in r["redraw_all"]), flush=True)
        browser.close()
    floor = rows[0][1]["redraw_median_s"]
    print(f"\n{'page':<36} {'first chart s':>14} {'redraw median s':>16} {'redraw / floor':>15}")
    for name, r in rows:
        print(f"{name:<36} {r['first_chart_s']:>14.3f} {r['redraw_median_s']:>16.3f} "
              f"{r['redraw_median_s'] / floor:>15.2f}")
    print(f"\ndefault redraw / floor = {rows[1][1]['redraw_median_s'] / floor:.2f} (target <= 1.6)")
    print(f"D768 H3072 E8 K2 T512 redraw = {rows[2][1]['redraw_median_s']:.3f} s (target <= 0.8 s)")


if __name__ == "__main__":
    main()
