"""The Runs page's upload in a real browser, driven as a person does: a 1 KB Parquet file whose layer label (100 KB)
repeats on every row is refused in one line, the server's memory stays far below what the labels decode to, and
the next upload opens. Before the labels were read as dictionaries, this upload took the server past 1.5 GB. A file
of a few pages that decompress to gigabytes is refused the same way."""
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from browser_support import streamlit_process, wait_for_run

ROWS = 5_000  # a 100 KB label on every row: 500 MB once decoded as text


def _peak_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


@pytest.fixture(scope="module")
def upload_server():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_SCOPE_MEMORY_GB", "1")
        with streamlit_process() as (url, proc):
            yield url, proc


def _upload(page, path) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(path))
    wait_for_run(page)


def _refused(page, upload_server, path, message: str, growth_mb: float) -> None:
    """Open the Runs page, upload `path`: the one-line refusal holds `message`, no traceback shows, the server's peak
    memory grew by less than growth_mb and the server is still up."""
    url, proc = upload_server
    page.goto(url + "/runs")
    wait_for_run(page)
    page.get_by_text("Choose a file to open.").wait_for(timeout=30_000)
    before = _peak_mb(proc.pid)
    _upload(page, path)
    alert = page.get_by_text("This trace cannot be opened")
    alert.wait_for(timeout=60_000)
    assert message in alert.inner_text()
    assert page.get_by_text("Traceback").count() == 0
    assert _peak_mb(proc.pid) - before < growth_mb, (before, _peak_mb(proc.pid))
    assert proc.poll() is None


def test_a_small_file_that_decodes_to_gigabytes_is_refused_and_the_next_upload_opens(browser, upload_server,
                                                                                      tmp_path):
    bomb = tmp_path / "counts.parquet"
    label = pa.DictionaryArray.from_arrays(pa.array(np.zeros(ROWS, np.int32)), pa.array(["x" * 100_000]))
    pq.write_table(pa.table({"layer": label, "expert": np.zeros(ROWS, np.int64), "count": np.ones(ROWS, np.int64)}),
                   bomb, store_schema=False, compression="zstd")  # no Arrow schema: read back as plain text
    assert bomb.stat().st_size < 20_000
    good = tmp_path / "good.csv"
    good.write_text("layer,expert,count\n0,0,5\n0,1,1\n1,0,2\n1,1,4\n")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _refused(page, upload_server, bomb, "a layer label is not 1 to 32 letters", 200)  # the labels: 500+ MB
        _upload(page, good)  # chosen in the same box, as a person picks another file
        page.get_by_text("MoE layers", exact=True).wait_for(timeout=60_000)  # the metric ("Expected MoE layers" is
        wait_for_run(page)                                                   # the input above it, always there)
        assert page.get_by_text("This trace cannot be opened").count() == 0  # the last file's message is gone
        assert page.get_by_text("worst (step, layer)", exact=False).count() >= 1
    finally:
        page.close()


def test_a_file_whose_pages_decompress_to_gigabytes_is_refused_before_one_is_decompressed(browser, upload_server,
                                                                                          tmp_path):
    """Three zstd pages of 300 MB of zeros in 28 KB, the footer understating them: before the pages were read from
    their own headers, reading this file took a reader 582 MB past its baseline under a 1 GB budget."""
    from parquet_craft import page_bomb
    bomb, rows = tmp_path / "pages.parquet", np.arange(10)
    assert page_bomb(bomb, {"layer": rows % 2, "expert": rows, "count": rows + 1}, 300_000_000, lie=True) < 40_000
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _refused(page, upload_server, bomb, "takes about 1.0 GiB in memory, over the 512.0 MiB a counts file may take",
                 150)                                                                 # one page alone: 300 MB
    finally:
        page.close()
