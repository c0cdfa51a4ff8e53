"""``valleys compare`` with today's peers: every one runs through the harness and gets its row."""

from __future__ import annotations

import math
from pathlib import Path

from valleys.bench.compare.run import CompareConfig, default_lr_grid, run_compare
from valleys.bench.run.config import TrainConfig
from valleys.bench.tasks import TaskOptions, build_task

PEERS = ("muon", "adan", "mars", "lion", "soap", "adopt", "sf_adamw")


def test_lion_gets_the_sign_grid_below_adams() -> None:
    assert max(default_lr_grid("lion")) <= min(default_lr_grid("adamw"))


def test_compare_runs_every_peer(tmp_path: Path) -> None:
    task = build_task("digits", TaskOptions(model="mlp"))
    config = CompareConfig(
        base=TrainConfig(task="digits", batch_size=256, epochs=1),
        optimizers=PEERS,
        seeds=(0,),
        lr_grids={name: (default_lr_grid(name)[1],) for name in PEERS},
    )
    result = run_compare(config, tmp_path, task=task, jobs=1)
    assert [summary.optimizer for summary in result.summaries] == list(PEERS)
    assert all(r.status == "completed" for r in result.results)
    # digits has 10 classes: six steps of any working optimizer beat chance and ln 10 loss.
    for run in result.results:
        assert run.best_metric is not None and run.best_metric > 0.2, run.config["optimizer"]
        assert run.final_train_loss is not None and run.final_train_loss < math.log(10)
