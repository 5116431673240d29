"""Three of the dashboard's charts from one forward, in a script or a notebook (docs/FIGURES.md).

python examples/figures.py [OUT_DIR] writes load.html, contributions.html and entropy.html to OUT_DIR
(default: the current directory); in a notebook, call fig.show() instead.
"""
import math
import pathlib
import sys

import torch

from moe import MoEConfig, MoELayer
from dashboard.figures.colors import expert_colors
from dashboard.figures.core import histogram_figure, load_figure, token_heatmap_figure
from dashboard.tables import contribution_matrix, entropy_histogram

cfg = MoEConfig(d_model=64, d_expert=256, n_experts=8, top_k=2, capacity_factor=1.0)
layer = MoELayer(cfg)                                   # weights drawn from cfg.seed
x = torch.randn(4, 64, cfg.d_model, generator=torch.Generator().manual_seed(0))  # (B, S, D)
y, trace = layer(x)                                     # trace: what every expert did
colors = expert_colors(cfg.n_experts)                   # expert e has the same colour in every chart

# 1. demand vs served per expert, with the ideal load T·K/E and the capacity C
ideal = trace.tokens * cfg.top_k / cfg.n_experts
load = load_figure(trace.per_expert(), colors, ideal, trace.capacity)

# 2. how much each expert moved each token's output: ‖gate · y_e(x_t)‖, tokens × experts
matrix, rows, note = contribution_matrix(trace)         # (T, E); binned means above 2000 tokens (note says so)
contributions = token_heatmap_figure(matrix, rows, title="Contribution per token and expert",
                                     value_name="contribution", zmin=0.0)

# 3. the router's entropy per token, against the uniform router's ln E
entropy = histogram_figure(entropy_histogram(trace), title="Router entropy per token",
                           xaxis_title="entropy (nats)", reference=math.log(cfg.n_experts),
                           reference_name="uniform: ln E")

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
out.mkdir(parents=True, exist_ok=True)  # a new folder is made, as the docstring promises it is written to
for name, fig in {"load": load, "contributions": contributions, "entropy": entropy}.items():
    fig.write_html(out / f"{name}.html")                # or fig.show() in a notebook
    print(out / f"{name}.html")
