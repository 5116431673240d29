"""A lone surrogate typed or pasted into the Model view's text box, in headless Chromium.

Without help the browser cannot send it: Streamlit's frontend writes it as invalid UTF-8 and the server drops the
whole widget message ("Error deserializing back message ... String field had bad UTF-8"), so the page never runs
and the edit is lost without a word. The page's listener (dashboard.views.model.WELL_FORMED_JS) replaces it by
U+FFFD first; the page routes that text and says how many characters were replaced."""
import pathlib

import pytest

from browser_support import streamlit_server, wait_for_run
from moe.hf.load import BUNDLED_MODEL

pytestmark = pytest.mark.browser
# What a paste of a broken string does: the box's value set natively, then an input event (as the browser fires)
PASTE = """(text) => {
  const box = document.querySelector('textarea[aria-label="Text"]');
  Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set.call(box, text);
  box.dispatchEvent(new Event("input", {bubbles: true}));
  return box.value;
}"""
SPANS = "() => document.querySelectorAll('span[title^=\"expert \"]').length"


def test_a_lone_surrogate_is_replaced_routed_and_counted(browser):
    assert pathlib.Path(BUNDLED_MODEL, "model.safetensors").is_file(), "the bundled model is committed"
    with streamlit_server() as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url + "/model")  # the Model page by its path
        page.wait_for_function("() => document.body.innerText.includes('Top-1 expert per token and layer')",
                               timeout=120_000)
        wait_for_run(page, 120_000)
        # the string crosses into the page as JS source: "\ud800" is a lone high surrogate there
        value = page.evaluate(f"() => ({PASTE})('ab\\ud800cd')")
        assert value == "ab\ufffdcd"
        page.get_by_role("textbox", name="Text").press("Control+Enter")
        page.wait_for_function(f"() => ({SPANS})() === 7", timeout=60_000)  # a, b, U+FFFD's 3 bytes, c, d
        wait_for_run(page, 60_000)
        text = page.evaluate("() => document.body.innerText")
        assert "The text holds 1 � (U+FFFD)" in text
        assert page.locator('[data-testid="stException"]').count() == 0
        page.close()
