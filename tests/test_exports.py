"""Downloads: every file parses back to the numbers the page shows."""
import dataclasses
import io
import json

import pandas as pd
import torch

from moe import MoEConfig, MoELayer
from moe.scenarios import make_batch
from dashboard import exports
from dashboard.result import RunResult


def _result() -> RunResult:
    cfg = MoEConfig(d_model=16, d_expert=32, n_experts=4, top_k=2, capacity_factor=0.75)
    batch = make_batch("clusters", 16, 40, seed=0)
    _, trace = MoELayer(cfg)(batch.x)
    trace = trace.cpu()
    return RunResult(config=cfg, scenario="clusters", scenario_params={"n_clusters": 4}, trace=trace,
                     per_expert=trace.per_expert(), summary=trace.summary(), labels=batch.labels,
                     label_names=batch.label_names)


def test_per_expert_csv_and_summary_json_round_trip():
    r = _result()
    table = pd.read_csv(io.BytesIO(exports.per_expert_csv(r)))
    pd.testing.assert_frame_equal(table, r.per_expert, check_dtype=False)
    doc = json.loads(exports.summary_json(r))
    assert doc["config"]["capacity_factor"] == 0.75 and doc["scenario_params"] == {"n_clusters": 4}
    assert doc["summary"]["dropped"] == r.summary["dropped"] > 0
    assert doc["warm_forward_ms"] == r.summary["forward_ms"] and doc["warm_times_ms"] == []  # no repeats: the one
    warm = dataclasses.replace(r, warm_times_ms=(3.0, 1.0, 2.0))
    doc = json.loads(exports.summary_json(warm))
    assert doc["warm_forward_ms"] == 2.0 and doc["warm_times_ms"] == [3.0, 1.0, 2.0]  # the page's median


def test_trace_parquet_holds_every_token_expert_pair():
    r = _result()
    frame = pd.read_parquet(io.BytesIO(exports.trace_parquet(r)))
    assert len(frame) == 40 * 4
    served = frame.pivot(index="token", columns="expert", values="served").to_numpy()
    assert (served == r.trace.served.numpy()).all()
    assert frame["topic"].tolist()[::4] == r.labels.tolist()
    contrib = frame.groupby("expert")["contribution"].sum().to_numpy()
    assert torch.allclose(torch.tensor(contrib, dtype=torch.float64),
                          torch.tensor(r.per_expert["contribution"].to_numpy(), dtype=torch.float64), rtol=1e-5)


def test_token_csv_counts_served_experts():
    r = _result()
    tokens = pd.read_csv(io.BytesIO(exports.token_csv(r)))
    assert tokens["n_served"].tolist() == r.trace.served.sum(dim=1).tolist()
    assert tokens["n_served"].sum() == r.summary["served"]
