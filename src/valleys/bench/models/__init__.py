"""Models the benchmark tasks train."""
