"""Row-group labels of a tokens × experts heatmap: every group named, or none.

The heatmap's rows are sorted by group (topic, or top-1 expert), and groups differ in size: a thin group's
first row can sit a few pixels under its neighbour's, so one tick per group start would overlap and Plotly
(or a min-gap rule) would drop labels, and the rows of a dropped group would read as the group above. Here each
group gets a bracket along its rows and a label left of it; labels are spread to LABEL_PX apart and joined to
their bracket by a short line. When the plot is too short for every label, none is drawn and
`unlabelled_note` says so (the caption shows it).
"""
from __future__ import annotations

import itertools

LABEL_FONT = 10      # px; its text box is 13 px tall in Chromium
LABEL_PX = 14        # vertical room per label: boxes never overlap (8 groups fit the Overview's 117 px)
PLOT_MARGIN_PX = 118  # the heatmap's top + bottom margins: plot height = figure height − this
BRACKET_X, LABEL_X = -5, -16  # pixels left of the plot: the group's bracket, the label's right edge
CHAR_PX = 5.8         # rough width of one 10 px character, for the axis title's distance
LINE = dict(color="#777777", width=1)


def spans(groups: list[str]) -> list[tuple[str, int, int]]:
    """(name, first row, last row) of each run of equal group names, in row order."""
    out, start = [], 0
    for name, run in itertools.groupby(groups):
        n = len(list(run))
        out.append((name, start, start + n - 1))
        start += n
    return out


def spread(centres: list[float], gap: float, height: float) -> list[float] | None:
    """Label positions (px from the top) as close to `centres` as possible, each `gap` apart, inside
    [gap/2, height − gap/2]; None when the labels cannot all fit."""
    if len(centres) * gap > height:
        return None
    pos: list[float] = []
    for c in centres:  # push down past the label above
        pos.append(max(c, gap / 2, pos[-1] + gap) if pos else max(c, gap / 2))
    for i in range(len(pos) - 1, -1, -1):  # then up, off the bottom edge and the label below
        pos[i] = min(pos[i], height - gap / 2, pos[i + 1] - gap) if i + 1 < len(pos) else min(pos[i], height - gap / 2)
    return pos


def plot_height(figure_height: int) -> int:
    return figure_height - PLOT_MARGIN_PX


def labels(groups: list[str], figure_height: int) -> tuple[list[dict], list[dict], int] | None:
    """(annotations, shapes, title standoff in px) naming every group of rows, or None when they do not fit."""
    runs, rows, height = spans(groups), max(len(groups), 1), plot_height(figure_height)
    centres = [(first + last + 1) / 2 / rows * height for _, first, last in runs]  # px from the plot's top
    pos = spread(centres, LABEL_PX, height) if runs else None
    if pos is None:
        return None
    annotations, shapes = [], []
    for (name, first, last), centre, at in zip(runs, centres, pos):
        y_label, y_centre = 1 - at / height, 1 - centre / height  # paper: 1 = top (the axis is reversed)
        annotations.append(dict(text=name, xref="paper", x=0, xshift=LABEL_X, xanchor="right", yref="paper",
                                y=y_label, yanchor="middle", showarrow=False, font=dict(size=LABEL_FONT)))
        pixel = dict(type="line", xref="paper", xsizemode="pixel", xanchor=0, yref="paper", line=LINE)
        shapes.append(dict(pixel, x0=BRACKET_X, x1=BRACKET_X, y0=1 - first / rows - 0.5 / height,
                           y1=1 - (last + 1) / rows + 0.5 / height))  # the group's rows, 1 px apart from the next
        shapes.append(dict(pixel, x0=BRACKET_X, x1=LABEL_X + 2, y0=y_centre, y1=y_label))
    standoff = -LABEL_X + 4 + round(CHAR_PX * max(len(name) for name, _, _ in runs))
    return annotations, shapes, standoff


def unlabelled_note(groups: list[str] | None, figure_height: int) -> str:
    """"" when every group is labelled (or there are no groups); else why the rows carry no group names."""
    if groups is None or labels(groups, figure_height) is not None:
        return ""
    return (f"The {len(spans(groups))} row groups are too many to name in this chart's "
            f"{plot_height(figure_height)} px of rows, so none is labelled (hover names each row's token).")
