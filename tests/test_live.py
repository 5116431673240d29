"""Live mode: figures from a history, and the Live view under AppTest (timers do not fire there)."""
import pathlib

import pandas as pd
import plotly.graph_objects as go
from streamlit.testing.v1 import AppTest

from moe.train.presets import preset
from moe.train.trainer import Trainer
from dashboard.figures.colors import expert_colors
from dashboard.figures.live import (PANELS, balance_switches, expert_bias_figure, health_figure, load_share_figure,
                                    saturation_figure)

APP = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")


def _history(steps: int = 6) -> pd.DataFrame:
    trainer = Trainer(preset("collapse", balance="bias", bias_rate=0.01))
    trainer.run(steps)
    return trainer.history_frame()


def test_health_figure_plots_every_series_on_its_own_panel():
    history = _history()
    before = history.copy()
    fig = health_figure(history)
    names = [t.name for t in fig.data]
    assert names == [label for panel in PANELS for _, label, _ in panel]
    dropped = next(t for t in fig.data if t.name == "dropped %")
    assert list(dropped.y) == list(history["dropped_fraction"] * 100)
    assert len({t.line.color for t in fig.data}) == len(fig.data)  # every series distinguishable
    assert [t.yaxis for t in fig.data] == ["y", "y2", "y3", "y4", "y4", "y5", "y5"]  # aux and z-loss apart
    assert fig.layout.yaxis2.title.text == "aux loss" and fig.layout.yaxis3.title.text == "z-loss"
    assert fig.layout.xaxis5.title.text == "step"
    assert fig.layout.shapes == () and fig.layout.annotations == ()  # one balancing: no switch marks
    pd.testing.assert_frame_equal(history, before)  # not mutated


def test_balancing_switches_are_marked_on_every_chart_at_their_step():
    trainer = Trainer(preset("collapse"))
    trainer.run(3)
    trainer.set_balance("aux")
    trainer.run(2)
    trainer.set_balance("bias")
    trainer.run(1)
    history = trainer.history_frame()
    assert balance_switches(history) == [(4, "aux"), (6, "bias")]
    assert balance_switches(history.iloc[4:]) == [(6, "bias")]  # the oldest kept row starts no switch
    colors = expert_colors(8)
    for fig in (health_figure(history), load_share_figure(history, colors), expert_bias_figure(history, colors),
                saturation_figure(history)):
        assert [(s.x0, s.x1, s.yref, s.y0, s.y1) for s in fig.layout.shapes] == [(4, 4, "paper", 0, 1),
                                                                                  (6, 6, "paper", 0, 1)]
        assert [(a.x, a.text) for a in fig.layout.annotations] == [(4, "→ aux"), (6, "→ bias")]


def test_load_share_stacks_to_one_in_expert_colours():
    history = _history()
    colors = expert_colors(8)
    fig = load_share_figure(history, colors)
    assert [t.name for t in fig.data] == [f"expert {e}" for e in range(8)]
    assert all(t.stackgroup == "load" and t.line.color == colors[e] for e, t in enumerate(fig.data))
    stacked = sum(pd.Series(t.y) for t in fig.data)
    assert ((stacked - 1).abs() < 1e-9).all()


def test_bias_and_saturation_figures_show_the_history_values():
    history = _history()
    fig = expert_bias_figure(history, expert_colors(8))
    assert list(fig.data[3].y) == list(history["expert_bias_3"])
    assert any(abs(v) > 0 for t in fig.data for v in t.y)  # balance = bias moves b
    sat = saturation_figure(history)
    assert isinstance(sat, go.Figure) and list(sat.data[0].y) == list(history["router_saturation"])
    assert sat.layout.yaxis.title.text == "unchanged top-k share"


def _live_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.radio(key="view").set_value("Live").run()
    assert not at.exception
    return at


