"""examples/lightning_module.py: ALTO from configure_optimizers, resumed from a Lightning checkpoint.

The run resumed from the checkpoint of epoch 2 must end as the uninterrupted 4-epoch run: the same
optimizer state (E's buffer included) and parameters, bit for bit, in memory and in the last
checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")
from integration_helpers import (
    assert_same_optimizer_state,
    assert_same_tensors,
    load_example,
)

lightning_example = load_example("lightning_module")

# Resuming into another folder is the point here; Lightning's own deprecation is not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]


def _last(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "epoch=3.ckpt", weights_only=True)


def test_resumed_run_keeps_e_buffer_and_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    whole, whole_model = lightning_example.fit(tmp_path / "whole", epochs=4)
    assert float(whole.callback_metrics["val_accuracy"]) >= 0.9
    resumed, resumed_model = lightning_example.fit(
        tmp_path / "resumed", epochs=4, resume=str(tmp_path / "whole" / "epoch=1.ckpt")
    )
    assert resumed.global_step == whole.global_step
    assert_same_optimizer_state(
        resumed.optimizers[0].state_dict(), whole.optimizers[0].state_dict()
    )
    assert_same_tensors(resumed_model.state_dict(), whole_model.state_dict())
    got, want = _last(tmp_path / "resumed"), _last(tmp_path / "whole")
    assert_same_optimizer_state(got["optimizer_states"][0], want["optimizer_states"][0])
    assert_same_tensors(got["state_dict"], want["state_dict"])
