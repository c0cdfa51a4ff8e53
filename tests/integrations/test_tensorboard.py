"""``--tensorboard`` on train, compare and study: event files that TensorBoard's own reader reads
back as the numbers of ``metrics.jsonl``, rewritten (not duplicated) when a run resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from valleys.bench.run.config import TrainConfig
from valleys.bench.run.metrics_log import MetricsLog, read_metrics
from valleys.commands.main import main

TASK = ["--task", "digits", "--model", "mlp", "--batch-size", "256", "--quiet"]
TINY = [*TASK, "--lr", "0.01"]
TAGS = {
    "step/loss",
    "step/lr",
    "step/e_perturbation",
    "step/e_cosine",
    "epoch/train_loss",
    "epoch/test_loss",
    "epoch/test_accuracy",
}


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``folder``'s event files, as (step, value), read by TensorBoard."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def assert_mirrors_metrics(run: Path) -> None:
    """The run's TensorBoard scalars are its metrics.jsonl numbers, once each, at their steps."""
    series = scalars(run / "tensorboard")
    assert set(series) >= TAGS
    for kind in ("step", "epoch"):
        records = read_metrics(run / "metrics.jsonl", kind)
        for key in ("loss", "e_cosine") if kind == "step" else ("test_accuracy", "train_loss"):
            want = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records]
            assert series[f"{kind}/{key}"] == want, (kind, key)


def test_train_writes_events_of_every_record(tmp_path: Path) -> None:
    assert main(["train", *TINY, "--epochs", "2", "--tensorboard", "--out", str(tmp_path)]) == 0
    assert_mirrors_metrics(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tensorboard"] is True


def test_no_events_without_the_option(tmp_path: Path) -> None:
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "tensorboard").exists()


def test_resume_with_tensorboard_replays_the_history_once(tmp_path: Path) -> None:
    # A run started without TensorBoard (its config.json has the field false; its checkpoint's
    # fingerprint does not mention it) resumes with it: the events cover both epochs, once.
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    args = ["train", "--resume", str(tmp_path), "--epochs", "2", "--tensorboard", "--quiet"]
    assert main(args) == 0
    assert_mirrors_metrics(tmp_path)
    assert [s for s, _ in scalars(tmp_path / "tensorboard")["epoch/test_accuracy"]] == [5, 10]


def test_a_resumed_log_replaces_the_events_past_its_checkpoint(tmp_path: Path) -> None:
    records = [{"kind": "step", "step": step, "loss": float(step)} for step in (1, 2, 3)]
    with MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb") as log:
        for record in records:
            log.write(record)
    # Resumed from the checkpoint after step 2: step 3 is taken again, with another loss.
    with MetricsLog(
        tmp_path / "metrics.jsonl", history=records[:2], tensorboard_dir=tmp_path / "tb"
    ) as log:
        log.write({"kind": "step", "step": 3, "loss": 30.0, "flag": True})
    assert scalars(tmp_path / "tb") == {"step/loss": [(1, 1.0), (2, 2.0), (3, 30.0)]}


def test_compare_and_study_write_events_in_every_run(tmp_path: Path) -> None:
    compare = ["compare", *TASK, "--epochs", "1", "--optimizers", "alto,sgd", "--lrs", "0.01"]
    assert main([*compare, "--jobs", "1", "--tensorboard", "--out", str(tmp_path / "c")]) == 0
    runs = sorted(p.parent.parent for p in (tmp_path / "c").glob("**/tensorboard/events.*"))
    assert len(runs) == 2
    assert "step/e_cosine" in scalars(runs[0] / "tensorboard")  # alto: E's telemetry
    assert "step/e_cosine" not in scalars(runs[1] / "tensorboard")  # sgd: none
    study = tmp_path / "study.toml"
    study.write_text(
        'name = "tb"\ntask = "digits"\nkind = "grid"\nbatch_sizes = [64]\n'
        '[task_options]\nmodel = "mlp"\ntrain_limit = 128\ntest_limit = 64\n'
        "[budget]\nepochs = 1\n[optimizers.alto]\nlr = 0.01\n"
    )
    out = tmp_path / "s"
    args = ["study", str(study), "--out", str(out), "--jobs", "1", "--quiet", "--tensorboard"]
    assert main(args) == 0
    (run,) = (p.parent.parent for p in out.glob("runs/**/tensorboard/events.*"))
    assert_mirrors_metrics(run)


def test_tensorboard_missing_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes the package look uninstalled to importlib.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ValueError, match=r"pip install 'valleys\[integrations\]'"):
        TrainConfig(task="digits", tensorboard=True).validate()
    assert main(["train", *TINY, "--tensorboard", "--out", str(tmp_path / "run")]) != 0
    assert "valleys[integrations]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
