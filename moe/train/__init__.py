"""Live training of a synthetic MoE layer: the trainer, its presets and the synthetic task."""
