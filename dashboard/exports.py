"""Downloads: the per-expert table (CSV), summary + config (JSON) and the trace (Parquet), as bytes."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from .result import RunResult
from .tables import token_table


def per_expert_csv(result: RunResult) -> bytes:
    return result.per_expert.to_csv(index=False).encode()


def token_csv(result: RunResult) -> bytes:
    """One row per token: chosen, served and dropped experts, weights, max prob, entropy, confidence."""
    return token_table(result.trace).to_csv(index=False).encode()


def summary_json(result: RunResult) -> bytes:
    doc = {"config": result.config.to_dict(), "scenario": result.scenario,
           "scenario_params": result.scenario_params, "device": result.device, "summary": result.summary}
    return json.dumps(doc, indent=2, default=float).encode()


def trace_frame(result: RunResult) -> pd.DataFrame:
    """One row per (token, expert): the trace in tidy form."""
    tr = result.trace
    T, E = tr.probs.shape
    frame = pd.DataFrame({
        "token": np.repeat(np.arange(T), E),
        "expert": np.tile(np.arange(E), T),
        "router_logit": tr.router_logits.numpy().ravel(),
        "prob": tr.probs.numpy().ravel(),
        "routed": tr.routed.numpy().ravel(),
        "served": tr.served.numpy().ravel(),
        "gate": tr.gates.numpy().ravel(),
        "contribution": tr.contributions.numpy().ravel(),
    })
    if result.labels is not None:
        frame.insert(1, "topic", np.repeat(result.labels.numpy(), E))
    return frame


def trace_parquet(result: RunResult) -> bytes:
    buffer = io.BytesIO()
    trace_frame(result).to_parquet(buffer, index=False)
    return buffer.getvalue()