def _step_line(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**step "))


def test_step_and_reset_in_the_live_view():
    at = _live_app()
    assert _step_line(at).startswith("**step 0**")
    for _ in range(3):
        at.button(key="live_step").click().run()
    assert not at.exception
    assert _step_line(at).startswith("**step 3**")
    trainer = at.session_state["trainer"]
    assert trainer.step_count == 3
    shown = next(m.value for m in at.metric if m.label == "max/mean (this step)")
    assert shown == f"{trainer.last_row['max_over_mean']:.3g}"
    at.button(key="live_reset").click().run()
    assert _step_line(at).startswith("**step 0**") and at.session_state["trainer"].step_count == 0


def test_balancing_switches_while_running_and_keeps_the_history():
    at = _live_app()
    at.button(key="live_step").click().run()
    at.radio(key="live_balance").set_value("bias").run()
    at.button(key="live_step").click().run()
    trainer = at.session_state["trainer"]
    assert trainer.config.balance == "bias" and trainer.step_count == 2
    assert list(trainer.history_frame()["balance"]) == ["none", "bias"]


def test_two_sessions_train_separate_models():
    a, b = _live_app(), _live_app()
    for _ in range(2):
        a.button(key="live_step").click().run()
    b.button(key="live_step").click().run()
    ta, tb = a.session_state["trainer"], b.session_state["trainer"]
    assert ta is not tb and ta.layer is not tb.layer
    assert (ta.step_count, tb.step_count) == (2, 1)
    assert ta.layer.router.weight.data_ptr() != tb.layer.router.weight.data_ptr()


def test_play_sets_the_fragment_running_and_pause_stops_it():
    at = _live_app()
    at.button(key="live_play").click().run()
    assert at.session_state["live_playing"] is True
    assert not at.exception
    # AppTest does not fire run_every timers; the playing run itself advanced the trainer once.
    assert at.session_state["trainer"].step_count >= 1
    at.button(key="live_play").click().run()
    assert at.session_state["live_playing"] is False


def test_the_live_view_offers_no_downloads_of_the_sidebar_forward():
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert len(at.get("download_button")) == 4  # Overview: the forward's files
    at.radio(key="view").set_value("Live").run()
    assert not at.exception and len(at.get("download_button")) == 0


def test_live_shows_the_trained_models_numbers_not_the_sidebar_forwards():
    at = _live_app()
    at.button(key="live_step").click().run()
    labels = [m.label for m in at.metric]
    assert "tokens" not in labels and "active experts" not in labels  # the sidebar forward's KPI row
    row = at.session_state["trainer"].last_row
    shown = next(m.value for m in at.metric if m.label == "aux loss (this step)")
    assert shown == f"{row['aux_loss']:.3g}"


def test_a_sidebar_nudge_keeps_the_run_and_says_so_until_reset():
    at = _live_app()
    at.selectbox(key="live_setup").set_value("Sidebar layer").run()
    for _ in range(2):
        at.button(key="live_step").click().run()
    trainer = at.session_state["trainer"]
    at.slider(key="n_experts").set_value(9).run()
    assert not at.exception
    assert at.session_state["trainer"] is trainer and trainer.step_count == 2  # the run is kept
    assert any("Training continues on the layer it started with (D=64, H=256, E=8" in i.value for i in at.info)
    at.button(key="live_reset").click().run()
    assert at.session_state["trainer"].config.model.n_experts == 9
    assert at.session_state["trainer"].step_count == 0
    assert not any("Training continues" in i.value for i in at.info)


def test_a_balancing_switch_while_playing_redraws_at_once_and_the_next_step_uses_it():
    at = _live_app()
    at.button(key="live_play").click().run()
    steps = at.session_state["trainer"].step_count
    at.radio(key="live_balance").set_value("aux").run()
    assert not at.exception
    assert at.session_state["trainer"].step_count == steps  # the switch's own rerun only redraws
    assert any(m.value.startswith(f"**step {steps}** · playing · balance = `aux`") for m in at.markdown)
    at.button(key="live_play").click().run()  # pause
    at.button(key="live_step").click().run()
    assert at.session_state["trainer"].history_frame()["balance"].iloc[-1] == "aux"


def test_a_random_routers_saturation_is_shown_as_undefined():
    """The Sidebar layer with router=random: its routing is drawn afresh every forward, so nothing settles; the
    metric read 1.00 ("settled") because the probe was routed with the same fresh seed each step."""
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from app_support import SMALL, open_app
    at = open_app({**SMALL, "router": "random", "view": "Live"})
    at.selectbox(key="live_setup").set_value("Sidebar layer").run()
    for _ in range(2):
        at.button(key="live_step").click().run()
    assert not at.exception
    assert next(m.value for m in at.metric if m.label == "router saturation") == "— (random router)"
