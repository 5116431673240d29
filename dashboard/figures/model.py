"""Pure figure builders for the Model view: tidy tables of a language-model forward in, `go.Figure` out.

No Streamlit, no I/O, inputs never mutated. Expert e has the colour `colors[e]` (dashboard.figures.colors).
"""
from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from moe.metrics import nats_to_bits

from dashboard.figures.core import LEFT, axis, expert_xaxis, layout, shared_range

TOKEN_HTML_LIMIT = 2000  # tokens drawn as coloured text; the rest is summarised
TOKEN_BOX_LINES = 12  # token_html: lines shown at once; a longer text scrolls inside its box
TOKEN_CLASS = "moe-tok-e"  # token_html: the CSS class of expert e's tokens is f"{TOKEN_CLASS}{e}"
# Whitespace drawn where a token stands alone (a table cell), so "  " and "\n" are not blank. Symbols that
# common fonts have (Debian's Chromium draws ␠ and ␍ as empty boxes); a carriage return shows as \r.
WHITESPACE_MARKS = {" ": "␣", "\t": "⇥", "\n": "↵"}


def visible_token(token: str) -> str:
    """A token as a person reads it in a table: whitespace as a symbol (WHITESPACE_MARKS), other characters
    that print nothing as escapes (\\r, \\x00, \\u200b), the empty token as ∅."""
    marks = [WHITESPACE_MARKS.get(ch) or (ch if ch.isprintable() else repr(ch)[1:-1]) for ch in token]
    return "".join(marks) or "∅"


def _discrete_scale(colors: list[str]) -> list[list]:
    """A colourscale mapping integer e in 0..E-1 (z normalised by E-1) to colors[e], no blending."""
    E = len(colors)
    if E == 1:
        return [[0.0, colors[0]], [1.0, colors[0]]]
    scale = []
    for e, c in enumerate(colors):
        scale += [[e / E, c], [(e + 1) / E, c]]
    return scale


def token_html(tokens: list[str], top1: list[int], colors: list[str]) -> str:
    """The text with each token's background the colour of its top-1 expert (hover: the expert).

    The colours are written once, a CSS class per expert in a <style> block, not on each of up to
    TOKEN_HTML_LIMIT spans: a long text's strip is a quarter of the bytes and the browser matches one rule per
    expert instead of parsing an inline style per token."""
    rules = "".join(f".{TOKEN_CLASS}{e}{{background:{c}55;border-bottom:3px solid {c}}}" for e, c in enumerate(colors))
    spans = []
    for tok, e in zip(tokens[:TOKEN_HTML_LIMIT], top1[:TOKEN_HTML_LIMIT]):
        shown = html.escape(tok).replace("\n", WHITESPACE_MARKS["\n"] + "<br>") or "·"
        spans.append(f'<span title="expert {e}" class="{TOKEN_CLASS}{e}">{shown}</span>')
    more = len(tokens) - TOKEN_HTML_LIMIT
    tail = f"<p>… {more} more tokens not drawn</p>" if more > 0 else ""
    style = f"<style>.{TOKEN_CLASS}s span{{white-space:pre-wrap;font-family:monospace}}{rules}</style>"
    # a long text scrolls inside a box of TOKEN_BOX_LINES lines: the charts stay near the text box, and the
    # browser paints the visible lines only (`contain`: nothing inside changes the page's layout)
    box = f"line-height:1.9;max-height:{1.9 * TOKEN_BOX_LINES:g}em;overflow-y:auto;contain:content"
    return style + f'<div class="{TOKEN_CLASS}s" style="{box}">' + "".join(spans) + "</div>" + tail


def quoted_labels(tokens: list[str]) -> list[str]:
    """Each token as the hover shows it: escapes for what prints nothing, in quotes (`'\\n'`, `' r'`)."""
    return [repr(repr(t)[1:-1]) for t in tokens]


def token_layer_grid_figure(grid: pd.DataFrame, tokens: list[str], colors: list[str]) -> go.Figure:
    """Top-1 expert for every (MoE layer, token): rows = decoder layers, columns = token positions."""
    E = len(colors)
    # the hover's token label once per cell (z's shape, as a heatmap's text must be); the rest of the hover line
    # comes from the template, not a string per cell: a long text's figure is a fifth of the bytes
    labels = np.broadcast_to(np.array(quoted_labels(tokens), dtype=object), grid.shape)  # (L, S)
    data = [go.Heatmap(z=grid.to_numpy(), x=np.arange(len(tokens)), y=[f"layer {i}" for i in grid.index],
                       zmin=-0.5, zmax=E - 0.5, colorscale=_discrete_scale(colors), text=labels,
                       hovertemplate="%{y} · pos %{x} · %{text} · expert %{z}<extra></extra>",
                       colorbar=dict(title=dict(text="expert"), tickvals=list(range(E))))]
    return go.Figure(data, layout(title="Top-1 expert per token and layer", xaxis=axis("token position"),
                                  yaxis=axis("", autorange="reversed"), uirevision="model_grid",
                                  height=120 + 40 * len(grid), colorbar=True, row_labels=True))


