"""E's α schedule in the training loop (``e_schedule``): decayed to 0 over the run, checkpointed."""

from __future__ import annotations

from pathlib import Path

import pytest

from valleys.bench.run.checkpoint import load_checkpoint
from valleys.bench.run.config import TrainConfig
from valleys.bench.run.metrics_log import read_metrics
from valleys.bench.run.train import train
from valleys.bench.tasks import TaskOptions


def _config(**changes: object) -> TrainConfig:
    options: dict[str, object] = dict(
        task="digits",
        optimizer="alto",
        lr=0.01,
        batch_size=512,
        epochs=3,
        e_schedule="linear",
        task_options=TaskOptions(model="mlp"),
    )
    return TrainConfig(**{**options, **changes})  # type: ignore[arg-type]


def test_alpha_decays_to_zero_over_the_run(tmp_path: Path) -> None:
    train(_config(), tmp_path, quiet=True)
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert len(steps) == 6  # 3 epochs of 2 full batches of 512 (1,437 training images)
    perturbation = [r["e_perturbation"] for r in steps]
    # The first step's α is the batch-size rule's 0.5 with β1 0.01: ρ = 0.5·0.99 where e_0 = 0.
    # The last step's α is 0.5/6.
    assert perturbation[0] == pytest.approx(0.495, rel=1e-5)
    assert perturbation[-1] < perturbation[0] / 3
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["e_scheduler"]["last_epoch"] == 6
    assert {group["alpha"] for group in payload["optimizer"]["param_groups"]} == {0.0}


def test_a_constant_e_schedule_keeps_alpha_and_the_old_fingerprint() -> None:
    config = _config(e_schedule="constant")
    assert "e_schedule" not in config.fingerprint() and "epochs" not in config.fingerprint()
    assert _config().fingerprint()["e_schedule"] == "linear"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"e_schedule": "step"}, "valid E schedules: constant, linear, cosine"),
        ({"optimizer": "adamw", "optimizer_args": {}}, "does not apply E"),
        (
            {"optimizer_args": {"target_perturbation": 0.05}},
            "give one of them",
        ),
    ],
)
def test_bad_e_schedules_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**changes).validate()
