"""Training and evaluation: the Ray Train loop, its driver, checkpoints, metrics."""
