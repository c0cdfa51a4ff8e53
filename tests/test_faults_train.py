"""Faults around ``valleys train``: kills at any moment, damaged files, unwritable folders.

A killed run resumed with ``--resume`` must end bit for bit where an uninterrupted run ends
(parameters, optimizer state, result, metrics log), whatever the kill hit: a step, the write of a
metrics line, the write of a checkpoint (whose temporary file the next start removes), or a moment
drawn at random. The kills are ``SIGKILL`` (nothing runs after them): a child process (forked from a
server that has torch imported, so that it starts at once) kills itself at a chosen point, or this
process kills it from outside.

Every user or environment error ends as one ``valleys: error: ...`` line naming the argument or the
file, with exit status 2 for usage errors and 1 for the others, and leaves the files on disk as
they were.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from valleys.bench.run.checkpoint import load_checkpoint
from valleys.commands.main import main

RUN = [
    "--task", "digits", "--model", "mlp", "--batch-size", "256", "--lr", "0.01", "--epochs", "3",
    "--schedule", "cosine", "--warmup-epochs", "1", "--quiet",
]  # fmt: skip
"""A tiny run: 5 steps per epoch, 3 epochs (18 metrics records), a schedule whose state a resume
must restore."""

_TIMED = {"epoch_seconds", "eval_seconds", "train_seconds", "examples_per_second"}
_TIMED_RESULT = {"train_seconds", "time_to_target", "out_dir", "history"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the same arithmetic in every process, and fork-safe (no OpenMP team)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(fault: str) -> None:
    """In the child, arm its deadly ``fault``: ``record:N`` dies right after the N-th metrics
    record, ``cut:N`` halfway through writing it, ``checkpoint:N`` once the N-th checkpoint is
    written under its temporary name, before the rename that would put it in place, ``renamed:N``
    right after that rename (before the epoch's record)."""
    kind, _, number = fault.partition(":")
    count, seen = int(number or 0), [0]
    if kind in ("record", "cut"):
        from valleys.bench.run.metrics_log import MetricsLog

        write = MetricsLog.write

        def faulty_write(self: MetricsLog, record: Mapping[str, Any]) -> None:
            seen[0] += 1
            if seen[0] == count and kind == "cut":
                line = json.dumps(record)
                self._handle.write(line[: len(line) // 2])
                self._handle.flush()
                _die()
            write(self, record)
            if seen[0] == count:
                _die()

        MetricsLog.write = faulty_write  # type: ignore[method-assign]
    elif kind in ("checkpoint", "renamed"):
        replace = os.replace

        def faulty_replace(src: str, dst: str | os.PathLike[str]) -> None:
            hit = os.path.basename(dst) == "checkpoint.pt"
            seen[0] += hit
            if hit and seen[0] == count and kind == "checkpoint":
                _die()
            replace(src, dst)
            if hit and seen[0] == count:
                _die()

        os.replace = faulty_replace  # type: ignore[assignment]


def _child(fault: str, argv: list[str]) -> None:
    torch.set_num_threads(1)
    _arm(fault)
    os._exit(main(argv))


# Children fork from a server that imported torch and valleys once, so each starts at once; not
# from this process, which may hold other libraries' threads (JAX's, from another test module in
# the same xdist worker), and forking a multithreaded process can deadlock the child.
_CHILDREN = multiprocessing.get_context("forkserver")
_CHILDREN.set_forkserver_preload(["torch", "valleys.commands.main"])


def _start(argv: list[str], fault: str = "") -> multiprocessing.process.BaseProcess:
    """``valleys ARGV`` in a child process forked from the preloaded server."""
    child = _CHILDREN.Process(target=_child, args=(fault, argv))
    child.start()
    return child


def _untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in _TIMED} for r in records]


def _outcome(run: Path) -> dict[str, Any]:
    """What a finished run must agree on with another of the same configuration."""
    result = json.loads((run / "result.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "result": {k: v for k, v in result.items() if k not in _TIMED_RESULT},
        "history": _untimed(result["history"]),
        "metrics": _untimed(metrics),
    }


def _assert_same_run(run: Path, straight: Path) -> None:
    assert _outcome(run) == _outcome(straight)
    ours, theirs = (load_checkpoint(p / "checkpoint.pt") for p in (run, straight))
    for key, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][key], tensor), key
    assert str(ours["optimizer"]) == str(theirs["optimizer"])
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"


