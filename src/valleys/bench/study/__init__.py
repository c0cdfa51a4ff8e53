"""Studies on Optuna: sweeps and equal-budget tuning, their workers, storage and report."""
