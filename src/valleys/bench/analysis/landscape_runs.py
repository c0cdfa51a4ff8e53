"""``valleys landscape``: optimizers on the paper's test functions, with trajectories and a table.

The paper's Figure 1 publishes no learning rate, start or step count. The rule here is stated and
stored with every result: for each function and each *base* optimizer (SGD, Adam, Lamb), the
learning rate is the largest on :data:`LR_GRID` at which the base optimizer neither diverges nor
leaves its first basin, i.e. its most aggressive setting that still behaves like "stop in the first
minimum"; the E version (ESGD, EAdam, ALTO) gets the same learning rate, so any difference is E's.
Optimizers without a base pair choose on their own. SGD runs without momentum (heavy-ball momentum
explores on its own); Lamb and ALTO without weight decay. E keeps the paper's large-batch α = −5,
β1 = 0.99, except on Figure 8's f1 and f2, which use the paper's published Adam and ALTO betas and
α (−80 and −90).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from valleys.bench.analysis.landscape import (
    FUNCTIONS,
    Trajectory,
    plot_trajectories,
    run_trajectory,
    summarize,
)
from valleys.bench.run.checkpoint import write_json_atomic
from valleys.optim import available_optimizers, create_optimizer, optimizer_info

__all__ = [
    "DEFAULT_OPTIMIZERS",
    "LR_GRID",
    "LandscapeResult",
    "optimizer_settings",
    "run_landscapes",
    "write_report",
]

LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_OPTIMIZERS = ("sgd", "esgd", "adam", "eadam", "lamb", "alto")

PAPER_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "f1": {
        "adam": {"betas": (0.95, 0.999)},
        "alto": {"betas": (0.99, 0.95, 0.99), "alpha": -80.0},
        "lamb": {"betas": (0.95, 0.99)},
    },
    "f2": {
        "adam": {"betas": (0.9, 0.9999)},
        "alto": {"betas": (0.99, 0.9, 0.99), "alpha": -90.0},
        "lamb": {"betas": (0.9, 0.99)},
    },
}
"""Figure 8's published settings (PAPER.md); Lamb gets ALTO's moment betas."""


def optimizer_settings(function: str, name: str) -> dict[str, Any]:
    """The keyword arguments (besides lr) ``name`` runs with on ``function``."""
    family = optimizer_info(name).family
    settings: dict[str, Any] = {}
    if family == "sgd":
        settings["momentum"] = 0.0
    if family == "layerwise":
        settings["weight_decay"] = 0.0
    settings.update(PAPER_SETTINGS.get(function, {}).get(name, {}))
    return settings


@dataclass
class LandscapeResult:
    """Trajectories, summaries and the settings of one ``valleys landscape`` run."""

    trajectories: dict[str, dict[str, Trajectory]] = field(default_factory=dict)
    summaries: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def _factory(function: str, name: str, lr: float) -> Callable[[list[Tensor]], Optimizer]:
    kwargs = optimizer_settings(function, name)
    return lambda params: create_optimizer(name, params, lr=lr, **kwargs)


def _stays_in_first_basin(function: str, name: str, lr: float) -> bool:
    fn = FUNCTIONS[function]
    trajectory = run_trajectory(fn, None, _factory(function, name, lr), fn.steps)
    summary = summarize(fn, trajectory)
    return not summary["diverged"] and not summary["left_first_basin"]


def choose_lr(function: str, name: str) -> float | None:
    """The largest lr of :data:`LR_GRID` at which ``name`` stays in its first basin (None if none)."""
    for lr in sorted(LR_GRID, reverse=True):
        if _stays_in_first_basin(function, name, lr):
            return lr
    return None


def run_landscapes(
    functions: Sequence[str] = tuple(FUNCTIONS),
    optimizers: Sequence[str] = DEFAULT_OPTIMIZERS,
    *,
    lr: float | None = None,
    steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> LandscapeResult:
    """Run every optimizer on every function; ``lr``/``steps`` override the chosen ones."""
    unknown_functions = [f for f in functions if f not in FUNCTIONS]
    if unknown_functions:
        raise ValueError(
            f"Unknown function(s) {', '.join(unknown_functions)}; valid: {', '.join(FUNCTIONS)}"
        )
    valid = set(available_optimizers())
    unknown = [o for o in optimizers if o not in valid]
    if unknown:
        raise ValueError(
            f"Unknown optimizer(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"Invalid lr: {lr!r}; expected a number > 0")
    if steps is not None and steps < 1:
        raise ValueError(f"Invalid steps: {steps!r}; expected a positive integer")

    result = LandscapeResult()
    for function in functions:
        fn = FUNCTIONS[function]
        chosen: dict[str, float | None] = {}
        result.trajectories[function] = {}
        result.summaries[function] = {}
        result.settings[function] = {}
        for name in optimizers:
            base = optimizer_info(name).base
            if lr is not None:
                run_lr: float | None = lr
                rule = "given"
            else:
                if base not in chosen:
                    chosen[base] = choose_lr(function, base)
                run_lr = chosen[base]
                rule = f"largest lr at which {base} stays in its first basin"
                if run_lr is None:
                    run_lr, rule = min(LR_GRID), f"smallest lr of the grid ({base} never stayed)"
            if progress is not None:
                progress(f"{function}: {name} lr={run_lr:g}")
            run_steps = steps if steps is not None else fn.steps
            trajectory = run_trajectory(fn, None, _factory(function, name, run_lr), run_steps)
            result.trajectories[function][name] = trajectory
            result.summaries[function][name] = summarize(fn, trajectory)
            result.settings[function][name] = {
                "lr": run_lr,
                "lr_rule": rule,
                "steps": run_steps,
                "start": list(fn.start),
                **{
                    k: list(v) if isinstance(v, tuple) else v
                    for k, v in optimizer_settings(function, name).items()
                },
            }
    return result


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table_rows(result: LandscapeResult) -> list[list[str]]:
    """One row per (function, optimizer): the columns of :data:`TABLE_HEADER`."""
    rows = []
    for function, by_optimizer in result.summaries.items():
        for name, summary in by_optimizer.items():
            settings = result.settings[function][name]
            rows.append(
                [
                    function,
                    name,
                    _format(settings["lr"]),
                    _format(summary["final_loss"]),
                    _format(summary["path_length"]),
                    _format(summary["distance_from_start"]),
                    _format(summary["top_hessian_eigenvalue"]),
                    _format(summary["left_first_basin"]),
                ]
            )
    return rows


TABLE_HEADER = [
    "function",
    "optimizer",
    "lr",
    "final loss",
    "path length",
    "distance",
    "top eig",
    "left 1st basin",
]


def markdown_table(result: LandscapeResult) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


STORED_POINTS = 201
"""Iterates kept per trajectory in ``landscape.json``: evenly spaced steps, the first and the last
included (every iterate of every run took 3.9 MB; the figure is drawn from the full runs). Written
without indentation."""


def thinned(trajectory: Trajectory) -> dict[str, list[Any]]:
    """At most :data:`STORED_POINTS` iterates of ``trajectory`` with their step numbers and
    losses."""
    count = trajectory.points.shape[0]
    steps = torch.linspace(0, count - 1, min(count, STORED_POINTS)).round().long().unique()
    return {
        "steps": steps.tolist(),
        "points": trajectory.points[steps].tolist(),
        "losses": trajectory.losses[steps].tolist(),
    }


def write_report(result: LandscapeResult, out_dir: Path) -> dict[str, Path]:
    """Write ``landscape.json`` (summaries, settings, trajectories), ``landscape.png`` and
    ``landscape.md`` under ``out_dir``; the JSON first, so a plotting failure loses nothing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "landscape.json",
        "png": out_dir / "landscape.png",
        "markdown": out_dir / "landscape.md",
    }
    payload = {
        "summaries": result.summaries,
        "settings": result.settings,
        "trajectories": {
            f: {n: thinned(t) for n, t in by_opt.items()}
            for f, by_opt in result.trajectories.items()
        },
        "descriptions": {f: FUNCTIONS[f].description for f in result.summaries},
        "rule": __doc__,
    }
    write_json_atomic(paths["json"], payload, indent=None)
    plot_trajectories(result.trajectories, paths["png"])
    lines = [
        "# valleys landscape",
        "",
        (__doc__ or "").strip(),
        "",
        markdown_table(result),
        "",
        "![trajectories](landscape.png)",
        "",
        "## Functions",
        "",
    ]
    lines += [f"- **{f}**: {FUNCTIONS[f].description}" for f in result.summaries]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    return paths
