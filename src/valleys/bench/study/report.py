"""``valleys report STUDY``: a study's results as the paper shows them, read from its Optuna storage.

The report (``report.md`` with PNGs under ``figures/``) has, where the study has the data for it:

- the best configuration of each optimizer at each batch size, mean ± std over seeds;
- the primary metric against the batch size per optimizer, error bars over seeds;
- a (β1, α) heatmap for each optimizer and batch size whose trials vary both;
- time to the target metric per optimizer and batch size.

Beside each stands the paper's corresponding result from ``PAPER.md`` (different tasks and models:
they show the shape to expect, not numbers to match). Everything is read from the storage (each
trial's user attributes), so a study run on many machines reports from any of them.

A configuration's seeds are averaged for the tables and plots after leaving diverged seeds out (they
are counted instead); the best configuration is chosen by the study's objective, in which a
diverged seed scores the worst possible value.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from valleys.bench.study.runner import (
    PARAMETERS,
    STUDY_FILE,
    StudyError,
    open_storage,
    param_key,
    worst_value,
)

__all__ = [
    "PAPER_BATCH_SWEEP",
    "PAPER_RESULTS",
    "PAPER_TIME_TO_TARGET",
    "ConfigResult",
    "SeedResult",
    "UnitResult",
    "load_results",
    "study_location",
    "write_study_report",
]

PAPER_BATCH_SWEEP: dict[int, tuple[float, float]] = {
    200: (66.90, 67.30),
    1000: (59.79, 59.82),
    2000: (70.43, 70.24),
    10000: (64.51, 62.92),
    25000: (59.19, 57.79),
    50000: (49.69, 39.91),
}
"""PAPER.md: VGG-16 on CIFAR-100, top-1 % (ALTO, Lamb) by batch size; β1 = 0.999, α = −5, lr 0.001
up to 1K and 0.01 from 2K; 50K is the full batch."""

PAPER_TIME_TO_TARGET: dict[str, float] = {"alto": 608.0, "lamb": 865.0}
"""PAPER.md: seconds to 60 % top-1, VGG-16 on CIFAR-100, batch 16384, constant lr (−29.7 %)."""

_PAPER_OPTIMIZERS = ("sgd", "adam", "adamw", "adabelief", "lamb", "alto")
PAPER_RESULTS: list[tuple[str, int, tuple[float, ...]]] = [
    ("CIFAR-10 ResNet-20", 128, (91.85, 89.88, 90.54, 91.12, 90.89, 91.24)),
    ("CIFAR-10 ResNet-20", 16384, (80.86, 87.34, 82.29, 88.03, 83.56, 88.83)),
    ("CIFAR-100 ResNet-20", 128, (64.93, 64.35, 64.62, 64.44, 61.29, 65.74)),
    ("CIFAR-100 ResNet-20", 16384, (44.20, 54.91, 52.95, 52.94, 56.06, 57.78)),
    ("ImageNet ResNet-34", 256, (70.64, 65.06, 69.64, 70.12, 69.17, 69.95)),
    ("ImageNet ResNet-34", 4096, (49.35, 54.96, 68.40, 70.18, 70.34, 70.83)),
]
"""PAPER.md: top-1 % (mean of 3 runs), columns in the order of ``_PAPER_OPTIMIZERS``."""

_PAPER_LABEL = "**Paper** (PAPER.md; a different task and model, shown for the shape only)"
REPORT_FILE = "report.md"
FIGURES = "figures"


@dataclass
class SeedResult:
    """One training run of a configuration (see the trial attributes written by the study)."""

    seed: int
    status: str
    value: float
    best_metric: float | None
    final_metric: float | None
    final_train_loss: float | None
    time_to_target: float | None
    epochs_to_target: int | None
    top_eigenvalue: float | None = None
    hessian_trace: float | None = None
    distance_travelled: float | None = None


@dataclass
class ConfigResult:
    """A configuration (parameters without the seed) and its runs."""

    params: dict[str, float]
    seeds: list[SeedResult] = field(default_factory=list)

    def value(self, maximize: bool) -> float:
        """Mean objective over the seeds (a diverged seed counts as the worst value)."""
        values = [s.value for s in self.seeds]
        return statistics.fmean(values) if values else worst_value(maximize)

    def stat(self, name: str) -> tuple[float, float, int] | None:
        """(mean, std, n) of a per-seed quantity over the seeds that did not diverge and have it."""
        values = [
            float(getattr(s, name))
            for s in self.seeds
            if s.status != "diverged" and getattr(s, name) is not None
        ]
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std, len(values)

    @property
    def diverged(self) -> int:
        """Seeds that diverged."""
        return sum(s.status == "diverged" for s in self.seeds)


@dataclass
class UnitResult:
    """The results of one Optuna study: one optimizer at one batch size."""

    optimizer: str
    batch_size: int
    meta: dict[str, Any]
    configs: list[ConfigResult]
    states: dict[str, int]

    @property
    def maximize(self) -> bool:
        """Direction of the objective."""
        return self.meta["objective"] != "time_to_target" and bool(self.meta["higher_is_better"])

    def best(self) -> ConfigResult | None:
        """The configuration with the best mean objective."""
        if not self.configs:
            return None
        pick = max if self.maximize else min
        return pick(self.configs, key=lambda c: c.value(self.maximize))


def load_results(url: str, name: str) -> list[UnitResult]:
    """The results of study ``name`` in the storage at ``url``, ordered by optimizer and batch.

    Raises:
        StudyError: the storage cannot be opened or holds no study of that name.
    """
    from optuna.trial import TrialState

    storage = open_storage(url)
    units = []
    for summary in storage.get_all_studies():
        meta = summary.user_attrs.get("valleys")
        if not summary.study_name.startswith(f"{name}/") or not meta or meta["config"] != name:
            continue
        states: dict[str, int] = {}
        configs: dict[tuple[tuple[str, float], ...], ConfigResult] = {}
        maximize = meta["objective"] != "time_to_target" and bool(meta["higher_is_better"])
        for trial in storage.get_all_trials(
            storage.get_study_id_from_name(summary.study_name), deepcopy=False
        ):
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
            if trial.state != TrialState.COMPLETE:
                continue
            params = {k: float(v) for k, v in trial.params.items() if k != "seed"}
            config = configs.setdefault(param_key(params), ConfigResult(params))
            for record in trial.user_attrs.get("per_seed", []):
                value = record.get("value")
                config.seeds.append(
                    SeedResult(
                        seed=int(record["seed"]),
                        status=record["status"],
                        value=float(value) if value is not None else worst_value(maximize),
                        best_metric=record.get("best_metric"),
                        final_metric=record.get("final_metric"),
                        final_train_loss=record.get("final_train_loss"),
                        time_to_target=record.get("time_to_target"),
                        epochs_to_target=record.get("epochs_to_target"),
                        top_eigenvalue=record.get("top_eigenvalue"),
                        hessian_trace=record.get("hessian_trace"),
                        distance_travelled=record.get("distance_travelled"),
                    )
                )
        units.append(
            UnitResult(
                meta["optimizer"], int(meta["batch_size"]), meta, list(configs.values()), states
            )
        )
    if not units:
        raise StudyError(f"no study named {name!r} in the storage")
    order = {opt: i for i, opt in enumerate(dict.fromkeys(u.optimizer for u in units))}
    return sorted(units, key=lambda u: (order[u.optimizer], u.batch_size))


# --- formatting ---------------------------------------------------------------------------------


def _is_fraction_metric(metric: str) -> bool:
    return metric == "accuracy"


def _show(stat: tuple[float, float, int] | None, metric: str | None = None, unit: str = "") -> str:
    if stat is None:
        return "—"
    mean, std, _ = stat
    if metric is not None and _is_fraction_metric(metric):
        return f"{100 * mean:.2f} ± {100 * std:.2f} %"
    digits = 1 if unit == " s" else 4
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def _params_text(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={params[k]:.4g}" for k in PARAMETERS if k in params) or "—"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _batch_text(batch: int) -> str:
    return f"{batch // 1000}K" if batch >= 1000 and batch % 1000 == 0 else str(batch)


# --- figures ------------------------------------------------------------------------------------


def _metric_vs_batch(units: Sequence[UnitResult], metric: str, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    scale = 100 if _is_fraction_metric(metric) else 1
    for optimizer in dict.fromkeys(u.optimizer for u in units):
        xs, ys, errs = [], [], []
        for unit in (u for u in units if u.optimizer == optimizer):
            best = unit.best()
            stat = best.stat("best_metric") if best else None
            if stat is not None:
                xs.append(unit.batch_size)
                ys.append(scale * stat[0])
                errs.append(scale * stat[1])
        if xs:
            axes.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=optimizer)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel(f"best test {metric}" + (" (%)" if scale == 100 else ""))
    axes.set_title(f"{metric} vs batch size (best configuration, mean ± std over seeds)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=110)


def _heatmap(unit: UnitResult, metric: str, path: Path) -> None:
    """Best mean metric per (β1, α) cell (the best over any other parameter), seeds averaged, with
    its standard deviation over seeds; α = 0 is E switched off (Lamb, for ALTO)."""
    from matplotlib.figure import Figure

    betas = sorted({c.params["beta1"] for c in unit.configs})
    alphas = sorted({c.params["alpha"] for c in unit.configs})
    scale = 100 if _is_fraction_metric(metric) else 1
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
    figure.colorbar(image, ax=axes, label=f"best test {metric}" + (" (%)" if scale == 100 else ""))
    axes.set_title(f"{unit.optimizer}, batch {unit.batch_size}: mean ± std over seeds")
    figure.savefig(path, dpi=110)


def _scatter(unit: UnitResult, metric: str, path: Path) -> None:
    """Each sampled configuration at its (β1, α), coloured by its mean metric over seeds."""
    from matplotlib.figure import Figure

    scale = 100 if _is_fraction_metric(metric) else 1
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
        figure.colorbar(
            image, ax=axes, label=f"best test {metric}" + (" (%)" if scale == 100 else "")
        )
    axes.set_xlabel("β1 (E)")
    axes.set_ylabel("α (E)")
    axes.set_title(f"{unit.optimizer}, batch {unit.batch_size}: sampled configurations")
    figure.savefig(path, dpi=110)


def _time_bars(units: Sequence[UnitResult], path: Path) -> None:
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
                unit = next(
                    (u for u in units if u.optimizer == optimizer and u.batch_size == batch), None
                )
                best = unit.best() if unit else None
                stat = best.stat(name) if best else None
                x = j + (i - (len(optimizers) - 1) / 2) * width
                if stat is None:
                    axes.text(x, 0, "not\nreached", ha="center", va="bottom", fontsize=7)
                    continue
                axes.bar(x, stat[0], width, yerr=stat[1], capsize=3, color=f"C{i}", label=optimizer)
        axes.set_xticks(range(len(batches)), [f"batch {_batch_text(b)}" for b in batches])
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


# --- sections -----------------------------------------------------------------------------------


def _summary_lines(units: Sequence[UnitResult], name: str, url_shown: str) -> list[str]:
    meta = units[0].meta
    target = meta.get("target")
    lines = [
        f"# Study `{name}`",
        "",
        f"- task: `{meta['task']}`; kind: {meta['kind']}; objective: {meta['objective']}"
        + (f" (target {target:g})" if target is not None else ""),
        f"- seeds: {', '.join(str(s) for s in meta['seeds'])}; storage: `{url_shown}`",
        f"- report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the stored trials",
        "",
    ]
    rows = []
    for unit in units:
        diverged = sum(c.diverged for c in unit.configs)
        rows.append(
            [
                unit.optimizer,
                str(unit.batch_size),
                str(unit.states.get("COMPLETE", 0)),
                str(diverged),
                str(unit.states.get("FAIL", 0)),
                str(unit.states.get("RUNNING", 0) + unit.states.get("WAITING", 0)),
            ]
        )
    lines += _table(
        ["optimizer", "batch", "complete trials", "diverged seeds", "failed trials", "unfinished"],
        rows,
    )
    return [*lines, ""]


def _best_lines(units: Sequence[UnitResult], metric: str) -> list[str]:
    meta = units[0].meta
    lines = ["## Best configuration per optimizer and batch size", ""]
    if meta["kind"] == "random":
        budgets = {len(u.configs) for u in units}
        lines += [
            f"Equal budget: each optimizer had {', '.join(str(b) for b in sorted(budgets))} "
            f"quasi-random (Halton) configurations per batch size, each run with "
            f"{len(meta['seeds'])} seed(s); the best is chosen by the mean {meta['objective']}.",
            "",
        ]
    rows = []
    for unit in units:
        best = unit.best()
        if best is None:
            rows.append([unit.optimizer, str(unit.batch_size), "no complete trial", *["—"] * 5])
            continue
        epochs = best.stat("epochs_to_target")
        reached = (
            f" ({epochs[2]}/{len(best.seeds)} reached)"
            if epochs and epochs[2] < len(best.seeds)
            else ""
        )
        rows.append(
            [
                unit.optimizer,
                str(unit.batch_size),
                _params_text(best.params),
                _show(best.stat("best_metric"), metric),
                _show(best.stat("final_metric"), metric),
                _show(best.stat("final_train_loss")),
                _show(best.stat("time_to_target"), unit=" s") + reached,
                f"{epochs[0]:.1f}" if epochs else "—",
                f"{len(best.seeds)}" + (f" ({best.diverged} diverged)" if best.diverged else ""),
            ]
        )
    lines += _table(
        [
            "optimizer",
            "batch",
            "best configuration",
            f"best {metric}",
            f"final {metric}",
            "final train loss",
            "time to target",
            "epochs to target",
            "seeds",
        ],
        rows,
    )
    present = [o for o in _PAPER_OPTIMIZERS if o in {u.optimizer for u in units}]
    if present:
        columns = [_PAPER_OPTIMIZERS.index(o) for o in present]
        lines += [
            "",
            _PAPER_LABEL + ": top-1 %, mean of 3 runs. The paper tuned only β1 and η for ALTO "
            "while its baselines got their full hyperparameters tuned.",
            "",
            *_table(
                ["task", "batch", *present],
                [
                    [task, str(batch), *(f"{values[c]:.2f}" for c in columns)]
                    for task, batch, values in PAPER_RESULTS
                ],
            ),
        ]
    return [*lines, ""]


def _all_config_lines(units: Sequence[UnitResult], metric: str) -> list[str]:
    """Every configuration of every optimizer and batch size, best first: where the best one is
    fragile (e.g. reached the target fastest but later collapsed), its neighbours show it."""
    if all(len(u.configs) < 2 for u in units):
        return []
    rows = []
    for unit in units:
        ranked = sorted(unit.configs, key=lambda c: c.value(unit.maximize), reverse=unit.maximize)
        for rank, config in enumerate(ranked, 1):
            epochs = config.stat("epochs_to_target")
            rows.append(
                [
                    unit.optimizer,
                    str(unit.batch_size),
                    str(rank),
                    _params_text(config.params),
                    _show(config.stat("best_metric"), metric),
                    _show(config.stat("final_metric"), metric),
                    _show(config.stat("time_to_target"), unit=" s"),
                    f"{epochs[0]:.1f} ({epochs[2]}/{len(config.seeds)})" if epochs else "—",
                    f"{len(config.seeds)}"
                    + (f" ({config.diverged} diverged)" if config.diverged else ""),
                ]
            )
    return [
        "## Every configuration",
        "",
        "Ranked by the objective within each optimizer and batch size (mean ± std over seeds; "
        "epochs to target with the number of seeds that reached it).",
        "",
        "<details><summary>table</summary>",
        "",
        *_table(
            [
                "optimizer",
                "batch",
                "rank",
                "configuration",
                f"best {metric}",
                f"final {metric}",
                "time to target",
                "epochs to target",
                "seeds",
            ],
            rows,
        ),
        "",
        "</details>",
        "",
    ]


def _batch_lines(units: Sequence[UnitResult], metric: str, figures: Path) -> list[str]:
    batches = sorted({u.batch_size for u in units})
    if len(batches) < 2:
        return []
    _metric_vs_batch(units, metric, figures / "metric_vs_batch.png")
    optimizers = list(dict.fromkeys(u.optimizer for u in units))
    rows = []
    for batch in batches:
        row = [str(batch)]
        means: dict[str, float] = {}
        for optimizer in optimizers:
            unit = next(
                (u for u in units if u.optimizer == optimizer and u.batch_size == batch), None
            )
            best = unit.best() if unit else None
            stat = best.stat("best_metric") if best else None
            row.append(_show(stat, metric))
            if stat is not None:
                means[optimizer] = stat[0]
        if {"alto", "lamb"} <= set(optimizers):
            gap = means.get("alto", math.nan) - means.get("lamb", math.nan)
            scale = 100 if _is_fraction_metric(metric) else 1
            row.append("—" if math.isnan(gap) else f"{scale * gap:+.2f}")
        rows.append(row)
    headers = ["batch", *optimizers]
    if {"alto", "lamb"} <= set(optimizers):
        headers.append("ALTO − Lamb")
    lines = [
        f"## {metric} vs batch size",
        "",
        f"![{metric} vs batch size]({FIGURES}/metric_vs_batch.png)",
        "",
        *_table(headers, rows),
        "",
        _PAPER_LABEL + ": VGG-16 on CIFAR-100, top-1 %, ALTO vs Lamb with β1 = 0.999, α = −5, "
        "lr 0.001 up to 1K and 0.01 from 2K; 50K is the full batch. The gap grows with the batch.",
        "",
        *_table(
            ["batch", "ALTO", "Lamb", "ALTO − Lamb"],
            [
                [_batch_text(b), f"{a:.2f}", f"{lamb:.2f}", f"{a - lamb:+.2f}"]
                for b, (a, lamb) in PAPER_BATCH_SWEEP.items()
            ],
        ),
    ]
    return [*lines, ""]


def _lr_points(unit: UnitResult, scale: float) -> list[tuple[float, float, float]]:
    """(lr, mean, std) of each configuration of ``unit`` with a result, by lr."""
    return sorted(
        (c.params["lr"], scale * stat[0], scale * stat[1])
        for c in unit.configs
        if "lr" in c.params and (stat := c.stat("best_metric")) is not None
    )


def _lr_figure(units: Sequence[UnitResult], metric: str, path: Path) -> None:
    """The metric against the learning rate, one panel per batch size, one colour per optimizer."""
    from matplotlib.figure import Figure

    scale = 100 if _is_fraction_metric(metric) else 1
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
        axes.set_ylabel(f"best test {metric}" + (" (%)" if scale == 100 else ""))
        axes.set_title(f"batch {_batch_text(batch)}")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle("Each configuration: mean ± std over seeds")
    figure.savefig(path, dpi=110)


def _lr_lines(units: Sequence[UnitResult], metric: str, figures: Path) -> list[str]:
    if all(len({c.params.get("lr") for c in u.configs}) < 2 for u in units):
        return []
    _lr_figure(units, metric, figures / "metric_vs_lr.png")
    random = units[0].meta["kind"] == "random"
    return [
        "## Learning-rate sensitivity",
        "",
        f"![{metric} vs learning rate]({FIGURES}/metric_vs_lr.png)",
        "",
        "Every configuration with a result at its learning rate"
        + (
            "; the other hyperparameters differ between points too (quasi-random search)."
            if random
            else "; where several share an lr, they differ in the other grid parameters."
        ),
        "",
    ]


def _heatmap_lines(units: Sequence[UnitResult], metric: str, figures: Path) -> list[str]:
    varied = [
        u
        for u in units
        if len({c.params.get("beta1") for c in u.configs} - {None}) > 1
        and len({c.params.get("alpha") for c in u.configs} - {None}) > 1
        and all("beta1" in c.params and "alpha" in c.params for c in u.configs)
    ]
    if not varied:
        return []
    lines = ["## (β1, α) sensitivity", ""]
    grid = units[0].meta["kind"] == "grid"
    for unit in varied:
        # A grid fills cells; quasi-random points rarely share a β1 or an α, so they are scattered.
        name = f"{'heatmap' if grid else 'scatter'}_{unit.optimizer}_bs{unit.batch_size}.png"
        (_heatmap if grid else _scatter)(unit, metric, figures / name)
        lines += [f"![(β1, α) at batch {unit.batch_size}]({FIGURES}/{name})", ""]
    lines += [
        "Blank cells lie outside E's stable region |α| < 1/(1 − β1) (left out of the grid) or "
        "have no complete trial; each cell is the best over any other parameter, seeds averaged."
        if grid
        else "Each point is one sampled configuration, coloured by its best test metric averaged "
        "over seeds (other parameters vary too).",
        "",
        _PAPER_LABEL + ": no (β1, α) grid is published. Its defaults: batch ≥ 1024: α = −5, "
        "β1 = 0.99; below: α = 0.5, β1 = 0.01 (the larger the batch, the larger β1 and −α); "
        "VGG-16 used β1 = 0.999, full-batch BiLSTM 0.7.",
        "",
    ]
    return lines


def _time_lines(units: Sequence[UnitResult], figures: Path) -> list[str]:
    if not any(s.time_to_target is not None for u in units for c in u.configs for s in c.seeds):
        return []
    _time_bars(units, figures / "time_to_target.png")
    lines = [
        "## Time to target",
        "",
        f"![time to target]({FIGURES}/time_to_target.png)",
        "",
        "Training seconds (evaluation excluded) until the test metric first reached the target; "
        "wall-clock times on a shared machine vary (compare epochs to target too).",
        "",
    ]
    times: dict[tuple[str, int], float] = {}
    for unit in units:
        best = unit.best()
        stat = best.stat("time_to_target") if best else None
        if stat is not None:
            times[(unit.optimizer, unit.batch_size)] = stat[0]
    ours = [
        f"batch {batch}: ALTO {times[('alto', batch)]:.1f} s vs Lamb {times[('lamb', batch)]:.1f} s "
        f"({100 * (times[('alto', batch)] / times[('lamb', batch)] - 1):+.1f} %)"
        for batch in sorted({u.batch_size for u in units})
        if ("alto", batch) in times and ("lamb", batch) in times
    ]
    if ours:
        lines += ["Here: " + "; ".join(ours) + ".", ""]
    alto, lamb = PAPER_TIME_TO_TARGET["alto"], PAPER_TIME_TO_TARGET["lamb"]
    lines += [
        _PAPER_LABEL + f": time to 60 % top-1, VGG-16 on CIFAR-100, batch 16384, constant lr: "
        f"ALTO {alto:.0f} s vs Lamb {lamb:.0f} s ({100 * (alto / lamb - 1):+.1f} %).",
        "",
    ]
    return lines


def write_study_report(
    url: str, name: str, out_dir: str | os.PathLike[str], *, shown_url: str | None = None
) -> Path:
    """Write ``report.md`` and its PNGs for study ``name`` into ``out_dir``; return the report.

    Raises:
        StudyError: the storage cannot be opened or holds no such study.
    """
    units = load_results(url, name)
    out = Path(out_dir)
    figures = out / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    metric = units[0].meta["metric"]
    lines = _summary_lines(units, name, shown_url or url)
    lines += _best_lines(units, metric)
    lines += _batch_lines(units, metric, figures)
    lines += _heatmap_lines(units, metric, figures)
    lines += _lr_lines(units, metric, figures)
    lines += _time_lines(units, figures)
    lines += _flatness_lines(units)
    lines += _all_config_lines(units, metric)
    path = out / REPORT_FILE
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def study_location(folder: str | os.PathLike[str], storage: str | None = None) -> tuple[str, str]:
    """(storage URL, study name) of the study in ``folder`` (its ``study.json``); ``storage``
    overrides the recorded URL.

    Raises:
        StudyError: the folder holds no study, or its recorded URL hides a password and no
            ``storage`` is given.
    """
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        raise StudyError(f"{folder} holds no study ({STUDY_FILE} missing)")
    data = json.loads(path.read_text())
    url = storage or data["storage"]
    if "***" in url:
        raise StudyError(
            f"the storage URL in {path} hides its password ({url}); pass it with --storage"
        )
    return url, data["name"]


def _flatness_lines(units: Sequence[UnitResult]) -> list[str]:
    """Flatness of the best configuration's end points, for studies with ``flatness = true``."""
    rows = []
    for unit in units:
        best = unit.best()
        if best is None or best.stat("hessian_trace") is None:
            continue
        rows.append(
            [
                unit.optimizer,
                _batch_text(unit.batch_size),
                _params_text(best.params),
                _show(best.stat("top_eigenvalue")),
                _show(best.stat("hessian_trace")),
                _show(best.stat("distance_travelled")),
            ]
        )
    if not rows:
        return []
    return [
        "## Flatness of the end points",
        "",
        "For each optimizer and batch size, its best configuration's runs, measured as "
        "`valleys flatness` does (fixed training subset, eval mode; mean ± std over seeds; a top "
        "eigenvalue counts only where the power iteration converged).",
        "",
        *_table(
            [
                "optimizer",
                "batch",
                "configuration",
                "top Hessian eigenvalue",
                "Hessian trace",
                "‖θ_T − θ_0‖",
            ],
            rows,
        ),
        "",
    ]
