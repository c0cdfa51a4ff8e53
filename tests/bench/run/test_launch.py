"""Starting a run: its configuration and folder from the given options, and the lead rank."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from valleys.bench.run.config import CHECKPOINT_FILE, CONFIG_FILE, TrainConfig
from valleys.bench.run.launch import (
    OPTION_NAMES,
    apply_options,
    is_lead,
    prepare_run,
    shared,
)


def test_options_go_to_the_config_or_its_task_options() -> None:
    config = apply_options(TrainConfig(), {"lr": 0.1, "model": "mlp", "train_limit": 100})
    assert config.lr == 0.1
    assert config.task_options.model == "mlp" and config.task_options.train_limit == 100
    assert apply_options(config, {}) == config
    assert {"lr", "optimizer_args", "model", "vocab_size"} <= OPTION_NAMES


def test_a_new_run_is_validated_and_gets_a_default_folder(tmp_path: Path) -> None:
    config, out = prepare_run({"task": "digits", "optimizer": "lamb"})
    assert config.task == "digits" and config.optimizer == "lamb"
    assert re.fullmatch(r"runs/train-digits-lamb-\d{8}-\d{6}", out.as_posix())
    assert prepare_run({}, out=tmp_path)[1] == tmp_path
    with pytest.raises(ValueError, match="warmup_epochs"):
        prepare_run({"warmup_epochs": 20.0, "epochs": 2})


def test_a_resumed_run_takes_its_stored_config_and_the_given_changes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        prepare_run({}, resume=tmp_path)
    stored = TrainConfig(task="digits", lr=0.01, epochs=2)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(stored.to_dict()))
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt is missing.*start afresh"):
        prepare_run({}, resume=tmp_path)
    # Only its presence matters here; train() reads it.
    (tmp_path / CHECKPOINT_FILE).touch()
    config, out = prepare_run({"epochs": 5}, resume=tmp_path)
    assert out == tmp_path
    assert config.lr == 0.01 and config.task == "digits" and config.epochs == 5


def test_a_single_process_leads_and_keeps_its_own_values() -> None:
    assert is_lead()
    assert shared("20250101-000000") == "20250101-000000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", r"config\.json should hold a JSON object, found array"),
        ('{"lr": 0.1', r"config\.json is not valid JSON \(.* at column 11\)"),
        ('{\n"lr": }', r"config\.json is not valid JSON \(Expecting value at line 2 column 7\)"),
        (
            '{"nosuch": 1}',
            r"config\.json is not a valid run configuration: unknown training options",
        ),
        ('{"task_options": [1]}', r"config\.json is not a valid run configuration"),
    ],
)
def test_a_stored_config_that_cannot_be_read_is_named(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / CONFIG_FILE).write_text(text)
    (tmp_path / CHECKPOINT_FILE).touch()
    with pytest.raises(ValueError, match=message):
        prepare_run({}, resume=tmp_path)