def share_range(*longs: pd.DataFrame) -> tuple[float, float]:
    """One colour range for load-share heatmaps drawn side by side: 0 to the largest share of any of them."""
    return tuple(shared_range([long["load_share"].max() for long in longs]))  # all zero: still drawable


def load_heatmap_figure(long: pd.DataFrame, label: str = "", zrange: tuple[float, float] | None = None) -> go.Figure:
    """Layer × expert load share (1/E everywhere = balanced); `label` names the routing in the title. `zrange`
    (share_range) fixes the colour scale, so heatmaps drawn together read the same share as the same colour."""
    wide = long.pivot(index="layer", columns="expert", values="load_share")
    E = wide.shape[1]
    zmin, zmax = zrange if zrange is not None else (0.0, None)
    data = [go.Heatmap(z=wide.values, x=list(wide.columns), y=[f"layer {i}" for i in wide.index],
                       colorscale="Viridis", zmin=zmin, zmax=zmax, colorbar=dict(title=dict(text="load share")),
                       hovertemplate="%{y} · expert %{x}: %{z:.3f}<extra></extra>")]
    title = f"Load share per layer{f' ({label})' if label else ''} (ideal 1/E = {1 / E:.3f})"
    return go.Figure(data, layout(title=title,
                                  xaxis=expert_xaxis(E), yaxis=axis("", autorange="reversed"),
                                  uirevision="model_load" + label, height=120 + 40 * len(wide), colorbar=True,
                                  row_labels=True))


def flow_figure(flow: np.ndarray, layer_from: int, layer_to: int) -> go.Figure:
    """P(top-1 at layer_to = j | top-1 at layer_from = i) as an E × E heatmap."""
    E = flow.shape[0]
    data = [go.Heatmap(z=flow, x=list(range(E)), y=list(range(E)), colorscale="Blues", zmin=0, zmax=1,
                       colorbar=dict(title=dict(text="P")),
                       hovertemplate="expert %{y} → %{x}: %{z:.2f}<extra></extra>")]
    return go.Figure(data, layout(title=f"Cross-layer flow: layer {layer_from} → layer {layer_to}",
                                  xaxis=expert_xaxis(E, title=f"top-1 expert at layer {layer_to}"),
                                  yaxis=expert_xaxis(E, title=f"top-1 expert at layer {layer_from}"),
                                  uirevision="model_flow", height=380, colorbar=True))


ROLLING_TOKENS = 32  # the loss chart's rolling mean: over the last 32 predicted tokens (DEFINITIONS["rolling_loss"])


def rolling_mean(values: np.ndarray, window: int = ROLLING_TOKENS) -> np.ndarray:
    """Trailing mean: element i is the mean of values[max(0, i - window + 1) : i + 1] (fewer at the start)."""
    values = np.asarray(values, dtype=np.float64)
    sums = np.concatenate([[0.0], np.cumsum(values)])  # (N + 1,)
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def utf8_bytes(tokens: list[str]) -> list[int]:
    """UTF-8 bytes of each token string (a tokenizer's own byte counts are better: a lone byte of a multi-byte
    character decodes to U+FFFD, 3 bytes)."""
    return [len(t.encode("utf-8")) for t in tokens]


def loss_per_token_and_byte(bits: np.ndarray, predicted_bytes: list[int]) -> tuple[float, float]:
    """(mean bits per predicted token, total bits / UTF-8 bytes of the predicted tokens); DEFINITIONS."""
    bits = np.asarray(bits, dtype=np.float64)
    n_bytes = int(sum(predicted_bytes))
    return float(bits.mean()) if bits.size else float("nan"), float(bits.sum() / n_bytes) if n_bytes else float("nan")


