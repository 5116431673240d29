"""Pure figure builders for a model balanced by an expert bias (DeepSeek-V3's aux-loss-free balancing): the bias
per layer and expert, and per layer the top-k margin, bias overlap and shared-expert share.

Tidy tables in (moe.hf.tables.expert_bias_long, balance_table), `go.Figure` out; no Streamlit, no I/O.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.figures.core import METRIC_TITLES, NEUTRAL_COLOR, SHARED_COLOR, axis, expert_xaxis, layout

BALANCE_COLORS = {"topk_margin": NEUTRAL_COLOR, "bias_overlap": "#f58518", "shared_fraction": SHARED_COLOR}
BALANCE_TITLES = {**{k: METRIC_TITLES[k] for k in ("topk_margin", "bias_overlap")},
                  "shared_fraction": "shared expert's share"}


def bias_heatmap_figure(long: pd.DataFrame) -> go.Figure:
    """Layer × expert selection bias b_e, on a diverging scale centred on 0 (red: favoured, blue: held back)."""
    wide = long.pivot(index="layer", columns="expert", values="bias")  # (layers, E)
    top = float(wide.abs().to_numpy().max()) or 1.0  # all zero (an untrained model): still drawable
    data = [go.Heatmap(z=wide.values, x=list(wide.columns), y=[f"layer {i}" for i in wide.index],
                       colorscale="RdBu", reversescale=True, zmin=-top, zmax=top, zmid=0.0,
                       colorbar=dict(title=dict(text="bias b_e")),
                       hovertemplate="%{y} · expert %{x}: b = %{z:+.4f}<extra></extra>")]
    return go.Figure(data, layout(title="Expert bias per layer (e_score_correction_bias: added to the scores "
                                        "for selection only)",
                                  xaxis=expert_xaxis(wide.shape[1]), yaxis=axis("", autorange="reversed"),
                                  uirevision="model_bias", height=120 + 40 * len(wide), colorbar=True,
                                  row_labels=True, showlegend=False))


def balance_figure(table: pd.DataFrame) -> go.Figure:
    """Per MoE layer: top-k margin, bias overlap and the shared expert's output share, grouped bars on 0..1."""
    x = [f"layer {i}" for i in table["layer"]]
    data = [go.Bar(x=x, y=table[k].tolist(), name=BALANCE_TITLES[k], marker_color=BALANCE_COLORS[k],
                   hovertemplate=f"%{{x}} · {BALANCE_TITLES[k]}: %{{y:.3f}}<extra></extra>")
            for k in BALANCE_COLORS if k in table and table[k].notna().any()]
    return go.Figure(data, layout(title="Per layer: top-k margin, bias overlap, shared expert's share",
                                  xaxis=axis(""), yaxis=axis("value", range=[0, 1]), uirevision="model_balance",
                                  barmode="group"))
