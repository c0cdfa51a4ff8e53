"""``valleys compare`` on a tiny budget: runs, storage, resume, report files, bad input."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from valleys.bench.compare import run as compare_module
from valleys.bench.compare.report import format_table, summarise
from valleys.bench.compare.run import (
    CompareConfig,
    default_lr_grid,
    parse_lr_grids,
    rerender,
    run_compare,
)
from valleys.bench.run.config import RunResult, TrainConfig
from valleys.bench.tasks import Task, TaskOptions, build_task

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", TaskOptions(model="mlp"))


def _tiny(**changes: object) -> CompareConfig:
    base = TrainConfig(task="digits", batch_size=256, epochs=2, target=0.5)
    config = CompareConfig(
        base=base,
        optimizers=("alto", "sgd"),
        seeds=(0, 1),
        # SGD at lr 1e4 diverges: the comparison must record it and go on.
        lr_grids={"alto": (1e-2, 3e-2), "sgd": (0.1, 1e4)},
    )
    return replace(config, **changes)


def test_compare_smoke_run_writes_results_report_and_pngs(digits: Task, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_compare(_tiny(), tmp_path, task=digits, log=lines.append, jobs=1)
    assert len(result.results) == 8 and len(lines) == 8
    assert {p.name for p in tmp_path.iterdir()} >= {
        "compare.json",
        "results.json",
        "summary.json",
        "report.md",
        "runs",
        "test_accuracy.png",
        "train_loss.png",
    }
    for name in ("test_accuracy.png", "train_loss.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    stored = json.loads((tmp_path / "results.json").read_text())
    statuses = {
        (r["config"]["optimizer"], r["config"]["lr"], r["config"]["seed"]): r["status"]
        for r in stored["runs"]
    }
    assert statuses[("sgd", 1e4, 0)] == statuses[("sgd", 1e4, 1)] == "diverged"
    assert statuses[("alto", 1e-2, 1)] == "completed"
    report = (tmp_path / "report.md").read_text()
    assert "| alto |" in report and "![test accuracy](test_accuracy.png)" in report
    assert "diverged at step" in report
    table = result.table()
    assert table.splitlines()[0].split()[:4] == ["optimizer", "best", "test", "accuracy"]
    assert "(lr 0.1)" in table and " ± " in table
    sgd = next(s for s in result.summaries if s.optimizer == "sgd")
    assert sgd.by_metric.lr == 0.1 and sgd.diverged == 2 and sgd.by_loss.lr == 0.1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [o["optimizer"] for o in summary["optimizers"]] == ["alto", "sgd"]
    assert summary["optimizers"][1]["best_metric"]["lr"] == 0.1


def test_interrupted_compare_keeps_finished_runs_and_resumes(
    digits: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _tiny(seeds=(0,))

    def stop_after_two(line: str) -> None:
        if line.startswith("[2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_compare(config, tmp_path, task=digits, log=stop_after_two, jobs=1)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert [r["config"]["lr"] for r in stored["runs"]] == [1e-2, 3e-2]
    report, table = rerender(tmp_path)
    assert report.is_file() and "alto" in table and "sgd" not in table

    trained: list[str] = []
    real_train = compare_module.train

    def counting_train(run_config: TrainConfig, *args: object, **kwargs: object) -> RunResult:
        trained.append(f"{run_config.optimizer}-{run_config.lr:g}")
        return real_train(run_config, *args, **kwargs)

    monkeypatch.setattr(compare_module, "train", counting_train)
    result = run_compare(config, tmp_path, resume=True, task=digits, quiet=True, jobs=1)
    assert trained == ["sgd-0.1", "sgd-10000"]
    assert len(result.results) == 4
    fresh = run_compare(config, tmp_path / "fresh", task=digits, quiet=True, jobs=1)
    for a, b in zip(result.results, fresh.results, strict=True):
        assert a.best_metric == b.best_metric and a.status == b.status


def _comparable(result: RunResult) -> dict:
    timed = ("epoch_seconds", "eval_seconds", "train_seconds", "examples_per_second")
    history = [{k: v for k, v in r.items() if k not in timed} for r in result.history]
    return {"config": result.config, "status": result.status, "history": history}


def test_parallel_runs_equal_sequential_runs_with_as_many_threads(
    digits: Task, tmp_path: Path
) -> None:
    config = _tiny(seeds=(0,))
    parallel = run_compare(config, tmp_path / "parallel", quiet=True, jobs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        sequential = run_compare(config, tmp_path / "sequential", task=digits, quiet=True, jobs=1)
    finally:
        torch.set_num_threads(threads)
    assert [_comparable(r) for r in parallel.results] == [
        _comparable(r) for r in sequential.results
    ]
    stored = json.loads((tmp_path / "parallel" / "results.json").read_text())
    assert [r["config"]["lr"] for r in stored["runs"]] == [1e-2, 3e-2, 0.1, 1e4]
    assert "2 run(s) at a time" in (tmp_path / "parallel" / "report.md").read_text()


def test_existing_comparison_is_not_overwritten(digits: Task, tmp_path: Path) -> None:
    config = _tiny(seeds=(0,), optimizers=("alto",), lr_grids={"alto": (1e-2,)})
    run_compare(config, tmp_path, task=digits, quiet=True, jobs=1)
    with pytest.raises(FileExistsError, match="already holds a comparison"):
        run_compare(config, tmp_path, task=digits, quiet=True, jobs=1)
    other = replace(config, lr_grids={"alto": (2e-2,)})
    with pytest.raises(ValueError, match="another configuration"):
        run_compare(other, tmp_path, resume=True, task=digits, quiet=True, jobs=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr_grids": {"alto": (1e-2,), "sgd": (0.1, 0.3)}}, "same size for every optimizer"),
        ({"optimizers": ("alto", "adamz")}, "valid names: .*adamw"),
        ({"optimizers": ()}, "at least one optimizer"),
        ({"optimizers": ("alto", "alto")}, "distinct"),
        ({"seeds": ()}, "seeds"),
        ({"lr_grids": {"alto": (1e-2, 1e-2), "sgd": (0.1, 0.2)}}, "distinct values"),
        ({"lr_grids": {"lamb": (1e-2, 3e-2)}}, "not compared: lamb"),
        ({"base": TrainConfig(task="digits", schedule="exp")}, "valid schedules"),
        ({"base": TrainConfig(task="nope")}, "valid tasks"),
        ({"base": TrainConfig(task="digits", epochs=0)}, "epochs must be >= 1"),
    ],
)
def test_bad_comparisons_are_refused_before_running(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _tiny(**changes).resolved()


def test_bad_job_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        run_compare(_tiny(), tmp_path, jobs=0)


def test_batch_too_large_for_the_task_is_refused_before_running(
    digits: Task, tmp_path: Path
) -> None:
    config = _tiny(base=TrainConfig(task="digits", batch_size=8192))
    with pytest.raises(ValueError, match="exceeds the number of training examples"):
        run_compare(config, tmp_path, task=digits, quiet=True, jobs=1)
    assert not (tmp_path / "results.json").exists()


def test_default_configuration() -> None:
    config = CompareConfig().resolved()
    assert config.optimizers == ("alto", "lamb", "adamw", "sgd")
    assert config.base.task == "fashion-mnist" and config.base.batch_size >= 4096
    assert config.base.task_options.model == "mlp"
    assert len({len(grid) for grid in config.lr_grids.values()}) == 1
    assert len(config.run_configs()) == 4 * len(config.lr_grids["alto"])
    # A task without an MLP keeps its own model.
    text = replace(CompareConfig(), base=TrainConfig(task="bbc-news")).resolved()
    assert text.base.task_options.model is None


def test_default_grids_follow_the_optimizer_family() -> None:
    assert default_lr_grid("alto") == default_lr_grid("lamb")
    assert default_lr_grid("esgd") == default_lr_grid("sgd")
    assert default_lr_grid("e_adamw") == default_lr_grid("adamw")
    assert len({len(default_lr_grid(n)) for n in ("alto", "sgd", "adamw", "rmsprop")}) == 1


def test_lr_grid_parsing() -> None:
    assert parse_lr_grids(["alto=1e-3,3e-3", "sgd=0.1"]) == {"alto": (1e-3, 3e-3), "sgd": (0.1,)}
    for bad in ("alto", "alto=", "alto=x", "alto=-1", "=0.1", "alto=nan"):
        with pytest.raises(ValueError):
            parse_lr_grids([bad])


def _result(optimizer: str, lr: float, seed: int, best: float, status: str = "completed"):
    history = [
        {"epoch": 1, "train_loss": 1.0, "test_accuracy": best / 2, "train_seconds": 1.0},
        {"epoch": 2, "train_loss": 0.5 / lr, "test_accuracy": best, "train_seconds": 2.0},
    ]
    return RunResult(
        config={"optimizer": optimizer, "lr": lr, "seed": seed},
        status=status,
        metric="accuracy",
        higher_is_better=True,
        epochs_completed=2,
        steps=10,
        best_metric=best,
        best_epoch=2,
        final_metric=best,
        final_train_loss=0.5 / lr,
        target=0.6,
        time_to_target=2.0 if best >= 0.6 else None,
        epochs_to_target=2 if best >= 0.6 else None,
        train_seconds=2.0,
        history=history,
    )


def test_each_column_chooses_its_own_lr_and_needs_every_seed() -> None:
    results = [
        _result("adamw", 0.1, 0, 0.9),
        _result("adamw", 0.1, 1, 0.5),  # mean 0.7, one seed misses the target
        _result("adamw", 0.2, 0, 0.65),
        _result("adamw", 0.2, 1, 0.65),
        _result("adamw", 0.4, 0, 0.2, status="diverged"),
        _result("adamw", 0.4, 1, 0.3),
    ]
    (summary,) = summarise(results)
    assert summary.by_metric.lr == 0.1 and summary.by_metric.best_metric.mean == pytest.approx(0.7)
    assert summary.by_time.lr == 0.2  # the only lr where every seed reached the target
    assert summary.by_loss.lr == 0.2  # lr 0.4 has the lowest loss but a diverged seed
    assert summary.diverged == 1 and summary.runs == 6
    table = format_table([summary], target=0.6)
    assert "70.00 ± 28.28 (lr 0.1)" in table and "time to 60 %" in table
    assert "2.00 ± 0.00 s, epoch 2 (lr 0.2)" in table
