"""Performance measurements of the optimizers themselves (the step benchmark)."""
