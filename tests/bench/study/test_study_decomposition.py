"""The report's Lamb → ALTO walk: each step's change, its standard error and its share of the gap."""

from __future__ import annotations

from valleys.bench.study.decomposition import decomposition_lines
from valleys.bench.study.results import ConfigResult, SeedResult, UnitResult

_META = {"objective": "best_metric", "higher_is_better": True}


def _unit(name: str, batch: int, accuracies: list[float]) -> UnitResult:
    seeds = [SeedResult(i, "completed", a, a, a, 0.1, None, None) for i, a in enumerate(accuracies)]
    return UnitResult(name, batch, dict(_META), [ConfigResult({"lr": 0.01}, seeds)], {})


def test_each_step_shows_its_change_error_and_share() -> None:
    units = [
        _unit("lamb_paper", 2000, [0.80, 0.82]),
        _unit("lamb_paper_bc", 2000, [0.84, 0.86]),
        _unit("alto_reference", 2000, [0.85, 0.87]),
        _unit("adamw", 2000, [0.99, 0.99]),
    ]
    rows = [line for line in decomposition_lines(units, "accuracy") if line.startswith("| 2K")]
    assert len(rows) == 3  # the steps present, in the walk's order; adamw is not one
    assert "`lamb_paper`" in rows[0] and "81.00 ± 1.41 (n=2)" in rows[0]
    # +4 points, standard error sqrt(2 · 0.02² / 2) · 100 = 1.41, 80 % of the 5-point gap.
    assert "`lamb_paper_bc`" in rows[1] and "+4.00 ± 1.41 points | 80 %" in rows[1]
    assert "`alto_reference`" in rows[2] and "+1.00 ± 1.41 points | 20 %" in rows[2]
    assert "higher is better" in "".join(decomposition_lines(units, "accuracy"))


def test_no_section_without_two_steps() -> None:
    assert (
        decomposition_lines([_unit("lamb_paper", 64, [0.5]), _unit("alto", 64, [0.6])], "x") == []
    )
