"""moe-scope engine: a vectorised, observable Mixture-of-Experts layer (pure PyTorch + pandas)."""
from moe.config import MoEConfig, available_devices
from moe.from_routing import trace_from_routing
from moe.layer import MoELayer
from moe.stats import PER_EXPERT_COLUMNS, SUMMARY_KEYS, ForwardSums, StatsAccumulator
from moe.trace import Trace

__all__ = ["MoEConfig", "MoELayer", "Trace", "StatsAccumulator", "ForwardSums",
           "PER_EXPERT_COLUMNS", "SUMMARY_KEYS", "available_devices", "trace_from_routing"]
