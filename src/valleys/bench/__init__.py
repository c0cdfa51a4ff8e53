"""Training harness: data, models, tasks, training loop, studies and reports."""
