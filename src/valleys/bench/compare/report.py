"""Tables and plots from stored run results.

Everything here reads :class:`~valleys.bench.run.config.RunResult` records (as stored in JSON), never a
live run, so a report can be redrawn at any time from what is on disk.

Learning-rate selection: for each optimizer, every lr of its grid is aggregated over seeds (mean and
standard deviation), and each reported quantity picks its *own* best lr from the grid: the best test
metric, the lowest final training loss, the shortest time to target. The lr is shown beside every
number, so a reader sees when the choices differ.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from valleys.bench.analysis.e_telemetry import e_series, plot_e_telemetry
from valleys.bench.run.checkpoint import atomic_write_bytes, read_json
from valleys.bench.run.config import EFFECTIVE_CLIP, RunResult, TrainConfig

__all__ = [
    "Aggregate",
    "GridPoint",
    "OptimizerSummary",
    "format_table",
    "markdown_table",
    "plot_curves",
    "summarise",
    "write_report",
]

# Reference numbers from PAPER.md, shown beside a comparison for scale (top-1 %, mean of 3 runs).
_PAPER_CONTEXT = (
    "For scale, the paper reports (CIFAR-10, ResNet-20, batch 16384, top-1 %): SGD 80.86, "
    "AdamW 82.29, Lamb 83.56, ALTO 88.83; and (CIFAR-100): SGD 44.20, AdamW 52.95, Lamb 56.06, "
    "ALTO 57.78."
)


@dataclass(frozen=True)
class Aggregate:
    """A quantity over seeds: mean, standard deviation (0 for one seed) and how many had it."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Aggregate | None:
        """The aggregate of ``values``, or None when there are none."""
        values = list(values)
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class GridPoint:
    """One (optimizer, lr) of the grid, aggregated over its seeds.

    ``final_train_loss`` and ``time_to_target`` count only when *every* seed has one (a diverged
    seed has no final loss; a seed that missed the target has no time), so that an lr is never
    credited for its lucky seeds.
    """

    optimizer: str
    lr: float
    runs: list[RunResult]
    best_metric: Aggregate | None
    final_train_loss: Aggregate | None
    time_to_target: Aggregate | None
    epochs_to_target: Aggregate | None
    diverged: int
    reached: int


@dataclass
class OptimizerSummary:
    """An optimizer's grid and the lr each reported quantity chose."""

    optimizer: str
    metric: str
    higher_is_better: bool
    grid: list[GridPoint] = field(default_factory=list)

    def _pick(self, key: str, largest: bool) -> GridPoint | None:
        candidates = [p for p in self.grid if getattr(p, key) is not None]
        if not candidates:
            return None
        sign = -1.0 if largest else 1.0
        # Ties go to the smaller lr (the grid is sorted by lr), the safer choice.
        return min(candidates, key=lambda p: sign * getattr(p, key).mean)

    @property
    def by_metric(self) -> GridPoint | None:
        """The grid point with the best mean test metric."""
        return self._pick("best_metric", self.higher_is_better)

    @property
    def by_loss(self) -> GridPoint | None:
        """The grid point with the lowest mean final training loss."""
        return self._pick("final_train_loss", False)

    @property
    def by_time(self) -> GridPoint | None:
        """The grid point that reached the target fastest on average."""
        return self._pick("time_to_target", False)

    @property
    def runs(self) -> int:
        """Runs in the grid."""
        return sum(len(p.runs) for p in self.grid)

    @property
    def diverged(self) -> int:
        """Diverged runs in the grid."""
        return sum(p.diverged for p in self.grid)


