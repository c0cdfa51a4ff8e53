"""The step benchmark's JAX section (valleys.optax's ALTO vs optax's LAMB and AdamW) as a script.

The benchmark lives in :mod:`valleys.bench.perf.step_jax`; see BENCHMARKS.md for the results.
"""

from valleys.bench.perf.step_jax import main

if __name__ == "__main__":
    raise SystemExit(main())
