"""Real (Hugging Face) MoE models: checkpoint checks, loading, instrumentation, counterfactuals, per-layer tables, reports, and the small language-model trainer."""
