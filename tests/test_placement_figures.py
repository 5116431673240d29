"""The Placement section's figures carry the replay's numbers: each checked against a by-hand computation from the
window counts (contiguous blocks, top-n by a sort), not against the engine's own helpers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.figures.colors import expert_colors
from dashboard.figures.placement import (balance_figure, hot_figure, interval_figure, interval_table,
                                         rank_heatmap_figure, series_name)
from moe.parallel.judge import ReplaySettings, balance_rows, replay_log

# 6 steps, 4 experts, windows of 2 steps: expert 0 is hot throughout, expert 3 is hot in the last window
COUNTS = np.array([[9, 1, 1, 1], [7, 3, 1, 1], [8, 2, 2, 0], [6, 2, 2, 2], [5, 1, 1, 9], [5, 1, 1, 9]])
W, WINDOW = 2, 2


def replayed():
    settings = ReplaySettings(W, (0, 2), window=WINDOW, intervals=(1, 2))
    return replay_log(COUNTS[:, None, :], ["5"], settings)[0]


def by_hand_windows() -> np.ndarray:
    return np.array([COUNTS[k:k + WINDOW].sum(axis=0) for k in range(0, len(COUNTS), WINDOW)])  # (N, E)


def test_the_balance_chart_draws_each_placements_balancedness_per_window():
    r = replayed()
    fig = balance_figure(pd.DataFrame(balance_rows(r)), "balancedness_vllm", "5")
    lines = {t.name: (list(t.x), list(t.y)) for t in fig.data}
    windows = by_hand_windows()
    ranks = windows.reshape(len(windows), W, -1).sum(axis=2)  # contiguous: experts {0, 1} and {2, 3}
    expected = [float(np.mean(row) / np.max(row)) for row in ranks]
    assert lines["current"][0] == [0, 1, 2]
    assert np.allclose(lines["current"][1], expected)
    assert set(lines) == {"current", "our planner, R=0", "our planner, R=2", "DeepSeek's EPLB, R=0",
                          "DeepSeek's EPLB, R=2"}
    assert lines["our planner, R=2"][0] == [1, 2]  # a plan needs a window before it
    assert "layer 5" in fig.layout.title.text and "vLLM" in fig.layout.title.text
    sglang = {t.name: list(t.y) for t in balance_figure(pd.DataFrame(balance_rows(r)), "balancedness_sglang").data}
    assert np.allclose(sglang["current"], [(np.mean(row) + 1e-5) / (np.max(row) + 1e-5) for row in ranks])


def test_the_heatmap_is_ranks_by_windows_of_the_given_load():
    load = np.array([[10, 2], [3, 9], [6, 6]])  # (N=3 windows, W=2 ranks)
    heat = rank_heatmap_figure(load, "t").data[0]
    assert np.asarray(heat.z).tolist() == [[10, 3, 6], [2, 9, 6]]  # (W, N): one row per rank
    assert list(heat.x) == [0, 1, 2] and list(heat.y) == [0, 1]
    r = replayed()
    windows = by_hand_windows()
    z = np.asarray(rank_heatmap_figure(r.loads[("current", 0)]).data[0].z)
    assert z.tolist() == windows.reshape(len(windows), W, -1).sum(axis=2).T.tolist()


def test_the_interval_chart_and_table_carry_the_p50_per_interval_and_the_rest():
    intervals = {("current", 0): {1: 0.5, 2: 0.5}, ("planned", 2): {1: 0.9, 2: 0.8}}
    rest = {("current", 0): 0.5, ("planned", 2): 0.7}
    table = interval_table(intervals, rest)
    assert table[table["every"] == 0].set_index("placement")["p50_balancedness"].to_dict() == \
        {"current": 0.5, "planned": 0.7}
    lines = {t.name: (list(t.x), list(t.y)) for t in interval_figure(table).data}
    assert lines == {"current": ([1, 2], [0.5, 0.5]), "our planner, R=2": ([1, 2], [0.9, 0.8])}


def test_the_hot_chart_counts_the_windows_each_expert_is_among_the_busiest():
    r = replayed()
    windows = by_hand_windows()
    n = r.hot_top
    hot = np.zeros(windows.shape[1], dtype=int)
    for row in windows:  # top n by count, ties to the lower index
        for e in sorted(range(len(row)), key=lambda e: (-row[e], e))[:n]:
            hot[e] += 1
    bars = hot_figure(r.hot_windows, len(windows), n, expert_colors(4)).data[0]
    assert list(bars.y) == hot.tolist() and list(bars.marker.color) == expert_colors(4)
    assert hot[0] == 3  # expert 0 is hot in every window


def test_series_names_say_the_planner_and_r():
    assert series_name("current", 8) == "current"
    assert series_name("eplb", 8) == "DeepSeek's EPLB, R=8" and series_name("planned", 0) == "our planner, R=0"
