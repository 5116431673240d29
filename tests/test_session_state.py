"""dashboard.state: one init() sets up every key, and a widget's value outlives runs that do not draw it (the
Playground's controls while another page is open)."""
from streamlit.testing.v1 import AppTest

from dashboard import state
from dashboard.presets import CONTROL_DEFAULTS


def _app(keep: bool) -> None:
    import streamlit as st

    from dashboard import state

    if keep:
        state.init()
    else:
        st.session_state.setdefault("n_experts", 8)  # what a page without state.init() would do
    if st.session_state.get("draw", True):  # the Playground draws the control; another page does not
        st.slider("n_experts", 1, 256, key="n_experts")


def _after_another_page(keep: bool):
    at = AppTest.from_function(_app, args=(keep,), default_timeout=30).run()
    at.slider(key="n_experts").set_value(6).run()
    at.session_state["draw"] = False
    at.run().run()  # two runs without the widget: Streamlit drops an undrawn widget's value after the first
    return at.session_state["n_experts"] if "n_experts" in at.session_state else None


def test_a_controls_value_outlives_runs_that_do_not_draw_it():
    assert _after_another_page(keep=True) == 6
    assert _after_another_page(keep=False) != 6  # without init()'s keep step the value is lost: the test can fail


def test_init_sets_every_default_and_the_links_values():
    def app() -> None:
        from dashboard import state

        state.init()

    at = AppTest.from_function(app, default_timeout=30)
    at.query_params["n_experts"] = "12"
    at.query_params["mex"] = "prose"
    at.query_params["top_k"] = "x"
    at.run()
    ss = at.session_state
    assert ss["n_experts"] == 12 and ss["model_example"] == "prose" and ss["top_k"] == CONTROL_DEFAULTS["top_k"]
    assert ss[state.LINK_NOTES] == ["ignored top_k=`x`: expected an integer"]
    for key, value in {k: v for k, v in state.defaults().items() if k not in ("model_example", "model_text")}.items():
        assert ss[key] == value, key
    assert {*CONTROL_DEFAULTS, state.PRESET} <= set(state.kept_widgets())
