"""Stopping ``valleys study`` and ``valleys compare`` through their main process (SIGTERM, kill -9):
no worker is left running, nothing running is left marked as running, and a rerun completes every
trial or run exactly once."""

from __future__ import annotations

import json
import shlex
import signal
from collections import Counter
from pathlib import Path

import pytest
from processes import children, kill_all, linux_only, valleys, wait_for, wait_gone

pytestmark = [linux_only, pytest.mark.slow]  # each starts workers that import torch: ~20 s

# Trials of a few seconds each on a cut-down digits, so that one is surely running when the main
# process is stopped; a grace period far above the test's time shows a rerun never waits for it.
STUDY = """\
name = "faults"
task = "digits"
kind = "grid"
batch_sizes = [16]
seeds = [0, 1]
task_options = { "model" = "mlp", "train_limit" = 512, "test_limit" = 64 }

[budget]
epochs = 60

[workers]
heartbeat_interval = 1
grace_period = 600
max_retry = 3

[optimizers.sgd]
lr = [0.05, 0.1]
"""

COMPARE = [
    "compare", "--task", "digits", "--train-limit", "512", "--test-limit", "64",
    "--batch-size", "16", "--epochs", "60", "--optimizers", "sgd", "--lrs", "0.05,0.1",
    "--seeds", "0,1", "--jobs", "2", "--quiet",
]  # fmt: skip


def _stop(args: list[str], how: signal.Signals, out: Path, started: Path) -> tuple[int, str]:
    """Run ``valleys ARGS`` until ``started`` exists (a run checkpointed in a worker), send the
    main process ``how``, and wait for it and its workers to end: (exit code, its stderr)."""
    process = valleys(*args, out=out)
    workers: list[int] = []
    try:
        wait_for(lambda: any(started.parent.rglob(started.name)), 180, "a run checkpointed")
        # The two workers and multiprocessing's resource tracker: none may outlive the parent.
        workers = children(process.pid)
        assert len(workers) >= 2
        process.send_signal(how)
        code = process.wait(timeout=90)
        seconds = wait_gone(workers, 30)
        print(f"{how.name}: workers ended {seconds:.1f} s after the main process")
    finally:
        process.kill()
        process.wait()
        kill_all(workers)
    return code, (out / "stderr").read_text()


def _trial_states(db: Path) -> tuple[Counter, Counter]:
    """(trials by state, complete trials by planned point) of the study in ``db``."""
    from valleys.bench.study.storage import open_storage

    storage = open_storage(f"sqlite:///{db}", create=False)
    states: Counter = Counter()
    complete: Counter = Counter()
    for summary in storage.get_all_studies():
        for trial in storage.get_all_trials(summary._study_id):
            states[trial.state.name] += 1
            if trial.state.name == "COMPLETE":
                complete[tuple(sorted(trial.params.items()))] += 1
    return states, complete


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_stopped_study_leaves_no_worker_and_its_rerun_runs_each_trial_once(
    how: signal.Signals, tmp_path: Path
) -> None:
    (tmp_path / "study.toml").write_text(STUDY)
    args = ["study", "study.toml", "--out", "out", "--jobs", "2", "--quiet"]

    code, stderr = _stop(args, how, tmp_path, tmp_path / "out" / "runs" / "checkpoint.pt")

    states, _ = _trial_states(tmp_path / "out" / "study.db")
    # The running trials were failed and queued again by their workers, whichever way the main
    # process ended: a rerun takes them at once instead of after the grace period.
    assert states["RUNNING"] == 0 and states["FAIL"] >= 1
    if how == signal.SIGKILL:
        return  # nothing is left running: the rerun is the one after a SIGTERM
    assert code == 130
    (line,) = [x for x in stderr.splitlines() if x.startswith("resume with: ")]
    assert shlex.split(line.removeprefix("resume with: "))[1:] == args
    rerun = valleys(*args, out=tmp_path)
    assert rerun.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()
    states, complete = _trial_states(tmp_path / "out" / "study.db")
    assert sorted(complete.values()) == [1, 1, 1, 1] and states["RUNNING"] == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_stopped_comparison_leaves_no_worker_and_resumes(
    how: signal.Signals, tmp_path: Path
) -> None:
    code, stderr = _stop(
        [*COMPARE, "--out", "cmp"], how, tmp_path, tmp_path / "cmp" / "runs" / "checkpoint.pt"
    )

    # The workers stored their runs as interrupted and wrote nothing to a closed pipe.
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    statuses = [
        json.loads(p.read_text())["status"]
        for p in (tmp_path / "cmp" / "runs").glob("*/result.json")
    ]
    assert "interrupted" in statuses
    if how == signal.SIGKILL:
        return  # the runs are stored as after a SIGTERM: the resume is the one after it
    assert code == 130 and "resume with: valleys compare --resume cmp" in stderr
    resumed = valleys("compare", "--resume", "cmp", "--quiet", "--jobs", "2", out=tmp_path)
    assert resumed.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()
    runs = json.loads((tmp_path / "cmp" / "results.json").read_text())["runs"]
    names = Counter((r["config"]["lr"], r["config"]["seed"]) for r in runs)
    assert sorted(names.values()) == [1, 1, 1, 1]
    assert {r["status"] for r in runs} == {"completed"}
