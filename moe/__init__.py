"""moe-scope engine: a vectorised, observable Mixture-of-Experts layer.

PyTorch, NumPy and pandas; pyarrow for trace files (moe.traces) and transformers for real models (moe.hf).
It never imports streamlit, plotly or `dashboard`.
"""
from moe.config import MoEConfig, available_devices
from moe.from_routing import trace_from_routing
from moe.layer import MoELayer
from moe.stats import PER_EXPERT_COLUMNS, SUMMARY_KEYS, ForwardSums, StatsAccumulator
from moe.trace import Trace

__all__ = ["MoEConfig", "MoELayer", "Trace", "StatsAccumulator", "ForwardSums",
           "PER_EXPERT_COLUMNS", "SUMMARY_KEYS", "available_devices", "trace_from_routing"]
