"""The figures of a study's report (matplotlib, drawn off-screen into PNG files).

Every figure shows means ± standard deviations over seeds; a fraction metric (accuracy) is shown in
per cent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from valleys.bench.study.results import UnitResult, find_unit

__all__ = [
    "batch_text",
    "draw_heatmap",
    "draw_lr_figure",
    "draw_metric_vs_batch",
    "draw_scatter",
    "draw_time_bars",
    "metric_scale",
    "table",
]


def metric_scale(metric: str) -> float:
    """The factor a metric is shown with: 100 for a fraction (accuracy, in per cent), else 1."""
    return 100 if metric == "accuracy" else 1


def _axis_label(metric: str) -> str:
    return f"best test {metric}" + (" (%)" if metric_scale(metric) == 100 else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table of ``rows`` under ``headers``, as the reports print them."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def batch_text(batch: int) -> str:
    """A batch size as the paper writes it: 16K for 16000."""
    return f"{batch // 1000}K" if batch >= 1000 and batch % 1000 == 0 else str(batch)


def draw_metric_vs_batch(units: Sequence[UnitResult], metric: str, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    scale = metric_scale(metric)
    for optimizer in dict.fromkeys(u.optimizer for u in units):
        xs, ys, errs = [], [], []
        for unit in (u for u in units if u.optimizer == optimizer):
            stat = unit.best_stat("best_metric")
            if stat is not None:
                xs.append(unit.batch_size)
                ys.append(scale * stat[0])
                errs.append(scale * stat[1])
        if xs:
            axes.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=optimizer)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel(_axis_label(metric))
    axes.set_title(f"{metric} vs batch size (best configuration, mean ± std over seeds)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=110)


def draw_heatmap(unit: UnitResult, metric: str, path: Path) -> None:
    """Best mean metric per (β1, α) cell (the best over any other parameter), seeds averaged, with
    its standard deviation over seeds; α = 0 is E switched off (Lamb, for ALTO)."""
    from matplotlib.figure import Figure

    betas = sorted({c.params["beta1"] for c in unit.configs})
    alphas = sorted({c.params["alpha"] for c in unit.configs})
    scale = metric_scale(metric)
    grid = [[math.nan] * len(betas) for _ in alphas]
    spread = [[math.nan] * len(betas) for _ in alphas]
    better = (lambda a, b: a > b) if unit.meta["higher_is_better"] else (lambda a, b: a < b)
    for config in unit.configs:
        stat = config.stat("best_metric")
        if stat is None:
            continue
        row, col = alphas.index(config.params["alpha"]), betas.index(config.params["beta1"])
        if math.isnan(grid[row][col]) or better(scale * stat[0], grid[row][col]):
            grid[row][col], spread[row][col] = scale * stat[0], scale * stat[1]
    figure = Figure(figsize=(1.6 + 1.1 * len(betas), 1.2 + 0.6 * len(alphas)), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    axes.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    off = " (Lamb)" if unit.optimizer == "alto" else " (E off)"
    axes.set_yticks(range(len(alphas)), [f"{a:g}" + (off if a == 0 else "") for a in alphas])
    axes.set_xlabel("β1 (E)")
    axes.set_ylabel("α (E)")
    for row, values in enumerate(grid):
        for col, value in enumerate(values):
            if math.isnan(value):
                axes.text(col, row, "unstable\nor failed", ha="center", va="center", fontsize=7)
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
            axes.text(
                col,
                row,
                f"{value:.1f}\n± {spread[row][col]:.1f}",
                ha="center",
                va="center",
                color="black" if light else "white",
                fontsize=7,
            )
    figure.colorbar(image, ax=axes, label=_axis_label(metric))
    axes.set_title(f"{unit.optimizer}, batch {unit.batch_size}: mean ± std over seeds")
    figure.savefig(path, dpi=110)


def draw_scatter(unit: UnitResult, metric: str, path: Path) -> None:
    """Each sampled configuration at its (β1, α), coloured by its mean metric over seeds."""
    from matplotlib.figure import Figure

    scale = metric_scale(metric)
    points = [
        (c.params["beta1"], c.params["alpha"], scale * stat[0])
        for c in unit.configs
        if (stat := c.stat("best_metric")) is not None
    ]
    figure = Figure(figsize=(5.6, 4.2), layout="constrained")
    axes = figure.add_subplot()
    if points:
        betas, alphas, values = zip(*points, strict=True)
        image = axes.scatter(betas, alphas, c=values, cmap="viridis", s=60, edgecolors="black")
        figure.colorbar(image, ax=axes, label=_axis_label(metric))
    axes.set_xlabel("β1 (E)")
    axes.set_ylabel("α (E)")
    axes.set_title(f"{unit.optimizer}, batch {unit.batch_size}: sampled configurations")
    figure.savefig(path, dpi=110)


def draw_time_bars(units: Sequence[UnitResult], path: Path) -> None:
    """Bars of seconds and of epochs to the target, side by side: seconds are what the paper
    reports, epochs are what survives a shared machine's timing noise."""
    from matplotlib.figure import Figure

    optimizers = list(dict.fromkeys(u.optimizer for u in units))
    batches = sorted({u.batch_size for u in units})
    width = 0.8 / len(optimizers)
    panel_width = max(3.2, 1.2 + 1.4 * len(batches) * max(1, len(optimizers) / 2))
    figure = Figure(figsize=(2 * panel_width, 4.2), layout="constrained")
    panels = (("time_to_target", "training seconds to target"), ("epochs_to_target", "epochs"))
    for k, (name, ylabel) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), k + 1)
        for i, optimizer in enumerate(optimizers):
            for j, batch in enumerate(batches):
                unit = find_unit(units, optimizer, batch)
                stat = unit.best_stat(name) if unit else None
                x = j + (i - (len(optimizers) - 1) / 2) * width
                if stat is None:
                    axes.text(x, 0, "not\nreached", ha="center", va="bottom", fontsize=7)
                    continue
                axes.bar(x, stat[0], width, yerr=stat[1], capsize=3, color=f"C{i}", label=optimizer)
        axes.set_xticks(range(len(batches)), [f"batch {batch_text(b)}" for b in batches])
        axes.set_ylabel(ylabel)
        handles, labels = axes.get_legend_handles_labels()
        if handles and k == 0:
            axes.legend(*_unique(handles, labels))
    figure.suptitle("Time to target: best configuration per optimizer, mean ± std over seeds")
    figure.savefig(path, dpi=110)


