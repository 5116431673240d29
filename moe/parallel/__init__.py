"""Expert parallelism: the expert-parallel forward, expert placement, and the torchrun launcher and rank worker."""
