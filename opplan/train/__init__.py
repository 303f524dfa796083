"""Training: the epoch loop, checkpoints and one state transition."""