def _point(optimizer: str, lr: float, runs: list[RunResult]) -> GridPoint:
    def all_or_none(values: list[float | None]) -> Aggregate | None:
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        return Aggregate.of(v for v in values if v is not None)

    completed = [r for r in runs if r.status == "completed"]
    final_losses = (
        [r.final_train_loss for r in completed] if len(completed) == len(runs) else [None]
    )
    return GridPoint(
        optimizer=optimizer,
        lr=lr,
        runs=runs,
        best_metric=Aggregate.of(r.best_metric for r in runs if r.best_metric is not None),
        final_train_loss=all_or_none(final_losses),
        time_to_target=all_or_none([r.time_to_target for r in runs]),
        epochs_to_target=all_or_none(
            [float(r.epochs_to_target) if r.epochs_to_target is not None else None for r in runs]
        ),
        diverged=sum(r.status == "diverged" for r in runs),
        reached=sum(r.time_to_target is not None for r in runs),
    )


def summarise(results: Sequence[RunResult]) -> list[OptimizerSummary]:
    """Group ``results`` by optimizer and lr, in the order the optimizers first appear.

    Raises:
        ValueError: when ``results`` is empty or mixes primary metrics.
    """
    if not results:
        raise ValueError("no results to summarise")
    metrics = {(r.metric, r.higher_is_better) for r in results}
    if len(metrics) != 1:
        raise ValueError(f"results mix different metrics: {sorted(metrics)}")
    metric, higher = metrics.pop()
    grouped: dict[str, dict[float, list[RunResult]]] = {}
    for result in results:
        by_lr = grouped.setdefault(result.config["optimizer"], {})
        by_lr.setdefault(float(result.config["lr"]), []).append(result)
    return [
        OptimizerSummary(
            optimizer,
            metric,
            higher,
            [_point(optimizer, lr, runs) for lr, runs in sorted(by_lr.items())],
        )
        for optimizer, by_lr in grouped.items()
    ]


def _metric_label(metric: str) -> str:
    return "accuracy (%)" if metric == "accuracy" else metric


def _format_value(value: Aggregate, metric: str | None = None, unit: str = "") -> str:
    scale = 100.0 if metric == "accuracy" else 1.0
    digits = 2 if metric == "accuracy" else 4
    if unit == "s":
        # Tiny smoke runs reach targets in fractions of a second; keep them distinguishable.
        digits = 1 if value.mean >= 10 else 2
    text = f"{value.mean * scale:.{digits}f}"
    if value.count > 1:
        text += f" ± {value.std * scale:.{digits}f}"
    return text + (f" {unit}" if unit else "")


def _cell(point: GridPoint | None, key: str, metric: str | None = None) -> str:
    if point is None:
        return "diverged" if key == "final_train_loss" else "—"
    return f"{_format_value(getattr(point, key), metric)} (lr {point.lr:g})"


def _time_text(point: GridPoint) -> str | None:
    """Seconds and epochs to target: wall-clock seconds jump with machine load, epochs do not."""
    if point.time_to_target is None or point.epochs_to_target is None:
        return None
    epochs = point.epochs_to_target
    epoch_text = f"{epochs.mean:.0f}" if epochs.std == 0 else f"{epochs.mean:.1f}"
    return f"{_format_value(point.time_to_target, unit='s')}, epoch {epoch_text}"


def _time_cell(point: GridPoint | None) -> str:
    text = _time_text(point) if point is not None else None
    return f"{text} (lr {point.lr:g})" if text is not None else "not reached"


def _rows(summaries: Sequence[OptimizerSummary], target: float | None) -> list[list[str]]:
    rows = []
    for s in summaries:
        time_cell = _time_cell(s.by_time) if target is not None else "—"
        rows.append(
            [
                s.optimizer,
                _cell(s.by_metric, "best_metric", s.metric),
                _cell(s.by_loss, "final_train_loss"),
                time_cell,
                f"{s.diverged}/{s.runs}",
            ]
        )
    return rows


