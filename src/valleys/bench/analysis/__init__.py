"""Flatness of the end points of training runs, and optimizers on test landscapes."""
