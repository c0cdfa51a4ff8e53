"""``valleys report STUDY``: a study's results as the paper shows them, read from its Optuna storage.

The report (``report.md`` with PNGs under ``figures/``) has, where the study has the data for it:

- the best configuration of each optimizer at each batch size, mean ± std over seeds;
- the walk from the paper's Lamb to ALTO, one change at a time, where the study has its steps
  (:mod:`valleys.bench.study.decomposition`);
- the primary metric against the batch size per optimizer, error bars over seeds;
- a (β1, α) heatmap for each optimizer and batch size whose trials vary both;
- time to the target metric per optimizer and batch size;
- E's perturbation and cosine of the gradient per step, for the best configuration of each
  optimizer with E at each batch size (when its runs logged them).

Beside each stands the paper's corresponding result from ``PAPER.md`` (different tasks and models:
they show the shape to expect, not numbers to match). The results are read by
:mod:`valleys.bench.study.results` and drawn by :mod:`valleys.bench.study.figures`.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from valleys.bench.analysis.e_telemetry import Series, e_series, plot_e_telemetry
from valleys.bench.study.decomposition import decomposition_lines
from valleys.bench.study.figures import (
    batch_text,
    draw_heatmap,
    draw_lr_figure,
    draw_metric_vs_batch,
    draw_scatter,
    draw_time_bars,
    metric_scale,
    table,
)
from valleys.bench.study.results import (
    ConfigResult,
    UnitResult,
    find_unit,
    load_results,
    mean_std,
)
from valleys.bench.study.spaces import PARAMETERS

__all__ = [
    "PAPER_BATCH_SWEEP",
    "PAPER_RESULTS",
    "PAPER_TIME_TO_TARGET",
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
E_TELEMETRY_FIGURE = "e_telemetry.png"


def _show(stat: tuple[float, float, int] | None, metric: str | None = None, unit: str = "") -> str:
    if stat is None:
        return "—"
    mean, std, _ = stat
    if metric is not None and metric_scale(metric) == 100:
        return f"{100 * mean:.2f} ± {100 * std:.2f} %"
    digits = 1 if unit == " s" else 4
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def _params_text(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={params[k]:.4g}" for k in PARAMETERS if k in params) or "—"


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
    lines += table(
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
    lines += table(
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
            *table(
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
        *table(
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
    draw_metric_vs_batch(units, metric, figures / "metric_vs_batch.png")
    optimizers = list(dict.fromkeys(u.optimizer for u in units))
    rows = []
    for batch in batches:
        row = [str(batch)]
        means: dict[str, float] = {}
        for optimizer in optimizers:
            unit = find_unit(units, optimizer, batch)
            stat = unit.best_stat("best_metric") if unit else None
            row.append(_show(stat, metric))
            if stat is not None:
                means[optimizer] = stat[0]
        if {"alto", "lamb"} <= set(optimizers):
            gap = means.get("alto", math.nan) - means.get("lamb", math.nan)
            scale = metric_scale(metric)
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
        *table(headers, rows),
        "",
        _PAPER_LABEL + ": VGG-16 on CIFAR-100, top-1 %, ALTO vs Lamb with β1 = 0.999, α = −5, "
        "lr 0.001 up to 1K and 0.01 from 2K; 50K is the full batch. The gap grows with the batch.",
        "",
        *table(
            ["batch", "ALTO", "Lamb", "ALTO − Lamb"],
            [
                [batch_text(b), f"{a:.2f}", f"{lamb:.2f}", f"{a - lamb:+.2f}"]
                for b, (a, lamb) in PAPER_BATCH_SWEEP.items()
            ],
        ),
    ]
    return [*lines, ""]


def _lr_lines(units: Sequence[UnitResult], metric: str, figures: Path) -> list[str]:
    if all(len({c.params.get("lr") for c in u.configs}) < 2 for u in units):
        return []
    draw_lr_figure(units, metric, figures / "metric_vs_lr.png")
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
        (draw_heatmap if grid else draw_scatter)(unit, metric, figures / name)
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
    draw_time_bars(units, figures / "time_to_target.png")
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
        stat = unit.best_stat("time_to_target")
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


def _telemetry_configs(units: Sequence[UnitResult]) -> list[tuple[UnitResult, ConfigResult]]:
    """The configurations whose E telemetry a report draws: each unit's best, and every one of a
    unit that searched auto-E's target (whether each held its ρ is the point of those runs)."""
    chosen = []
    for unit in units:
        if any("target_perturbation" in c.params for c in unit.configs):
            chosen += [(unit, c) for c in unit.configs]
        elif (best := unit.best()) is not None:
            chosen.append((unit, best))
    return chosen


def _e_telemetry_lines(units: Sequence[UnitResult], figures: Path) -> list[str]:
    r"""E's perturbation :math:`\lVert\hat g - g\rVert / \lVert g\rVert` and cosine
    :math:`\cos(\hat g, g)` per step for the configurations :func:`_telemetry_configs` picks
    whose runs logged them (every seed that did not diverge), and their means over the steps,
    mean ± std over seeds; nothing for a study without such runs."""
    series: dict[str, list[Series]] = {}
    rows = []
    for unit, config in _telemetry_configs(units):
        runs = [
            found
            for seed in config.seeds
            if seed.status != "diverged" and (found := e_series(seed.run_dir)) is not None
        ]
        if not runs:
            continue
        target = config.params.get("target_perturbation")
        label = f"{unit.optimizer} {batch_text(unit.batch_size)}"
        series[label + (f" ρ={target:g}" if target is not None else "")] = runs
        rows.append(
            [
                unit.optimizer,
                batch_text(unit.batch_size),
                _params_text(config.params),
                _show(mean_std([statistics.fmean(r[1]) for r in runs])),
                _show(mean_std([statistics.fmean(r[2]) for r in runs])),
            ]
        )
    title = "E's perturbation of the gradient, best configurations"
    if plot_e_telemetry(series, figures / E_TELEMETRY_FIGURE, title) is None:
        return []
    return [
        "## E's perturbation of the gradient",
        "",
        f"![E's perturbation]({FIGURES}/{E_TELEMETRY_FIGURE})",
        "",
        "How far E moved the gradient at each step: ‖ĝ − g‖/‖g‖ and cos(ĝ, g), for the best "
        "configuration of each optimizer with E at each batch size, and every target ρ of "
        "auto-E (every seed); below, their "
        "means over the steps (mean ± std over seeds).",
        "",
        *table(["optimizer", "batch", "configuration", "mean ‖ĝ − g‖/‖g‖", "mean cos(ĝ, g)"], rows),
        "",
    ]


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
    lines += decomposition_lines(units, metric)
    lines += _batch_lines(units, metric, figures)
    lines += _heatmap_lines(units, metric, figures)
    lines += _lr_lines(units, metric, figures)
    lines += _time_lines(units, figures)
    lines += _e_telemetry_lines(units, figures)
    lines += _flatness_lines(units)
    lines += _all_config_lines(units, metric)
    path = out / REPORT_FILE
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


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
                batch_text(unit.batch_size),
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
        *table(
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
