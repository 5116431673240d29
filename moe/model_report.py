"""`python -m moe model-report`: per-layer routing of a causal MoE language model on a text."""
from __future__ import annotations


def add_report_command(commands) -> None:
    pass