def _headers(summaries: Sequence[OptimizerSummary], target: float | None) -> list[str]:
    metric = summaries[0].metric
    best = "best" if summaries[0].higher_is_better else "lowest"
    target_text = "" if target is None else f" {_target_text(metric, target)}"
    return [
        "optimizer",
        f"{best} test {_metric_label(metric)}",
        "final train loss",
        f"time to{target_text}" if target is not None else "time to target",
        "diverged",
    ]


def _target_text(metric: str, target: float) -> str:
    return f"{target * 100:g} %" if metric == "accuracy" else f"{metric} {target:g}"


def format_table(summaries: Sequence[OptimizerSummary], target: float | None) -> str:
    """A plain-text table for the terminal: one row per optimizer, each cell with its lr."""
    headers = _headers(summaries, target)
    rows = _rows(summaries, target)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(summaries: Sequence[OptimizerSummary], target: float | None) -> str:
    """The table of :func:`format_table` in Markdown."""
    headers = _headers(summaries, target)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(row) + " |" for row in _rows(summaries, target))
    return "\n".join(lines)


def _grid_table(summaries: Sequence[OptimizerSummary], target: float | None) -> str:
    metric = summaries[0].metric
    headers = ["optimizer", "lr", f"test {_metric_label(metric)}", "final train loss"]
    headers += ["time to target", "reached", "diverged"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for s in summaries:
        for p in s.grid:
            best = _format_value(p.best_metric, metric) if p.best_metric else "—"
            loss = _format_value(p.final_train_loss) if p.final_train_loss else "—"
            time_text = _time_text(p) or "—"
            reached = f"{p.reached}/{len(p.runs)}" if target is not None else "—"
            cells = [s.optimizer, f"{p.lr:g}", best, loss, time_text, reached]
            cells.append(f"{p.diverged}/{len(p.runs)}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_curve(
    runs: Sequence[RunResult], key: str
) -> tuple[list[float], list[float], list[float]]:
    """Mean, low and high of ``key`` per epoch over the seeds that reached that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for record in run.history:
            value = record.get(key)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(record["epoch"], []).append(value)
    epochs = sorted(by_epoch)
    return (
        [statistics.fmean(by_epoch[e]) for e in epochs],
        [min(by_epoch[e]) for e in epochs],
        [max(by_epoch[e]) for e in epochs],
    )


def _mean_times(runs: Sequence[RunResult]) -> list[float]:
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for record in run.history:
            by_epoch.setdefault(record["epoch"], []).append(record["train_seconds"])
    return [statistics.fmean(by_epoch[e]) for e in sorted(by_epoch)]


def plot_curves(
    summaries: Sequence[OptimizerSummary], out_dir: str | os.PathLike[str], target: float | None
) -> list[Path]:
    """Draw each optimizer's curves at the lr chosen by the test metric; return the PNG paths.

    ``test_<metric>.png``: test metric against epoch and against training seconds (mean over
    seeds, band from lowest to highest seed). ``train_loss.png``: mean training loss per epoch.
    Uses matplotlib's Agg canvas directly, so no display and no global backend switch are needed.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = summaries[0].metric
    scale = 100.0 if metric == "accuracy" else 1.0
    chosen = [(s.optimizer, s.by_metric) for s in summaries if s.by_metric is not None]

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_epoch, by_time = figure.subplots(1, 2)
    for name, point in chosen:
        mean, low, high = _mean_curve(point.runs, f"test_{metric}")
        epochs = list(range(1, len(mean) + 1))
        label = f"{name} (lr {point.lr:g})"
        (line,) = by_epoch.plot(epochs, [v * scale for v in mean], marker=".", label=label)
        if len(point.runs) > 1:
            by_epoch.fill_between(
                epochs,
                [v * scale for v in low],
                [v * scale for v in high],
                color=line.get_color(),
                alpha=0.2,
            )
        times = _mean_times(point.runs)[: len(mean)]
        by_time.plot(times, [v * scale for v in mean], marker=".", label=label)
    for axis, xlabel in ((by_epoch, "epoch"), (by_time, "training time (s)")):
        axis.set_xlabel(xlabel)
        axis.set_ylabel(f"test {_metric_label(metric)}")
        axis.grid(alpha=0.3)
        if target is not None:
            axis.axhline(target * scale, color="grey", linestyle="--", linewidth=1)
    if metric == "perplexity":
        by_epoch.set_yscale("log")
        by_time.set_yscale("log")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.legend()
    by_epoch.set_title(f"test {_metric_label(metric)}")
    by_time.set_title(f"test {_metric_label(metric)} against training time")
    metric_path = out / f"test_{metric}.png"
    figure.savefig(metric_path, dpi=110)

    figure = Figure(figsize=(6, 4.2), layout="constrained")
    axis = figure.subplots()
    for name, point in chosen:
        mean, low, high = _mean_curve(point.runs, "train_loss")
        epochs = list(range(1, len(mean) + 1))
        (line,) = axis.plot(epochs, mean, marker=".", label=f"{name} (lr {point.lr:g})")
        if len(point.runs) > 1:
            axis.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
    axis.set_yscale("log")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("train loss (mean over the epoch)")
    axis.set_title("training loss")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    loss_path = out / "train_loss.png"
    figure.savefig(loss_path, dpi=110)
    return [metric_path, loss_path]


def _setup_lines(config: Mapping[str, Any]) -> list[str]:
    base = config["base"]
    options = base.get("task_options", {})
    grids = ", ".join(
        f"{name}: {', '.join(f'{lr:g}' for lr in lrs)}" for name, lrs in config["lr_grids"].items()
    )
    lines = [
        f"- task: `{base['task']}`, model: `{options.get('model') or 'task default'}`",
        f"- batch size {base['batch_size']} (micro-batch {base.get('micro_batch_size') or 'default'}),"
        f" {base['epochs']} epochs, schedule `{base['schedule']}`"
        + (f" with {base['warmup_epochs']:g} warmup epochs" if base.get("warmup_epochs") else "")
        + f", lr scaling `{base['lr_scaling']}`",
        f"- seeds: {', '.join(str(s) for s in config['seeds'])}",
        f"- lr grids (same size for every optimizer): {grids}",
    ]
    if options.get("train_limit") or options.get("test_limit"):
        lines.append(
            f"- data subset: {options.get('train_limit') or 'all'} train, "
            f"{options.get('test_limit') or 'all'} test examples"
        )
    return lines


def _clip_line(results: Sequence[RunResult]) -> str:
    """Each optimizer's global gradient-norm clip, applied once (by the optimizer where it clips
    itself, else before its step); derived from the configuration where a result predates it."""
    clips: dict[str, float | None] = {}
    for run in results:
        config = run.config
        if EFFECTIVE_CLIP not in config:
            config = TrainConfig.from_dict(config).to_dict()
        clips.setdefault(config["optimizer"], config[EFFECTIVE_CLIP])
    text = ", ".join(f"{name} {'none' if c is None else f'{c:g}'}" for name, c in clips.items())
    return f"- gradient clip (global norm, applied once): {text}"


def _e_telemetry_lines(summaries: Sequence[OptimizerSummary], out: Path) -> list[str]:
    """E's perturbation and cosine per step of each optimizer with E at its chosen lr, when its
    runs logged them."""
    series = {
        f"{s.optimizer} (lr {s.by_metric.lr:g})": [
            found for run in s.by_metric.runs if (found := e_series(run.out_dir)) is not None
        ]
        for s in summaries
        if s.by_metric is not None
    }
    path = plot_e_telemetry(series, out / "e_perturbation.png", "E's perturbation of the gradient")
    if path is None:
        return []
    return [
        "E's relative perturbation ‖ĝ − g‖/‖g‖ and cosine cos(ĝ, g) per step, for the optimizers "
        "with E at the lr chosen by the test metric (every seed).",
        "",
        f"![E's perturbation]({path.name})",
        "",
    ]


def _machine_line() -> str:
    return (
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    config: Mapping[str, Any],
    results: Sequence[RunResult],
    *,
    target: float | None,
    wall_seconds: float | None = None,
    execution: str | None = None,
) -> Path:
    """Write ``report.md`` and its PNG curves into ``out_dir``; return the report's path.

    Args:
        out_dir: the comparison's directory.
        config: the comparison's configuration as stored (``base``, ``seeds``, ``lr_grids``).
        results: every run's result.
        target: the target of the primary metric (None: no time-to-target column values).
        wall_seconds: the comparison's wall time, when known.
        execution: how the runs were executed (processes, threads), when known.
    """
    out = Path(out_dir)
    summaries = summarise(results)
    images = plot_curves(summaries, out, target)
    metric = summaries[0].metric
    lines = [f"# Optimizer comparison on `{config['base']['task']}`", ""]
    lines += ["## Set-up", "", *_setup_lines(config), _machine_line()]
    if execution is not None:
        lines.append(f"- execution: {execution}")
    if wall_seconds is not None:
        lines.append(f"- wall time: {wall_seconds:.0f} s for {len(results)} runs")
    lines.append(_clip_line(results))
    lines += [
        "",
        "## Results",
        "",
        markdown_table(summaries, target),
        "",
        "Each cell is the best value over the optimizer's lr grid (mean ± std over seeds), with "
        "the lr that achieved it; each column chooses its lr separately. Final train loss is the "
        "mean training loss of the last epoch; time to target counts training seconds only "
        "(evaluation excluded) and only when every seed reached the target. Curves show each "
        "optimizer at the lr chosen by the test metric.",
        "",
        f"![test {metric}]({images[0].name})",
        "",
        f"![train loss]({images[1].name})",
        "",
        *_e_telemetry_lines(summaries, out),
        "## Every grid point",
        "",
        _grid_table(summaries, target),
        "",
    ]
    diverged = [r for r in results if r.status != "completed"]
    if diverged:
        lines += ["## Runs that did not complete", ""]
        for run in diverged:
            where = f" at step {run.diverged_at_step}" if run.diverged_at_step is not None else ""
            best = f"{run.best_metric:.4f}" if run.best_metric is not None else "—"
            lines.append(
                f"- {run.config['optimizer']} lr {run.config['lr']:g} seed {run.config['seed']}: "
                f"{run.status}{where} after {run.epochs_completed} epochs; last good best test "
                f"{metric} {best}"
            )
        lines.append("")
    lines += _flatness_lines(results)
    lines += ["## Context", "", _PAPER_CONTEXT, ""]
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _flatness_lines(results: Sequence[RunResult]) -> list[str]:
    """A section on the flatness of every run's end point that ``valleys flatness`` measured."""

    from valleys.bench.analysis.flatness_runs import FLATNESS_FILE

    rows = []
    for run in results:
        path = Path(run.out_dir) / FLATNESS_FILE if run.out_dir else None
        if path is None or not path.is_file():
            continue
        f = read_json(path)
        top = f"{f['top_eigenvalue']:.4g}" if f["top_eigenvalue"] is not None else "not converged"
        rows.append(
            f"| {run.config['optimizer']} | {run.config['lr']:g} | {run.config['seed']} | {top} | "
            f"{f['hessian_trace']:.4g} ± {f['hessian_trace_stderr']:.2g} | "
            f"{f['distance_travelled']:.4g} |"
        )
    if not rows:
        return []
    return [
        "## Flatness of the end points",
        "",
        "Measured by `valleys flatness` on a fixed training subset, model in eval mode: the "
        "dominant Hessian eigenvalue (power iteration), the Hutchinson trace (± standard error) "
        "and the distance from the run's initialisation.",
        "",
        "| optimizer | lr | seed | top eigenvalue | Hessian trace | ‖θ_T − θ_0‖ |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
