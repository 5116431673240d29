"""The Runs page (routing traces) in a real browser: the count asked for and named, a single step laid out as one
integer tick, and the "worst step" label clear of the colour bar's title."""
import pytest

from browser_support import open_runs_path, streamlit_server, wait_for_run
from trace_support import megatron_records, write_megatron


@pytest.fixture(scope="module")
def trace_server(tmp_path_factory):
    """The app, started with the trace's directory among its roots (MOE_SCOPE_ROOTS, fixed at start)."""
    folder = tmp_path_factory.mktemp("traces")
    write_megatron(folder / "router_trace_rank0.jsonl", megatron_records(1, 1, 40, 8, 2, hot=5))  # one step
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_SCOPE_ROOTS", str(folder))
        with streamlit_server() as url:
            yield url, folder / "router_trace_rank0.jsonl"


def _box(locator) -> dict:
    box = locator.bounding_box()
    assert box is not None
    return box


def _overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or
                a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_the_count_is_asked_for_named_and_the_single_step_chart_is_laid_out(browser, trace_server):
    url, path = trace_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        open_runs_path(page, url, path)
        page.get_by_text("type the model's expert count").wait_for(timeout=30_000)
        assert page.locator(".st-key-trace_worst_chart, .st-key-trace_load_chart").count() == 0  # sent with a run
        page.get_by_role("spinbutton", name="Experts (E)", exact=True).fill("8")
        page.keyboard.press("Enter")
        wait_for_run(page)
        page.get_by_text("typed in Experts (E) above (the file does not record it)").wait_for(timeout=30_000)
        assert "E = 8" in page.locator('[data-testid="stCaptionContainer"]').all_inner_texts().__str__()
        assert page.locator(".st-key-trace_worst_chart, .st-key-trace_load_chart").count() == 2  # the same check
        load = page.locator(".js-plotly-plot").filter(has_text="Load per step")
        load.locator("g.annotation").first.wait_for(timeout=30_000)
        ticks = [t.strip() for t in load.locator("g.ytick text").all_text_contents()]
        assert ticks == ["0"], ticks  # one step: one integer tick, not -0.4…0.4
        label = _box(load.locator("g.annotation").filter(has_text="worst"))
        title = _box(load.locator(".cbtitle text").first)
        bar = _box(load.locator("g.colorbar").first)
        plot = _box(load.locator("g.cartesianlayer .bg, rect.nsewdrag").first)
        assert not _overlap(label, title) and not _overlap(label, bar), (label, title, bar)
        assert label["x"] + label["width"] <= plot["x"] + plot["width"] + 1, (label, plot)  # inside the plot
    finally:
        page.close()
