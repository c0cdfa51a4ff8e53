"""The study report's section on E's telemetry: drawn from the runs' ``metrics.jsonl`` for the
best configuration of each unit with E, and left out when no run logged it."""

from __future__ import annotations

import json
from pathlib import Path

from study_fixtures import tiny_study, write_study

from valleys.bench.analysis.e_telemetry import E_FIELDS
from valleys.bench.run.config import METRICS_FILE
from valleys.bench.study.parse import load_study_config
from valleys.bench.study.report import E_TELEMETRY_FIGURE, FIGURES, write_study_report
from valleys.bench.study.results import study_location
from valleys.bench.study.runner import run_study

_PNG = b"\x89PNG\r\n\x1a\n"


def _strip_telemetry(study: Path) -> None:
    """Rewrite every run's metrics without E's fields, as a run from before telemetry logged."""
    for path in study.glob(f"runs/**/{METRICS_FILE}"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        stripped = [{k: v for k, v in r.items() if k not in E_FIELDS} for r in records]
        path.write_text("".join(json.dumps(r) + "\n" for r in stripped))


def test_e_telemetry_figure_only_when_runs_logged_it(tmp_path: Path) -> None:
    data = tiny_study(
        name="telemetry",
        batch_sizes=[32],
        seeds=[0],
        optimizers={"alto": {"lr": 0.01, "beta1": 0.99, "alpha": -5}, "lamb": {"lr": 0.01}},
    )
    config = load_study_config(write_study(tmp_path / "study.toml", data))
    run_study(config, tmp_path, quiet=True)
    url, name = study_location(tmp_path)

    report = write_study_report(url, name, tmp_path / "report")
    text = report.read_text()
    figure = report.parent / FIGURES / E_TELEMETRY_FIGURE
    assert figure.read_bytes().startswith(_PNG)
    assert f"({FIGURES}/{E_TELEMETRY_FIGURE})" in text
    section = text.split("## E's perturbation of the gradient", 1)[1]
    assert "| alto | 32 | lr=0.01, alpha=-5, beta1=0.99 |" in section
    assert "| lamb |" not in section  # no E, no telemetry

    _strip_telemetry(tmp_path)
    report = write_study_report(url, name, tmp_path / "again")
    assert not (report.parent / FIGURES / E_TELEMETRY_FIGURE).exists()
    assert "E's perturbation" not in report.read_text()