def _unique(handles: list[Any], labels: list[str]) -> tuple[list[Any], list[str]]:
    seen: dict[str, Any] = {}
    for handle, label in zip(handles, labels, strict=True):
        seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def _lr_points(unit: UnitResult, scale: float) -> list[tuple[float, float, float]]:
    """(lr, mean, std) of each configuration of ``unit`` with a result, by lr."""
    return sorted(
        (c.params["lr"], scale * stat[0], scale * stat[1])
        for c in unit.configs
        if "lr" in c.params and (stat := c.stat("best_metric")) is not None
    )


def draw_lr_figure(units: Sequence[UnitResult], metric: str, path: Path) -> None:
    """The metric against the learning rate, one panel per batch size, one colour per optimizer."""
    from matplotlib.figure import Figure

    scale = metric_scale(metric)
    batches = sorted({u.batch_size for u in units})
    optimizers = list(dict.fromkeys(u.optimizer for u in units))
    figure = Figure(figsize=(0.8 + 4.6 * len(batches), 4.2), layout="constrained")
    for k, batch in enumerate(batches):
        axes = figure.add_subplot(1, len(batches), k + 1)
        for i, optimizer in enumerate(optimizers):
            for unit in units:
                if unit.optimizer != optimizer or unit.batch_size != batch:
                    continue
                points = _lr_points(unit, scale)
                if points:
                    lrs, means, stds = zip(*points, strict=True)
                    axes.errorbar(
                        lrs, means, yerr=stds, fmt="o", capsize=3, color=f"C{i}", label=optimizer
                    )
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel(_axis_label(metric))
        axes.set_title(f"batch {batch_text(batch)}")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle("Each configuration: mean ± std over seeds")
    figure.savefig(path, dpi=110)
