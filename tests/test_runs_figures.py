"""The Runs page's figure builders (dashboard.figures.runs) carry the numbers they are given, unchanged."""
import numpy as np
import pandas as pd

from dashboard.figures.colors import expert_colors
from dashboard.figures.runs import (co_occurrence_figure, dead_figure, hot_figure, layer_expert_figure,
                                    percentile_figure, persistence_figure, slot_usage_figure)


def test_layer_expert_and_hot_maps_carry_their_arrays():
    fig = layer_expert_figure(np.array([[1, 2, 3], [4, 5, 6]]), ["a", "b"], 7)
    assert fig.data[0].z.tolist() == [[1, 2, 3], [4, 5, 6]] and list(fig.data[0].y) == ["a", "b"]
    assert "step 7" in fig.layout.title.text
    mask = np.array([[True, False], [False, True], [False, True]])
    hot = hot_figure(mask, [0, 5, 9], "b", 1)
    assert hot.data[0].z.tolist() == [[1, 0], [0, 1], [0, 1]] and list(hot.data[0].y) == [0, 5, 9]
    assert "top 1" in hot.layout.title.text


def test_percentiles_dead_and_persistence_draw_the_table_columns():
    table = pd.DataFrame({"step": [0, 1, 0, 1], "stat": ["tokens_per_expert"] * 2 + ["max_over_mean"] * 2,
                          "p50": [1.0, 2.0, 1.1, 1.2], "p95": [3.0, 4.0, 1.5, 1.6], "max": [5.0, 6.0, 2.0, 2.5]})
    lines = {t.name: list(t.y) for t in percentile_figure(table, "max_over_mean").data}
    assert lines == {"p50": [1.1, 1.2], "p95": [1.5, 1.6], "max": [2.0, 2.5]}
    dead = pd.DataFrame({"step": [0, 0, 1, 1], "layer": ["0", "1", "0", "1"], "dead": [1, 3, 0, 2]})
    mine, mean = dead_figure(dead, "1").data
    assert list(mine.y) == [3, 2] and list(mean.y) == [2.0, 1.0]
    persist = pd.DataFrame({"expert": [0, 1, 2], "longest_run": [0, 4, 1], "hot_share": [0.0, 0.8, 0.2],
                            "current_run": [0, 4, 0]})
    bar = persistence_figure(persist, expert_colors(3)).data[0]
    assert list(bar.y) == [0, 4, 1] and list(bar.marker.color) == expert_colors(3)  # each expert's own colour
    assert bar.customdata.tolist() == [[0.0, 0.0], [0.8, 4.0], [0.2, 0.0]]


def test_slot_usage_and_co_occurrence_carry_their_matrices():
    slots = slot_usage_figure(np.array([[2, 0, 1], [0, 3, 0]]))
    assert slots.data[0].z.tolist() == [[2, 0, 1], [0, 3, 0]] and list(slots.data[0].y) == ["slot 0", "slot 1"]
    assert slots.layout.yaxis.autorange == "reversed"  # slot 0 on top
    co = co_occurrence_figure(np.array([[3, 1], [1, 2]]))
    assert co.data[0].z.tolist() == [[3, 1], [1, 2]]