def _resume_or_restart(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Resume a killed run (one killed before its first checkpoint is refused, and started afresh
    as the refusal says); return what it printed on stderr."""
    capsys.readouterr()
    if (run / "checkpoint.pt").is_file():
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        return capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("valleys: error: ") and ("start afresh" in err or "no run to" in err)
    shutil.rmtree(run, ignore_errors=True)
    assert main(["train", *RUN, "--out", str(run)]) == 0
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *RUN, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


# --- kills ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "warning"),
    [
        ("record:9", None),  # mid-epoch 2, after a step's record
        ("record:6", None),  # right after epoch 1's record: resume starts a fresh epoch
        ("cut:10", "metrics.jsonl line 10 is not valid JSON"),
        ("checkpoint:2", None),  # epoch 2's checkpoint written, not yet in place
        ("renamed:2", None),  # epoch 2's checkpoint in place, its record not yet logged
        ("record:3", None),  # before the first checkpoint: refused, started afresh
    ],
)
def test_a_killed_run_resumes_bit_exact(
    tmp_path: Path,
    straight: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    warning: str | None,
) -> None:
    run = tmp_path / "run"
    child = _start(["train", *RUN, "--out", str(run)], fault)
    child.join(timeout=120)
    if child.exitcode is None:  # pragma: no cover - a hung child is not left behind
        child.kill()
        child.join()
    assert child.exitcode == -signal.SIGKILL
    if fault.startswith("checkpoint"):
        assert list(run.glob(".checkpoint.pt.*.tmp")), "the kill should leave the temporary file"
    err = _resume_or_restart(run, capsys)
    if warning is not None:
        assert f"valleys: warning: {run / 'metrics.jsonl'}" in err and warning in err
    _assert_same_run(run, straight)


def test_a_run_killed_at_a_random_moment_resumes_bit_exact(
    tmp_path: Path, straight: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = random.randint(1, 17)  # the kill comes once this many records are logged (of 18)
    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"
    child = _start(["train", *RUN, "--out", str(run)])
    try:
        deadline = time.monotonic() + 120
        while child.is_alive() and time.monotonic() < deadline:
            if metrics.is_file() and metrics.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.002)
    finally:
        if child.pid is not None and child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join()
    _resume_or_restart(run, capsys)
    _assert_same_run(run, straight)


# --- damaged files ------------------------------------------------------------------------------


def _finished(tmp_path: Path, epochs: int = 1) -> Path:
    run = tmp_path / "run"
    args = ["train", *RUN[:-5], "--epochs", str(epochs), "--quiet", "--out", str(run)]
    assert main(args) == 0
    return run


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("valleys: error: ") == 1 and err.startswith("valleys: error: "), err
    return err.strip()


def test_metrics_cut_midway_is_resumed_over_with_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _finished(tmp_path)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:3]) + lines[3][:20])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"valleys: warning: {metrics} line 4 is not valid JSON" in err
    assert f"valleys: warning: {metrics} holds 3 of the 5 step records up to the checkpoint" in err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [
        *(("step", n) for n in (1, 2, 3)),
        ("epoch", 5),
        *(("step", n) for n in range(6, 11)),
        ("epoch", 10),
    ]


def test_a_corrupt_line_before_the_last_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _finished(tmp_path)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    lines[2] = "{not json\n"
    metrics.write_text("".join(lines))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 1
    assert _error(capsys).startswith(
        f"valleys: error: {metrics} line 3 is not valid JSON (Expecting property name"
    )
    assert metrics.read_text() == "".join(lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "config.json should hold a JSON object, found array"),
        ("{", "config.json is not valid JSON (Expecting property name enclosed in double quotes"),
        ('{"optimizer": "alto", "moment": 1}', "unknown training options: moment"),
    ],
)
def test_a_damaged_config_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    run = _finished(tmp_path)
    (run / "config.json").write_text(text)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 1
    assert message in _error(capsys)
    assert main(["flatness", str(run)]) == 1
    assert message in _error(capsys)


# --- resume rules ---------------------------------------------------------------------------------


def test_resume_without_checkpoint_is_refused_and_the_run_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _finished(tmp_path)
    (run / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    argv = ["train", "--resume", str(run), "--optimizer", "sgd", "--lr", "0.1", "--quiet"]
    assert main(argv) == 1
    assert _error(capsys) == (
        f"valleys: error: cannot resume {run}: {run / 'checkpoint.pt'} is missing, so no epoch of "
        f"it can be continued; to start afresh, train with --out into a new folder (or delete "
        f"{run} first)"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_with_fewer_epochs_than_done_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _finished(tmp_path, epochs=2)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--quiet"]) == 1
    assert _error(capsys) == (
        f"valleys: error: cannot resume {run} for epochs=1: its checkpoint has 2 epochs "
        "completed; resume it with epochs >= 2"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_an_optimizer_argument_it_does_not_take_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", *RUN, "--opt-arg", "nosuch=1", "--out", str(run)]) == 1
    err = _error(capsys)
    assert err.startswith("valleys: error: optimizer 'alto' rejects optimizer_args {'nosuch': 1}")
    assert "'nosuch'" in err and not run.exists()


# --- full disk, unwritable folders ---------------------------------------------------------------


def _fail_writes_of(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the flush of every write of ``name`` fail as on a full disk."""
    fsync = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_full_disk_during_a_checkpoint_write_keeps_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _finished(tmp_path)
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.read_bytes()
    _fail_writes_of("checkpoint.pt", monkeypatch)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 1
    assert _error(capsys) == (
        f"valleys: error: cannot write {checkpoint} (No space left on device); the previous "
        "checkpoint.pt, if any, is unchanged"
    )
    assert checkpoint.read_bytes() == before and not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(checkpoint)["epoch"] == 2


def _unwritable(tmp_path: Path) -> list[tuple[Path, str]]:
    """Folders that cannot be written, and why, also when the tests run as root (a folder under a
    file; one under /sys, where not even root may create files)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    places = [(a_file / "out", f"{a_file} is a file, not a folder")]
    try:
        with open("/sys/valleys-test", "x"):
            pass
    except OSError as exc:
        places.append((Path("/sys/valleys-test"), exc.strerror))
    else:  # pragma: no cover - a writable /sys is no test of an unwritable folder
        os.unlink("/sys/valleys-test")
    return places


@pytest.mark.parametrize(
    ("command", "writes"),
    [
        (["train", *RUN, "--out", "{out}"], "write to {out}"),
        (["landscape", "--functions", "f1", "--steps", "5", "--out", "{out}"], "write to {out}"),
        (["bench-step", "--quick", "--variants", "alto_loop", "--out", "{out}/s.json"], "write {out}/s.json"),
        (["flatness", "{run}", "--plot", "{out}/p.png"], "write {out}/p.png"),
    ],
)  # fmt: skip
def test_an_unwritable_output_fails_before_the_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    writes: str,
) -> None:
    import valleys.bench.analysis.flatness_runs as flatness_runs
    import valleys.bench.analysis.landscape_runs as landscape_runs
    import valleys.bench.perf.step as step
    import valleys.bench.run.train as train

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started before the output was checked")

    for module, name in [
        (train, "run_epochs"),
        (landscape_runs, "run_landscapes"),
        (step, "run"),
        (flatness_runs, "measure_run"),
    ]:
        monkeypatch.setattr(module, name, never)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"")
    for out, reason in _unwritable(tmp_path):
        argv = [a.format(out=out, run=run) for a in command]
        assert main(argv) == 1
        assert _error(capsys) == f"valleys: error: cannot {writes.format(out=out)}: {reason}"


# --- usage errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench-step", "--repeats", "0", "--out", "x"], "--repeats: expected an integer >= 1, got 0"),
        (["bench-step", "--warmup", "-1", "--out", "x"], "--warmup: expected an integer >= 0, got -1"),
        (["bench-step", "--scale", "0", "--out", "x"], "--scale: expected a finite number > 0, got 0"),
        (["flatness", "r", "--examples", "0"], "--examples: expected an integer >= 1, got 0"),
        (["flatness", "r", "--power-iters", "x"], "--power-iters: expected an integer >= 1, got 'x'"),
        (["flatness", "r", "--tol", "0"], "--tol: expected a finite number > 0, got 0"),
        (["flatness", "r", "--trace-samples", "1"], "--trace-samples: expected an integer >= 2, got 1"),
        (["flatness", "r", "--profile-points", "0"], "--profile-points: expected an integer >= 1"),
        (["flatness", "r", "--lanczos-steps", "-3"], "--lanczos-steps: expected an integer >= 1"),
        (["landscape", "--functions", ""], "--functions: expected comma-separated names, got ''"),
        (["landscape", "--optimizers", " , "], "--optimizers: expected comma-separated names"),
    ],
)  # fmt: skip
def test_usage_errors_name_the_argument(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_takes_lrs_as_the_grid_of_optimizers_without_their_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from valleys.commands.compare import _new_comparison
    from valleys.commands.main import build_parser

    argv = ["compare", "--optimizers", "alto,sgd", "--lrs", "0.01,0.02", "--lr-grid", "sgd=0.1,0.2"]
    args = build_parser().parse_args(argv)
    config, _ = _new_comparison(args, {})
    assert config.resolved().lr_grids == {"alto": (0.01, 0.02), "sgd": (0.1, 0.2)}
    argv = ["compare", "--task", "digits", "--optimizers", "alto", "--lrs", "0.01",
            "--lr-grid", "sgd=0.1"]  # fmt: skip
    assert main(argv) == 1
    assert _error(capsys) == "valleys: error: lr grids given for optimizers not compared: sgd"
