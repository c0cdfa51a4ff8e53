"""examples/hf_trainer.py: ALTO in a transformers Trainer, resumed from a Trainer checkpoint.

The resumed run must end where the uninterrupted one ends, optimizer state (E's buffer included)
and parameters bit for bit; a checkpoint stripped of E's buffer must not, which shows that the
buffer travels in the Trainer's ``optimizer.pt`` and that the comparison can tell.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
from integration_helpers import (
    assert_same_optimizer_state,
    assert_same_tensors,
    load_example,
)
from safetensors.torch import load_file

hf = load_example("hf_trainer")


def _checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The optimizer state and the parameters a Trainer checkpoint holds."""
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    return optimizer, load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's uninterrupted run: 48 steps, checkpoints at 24 and 48."""
    out = tmp_path_factory.mktemp("whole")
    metrics = hf.main(["--out", str(out)])
    assert metrics["eval_accuracy"] >= 0.9
    return out


def test_resumed_run_keeps_e_buffer_and_ends_as_the_uninterrupted_one(
    whole: Path, tmp_path: Path
) -> None:
    metrics = hf.main(["--out", str(tmp_path), "--resume", str(whole / "checkpoint-24")])
    assert metrics["eval_accuracy"] >= 0.9
    want_optimizer, want_model = _checkpoint(whole / "checkpoint-48")
    got_optimizer, got_model = _checkpoint(tmp_path / "checkpoint-48")
    assert_same_optimizer_state(got_optimizer, want_optimizer)
    assert_same_tensors(got_model, want_model)


def test_a_checkpoint_without_e_buffer_resumes_elsewhere(whole: Path, tmp_path: Path) -> None:
    stripped = tmp_path / "checkpoint-24"
    shutil.copytree(whole / "checkpoint-24", stripped)
    optimizer = torch.load(stripped / "optimizer.pt", weights_only=True)
    for state in optimizer["state"].values():
        del state["grad_ema"]
    torch.save(optimizer, stripped / "optimizer.pt")
    trainer = hf.build_trainer(tmp_path / "out")
    trainer.train(resume_from_checkpoint=str(stripped))
    got = trainer.model.state_dict()
    want = load_file(whole / "checkpoint-48" / "model.safetensors")
    assert any(not torch.equal(got[name], value) for name, value in want.items())
