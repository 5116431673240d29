"""The Expert parallel view in headless Chromium: Cancel during a run ends every torchrun / ep-report process
within 5 s and draws nothing; closing the tab ends the job; the progress counts ranks; the whole torchrun
command is readable at 1400 px."""
from __future__ import annotations

import time

import pytest

from browser_support import streamlit_process, wait_for_run
from ep_support import job_processes, kill_left, still_running

pytestmark = pytest.mark.browser
VIEW = "/expert-parallel"  # the page by its path
CUT = """() => [...document.querySelectorAll('[data-testid="stCode"], [data-testid="stCode"] *')]
    .filter(e => e.scrollWidth > e.clientWidth + 1).length"""


@pytest.fixture(scope="module")
def app():
    with streamlit_process() as (url, server):
        yield url, server.pid


def open_view(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url + VIEW)
    page.get_by_role("button", name="Run on W processes").wait_for(timeout=90_000)
    wait_for_run(page)
    return page


def start_and_wait_for_ranks(page, server_pid: int) -> list[tuple[int, int]]:
    """Click Run; wait until the progress says both rank processes run; the job's processes."""
    page.get_by_role("button", name="Run on W processes").click()
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                           ".some(p => p.innerText.includes('2/2 rank processes'))", timeout=60_000)
    procs = job_processes(server_pid)
    assert len(procs) >= 2, procs  # torchrun and its ranks (a rank may still be forking)
    return procs


def gone_within(procs, server_pid: int, seconds: float) -> float:
    t0 = time.monotonic()
    while still_running(procs) or job_processes(server_pid):
        assert time.monotonic() - t0 < seconds, f"still running after {seconds} s: {still_running(procs)}"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_cancel_during_a_run_ends_every_process_and_draws_nothing(browser, app):
    url, server_pid = app
    page = open_view(browser, url)
    assert page.evaluate(CUT) == 0  # the command wraps: nothing hidden at 1400 px
    command = page.locator('[data-testid="stCode"]').inner_text()
    assert command.startswith("torchrun --standalone") and "--scenario" in command
    procs = start_and_wait_for_ranks(page, server_pid)
    try:
        page.get_by_role("button", name="Cancel").click()
        gone_within(procs, server_pid, 5.0)
        page.get_by_text("Cancelled: the expert-parallel job was stopped and no process is left.").wait_for(
            timeout=5_000)
        time.sleep(3)  # long enough for a second (planned) job to have started, had the cancel not held
        assert job_processes(server_pid) == []
        wait_for_run(page)
        assert page.locator('[data-testid="stProgress"]').count() == 0
        assert page.locator(".st-key-ep_load_chart").count() == 0  # no results drawn
        assert page.get_by_role("button", name="Cancel").count() == 0
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        kill_left(procs)
        page.close()


def test_closing_the_tab_ends_the_job(browser, app):
    url, server_pid = app
    page = open_view(browser, url)
    procs = start_and_wait_for_ranks(page, server_pid)
    try:
        page.close()
        gone_within(procs, server_pid, 10.0)  # the session counts as gone after 3 s without its tab
    finally:
        kill_left(procs)
