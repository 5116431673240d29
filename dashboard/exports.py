"""Downloads: the per-expert table (CSV), summary + config (JSON), the trace (Parquet) and a run as a routing log
(zip), as bytes."""
from __future__ import annotations

import io
import os
import tempfile
import zipfile

import pandas as pd

from moe.jsonio import dumps
from moe.traces import parquet
from moe.traces.log import RoutingLog
from moe.traces.store import write_log

from dashboard.result import RunResult
from dashboard.tables import token_table


def per_expert_csv(result: RunResult) -> bytes:
    return result.per_expert.to_csv(index=False).encode()


def token_csv(result: RunResult) -> bytes:
    """One row per token: chosen, served and dropped experts, weights, max prob, entropy, confidence."""
    return token_table(result.trace).to_csv(index=False).encode()


def summary_json(result: RunResult) -> bytes:
    doc = {"config": result.config.to_dict(), "scenario": result.scenario,
           "scenario_params": result.scenario_params, "device": result.device, "summary": result.summary,
           # the page's forward time (summary.forward_ms is the first forward's, one-off costs included)
           "warm_forward_ms": result.forward_ms, "warm_times_ms": list(result.warm_times_ms)}
    return dumps(doc, indent=2).encode()  # strict: NaN (dropless capacity, no shared experts) → null


def trace_frame(result: RunResult) -> pd.DataFrame:
    """One row per (token, expert), stamped step 0, layer 0: the format `python -m moe trace-report` reads."""
    labels = None if result.labels is None else result.labels.numpy()
    return parquet.trace_frame(result.trace, step=0, layer=0, labels=labels)


def trace_parquet(result: RunResult) -> bytes:
    buffer = io.BytesIO()
    trace_frame(result).to_parquet(buffer, index=False)
    return buffer.getvalue()


def routing_log_zip(log: RoutingLog, name: str = "routing-log") -> bytes:
    """The run as a routing log directory (moe.traces.store.write_log, what `trace-report --out DIR` writes), zipped
    under `name/`: unzip it and open the directory on the Runs page, or read it with pandas or DuckDB."""
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        root = os.path.join(tmp, name)
        write_log(log, root)
        for folder, _, files in sorted(os.walk(root)):
            for file in sorted(files):
                path = os.path.join(folder, file)
                zf.write(path, os.path.relpath(path, tmp))
    return buf.getvalue()
