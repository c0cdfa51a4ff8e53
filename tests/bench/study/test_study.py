"""``valleys study``: planning, workers sharing a storage, resuming, retries, and refusals."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from study_fixtures import (
    new_database,
    postgres_server,  # noqa: F401  (a fixture)
    tiny_study,
    write_study,
)

from valleys.bench.study.errors import StudyConfigError, StudyError
from valleys.bench.study.parse import load_study_config, parse_study_config
from valleys.bench.study.report import write_study_report
from valleys.bench.study.runner import run_study
from valleys.bench.study.spaces import Range
from valleys.bench.study.storage import open_storage
from valleys.commands.study import add_study_parser


def _trials(url: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = open_storage(url)
    return {
        s.study_name: storage.get_all_trials(storage.get_study_id_from_name(s.study_name))
        for s in storage.get_all_studies()
    }


def _complete_per_point(trials: dict[str, list[Any]]) -> Counter:
    return Counter(
        (name, tuple(sorted(t.params.items())))
        for name, group in trials.items()
        for t in group
        if t.state == TrialState.COMPLETE
    )


def _sqlite(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def test_grid_study_completes_and_a_rerun_does_nothing(tmp_path: Path) -> None:
    data = tiny_study(optimizers={"sgd": {"lr": [0.1, 1e12], "momentum": 0.9}})
    config = load_study_config(write_study(tmp_path / "study.toml", data))
    out = tmp_path / "out"

    progress = run_study(config, out, quiet=True)

    assert (progress.total, progress.done, progress.failed) == (8, 8, 0)
    trials = _trials(_sqlite(out))
    assert sorted(trials) == ["tiny/digits/sgd/bs32", "tiny/digits/sgd/bs64"]
    assert all(t.state == TrialState.COMPLETE for group in trials.values() for t in group)
    assert set(_complete_per_point(trials).values()) == {1}
    for trial in trials["tiny/digits/sgd/bs32"]:
        (record,) = trial.user_attrs["per_seed"]
        assert record["seed"] == trial.params["seed"]
        run_dir = Path(record["run_dir"])
        assert run_dir.parent.parent.name == "sgd-bs32"
        assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "result.json").is_file()
        if trial.params["lr"] > 1:
            # Divergence is a result with the worst value, not a failure.
            assert trial.user_attrs["status"] == "diverged" and trial.value == -math.inf
        else:
            assert trial.user_attrs["status"] == "completed"
            assert trial.value == trial.user_attrs["best_metric"] == record["best_metric"]
            assert trial.user_attrs["final_train_loss"] is not None

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = run_study(config, out, quiet=True)
    assert (again.total, again.done) == (8, 8)
    assert sum(len(g) for g in _trials(_sqlite(out)).values()) == 8
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps

    longer = load_study_config(
        write_study(tmp_path / "longer.toml", {**data, "budget": {"epochs": 2, "target": 0.3}})
    )
    with pytest.raises(StudyError, match=r"holds results of other settings \(changed: epochs\)"):
        run_study(longer, out, quiet=True)


def test_random_study_plans_an_equal_quasi_random_budget(tmp_path: Path) -> None:
    data = tiny_study(
        kind="random",
        trials=2,
        sampler_seed=7,
        batch_sizes=[64],
        optimizers={
            "alto": {
                "lr": {"low": 1e-3, "high": 1e-1, "log": True},
                "beta1": {"low": 0.9, "high": 0.99},
                "alpha": {"low": -5.0, "high": -1.0},
            },
            "sgd": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "momentum": 0.9},
        },
    )
    config = parse_study_config(data)
    plans = config.plan()
    assert [len(plan.trials) for plan in plans] == [2, 2]
    assert plans[0].trials == config.plan()[0].trials  # seeded: the same points every time
    assert len({t.params["lr"] for t in plans[0].trials}) == 2  # distinct points
    assert all(1e-3 <= t.params["lr"] <= 1e-1 and "seed" not in t.params for t in plans[0].trials)
    longer = parse_study_config({**data, "trials": 5}).plan()[0].trials
    assert longer[:2] == plans[0].trials  # raising the budget keeps the points already planned

    progress = run_study(config, tmp_path, quiet=True)
    assert (progress.total, progress.done) == (4, 4)
    for group in _trials(_sqlite(tmp_path)).values():
        for trial in group:
            seeds = trial.user_attrs["per_seed"]
            assert [s["seed"] for s in seeds] == [0, 1]
            assert trial.value == pytest.approx(sum(s["value"] for s in seeds) / 2)
    # Quasi-random (β1, α) points are drawn as a scatter, not as heatmap cells.
    report = write_study_report(_sqlite(tmp_path), "tiny", tmp_path)
    assert (tmp_path / "figures" / "scatter_alto_bs64.png").read_bytes().startswith(b"\x89PNG")
    # Both optimizers searched the lr: the lr-sensitivity figure is drawn.
    assert (tmp_path / "figures" / "metric_vs_lr.png").read_bytes().startswith(b"\x89PNG")
    assert "Equal budget: each optimizer had 2 quasi-random" in report.read_text()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_run_every_planned_trial_exactly_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = None
    if backend == "postgresql":
        url = new_database(request.getfixturevalue("postgres_server"), "two_workers")
    data = tiny_study(
        batch_sizes=[32],
        optimizers={
            "alto": {"lr": [0.01, 0.03], "beta1": [0.9, 0.99], "alpha": -5},
            "sgd": {"lr": [0.03, 0.1], "momentum": 0.9},
        },
        seeds=[0],
    )
    config = parse_study_config(data)

    progress = run_study(config, tmp_path, jobs=2, storage=url, quiet=True)

    trials = _trials(url or _sqlite(tmp_path))
    assert (progress.total, progress.done) == (6, 6)
    per_point = _complete_per_point(trials)
    assert len(per_point) == 6 and set(per_point.values()) == {1}
    assert all(t.state == TrialState.COMPLETE for group in trials.values() for t in group)


def test_a_worker_killed_mid_trial_leaves_it_failed_and_it_is_retried(tmp_path: Path) -> None:
    data = tiny_study(
        batch_sizes=[16],
        seeds=[0],
        budget={"epochs": 12},
        optimizers={"sgd": {"lr": 0.05}},
    )
    path = write_study(tmp_path / "study.toml", data)
    out = tmp_path / "out"
    code = (
        "from valleys.bench.study.parse import load_study_config; "
        "from valleys.bench.study.runner import run_study; "
        f"run_study(load_study_config({str(path)!r}), {str(out)!r}, quiet=True)"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[3])
    checkpoint = out / "runs" / "sgd-bs16" / "lr=0.05" / "seed-0" / "checkpoint.pt"
    deadline = time.monotonic() + 60
    try:
        while not checkpoint.exists():
            assert worker.poll() is None, "the worker ended before it could be killed"
            assert time.monotonic() < deadline, "the worker never checkpointed"
            time.sleep(0.02)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.wait()
    (killed,) = next(iter(_trials(_sqlite(out)).values()))
    assert killed.state == TrialState.RUNNING  # until its heartbeat goes stale

    progress = run_study(load_study_config(path), out, quiet=True)

    assert (progress.total, progress.done) == (1, 1)
    failed, retried = sorted(next(iter(_trials(_sqlite(out)).values())), key=lambda t: t.number)
    assert failed.state == TrialState.FAIL and retried.state == TrialState.COMPLETE
    assert retried.system_attrs["failed_trial"] == failed.number
    (record,) = retried.user_attrs["per_seed"]
    assert record["resumed"] and record["epochs_completed"] == 12


def test_a_point_planned_twice_by_racing_planners_runs_once(tmp_path: Path) -> None:
    config = parse_study_config(
        tiny_study(batch_sizes=[32], seeds=[0], optimizers={"sgd": {"lr": 0.1}})
    )
    study = optuna.create_study(
        storage=_sqlite(tmp_path), study_name="tiny/digits/sgd/bs32", direction="maximize"
    )
    for _ in range(2):  # what two planners checking for the point at the same moment leave
        study.enqueue_trial({"lr": 0.1, "seed": 0}, user_attrs={"run_key": "lr=0.1"})

    progress = run_study(config, tmp_path, quiet=True)

    assert (progress.total, progress.done, progress.waiting) == (1, 1, 0)
    first, duplicate = sorted(study.get_trials(), key=lambda t: t.number)
    assert first.state == TrialState.COMPLETE and duplicate.state == TrialState.WAITING


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochz": 3}, "unknown key 'epochz' at the top level; valid keys: batch_sizes, budget"),
        ({"budget": {"epochs": 1, "tagret": 0.5}}, "unknown key 'tagret' in [budget]"),
        (
            {"optimizers": {"lamb": {"lr": 0.01, "alpha": -5}}},
            "unknown key 'alpha' in [optimizers.lamb] (what lamb takes); valid keys: lr,",
        ),
        ({"optimizers": {"altoo": {"lr": 0.01}}}, "Unknown optimizer 'altoo'; valid names: "),
        ({"task": "cifar1000"}, "unknown task 'cifar1000'; valid tasks: fashion-mnist"),
        ({"optimizers": {"alto": {"lr": [0.01, -1.0]}}}, "optimizers.alto.lr value must be > 0"),
        ({"optimizers": {"alto": {"beta1": [1.5], "lr": 0.1}}}, "must be in [0, 1), got 1.5"),
        ({"optimizers": {"sgd": {"lr": 0.1, "warmup_epochs": 3}}}, "in [0, epochs=1], got 3"),
        ({"batch_sizes": []}, "batch_sizes must be a non-empty list"),
        ({"kind": "random"}, "a random study needs 'trials'"),
        ({"kind": "sweep"}, "kind must be one of grid, random"),
        (
            {"optimizers": {"sgd": {"lr": {"low": 0.1, "high": 0.01}}}},
            "a grid study takes a list of values or one number",
        ),
        (
            {"kind": "random", "trials": 2, "optimizers": {"sgd": {"lr": {"low": 1, "high": 0.1}}}},
            "optimizers.sgd.lr: low (1) must be < high (0.1)",
        ),
        (
            {
                "kind": "random",
                "trials": 2,
                "optimizers": {
                    "sgd": {"lr": 0.1, "weight_decay": {"low": 0.0, "high": 0.1, "log": True}}
                },
            },
            "a log range needs low > 0",
        ),
        (
            {
                "kind": "random",
                "trials": 2,
                "optimizers": {
                    "alto": {"lr": 0.01, "beta1": {"low": 0.5, "high": 0.9}, "alpha": -5}
                },
            },
            "outside E's stable region",
        ),
        (
            {"optimizers": {"alto": {"lr": {"by_batch_size": {"64": 0.01}}}}},
            "has no value for batch size 32",
        ),
        ({"workers": {"heartbeat_interval": 5, "grace_period": 5}}, "must exceed"),
        (
            {"optimizers": {"mine": {"optimizer": "altoo", "lr": 0.01}}},
            "[optimizers.mine]: Unknown optimizer 'altoo'",
        ),
        (
            {"optimizers": {"sgd": {"lr": 0.1, "e_schedule": "cosine"}}},
            "unknown key 'e_schedule' in [optimizers.sgd]",
        ),
        (
            {"optimizers": {"alto": {"lr": 0.1, "e_schedule": "step"}}},
            "optimizers.alto.e_schedule must be one of constant, linear, cosine",
        ),
        (
            {
                "optimizers": {
                    "a": {
                        "optimizer": "alto",
                        "lr": 0.1,
                        "e_schedule": "cosine",
                        "target_perturbation": 0.1,
                    }
                }
            },
            "e_schedule and target_perturbation both set E's alpha",
        ),
        (
            {"optimizers": {"alto": {"lr": 0.1, "target_perturbation": [0.0]}}},
            "optimizers.alto.target_perturbation value must be > 0",
        ),
        (
            {"optimizers": {"adamw": {"lr": 0.1, "target_perturbation": 0.1}}},
            "unknown key 'target_perturbation' in [optimizers.adamw]",
        ),
    ],
)
def test_bad_configurations_are_refused_by_key(changes: dict, message: str) -> None:
    with pytest.raises(StudyConfigError) as error:
        parse_study_config(tiny_study(**changes))
    assert message in str(error.value)


def test_a_bad_file_is_refused_before_any_run(tmp_path: Path, capsys: Any) -> None:
    path = write_study(tmp_path / "bad.toml", tiny_study(optimizers={"nope": {"lr": 0.1}}))
    parser = argparse.ArgumentParser()
    add_study_parser(parser.add_subparsers())
    out = tmp_path / "out"

    args = parser.parse_args(["study", str(path), "--out", str(out)])

    assert args.handler(args) == 1
    assert "Unknown optimizer 'nope'; valid names:" in capsys.readouterr().err
    assert not out.exists()


def test_yaml_and_toml_give_the_same_study(tmp_path: Path) -> None:
    import yaml

    data = tiny_study()
    toml = load_study_config(write_study(tmp_path / "s.toml", data))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    assert load_study_config(tmp_path / "s.yaml") == toml


def test_an_unreachable_database_gives_a_clear_error(tmp_path: Path) -> None:
    config = parse_study_config(tiny_study())
    url = "postgresql://someone:secret@127.0.0.1:1/nowhere"
    with pytest.raises(StudyError) as error:
        run_study(config, tmp_path, storage=url, quiet=True)
    message = str(error.value)
    assert message.startswith("cannot open storage postgresql://someone:***@127.0.0.1:1/nowhere")
    assert "secret" not in message
    assert not (tmp_path / "runs").exists()
    with pytest.raises(StudyError, match="invalid storage URL"):
        open_storage("not a url")


def test_quick_shrinks_the_study_to_a_smoke_test() -> None:
    data = tiny_study(
        batch_sizes=[16, 32, 64, 4096],
        seeds=[3, 4, 5],
        budget={"epochs": 9},
        task_options={"model": "mlp"},
        optimizers={
            "alto": {"lr": [0.1, 0.2, 0.3], "beta1": [0.9, 0.99, 0.999], "warmup_epochs": [2, 0]}
        },
    )
    quick = parse_study_config(data).quick_version()
    assert quick.name == "tiny-quick" and quick.quick
    assert (quick.seeds, quick.epochs, quick.batch_sizes) == ([3], 1, [16, 2048])
    assert (quick.task_options.train_limit, quick.task_options.test_limit) == (2048, 512)
    space = quick.optimizers[0].at(16)
    assert space == {"lr": (0.1, 0.2), "beta1": (0.9, 0.99), "warmup_epochs": (1.0, 0.0)}
    assert len(quick.plan()[0].trials) == 8

    random = parse_study_config(
        {
            **data,
            "kind": "random",
            "trials": 10,
            "optimizers": {"sgd": {"lr": {"low": 0.01, "high": 1.0, "log": True}}},
        }
    ).quick_version()
    assert random.trials == 2 and random.optimizers[0].at(16)["lr"] == Range(0.01, 1.0, True)


def test_e_beta1_reaches_each_optimizer_its_own_way() -> None:
    config = parse_study_config(
        tiny_study(
            optimizers={
                "alto": {"lr": 0.01, "beta1": 0.999, "alpha": -5},
                "eadam": {"lr": 0.01, "beta1": 0.5},
                "esgd": {"lr": 0.01, "beta1": 0.9, "momentum": 0.8},
            }
        )
    )
    alto, eadam, esgd = (plan.unit for plan in config.plan()[::2])
    assert config.train_config(
        alto, {"lr": 0.01, "beta1": 0.999, "alpha": -5}, 0
    ).optimizer_args == {
        "alpha": -5.0,
        "betas": (0.999, 0.9, 0.99),
    }
    assert config.train_config(eadam, {"lr": 0.01, "beta1": 0.5}, 0).optimizer_args == {
        "betas": (0.5, 0.9, 0.999)
    }
    assert config.train_config(
        esgd, {"lr": 0.01, "beta1": 0.9, "momentum": 0.8}, 0
    ).optimizer_args == {
        "beta": 0.9,
        "momentum": 0.8,
    }


def test_variants_of_one_optimizer_are_units_of_their_own(tmp_path: Path) -> None:
    variants = {
        "alto": {"lr": 0.01, "alpha": -5, "beta1": 0.99},
        "alto_auto": {
            "optimizer": "alto",
            "lr": 0.01,
            "alpha": -5,
            "beta1": 0.99,
            "target_perturbation": [0.05, 0.2],
        },
        "alto_cosine": {
            "optimizer": "alto",
            "lr": 0.01,
            "alpha": -5,
            "beta1": 0.99,
            "e_schedule": "cosine",
        },
    }
    data = tiny_study(optimizers=variants, batch_sizes=[64], seeds=[0])
    config = load_study_config(write_study(tmp_path / "study.toml", data))
    out = tmp_path / "out"

    progress = run_study(config, out, quiet=True)

    assert (progress.total, progress.done, progress.failed) == (4, 4, 0)
    trials = _trials(_sqlite(out))
    assert sorted(trials) == [f"tiny/digits/{name}/bs64" for name in sorted(variants)]
    configs = {
        Path(t.user_attrs["per_seed"][0]["run_dir"]).parent.parent.name: json.loads(
            (Path(t.user_attrs["per_seed"][0]["run_dir"]) / "config.json").read_text()
        )
        for group in trials.values()
        for t in group
        if t.params.get("target_perturbation", 0.05) == 0.05
    }
    assert {name: c["optimizer"] for name, c in configs.items()} == {
        "alto-bs64": "alto",
        "alto_auto-bs64": "alto",
        "alto_cosine-bs64": "alto",
    }
    assert configs["alto_auto-bs64"]["optimizer_args"]["target_perturbation"] == 0.05
    assert configs["alto_cosine-bs64"]["e_schedule"] == "cosine"
    assert configs["alto-bs64"]["e_schedule"] == "constant"
    report = write_study_report(_sqlite(out), config.name, out).read_text()
    assert "alto_auto" in report and "alto_cosine" in report
    # Every auto-E target's telemetry is drawn and tabled, not only the best one's.
    telemetry = report.split("## E's perturbation")[1].split("\n## ")[0]
    assert "target_perturbation=0.05" in telemetry and "target_perturbation=0.2" in telemetry


@pytest.mark.parametrize(
    ("name", "trials"),
    [
        ("batch_sweep", 42),
        ("beta_alpha_grid", 108),
        ("time_to_target", 18),
        ("equal_budget", 48),
        ("cnn_decomposition", 36),
        ("text_equal_budget", 42),
        ("text_equal_budget_layerwise", 18),
        ("cnn_peers", 22),
        ("lm_decomposition", 39),
        ("auto_e_cnn", 27),
        ("auto_e_text", 27),
    ],
)
def test_shipped_study_configs_are_valid_and_state_their_run_time(name: str, trials: int) -> None:
    path = Path(__file__).resolve().parents[3] / "studies" / f"{name}.toml"
    config = load_study_config(path)
    assert sum(len(plan.trials) for plan in config.plan()) == trials
    assert "# Run time on 2 CPU cores, measured" in path.read_text()


@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--jobs", "3"], 3)])
def test_study_command_workers_default_to_compares(
    argv: list[str], expected: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from valleys.bench.run.pool import default_jobs
    from valleys.bench.study import runner as study

    seen: dict[str, int] = {}

    def record(*args: Any, jobs: int, **kwargs: Any) -> None:
        seen["jobs"] = jobs
        raise study.StudyError("recorded")

    monkeypatch.setattr(study, "run_study", record)
    parser = argparse.ArgumentParser()
    add_study_parser(parser.add_subparsers())
    path = write_study(tmp_path / "s.toml", tiny_study())
    args = parser.parse_args(["study", str(path), "--out", str(tmp_path / "out"), *argv])
    assert args.handler(args) == 1
    assert seen["jobs"] == (expected or default_jobs())
