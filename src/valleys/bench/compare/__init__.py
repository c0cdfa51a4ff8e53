"""Comparisons: optimizers side by side on one task, each on an lr grid, and their report."""
