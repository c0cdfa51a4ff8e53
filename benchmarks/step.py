"""Optimizer step time, state bytes and peak step memory: ``valleys bench-step`` as a script.

The benchmark lives in :mod:`valleys.bench.perf.step` and its command line in
:mod:`valleys.commands.bench_step`, so that the ``valleys`` command runs the same one; see
BENCHMARKS.md for the commands and the results.
"""

from valleys.commands.bench_step import main

if __name__ == "__main__":
    raise SystemExit(main())
