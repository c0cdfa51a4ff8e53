"""``valleys report`` on a study: Markdown and PNGs from the stored trials, the paper beside."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from study_fixtures import tiny_study, write_study

from valleys.bench.study.errors import StudyConfigError
from valleys.bench.study.parse import load_study_config
from valleys.bench.study.report import write_study_report
from valleys.bench.study.results import load_results, study_location
from valleys.bench.study.runner import run_study
from valleys.commands.report import add_report_parser

_PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished grid at two batch sizes, two seeds, a target: ALTO over (β1, α) and Lamb with a
    diverging lr at batch 32, one point each at batch 64."""
    folder = tmp_path_factory.mktemp("study")
    data = tiny_study(
        name="shapes",
        budget={"epochs": 1, "target": 0.15},
        optimizers={
            "alto": {
                "lr": 0.01,
                "beta1": {"by_batch_size": {"1": [0.9, 0.99], "64": 0.99}},
                "alpha": {"by_batch_size": {"1": [-5, 0.5], "64": -5}},
            },
            "lamb": {"lr": {"by_batch_size": {"1": [0.01, 1e12], "64": 0.01}}},
        },
    )
    config = load_study_config(write_study(folder / "study.toml", data))
    progress = run_study(config, folder, quiet=True)
    assert progress.done == progress.total == 16
    return folder


def test_report_renders_every_shape_from_the_storage(study_dir: Path) -> None:
    url, name = study_location(study_dir)
    report = write_study_report(url, name, study_dir / "report")

    text = report.read_text()
    figures = sorted(p.name for p in (report.parent / "figures").iterdir())
    assert figures == [
        "e_telemetry.png",
        "heatmap_alto_bs32.png",
        "metric_vs_batch.png",
        "metric_vs_lr.png",
        "time_to_target.png",
    ]
    for figure in figures:
        assert (report.parent / "figures" / figure).read_bytes().startswith(_PNG)
        assert f"(figures/{figure})" in text
    for heading in (
        "## Best configuration per optimizer and batch size",
        "## accuracy vs batch size",
        "## (β1, α) sensitivity",
        "## Learning-rate sensitivity",
        "## Time to target",
        "## E's perturbation of the gradient",
    ):
        assert heading in text
    # The paper's numbers stand beside ours, labelled as the paper's, on another task.
    assert text.count("**Paper** (PAPER.md; a different task and model") == 4
    assert "heatmap_alto_bs64" not in text  # one (β1, α) point there: nothing to map
    assert "| 50K | 49.69 | 39.91 | +9.78 |" in text
    assert "ALTO 608 s vs Lamb 865 s (-29.7 %)" in text
    assert "| CIFAR-100 ResNet-20 | 16384 | 56.06 | 57.78 |" in text
    assert "| ALTO − Lamb |" in text


def test_report_lists_every_configuration_best_first(study_dir: Path) -> None:
    url, name = study_location(study_dir)
    text = write_study_report(url, name, study_dir / "report").read_text()
    section = text.split("## Every configuration", 1)[1]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| alto | 32 |")]
    # Four (β1, α) points at batch 32, ranked 1..4 by mean best accuracy.
    assert [row[2] for row in rows] == ["1", "2", "3", "4"]
    accuracies = [float(row[4].split(" ± ")[0]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    # Lamb's diverging lr is listed, last, with its diverged seeds counted.
    lamb = [line for line in section.splitlines() if line.startswith("| lamb | 32 |")]
    assert len(lamb) == 2
    assert "lr=1e+12" in lamb[1] and "(2 diverged)" in lamb[1]


def test_results_group_seeds_and_count_divergence(study_dir: Path) -> None:
    units = {(u.optimizer, u.batch_size): u for u in load_results(*study_location(study_dir))}
    assert sorted(units) == [("alto", 32), ("alto", 64), ("lamb", 32), ("lamb", 64)]
    alto = units[("alto", 32)]
    assert len(alto.configs) == 4 and all(len(c.seeds) == 2 for c in alto.configs)
    lamb = units[("lamb", 32)]
    blown = next(c for c in lamb.configs if c.params["lr"] > 1)
    assert blown.diverged == 2 and blown.stat("best_metric") is None
    best = lamb.best()
    assert best is not None and best.params == {"lr": 0.01}
    mean, std, n = best.stat("best_metric")
    assert 0 <= mean <= 1 and std >= 0 and n == 2


def test_report_command_takes_a_study_folder(study_dir: Path, capsys: Any) -> None:
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())

    args = parser.parse_args(["report", str(study_dir)])
    assert args.handler(args) == 0
    assert (study_dir / "report.md").is_file()
    assert f"report: {study_dir / 'report.md'}" in capsys.readouterr().out

    args = parser.parse_args(["report", str(study_dir / "nowhere")])
    assert args.handler(args) == 1
    assert "does not exist; expected a study folder" in capsys.readouterr().err

    (study_dir / "empty").mkdir()
    args = parser.parse_args(["report", str(study_dir / "empty")])
    assert args.handler(args) == 1
    assert "holds no study (study.json missing)" in capsys.readouterr().err


def test_a_study_with_flatness_reports_it_beside_accuracy(tmp_path: Path) -> None:
    data = tiny_study(
        "flat",
        batch_sizes=[64],
        seeds=[0],
        flatness=True,
        optimizers={"alto": {"lr": 0.01}, "lamb": {"lr": 0.01}},
    )
    config = load_study_config(write_study(tmp_path / "flat.toml", data))
    out = tmp_path / "out"
    run_study(config, out, quiet=True)
    for unit in load_results(*study_location(out)):
        (seed,) = unit.best().seeds
        assert seed.hessian_trace is not None and seed.distance_travelled > 0
    text = write_study_report(*study_location(out), out).read_text()
    section = text.split("## Flatness of the end points")[1]
    assert "| alto | 64 | lr=0.01 |" in section and "| lamb | 64 | lr=0.01 |" in section


def test_flatness_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(StudyConfigError, match="flatness must be true or false"):
        load_study_config(write_study(tmp_path / "bad.toml", tiny_study(flatness="yes")))