def token_loss_figure(loss: np.ndarray, tokens: list[str], token_bytes: list[int] | None = None,
                      context: int | None = None) -> go.Figure:
    """Next-token loss (bits) of token s+1 given the tokens before it, its rolling mean (ROLLING_TOKENS), and a
    line at the model's context when the text is longer. `token_bytes`: UTF-8 bytes of each token (default: of
    its string); the title's bits per byte divides the predicted tokens' bits by their bytes."""
    bits = nats_to_bits(np.asarray(loss))
    x = np.arange(1, len(tokens))
    labels = np.array([repr(t)[1:-1] for t in tokens[1:]], dtype=object)
    per_token, per_byte = loss_per_token_and_byte(bits, (token_bytes or utf8_bytes(tokens))[1:])
    # The losses as a filled step line ("hvh": each value held from halfway before its position to halfway after):
    # it looks like bars with no gap, but it is one SVG path, not a path per token (2,000 on a long text).
    # The token is on the hover only: drawn on the chart it is unreadable past a few dozen tokens.
    data = [go.Scatter(x=x, y=bits, text=labels, mode="lines", line=dict(shape="hvh", width=1, color="#4c78a8"),
                       fill="tozeroy", fillcolor="#4c78a8", name="loss",
                       hovertemplate="pos %{x} · %{text}: %{y:.2f} bits<extra></extra>"),
            go.Scatter(x=x, y=rolling_mean(bits), mode="lines", line=dict(color="#e45756", width=2),
                       name=f"rolling mean ({ROLLING_TOKENS} tokens)",
                       hovertemplate="pos %{x}: mean of the last " + str(ROLLING_TOKENS) + " tokens: %{y:.2f} bits"
                                     "<extra></extra>")]
    fig = go.Figure(data, layout(title=f"Next-token loss (mean {per_token:.2f} bits per token, "
                                       f"{per_byte:.2f} bits per byte)",
                                 xaxis=axis("token position"), yaxis=axis("bits"), uirevision="model_loss",
                                 showlegend=False))
    if context is not None and len(tokens) > context:
        fig.add_vline(x=context, line=dict(color="#333333", dash="dash", width=1),
                      annotation_text=f"context {context}", annotation_position="top right")
    return fig


def nmi_figure(nmi: pd.DataFrame) -> go.Figure:
    """NMI(top-1 expert; character class) per layer, one bar group per source column."""
    palette = ["#4c78a8", "#f58518", "#9d755d"]
    data = [go.Bar(x=[f"layer {i}" for i in nmi["layer"]], y=nmi[col], name=col, marker_color=palette[k % 3],
                   hovertemplate="%{x}: %{y:.3f}<extra>" + col + "</extra>")
            for k, col in enumerate(c for c in nmi.columns if c != "layer")]
    return go.Figure(data, layout(title="Specialisation: NMI(top-1 expert; character class)",
                                  xaxis=axis(""), yaxis=axis("NMI", range=[0, 1]), uirevision="model_nmi",
                                  barmode="group"))


def counterfactual_loss_figure(own: np.ndarray, new: np.ndarray, tokens: list[str]) -> go.Figure:
    """Next-token loss (bits) per position with the model's routing and with the counterfactual."""
    own_bits, new_bits = nats_to_bits(np.asarray(own)), nats_to_bits(np.asarray(new))
    x = list(range(1, len(tokens)))
    labels = [repr(t)[1:-1] for t in tokens[1:]]
    data = [go.Scatter(x=x, y=own_bits, name="own routing", mode="lines", line=dict(color="#4c78a8"), text=labels,
                       hovertemplate="pos %{x} · %{text}: %{y:.2f} bits<extra>own</extra>"),
            go.Scatter(x=x, y=new_bits, name="counterfactual", mode="lines", line=dict(color="#e45756"), text=labels,
                       hovertemplate="pos %{x} · %{text}: %{y:.2f} bits<extra>counterfactual</extra>")]
    delta = float(new_bits.mean() - own_bits.mean())
    return go.Figure(data, layout(title=f"Next-token loss: own {own_bits.mean():.3f} vs counterfactual "
                                        f"{new_bits.mean():.3f} bits (Δ {delta:+.3f})",
                                  xaxis=axis("token position"), yaxis=axis("bits"), uirevision="model_cf_loss"))


def sweep_figure(table: pd.DataFrame) -> go.Figure:
    """The counterfactual at each MoE layer alone (moe.hf.counterfactual.sweep_layers): Δ mean next-token loss
    (bits, left axis) and the changed layer's dropped fraction (right axis), a bar pair per layer."""
    x = [f"layer {i}" for i in table["layer"]]
    data = [go.Bar(x=x, y=table["delta_loss_bits"], name="Δloss (bits per token)", marker_color="#e45756",
                   offsetgroup="loss", hovertemplate="%{x}: Δ %{y:+.4f} bits<extra></extra>"),
            go.Bar(x=x, y=table["dropped_fraction"], name="dropped fraction", marker_color="#9d755d",
                   offsetgroup="drop", yaxis="y2", hovertemplate="%{x}: %{y:.1%} dropped<extra></extra>")]
    fig = go.Figure(data, layout(title="The counterfactual at each MoE layer alone", xaxis=axis(""),
                                 yaxis=axis("Δloss (bits per token)"), uirevision="model_cf_sweep",
                                 yaxis2=axis("dropped fraction", overlaying="y", side="right", rangemode="tozero",
                                             tickformat=".0%", showgrid=False),
                                 barmode="group"))
    return fig.update_layout(margin_r=LEFT)  # the right axis needs the room its left twin has
