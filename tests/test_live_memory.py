"""Live keeps the server's memory flat: a playing tick refreshes the session's figures in place.

New plotly figures every tick (~0.5 MB with a full history) are cyclic garbage: every plotly object points
back to its parent. What of it outlives the young collections waits for a full one, which is rare with a few
hundred thousand long-lived objects and no post-run collection (runner.postScriptGC = false).
"""
import base64
import collections
import contextlib
import gc
import json
import pathlib

import numpy as np
from plotly.basedatatypes import BaseFigure, BasePlotlyType
from streamlit.testing.v1 import AppTest

from moe.train.presets import preset
from moe.train.trainer import Trainer
from dashboard.figures.colors import expert_colors
from dashboard.figures.live import (expert_bias_columns, expert_bias_figure, health_columns, health_figure,
                                    load_share_columns, load_share_figure, refresh, saturation_columns,
                                    saturation_figure)

APP = str(pathlib.Path(__file__).resolve().parents[1] / "app.py")
COLORS = expert_colors(8)
CHARTS = [(health_figure, lambda h: health_columns()), (lambda h: load_share_figure(h, COLORS), load_share_columns),
          (lambda h: expert_bias_figure(h, COLORS), expert_bias_columns),
          (saturation_figure, lambda h: saturation_columns())]


@contextlib.contextmanager
def cyclic_garbage():
    """Counts, by type name, of the objects made in the block that only the cycle collector can free."""
    counts: collections.Counter = collections.Counter()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield counts
        gc.collect()
        counts.update("plotly" if isinstance(o, (BaseFigure, BasePlotlyType)) else type(o).__name__
                      for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        if enabled:
            gc.enable()
        gc.collect()


def _values(data) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata": base64}."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
    return np.asarray(data)


def test_a_refreshed_figure_equals_a_fresh_build():
    trainer = Trainer(preset("collapse"))
    trainer.run(3)
    trainer.set_balance("aux")
    trainer.run(2)
    old = trainer.history_frame()
    trainer.run(7)
    new = trainer.history_frame()
    for build, columns in CHARTS:
        fig = build(old)
        assert refresh(fig, new, columns(new)) is fig
        assert fig.to_json() == build(new).to_json()


def test_a_refresh_leaves_no_cyclic_garbage():
    trainer = Trainer(preset("collapse"))
    trainer.run(20)
    figures = [(build(trainer.history_frame()), columns) for build, columns in CHARTS]
    with cyclic_garbage() as garbage:
        for _ in range(3):
            trainer.run(2)
            history = trainer.history_frame()
            for fig, columns in figures:
                refresh(fig, history, columns(history)).to_json()
    assert garbage["plotly"] == 0, garbage.most_common(5)


def test_playing_live_reruns_leave_no_plotly_garbage_and_draw_every_step():
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.radio(key="view").set_value("Live").run()
    at.button(key="live_play").click().run()
    at.run()  # the charts exist from here on
    with cyclic_garbage() as garbage:
        for _ in range(3):
            at.run()  # AppTest fires no timers: each run is one playing tick of the panel
    assert not at.exception
    assert garbage["plotly"] == 0, f"{garbage['plotly']} plotly objects left for the cycle collector in 3 ticks"
    step = at.session_state["trainer"].step_count
    drawn = [json.loads(e.proto.spec)["data"] for e in at.get("plotly_chart")]
    assert len(drawn) == 4 and all(_values(trace["x"])[-1] == step for data in drawn for trace in data)
