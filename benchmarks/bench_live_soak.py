"""Live soak: one session plays Live while a second moves sidebar controls; the server's memory must stay flat.

Samples the server's RSS every --sample seconds. After the warm-up (the first --warmup share of the run:
weights built, the Live history full), growth = last RSS / RSS at the end of the warm-up − 1, which
must stay under 5 %. Also prints the time from clicking a balancing method while playing until the page
says it is active. Not in CI (an hour by default); run it by hand:
Usage: .venv/bin/python benchmarks/bench_live_soak.py [--minutes 60] [--warmup 0.25] [--sample 10]
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from browser_support import launch_chromium, streamlit_process, wait_for_run  # noqa: E402

GROWTH_LIMIT = 0.05
MOVES = [("temperature", "ArrowRight"), ("n_experts", "ArrowRight"), ("temperature", "ArrowLeft"),
         ("n_experts", "ArrowLeft"), ("top_k", "ArrowRight"), ("top_k", "ArrowLeft")]


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _open(browser, url: str):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=180_000)
    wait_for_run(page, timeout_ms=180_000)
    return page


def _start_live(page) -> float:
    """Open Live, play, switch balancing to aux; returns seconds from the click until the page shows it."""
    page.get_by_text("Live", exact=True).click()
    page.get_by_role("button", name="Play").click()
    page.wait_for_selector("text=playing", timeout=60_000)
    page.wait_for_function("() => document.body.innerText.includes('Load share per expert')", timeout=60_000)
    page.wait_for_timeout(3000)  # a few ticks in, with balance none
    started = time.perf_counter()
    page.locator('[data-testid="stRadio"]', has_text="Balancing").get_by_text("aux", exact=True).click()
    page.wait_for_function("() => document.body.innerText.includes('balance = aux')", timeout=60_000)
    return time.perf_counter() - started


def _move(page, i: int) -> None:
    """One key press on a sidebar slider; waits until the URL says it was applied and the run ended."""
    label, key = MOVES[i % len(MOVES)]
    before = page.url
    page.locator(f'[data-testid="stSidebar"] input[type="range"][aria-label="{label}"]').focus()
    page.keyboard.press(key)
    page.wait_for_function("before => location.href !== before", arg=before, timeout=120_000)
    wait_for_run(page, timeout_ms=120_000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=0.25, help="share of the run counted as warm-up")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    total = args.minutes * 60
    with streamlit_process() as (url, proc), sync_playwright() as pw:
        browser = launch_chromium(pw)
        live, mover = _open(browser, url), _open(browser, url)
        switch_s = _start_live(live)
        t0, samples, moves, next_sample = time.monotonic(), [], 0, 0.0
        while (elapsed := time.monotonic() - t0) < total:
            if elapsed >= next_sample:
                samples.append((elapsed, rss_mib(proc.pid)))
                next_sample += args.sample
            _move(mover, moves)
            moves += 1
            mover.wait_for_timeout(1000)
        samples.append((time.monotonic() - t0, rss_mib(proc.pid)))
        errors = sum(p.locator('[data-testid="stException"]').count() for p in (live, mover))
        step = live.locator('[data-testid="stMarkdownContainer"] p', has_text="playing").first.inner_text()
        browser.close()
    warm_end = args.warmup * total
    warm = [r for t, r in samples if t <= warm_end][-1]
    after = [r for t, r in samples if t > warm_end]
    growth = after[-1] / warm - 1
    print(f"soak {args.minutes:g} min · {len(samples)} RSS samples · {moves} sidebar moves · live: {step.split('·')[0]}"
          f"· exceptions on the pages: {errors}")
    print(f"{'RSS MiB':>10} {'start':>8} {'end of warm-up':>15} {'median after':>13} {'max after':>10} {'last':>8}")
    print(f"{'':>10} {samples[0][1]:8.1f} {warm:15.1f} {statistics.median(after):13.1f} {max(after):10.1f} "
          f"{after[-1]:8.1f}")
    print(f"growth after warm-up: {100 * growth:+.2f} % (limit {100 * GROWTH_LIMIT:.0f} %) · "
          f"balancing switch shown after {switch_s:.2f} s")
    ok = growth < GROWTH_LIMIT and errors == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
