"""Training: a run built from its config (session.py), the step and its loop (trainer.py), the optimizer, the
training state, checkpoints, objectives, center-loss centers, the run folder and the monitor. Nothing here imports
distface.serving (docs/design.md)."""
