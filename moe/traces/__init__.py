"""Routing traces from other stacks: record limits, readers, the Parquet writer, and the summary report."""
