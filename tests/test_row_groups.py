"""Every row group of a tokens × experts heatmap is named, or none is and the caption says why."""
import numpy as np
import pytest

from dashboard import loaders
from dashboard.figures import core as fg
from dashboard.figures.row_groups import LABEL_PX, plot_height, spans, spread, unlabelled_note
from dashboard.links import spec_from_controls
from dashboard.presets import preset_values
from dashboard.tables import heatmap_rows, sorted_token_matrix
from dashboard.views import contributors, overview

DEFAULT, SWITCH = "Balanced top-2 (Mixtral-like)", "Switch top-1 with capacity"


def _figure(groups: list[str], height: int):
    matrix = np.zeros((len(groups), 4))
    return fg.token_heatmap_figure(matrix, [str(i) for i in range(len(groups))], title="t", value_name="v",
                                   row_groups=groups, height=height)


def _check_every_group_named(fig, groups: list[str], height: int) -> None:
    runs = spans(groups)
    names = [a.text for a in fig.layout.annotations]
    assert names == [name for name, _, _ in runs]  # each group once, in row order
    px = [(1 - a.y) * plot_height(height) for a in fig.layout.annotations]
    assert all(b - a >= LABEL_PX - 1e-6 for a, b in zip(px, px[1:]))  # 11 px text, never overlapping
    assert all(0 <= p <= plot_height(height) for p in px)
    brackets, joins = fig.layout.shapes[0::2], fig.layout.shapes[1::2]
    rows = len(groups)
    for (_, first, last), bracket, join, label in zip(runs, brackets, joins, fig.layout.annotations):
        assert bracket.y0 == pytest.approx(1 - first / rows, abs=1 / plot_height(height))  # spans its rows
        assert bracket.y1 == pytest.approx(1 - (last + 1) / rows, abs=1 / plot_height(height))
        assert join.y0 == pytest.approx(1 - (first + last + 1) / 2 / rows) and join.y1 == label.y


def _groups(result) -> list[str]:
    return sorted_token_matrix(result.trace, "contributions", result.labels, result.label_names,
                               heatmap_rows(result.config.n_experts))[3]


def test_a_thin_group_between_two_big_ones_is_named():
    groups = ["expert 0"] * 120 + ["expert 1"] * 3 + ["expert 2"] * 2 + ["expert 3"] * 120
    _check_every_group_named(_figure(groups, overview.TOP), groups, overview.TOP)


@pytest.mark.parametrize("preset", [DEFAULT, SWITCH])
@pytest.mark.parametrize("height", [overview.TOP, fg.HEIGHT + 80])
def test_every_group_of_the_presets_is_named(preset, height):
    result = loaders.run(spec_from_controls(preset_values(preset)))
    fig, note = contributors.figure(result, height)
    groups = [g for g, _, _ in spans(_groups(result))]
    assert len(groups) == {DEFAULT: 8, SWITCH: 4}[preset] and "too many" not in note
    _check_every_group_named(fig, _groups(result), height)


def test_too_many_groups_name_none_and_the_caption_says_so():
    groups = [f"expert {i // 16}" for i in range(16 * 32)]  # 32 groups in a 117 px plot
    fig = _figure(groups, overview.TOP)
    assert len(fig.layout.annotations) == 0 and not fig.layout.yaxis.showticklabels
    note = unlabelled_note(groups, overview.TOP)
    assert "32 row groups" in note and "none is labelled" in note
    assert unlabelled_note(groups[:64], overview.TOP) == ""  # 4 groups fit


def test_spread_keeps_labels_apart_and_inside():
    assert spread([0.0, 1.0, 2.0], 10, 100) == [5.0, 15.0, 25.0]
    assert spread([98.0, 99.0], 10, 100) == [85.0, 95.0]
    assert spread([50.0], 10, 100) == [50.0]
    assert spread([1.0] * 11, 10, 100) is None
