"""One gradient clip per run, stated in config.json; E's telemetry in the step records."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from valleys.bench.compare.report import _clip_line
from valleys.bench.run.config import CONFIG_FILE, METRICS_FILE, RunResult, TrainConfig
from valleys.bench.run.metrics_log import read_metrics
from valleys.bench.run.train import make_optimizer, train
from valleys.bench.tasks import Task, TaskOptions, build_task


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", TaskOptions(train_limit=512, test_limit=128, model="mlp"))


def _config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        task="digits",
        optimizer="alto",
        lr=1e-2,
        batch_size=128,
        epochs=1,
        task_options=TaskOptions(train_limit=512, test_limit=128, model="mlp"),
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("optimizer", "clip", "effective"),
    [("alto", None, 1.0), ("alto", 0.5, 0.5), ("adamw", None, None), ("adamw", 0.5, 0.5)],
)
def test_effective_clip_is_stated(optimizer: str, clip: float | None, effective: float | None):
    config = _config(optimizer=optimizer, clip_grad_norm=clip)
    assert config.effective_clip_grad_norm == effective
    assert config.to_dict()["effective_clip_grad_norm"] == effective
    # Files written before the key existed load, and derive it.
    old = {k: v for k, v in config.to_dict().items() if k != "effective_clip_grad_norm"}
    assert TrainConfig.from_dict(old) == config
    opt = make_optimizer(config, torch.nn.Linear(2, 2))
    inside = [g.get("max_grad_norm") for g in opt.param_groups]
    assert config.clips_inside == (optimizer == "alto")
    assert inside == ([effective] * len(inside) if config.clips_inside else [None] * len(inside))


def test_clip_and_max_grad_norm_together_are_refused() -> None:
    config = _config(clip_grad_norm=0.5, optimizer_args={"max_grad_norm": 1.0})
    with pytest.raises(ValueError, match="clip_grad_norm and optimizer_args max_grad_norm"):
        config.validate()


def _run(digits: Task, out: Path, **changes: object) -> tuple[list[dict], dict]:
    train(_config(**changes), out, task=digits, quiet=True)
    steps = read_metrics(out / METRICS_FILE, kind="step")
    return steps, json.loads((out / CONFIG_FILE).read_text())


def _losses(steps: list[dict]) -> list[float]:
    return [r["loss"] for r in steps]


def test_alto_clips_once_at_the_given_norm(digits: Task, tmp_path: Path) -> None:
    """--clip-grad-norm 3 on ALTO is ALTO's own clip at 3: not 3 then its default 1 on top."""
    given, config = _run(digits, tmp_path / "given", clip_grad_norm=3.0, lr=0.1)
    manual, _ = _run(digits, tmp_path / "manual", optimizer_args={"max_grad_norm": 3.0}, lr=0.1)
    default, _ = _run(digits, tmp_path / "default", lr=0.1)
    assert config["effective_clip_grad_norm"] == 3.0
    assert _losses(given) == _losses(manual) != _losses(default)
    assert all(r["grad_norm"] > 0 for r in given)  # measured, not clipped, by the loop


def test_telemetry_in_step_records(digits: Task, tmp_path: Path) -> None:
    alto, config = _run(digits, tmp_path / "alto")
    assert config["effective_clip_grad_norm"] == 1.0
    for record in alto:
        assert record["e_perturbation"] > 0 and -1 <= record["e_cosine"] <= 1
    adamw, config = _run(digits, tmp_path / "adamw", optimizer="adamw", clip_grad_norm=0.5)
    assert config["effective_clip_grad_norm"] == 0.5
    for record in adamw:
        assert "e_perturbation" not in record and "grad_norm" in record


def test_report_states_each_clip() -> None:
    def result(config: dict) -> RunResult:
        return RunResult(config, "completed", "accuracy", True, 1, 1, 0.5, 1, 0.5, 1.0, None,
                         None, None, 1.0)  # fmt: skip

    old_alto = {k: v for k, v in _config().to_dict().items() if k != "effective_clip_grad_norm"}
    adamw = _config(optimizer="adamw").to_dict()
    line = _clip_line([result(old_alto), result(adamw)])
    assert line == "- gradient clip (global norm, applied once): alto 1, adamw none"
    one = [result(_config(optimizer=o, clip_grad_norm=1.0).to_dict()) for o in ("alto", "adamw")]
    assert _clip_line(one).endswith("alto 1, adamw 1")
