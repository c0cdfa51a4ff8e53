"""The step benchmark's JAX section: valleys.optax's ALTO against optax's LAMB and AdamW.

Every variant is one ``jax.jit``\\ ted ``update`` + ``apply_updates`` over the same parameters and
the same fixed gradients (the layouts of :mod:`valleys.bench.perf.step`), with the parameters and
the optimizer state donated so that XLA updates them in place, as the torch optimizers do. Steps
run interleaved, round by round, on one XLA thread pinned to one core; the first (compiling) steps
are excluded from the median and reported as ``first_step_s``. Ratios are to ``optax_adamw`` of
the same run. ALTO clips the global gradient norm by default (as the reference does); optax's
``lamb`` and ``adamw`` do not, hence also ``valleys_alto_no_clip``.

    python benchmarks/step_jax.py --layout 25m --repeats 21 --out benchmarks/results/step-jax-25m.json
    python benchmarks/step_jax.py --quick --out /tmp/step-jax.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from valleys.bench.perf.step import LAYOUTS, LR, machine, pin_one_core, write_report

BASELINE = "optax_adamw"
VARIANTS = ("valleys_alto", "valleys_alto_no_clip", "optax_lamb", BASELINE)
# One XLA CPU thread: set before jax creates its backend (it reads the flags once).
_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _transformation(name: str) -> Any:
    """The optax transformation a variant name stands for (its defaults, lr :data:`LR`)."""
    import optax

    from valleys import optax as vx

    return {
        "valleys_alto": lambda: vx.alto(LR),
        "valleys_alto_no_clip": lambda: vx.alto(LR, max_grad_norm=None),
        "optax_lamb": lambda: optax.lamb(LR),
        BASELINE: lambda: optax.adamw(LR),
    }[name]()


class _Runner:
    """One variant: its jitted step on its own copy of the parameters, and its state."""

    def __init__(self, name: str, init: list[Any], grads: list[Any]) -> None:
        import jax
        import optax

        tx = _transformation(name)

        def update(params: list[Any], state: Any) -> tuple[list[Any], Any]:
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self._step = jax.jit(update, donate_argnums=(0, 1))
        params = [p.copy() for p in init]
        self._carry = (params, tx.init(params))

    def timed_step(self) -> float:
        import jax

        start = time.perf_counter()
        self._carry = jax.block_until_ready(self._step(*self._carry))
        return time.perf_counter() - start

    def state_bytes(self) -> int:
        import jax

        return sum(x.nbytes for x in jax.tree.leaves(self._carry[1]))


def run(layout: str, scale: float, repeats: int, warmup: int) -> dict[str, Any]:
    """Benchmark every variant on ``layout``; call in a process that has not used jax yet."""
    core = pin_one_core()
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_ONE_THREAD}".strip()
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    shapes = LAYOUTS[layout](scale)
    init = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
    grads = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
    n_params = sum(p.size for p in init)

    runners = {name: _Runner(name, init, grads) for name in VARIANTS}
    first = {name: runner.timed_step() for name, runner in runners.items()}
    for runner in runners.values():
        for _ in range(warmup - 1):
            runner.timed_step()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(repeats):
        # Rotate the order each round so that no variant always follows the same neighbour.
        order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
        for name in order:
            times[name].append(runners[name].timed_step())
    base = statistics.median(times[BASELINE])
    results = {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "times_s": t,
            "first_step_s": first[name],
            f"time_to_{BASELINE}": statistics.median(t) / base,
            "state_bytes_per_param": runners[name].state_bytes() / n_params,
        }
        for name, t in times.items()
    }
    return {
        "layout": layout,
        "scale": scale,
        "tensors": len(shapes),
        "params": n_params,
        "dtype": "float32",
        "device": str(jax.devices()[0]),
        "xla_flags": os.environ["XLA_FLAGS"],
        "pinned_core": core,
        "repeats": repeats,
        "warmup": warmup,
        "lr": LR,
        "machine": {**machine(), "jax": jax.__version__},
        "variants": results,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table, ratios to optax's AdamW of the same run."""
    lines = [
        f"| variant | median step (ms) | × {BASELINE} | fastest step (ms) "
        "| state bytes / param | first step (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["variants"].items():
        lines.append(
            f"| {name} | {r['median_s'] * 1e3:.1f} | {r[f'time_to_{BASELINE}']:.2f} "
            f"| {r['min_s'] * 1e3:.1f} | {r['state_bytes_per_param']:.2f} "
            f"| {r['first_step_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark ``argv`` describes; write its JSON report and print its table."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/step_jax.py", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="25m")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the layout's tensors")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 tensors, 3 repeats")
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.repeats, args.warmup = min(args.scale, 0.02), 3, 1
    if not args.scale > 0 or args.repeats < 1 or args.warmup < 1:
        parser.error("--scale must be > 0, --repeats and --warmup >= 1")
    report = run(args.layout, args.scale, args.repeats, args.warmup)
    write_report(report, args.out)
    print(markdown_table(report))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0
