"""Optimizer step time, state bytes and peak step memory: ``valleys bench-step`` as a script.

The benchmark lives in :mod:`valleys.bench.perf.step` so that the ``valleys`` command can run it;
see BENCHMARKS.md for the commands and the results.
"""

from valleys.bench.perf.step import main

if __name__ == "__main__":
    raise SystemExit(main())
