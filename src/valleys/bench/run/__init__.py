"""One training run: its configuration, loop, checkpoints and metrics, and the worker pool."""
