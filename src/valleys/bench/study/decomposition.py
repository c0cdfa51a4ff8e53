r"""The report's walk from the paper's Lamb to the paper's ALTO, one change at a time.

Where a study has two or more of the presets in :data:`valleys.optim.alto.PAPER_PRESETS`
(``lamb_paper`` → ``lamb_paper_bc`` → ``lamb_paper_bc_v99`` → ``alto_reference``), each batch size
gets a table of the best configuration of each step present, the change of each step against the
one before it, and the step's share of the whole gap from the first to the last. A change is
given with its standard error :math:`\sqrt{s_a^2/n_a + s_b^2/n_b}` over the seeds, so a reader
sees at once whether a share is larger than its noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from valleys.bench.study.figures import batch_text, metric_scale, table
from valleys.bench.study.results import UnitResult, find_unit

__all__ = ["decomposition_lines"]


def _difference(a: tuple[float, float, int], b: tuple[float, float, int]) -> tuple[float, float]:
    """``b − a`` and its standard error from two (mean, std, n)."""
    return b[0] - a[0], math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])


def decomposition_lines(units: Sequence[UnitResult], metric: str) -> list[str]:
    """The report section; empty when the study has fewer than two steps of the walk."""
    from valleys.optim.alto import PAPER_PRESETS

    scale = metric_scale(metric)
    unit_text = " points" if scale == 100 else ""
    rows = []
    for batch in sorted({u.batch_size for u in units}):
        steps = []
        for preset in PAPER_PRESETS:
            unit = find_unit(units, preset.name, batch)
            stat = unit.best_stat("best_metric") if unit is not None else None
            if stat is not None and stat[2] > 0:
                steps.append((preset, stat))
        if len(steps) < 2:
            continue
        total = steps[-1][1][0] - steps[0][1][0]
        previous = None
        for preset, stat in steps:
            change = share = "—"
            if previous is not None:
                delta, error = _difference(previous, stat)
                change = f"{scale * delta:+.2f} ± {scale * error:.2f}{unit_text}"
                share = f"{100 * delta / total:.0f} %" if total != 0 else "—"
            rows.append(
                [
                    batch_text(batch),
                    f"`{preset.name}`",
                    preset.change,
                    f"{scale * stat[0]:.2f} ± {scale * stat[1]:.2f} (n={stat[2]})",
                    change,
                    share,
                ]
            )
            previous = stat
    if not rows:
        return []
    headers = ["batch", "step", "change", f"best {metric}", "vs the step before", "share of gap"]
    better = "higher" if units[0].meta.get("higher_is_better", True) else "lower"
    return [
        "## From the paper's Lamb to ALTO, one change at a time",
        "",
        f"Best configuration of each step (mean ± std over seeds of the best {metric}; {better} is "
        "better); each change against the step before ± its standard error; its share of the "
        "whole gap from the first step to the last (shares of a gap within the noise mean little).",
        "",
        *table(headers, rows),
        "",
    ]
