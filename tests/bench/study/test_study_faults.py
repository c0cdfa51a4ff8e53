"""A study's retry hint, a report on a moved or copied study folder."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from study_fixtures import (
    new_database,
    postgres_server,  # noqa: F401  (a fixture)
    tiny_study,
    write_study,
)

from valleys.bench.study import runner
from valleys.bench.study.parse import load_study_config
from valleys.bench.study.plan import StudyProgress
from valleys.bench.study.runner import run_study
from valleys.commands.main import build_parser, main


def test_the_retry_hint_is_the_exact_command_to_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    def unfinished(*args: Any, **kwargs: Any) -> StudyProgress:
        return StudyProgress(total=2, done=1, running=0, waiting=0, failed=1, diverged=0)

    monkeypatch.setattr(runner, "run_study", unfinished)
    path = write_study(tmp_path / "s.toml", tiny_study())
    argv = ["study", str(path), "--out", str(tmp_path / "my out"), "--jobs", "3", "--quick"]
    argv += ["--storage", "postgresql+psycopg://me:secret@db/studies"]

    assert main(argv) == 1

    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("unfinished")]
    hint = shlex.split(line.split("`")[1])
    assert hint[0] == "valleys" and "secret" not in line
    given = build_parser().parse_args(argv)
    again = build_parser().parse_args(hint[1:])
    for key in ("config", "out", "jobs", "quick"):
        assert getattr(again, key) == getattr(given, key)
    assert again.storage == "postgresql+psycopg://me:***@db/studies"


def test_report_reads_a_moved_or_copied_folders_own_database(tmp_path: Path, capsys: Any) -> None:
    data = tiny_study(batch_sizes=[32], seeds=[0], optimizers={"sgd": {"lr": 0.1}})
    config = load_study_config(write_study(tmp_path / "s.toml", data))
    run_study(config, tmp_path / "a", quiet=True)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    # The original's studies are gone: a report of the copy must not read them.
    for summary in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'a' / 'study.db'}"):
        optuna.delete_study(
            study_name=summary.study_name, storage=f"sqlite:///{tmp_path / 'a' / 'study.db'}"
        )
    assert main(["report", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "report.md").is_file()

    shutil.move(tmp_path / "copy", tmp_path / "moved")
    assert main(["report", str(tmp_path / "moved")]) == 0
    # Reading created no empty database where the folder used to be.
    assert not (tmp_path / "copy").exists()
    assert (
        main(["report", str(tmp_path / "moved"), "--storage", f"sqlite:///{tmp_path}/none.db"]) == 1
    )
    assert "no study database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


_RACER = """
import sys, time
from pathlib import Path
from valleys.bench.study.parse import load_study_config
from valleys.bench.study.runner import run_study
config = load_study_config(sys.argv[1])
for attempt in range(int(sys.argv[3])):
    ready = Path(sys.argv[2], f"ready-{attempt}-{sys.argv[4]}")
    ready.touch()
    # Both processes start the study within a millisecond of each other.
    while len(list(ready.parent.glob(f"ready-{attempt}-*"))) < 2:
        time.sleep(0.001)
    run_study(config, Path(sys.argv[2], f"out-{attempt}"), quiet=True)
"""


@pytest.mark.slow  # two processes import torch, then race four times: ~30 s
def test_studies_started_at_the_same_moment_on_a_new_file_both_finish(tmp_path: Path) -> None:
    import subprocess
    import sys

    from optuna.trial import TrialState

    from valleys.bench.study.storage import open_storage

    data = tiny_study(batch_sizes=[32], seeds=[0, 1], optimizers={"sgd": {"lr": 0.1}})
    path = write_study(tmp_path / "s.toml", data)
    attempts = 4
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(path), str(tmp_path), str(attempts), str(i)]
        )
        for i in range(2)
    ]
    assert [racer.wait(timeout=240) for racer in racers] == [0, 0]
    for attempt in range(attempts):
        storage = open_storage(
            f"sqlite:///{tmp_path / f'out-{attempt}' / 'study.db'}", create=False
        )
        (study,) = storage.get_all_studies()
        complete = [
            t.params["seed"]
            for t in storage.get_all_trials(study._study_id)
            if t.state == TrialState.COMPLETE
        ]
        assert sorted(complete) == [0, 1]


_PG_RACER = """
import sys, time
from valleys.bench.study.storage import open_storage
start, urls = float(sys.argv[1]), sys.argv[2:]
for url in urls:
    while time.time() < start:
        time.sleep(0.0005)
    open_storage(url)
    start += 1.0
"""


@pytest.mark.slow  # two processes import the harness, then race on four new databases: ~10 s
def test_two_workers_opening_a_new_postgresql_database_at_once_both_succeed(
    request: pytest.FixtureRequest,
) -> None:
    import subprocess
    import sys
    import time

    server = request.getfixturevalue("postgres_server")
    urls = [new_database(server, f"race_{i}") for i in range(4)]
    start = time.time() + 8.0  # both racers have imported everything by then
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _PG_RACER, str(start), *urls], stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = [racer.communicate(timeout=120)[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], errors
