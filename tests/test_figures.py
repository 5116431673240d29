"""Figure builders tested as objects: trace types, axis titles, expert colours, reference lines."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go
import pytest
import torch

from moe import MoEConfig, MoELayer
from moe.scenarios import make_batch
from dashboard import tables as tb
from dashboard.figures import core as fg
from dashboard.figures import router as fr
from dashboard.figures.colors import expert_colors

T = 48


def run(**kw):
    cfg = MoEConfig(d_model=12, d_expert=24, **kw)
    batch = make_batch("clusters", cfg.d_model, T, seed=0)
    _, trace = MoELayer(cfg)(batch.x)
    return cfg, trace.cpu(), batch


@pytest.fixture(scope="module")
def capped():
    return run(n_experts=6, top_k=2, capacity_factor=0.8)


def frozen(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.copy(deep=True)


# --- colours -----------------------------------------------------------------------------------

@pytest.mark.parametrize("E", (1, 8, 10, 11, 24, 25, 64, 256))
def test_one_distinct_colour_per_expert(E):
    colors = expert_colors(E)
    assert len(colors) == E and len(set(colors)) == E
    # stable across processes: the documented palettes, not just the cache answering twice
    expected = (pc.qualitative.Plotly[:E] if E <= 10 else pc.qualitative.Dark24[:E] if E <= 24
                else pc.sample_colorscale("Turbo", [i / (E - 1) for i in range(E)]))
    assert colors == list(expected)
    colors.append("x")
    assert len(expert_colors(E)) == E  # callers get a fresh list


def test_expert_colors_rejects_bad_counts():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            expert_colors(bad)


def _colors_of(fig: go.Figure, name: str) -> list[str]:
    trace = next(t for t in fig.data if t.name == name)
    return list(trace.marker.color)


def test_same_colour_for_an_expert_in_every_chart(capped):
    cfg, trace, _ = capped
    E, colors = cfg.n_experts, expert_colors(cfg.n_experts)
    pe = trace.per_expert()
    load = fg.load_figure(pe, colors, T * 2 / E, trace.capacity)
    metrics = fg.expert_metrics_figure(pe, colors)
    ranked = fg.expert_bar_figure(pe, "contribution", colors, ranked=True)
    logits = fr.logits_figure(tb.logit_quantiles(trace), colors, 1.0)
    inspector = fr.token_inspector_figure(tb.token_detail(trace, 0), colors, 0)
    assert _colors_of(load, "served") == colors
    assert list(load.data[0].marker.color) == colors  # demand: same colours, faded
    for bar in metrics.data:
        assert list(bar.marker.color) == colors
    assert _colors_of(logits, "q1–q3") == colors
    assert _colors_of(inspector, "router probability") == colors
    assert _colors_of(inspector, "contribution") == colors
    # ranked: each bar keeps its expert's colour
    for label, color in zip(ranked.data[0].x, ranked.data[0].marker.color):
        assert color == colors[int(label)]


# --- load --------------------------------------------------------------------------------------

def test_load_figure_lines_and_bars(capped):
    cfg, trace, _ = capped
    pe, colors = trace.per_expert(), expert_colors(cfg.n_experts)
    before = frozen(pe)
    ideal = T * cfg.top_k / cfg.n_experts
    fig = fg.load_figure(pe, colors, ideal, trace.capacity)
    pd.testing.assert_frame_equal(pe, before)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [b.name for b in bars] == ["demand (routed)", "served"]
    assert list(bars[0].y) == pe["demand"].tolist() and list(bars[1].y) == pe["served"].tolist()
    lines = {t.name.split(" ")[0]: t for t in fig.data if isinstance(t, go.Scatter) and t.mode == "lines"}
    assert set(lines) == {"ideal", "capacity"}
    assert list(lines["ideal"].y) == [ideal, ideal]
    assert list(lines["capacity"].y) == [trace.capacity, trace.capacity]
    assert fig.layout.xaxis.title.text == "expert" and fig.layout.yaxis.title.text == "assignments"
    assert fig.layout.uirevision
    assert "%{customdata[2]}" in bars[1].hovertemplate  # dropped shown on hover


def test_load_figure_dropless_has_no_capacity_line():
    cfg, trace, _ = run(n_experts=4, top_k=2)
    fig = fg.load_figure(trace.per_expert(), expert_colors(4), T * 2 / 4, trace.capacity)
    names = [t.name for t in fig.data if isinstance(t, go.Scatter) and t.mode == "lines"]
    assert len(names) == 1 and names[0].startswith("ideal")
    assert [a.text for a in fig.layout.annotations] == ["ideal T·K/E = 24"]


def test_one_expert_figures_show_the_one_expert():
    cfg, trace, _ = run(n_experts=1, top_k=1)
    colors, pe = expert_colors(1), trace.per_expert()
    load = fg.load_figure(pe, colors, float(T), None)
    assert list(load.data[1].y) == [T] and list(load.data[1].x) == [0]  # every token served by expert 0
    metrics = fg.expert_metrics_figure(pe, colors)
    for bar, metric in zip(metrics.data, fg.EXPERT_METRICS):
        np.testing.assert_allclose(np.asarray(bar.y, dtype=float), pe[metric].to_numpy(dtype=float))
    conf = fg.histogram_figure(tb.confidence_histogram(trace), title="c", xaxis_title="x", log_x=True)
    assert sum(conf.data[0].y) == 0  # p1/p2 is undefined with one expert: no token is counted
    co = fr.coactivation_figure(tb.conditional_coactivation(trace))
    assert np.isnan(np.asarray(co.data[0].z, dtype=float)).all()  # only the diagonal, which is blank
    inspector = fr.token_inspector_figure(tb.token_detail(trace, 0), colors, 0)
    assert list(inspector.data[0].y) == [1.0] and list(inspector.data[1].x) == [0]


# --- expert metrics ----------------------------------------------------------------------------

def test_expert_bar_ranked_orders_by_value(capped):
    cfg, trace, _ = capped
    pe = trace.per_expert()
    before = frozen(pe)
    fig = fg.expert_bar_figure(pe, "contribution", expert_colors(cfg.n_experts), ranked=True)
    pd.testing.assert_frame_equal(pe, before)
    values = list(fig.data[0].y)
    assert values == sorted(values, reverse=True)
    order = pe.sort_values("contribution", ascending=False, kind="stable")["expert"].astype(str).tolist()
    assert list(fig.data[0].x) == order and list(fig.layout.xaxis.categoryarray) == order
    assert fig.layout.xaxis.title.text == "expert (ranked)" and fig.layout.yaxis.title.text


def test_expert_bar_unranked_keeps_expert_order(capped):
    cfg, trace, _ = capped
    pe = trace.per_expert()
    fig = fg.expert_bar_figure(pe, "activation_sparsity", expert_colors(cfg.n_experts))
    assert list(fig.data[0].x) == list(range(cfg.n_experts))
    np.testing.assert_allclose(np.asarray(fig.data[0].y, dtype=float), pe["activation_sparsity"])
    assert fig.layout.xaxis.title.text == "expert"


def test_expert_metrics_figure_axes(capped):
    cfg, trace, _ = capped
    fig = fg.expert_metrics_figure(trace.per_expert(), expert_colors(cfg.n_experts))
    assert [t.name for t in fig.data] == list(fg.EXPERT_METRICS)
    assert all(isinstance(t, go.Bar) for t in fig.data)
    for i, metric in enumerate(fg.EXPERT_METRICS, start=1):
        suffix = "" if i == 1 else str(i)
        assert fig.layout[f"xaxis{suffix}"].title.text == "expert"
        assert fig.layout[f"yaxis{suffix}"].title.text == fg.METRIC_TITLES[metric]


# --- heatmaps ----------------------------------------------------------------------------------

def test_contribution_heatmap_aggregated_rows_within_limit(capped):
    cfg, trace, _ = capped
    matrix, labels, note = tb.contribution_matrix(trace, max_rows=10)
    fig = fg.token_heatmap_figure(matrix, labels, title="c", value_name="contribution")
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    assert np.asarray(heat.z).shape == (10, cfg.n_experts) and len(heat.y) <= 10
    assert note and fig.layout.xaxis.title.text == "expert" and fig.layout.yaxis.title.text == "token"
    assert "%{z" in heat.hovertemplate


def test_heatmap_does_not_mutate_matrix(capped):
    _, trace, _ = capped
    matrix, labels, _ = tb.probability_matrix(trace)
    before = matrix.copy()
    fg.token_heatmap_figure(matrix, labels, title="p", value_name="prob")
    np.testing.assert_array_equal(matrix, before)


def test_coactivation_figure(capped):
    cfg, trace, _ = capped
    cond = tb.conditional_coactivation(trace)
    before = frozen(cond)
    fig = fr.coactivation_figure(cond)
    pd.testing.assert_frame_equal(cond, before)
    heat = fig.data[0]
    z, expected = np.asarray(heat.z, dtype=float), cond.to_numpy().copy()
    np.fill_diagonal(expected, np.nan)  # the diagonal (1 by definition) is blank
    assert isinstance(heat, go.Heatmap) and np.isnan(np.diag(z)).all()
    np.testing.assert_allclose(z, expected)
    assert heat.zmin == 0.0 and heat.zmax == pytest.approx(np.nanmax(expected)) and heat.zmax < 1.0
    assert fig.layout.xaxis.title.text.startswith("expert j") and fig.layout.yaxis.title.text.startswith("expert i")


def test_cluster_share_figure(capped):
    _, trace, batch = capped
    share = tb.cluster_share(trace, batch.labels, batch.label_names)
    fig = fr.cluster_share_figure(share)
    assert list(fig.data[0].y) == [str(n) for n in batch.label_names]
    assert fig.layout.xaxis.title.text == "expert" and fig.layout.yaxis.title.text == "cluster"


# --- router, pathways, inspector ---------------------------------------------------------------

def test_histograms(capped):
    cfg, trace, _ = capped
    hist = tb.entropy_histogram(trace, bins=12)
    before = frozen(hist)
    fig = fg.histogram_figure(hist, title="entropy", xaxis_title="entropy (nats)",
                              reference=math.log(cfg.n_experts), reference_name="uniform")
    pd.testing.assert_frame_equal(hist, before)
    bar, ref = fig.data
    assert isinstance(bar, go.Bar) and list(bar.y) == hist["count"].tolist()
    assert list(ref.x) == [math.log(cfg.n_experts)] * 2
    assert fig.layout.xaxis.title.text == "entropy (nats)" and fig.layout.yaxis.title.text == "tokens"
    conf = fg.histogram_figure(tb.confidence_histogram(trace), title="c", xaxis_title="ratio", log_x=True)
    assert list(conf.layout.xaxis.ticktext)[0] == "1" and list(conf.layout.xaxis.ticktext)[-1] == "100"
    np.testing.assert_allclose(conf.layout.xaxis.tickvals[-1], 2.0)


def test_logits_figure(capped):
    cfg, trace, _ = capped
    q = tb.logit_quantiles(trace)
    before = frozen(q)
    fig = fr.logits_figure(q, expert_colors(cfg.n_experts), 0.123)
    pd.testing.assert_frame_equal(q, before)
    box, median = fig.data
    np.testing.assert_allclose(np.asarray(box.base, dtype=float), q["q1"])
    np.testing.assert_allclose(box.y, q["q3"] - q["q1"])
    np.testing.assert_allclose(median.y, q["median"])
    np.testing.assert_allclose(np.asarray(median.y) + np.asarray(median.error_y.array), q["max"])
    assert "0.123" in fig.layout.title.text and fig.layout.yaxis.title.text == "router logit"


def test_combinations_figure(capped):
    _, trace, _ = capped
    combos = tb.topk_combinations(trace, n=5)
    before = combos.copy()
    fig = fr.combinations_figure(combos)
    pd.testing.assert_frame_equal(combos, before)
    assert list(fig.data[0].y) == combos["label"].tolist() and list(fig.data[0].x) == combos["count"].tolist()
    assert fig.data[0].orientation == "h"
    assert fig.layout.xaxis.title.text == "tokens" and fig.layout.yaxis.title.text == "served experts"


def test_token_inspector_marks_served_and_dropped(capped):
    cfg, trace, _ = capped
    table = tb.token_table(trace)
    t = int(table.index[table["dropped"].map(len) > 0][0])  # a token with a dropped choice
    detail = tb.token_detail(trace, t)
    before = frozen(detail)
    fig = fr.token_inspector_figure(detail, expert_colors(cfg.n_experts), t)
    pd.testing.assert_frame_equal(detail, before)
    probs, gates, contrib = fig.data
    shapes = list(probs.marker.pattern.shape)
    assert [s == "x" for s in shapes] == detail["dropped"].tolist()
    assert list(gates.x) == detail.loc[detail["served"], "expert"].tolist()
    np.testing.assert_allclose(contrib.y, detail["contribution"])
    assert fig.layout.xaxis2.title.text == "expert" and fig.layout.yaxis.title.text and fig.layout.yaxis2.title.text
    assert str(t) in fig.layout.title.text


def test_builders_return_figures_with_uirevision(capped):
    cfg, trace, batch = capped
    colors = expert_colors(cfg.n_experts)
    pe = trace.per_expert()
    tensors = {name: getattr(trace, name).clone() for name in ("probs", "gates", "served", "contributions")}
    matrix, labels, _ = tb.contribution_matrix(trace)
    figs = [fg.load_figure(pe, colors, 1.0), fg.expert_bar_figure(pe, "output_rms", colors),
            fg.expert_metrics_figure(pe, colors), fg.token_heatmap_figure(matrix, labels, title="t", value_name="v"),
            fg.histogram_figure(tb.entropy_histogram(trace), title="h", xaxis_title="x"),
            fr.logits_figure(tb.logit_quantiles(trace), colors, 0.0),
            fr.coactivation_figure(tb.conditional_coactivation(trace)),
            fr.combinations_figure(tb.topk_combinations(trace)),
            fr.cluster_share_figure(tb.cluster_share(trace, batch.labels, batch.label_names)),
            fr.token_inspector_figure(tb.token_detail(trace, 1), colors, 1)]
    for fig in figs:
        assert isinstance(fig, go.Figure) and fig.layout.uirevision
    for name, before in tensors.items():  # building figures never touches the trace
        assert torch.equal(getattr(trace, name), before), name


# --- page fixes: legends, line labels, sorted load, grouped heatmap rows, scales ---------------

def test_legend_and_title_never_overlap_the_plot_or_each_other(capped):
    cfg, trace, _ = capped
    fig = fg.load_figure(trace.per_expert(), expert_colors(cfg.n_experts), 16.0, trace.capacity)
    title, legend, margin = fig.layout.title, fig.layout.legend, fig.layout.margin
    assert (title.yref, title.y, title.yanchor, title.xanchor) == ("container", 1.0, "top", "left")
    assert (legend.yanchor, legend.y, legend.xanchor, legend.x) == ("bottom", 1.0, "left", 0.0)  # own row
    assert margin.t == fg.TITLE_ROW + fg.LEGEND_ROW  # room for both rows above the plot
    assert "lasso2d" in fig.layout.modebar.remove  # a shorter toolbar, clear of the title
    single = fg.expert_bar_figure(trace.per_expert(), "output_rms", expert_colors(cfg.n_experts))
    assert single.layout.showlegend is False and single.layout.margin.t == fg.TITLE_ROW


def test_load_legend_swatches_differ_and_are_not_an_expert_colour(capped):
    cfg, trace, _ = capped
    colors = expert_colors(cfg.n_experts)
    fig = fg.load_figure(trace.per_expert(), colors, 16.0, trace.capacity)
    shown = [t for t in fig.data if t.showlegend is not False and t.mode == "markers"]
    assert [t.name.split(":")[0] for t in shown] == ["demand (routed)", "served"]
    assert {t.marker.color for t in shown} == {fg.IDEAL_COLOR} and shown[0].marker.color not in colors
    assert shown[0].marker.opacity == fg.DEMAND_OPACITY and shown[1].marker.opacity == 1.0
    assert all(t.showlegend is False for t in fig.data if isinstance(t, go.Bar))  # bars: no misleading swatch


def test_ideal_and_capacity_lines_are_labelled_and_coincidence_is_said():
    apart = fg.line_labels(10.0, 16, top=40.0)
    assert [a["text"] for a in apart] == ["capacity C = 16", "ideal T·K/E = 10"]
    assert [a["y"] for a in apart] == [16, 10.0] and [a["yanchor"] for a in apart] == ["bottom", "top"]
    same = fg.line_labels(128.0, 128, top=400.0)
    assert len(same) == 1 and "coincide" in same[0]["text"] and "128" in same[0]["text"]
    near = fg.line_labels(128.0, 130, top=400.0)  # 2 px apart on a 400-high axis: one label, not "coincide"
    assert len(near) == 1 and near[0]["text"] == "ideal 128 and capacity C = 130 (too close to label apart)"
    assert len(fg.line_labels(128.0, 160, top=400.0)) == 2


def test_sorted_load_view_orders_experts_by_demand():
    cfg, trace, _ = run(n_experts=40, top_k=2)
    pe, colors = trace.per_expert(), expert_colors(40)
    fig = fg.load_figure(pe, colors, T * 2 / 40, None, sort=True)
    demand, served = fig.data[0], fig.data[1]
    order = sorted(range(40), key=lambda e: (-int(pe["demand"][e]), e))  # plain Python: largest first, stable
    assert list(demand.x) == [str(e) for e in order] and list(fig.layout.xaxis.categoryarray) == list(demand.x)
    assert list(demand.y) == [int(pe["demand"][e]) for e in order]
    assert list(served.y) == [int(pe["served"][e]) for e in order]
    assert list(served.marker.color) == [colors[e] for e in order]  # each expert keeps its colour
    assert "sorted" in fig.layout.xaxis.title.text
    ideal = next(t for t in fig.data if isinstance(t, go.Scatter) and t.mode == "lines")
    assert list(ideal.x) == [str(order[0]), str(order[-1])]  # category names: numbers would not draw the line


def test_heatmap_rows_grouped_and_the_axis_labelled(capped):
    cfg, trace, batch = capped
    matrix, labels, note, groups, text = tb.sorted_token_matrix(trace, "contributions", batch.labels,
                                                               batch.label_names)
    fig = fg.token_heatmap_figure(matrix, labels, title="c", value_name="v", row_groups=groups, yaxis_title=text)
    yaxis = fig.layout.yaxis
    assert [a.text for a in fig.layout.annotations] == list(batch.label_names)  # one name per topic
    assert not yaxis.showticklabels and "topic" in yaxis.title.text
    contributions = trace.contributions.double().numpy()
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float),
                               contributions[[int(t) for t in labels]], rtol=1e-6)  # rows are those tokens


def test_cluster_share_scale_follows_the_data():
    cfg, trace, batch = run(n_experts=12, top_k=6)
    share = tb.cluster_share(trace, batch.labels, batch.label_names)
    heat = fr.cluster_share_figure(share).data[0]
    assert heat.zmin == 0.0 and heat.zmax == pytest.approx(np.nanmax(share.to_numpy())) and heat.zmax < 0.5


def test_experts_per_token_figure():
    cfg, trace, _ = run(n_experts=4, top_k=2, router="expert_choice")
    table = tb.experts_per_token(trace)
    fig = fr.experts_per_token_figure(table, cfg.top_k)
    bar, line = fig.data
    n = trace.served.sum(dim=1).tolist()
    assert list(bar.x) == list(range(len(table))) and list(bar.y) == [n.count(k) for k in range(len(table))]
    assert list(line.x) == [2, 2] and line.name == "K = 2"
    assert fig.layout.xaxis.title.text == "experts that served the token" and fig.layout.yaxis.title.text == "tokens"


def test_output_metric_is_named_for_what_it_measures():
    assert fg.METRIC_TITLES["specialization"].startswith("output distinctness")


def test_expert_metric_grid_leaves_room_for_the_right_column_axis_title(capped):
    cfg, trace, _ = capped
    fig = fg.expert_metrics_figure(trace.per_expert(), expert_colors(cfg.n_experts))
    gap = fig.layout.xaxis2.domain[0] - fig.layout.xaxis.domain[1]
    assert gap >= 0.15  # ~130 px at a 900 px wide chart: tick labels plus a rotated title


def test_expert_metric_grid_titles_sit_below_the_toolbar(capped):
    cfg, trace, _ = capped
    fig = fg.expert_metrics_figure(trace.per_expert(), expert_colors(cfg.n_experts))
    assert fig.layout.margin.t >= fg.TITLE_ROW + fg.LEGEND_ROW  # toolbar row (~40 px) + the subplot titles
    assert [a.text for a in fig.layout.annotations] == [fg.METRIC_TITLES[m] for m in fg.EXPERT_METRICS]


def test_heatmap_names_every_row_group_even_a_thin_one():
    """Overview's heatmap height: expert 3's 3 rows sit right under expert 2's; both are named (issue #15)."""
    groups = ["expert 0"] * 150 + ["expert 1"] * 150 + ["expert 2"] * 6 + ["expert 3"] * 3 + ["expert 4"] * 200
    fig = fg.token_heatmap_figure(np.zeros((len(groups), 5)), [str(i) for i in range(len(groups))], title="t",
                                  value_name="v", row_groups=groups, height=235)
    shown = [a.text for a in fig.layout.annotations] + list(fig.layout.yaxis.ticktext or ())
    assert sorted(shown) == sorted(set(groups))


@pytest.mark.parametrize("E, step", [(8, 1), (16, 1), (32, 2), (64, 4), (256, 16)])
def test_expert_axes_keep_at_most_16_tick_labels(E, step):
    """32 expert numbers side by side smear into one another in a half-width chart (issue #15)."""
    pe = pd.DataFrame({"expert": range(E), "demand": range(E), "served": range(E), "dropped": [0] * E,
                       "output_rms": [1.0] * E})
    colors = expert_colors(E)
    axis = fg.expert_bar_figure(pe, "output_rms", colors).layout.xaxis
    assert axis.dtick == step and E / axis.dtick <= 16 and axis.tickangle == 0
    heat = fg.token_heatmap_figure(np.zeros((4, E)), ["0", "1", "2", "3"], title="t", value_name="v")
    assert E / heat.layout.xaxis.dtick <= 8  # beside its colour bar the heatmap is narrower
    for fig in (fg.load_figure(pe, colors, 1.0, sort=True), fg.expert_bar_figure(pe, "output_rms", colors, ranked=True)):
        ticks = list(fig.layout.xaxis.tickvals)
        assert len(ticks) <= 16 and ticks == list(fig.layout.xaxis.categoryarray)[::step]
