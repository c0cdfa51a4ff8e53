"""``valleys flatness RUN``: flatness of a finished run's end point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from one_thread import one_thread  # noqa: F401  (the fixture pytestmark uses)

from valleys.bench.analysis.flatness_runs import (
    FLATNESS_FILE,
    FlatnessSettings,
    measure_run,
    plot_profiles,
)
from valleys.bench.run.checkpoint import CheckpointError
from valleys.bench.run.config import TrainConfig
from valleys.bench.run.train import train
from valleys.bench.tasks import TaskOptions
from valleys.commands.main import main

SMALL = FlatnessSettings(
    examples=256, batch_size=128, power_iters=30, trace_samples=4, profile_points=5
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flat") / "run"
    config = TrainConfig(
        task="digits",
        optimizer="alto",
        lr=1e-2,
        batch_size=256,
        epochs=2,
        task_options=TaskOptions(model="mlp"),
    )
    train(config, out, quiet=True)
    return out


def test_measures_the_end_point_and_stores_it(run_dir: Path) -> None:
    result = measure_run(run_dir, SMALL)
    assert result["optimizer"] == "alto" and result["seed"] == 0
    assert result["distance_travelled"] > 0
    middle = len(result["profile_alphas"]) // 2
    assert result["profile_alphas"][middle] == 0.0
    assert result["profile_losses"][middle] == pytest.approx(
        result["train_loss_on_subset"], rel=1e-5
    )
    assert result["hessian_trace"] > 0
    low, high = result["lanczos_min_eigenvalue"], result["lanczos_max_eigenvalue"]
    if high is not None and result["top_eigenvalue_converged"] and result["top_eigenvalue"] > 0:
        # Both methods find the largest eigenvalue when it dominates in magnitude.
        assert high == pytest.approx(result["top_eigenvalue"], rel=1e-2)
    if low is not None and high is not None:
        assert low <= high
    if result["top_eigenvalue_converged"]:
        assert result["top_eigenvalue"] == result["top_eigenvalue_estimate"] > 0
    else:
        assert result["top_eigenvalue"] is None
    stored = json.loads((run_dir / FLATNESS_FILE).read_text())
    assert stored["settings"]["examples"] == 256
    png = plot_profiles([result], run_dir / "profile.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_distance_is_measured_from_the_runs_own_initialisation(tmp_path: Path) -> None:
    """With a negligible lr the end point is the initialisation: the distance must vanish, which
    only happens when θ_0 is rebuilt exactly as training built it."""
    config = TrainConfig(
        task="digits",
        optimizer="alto",
        lr=1e-12,
        batch_size=256,
        epochs=1,
        task_options=TaskOptions(model="mlp"),
    )
    train(config, tmp_path / "still", quiet=True)
    assert measure_run(tmp_path / "still", SMALL)["distance_travelled"] < 1e-8


def test_mismatched_checkpoint_and_missing_run_are_refused(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no run"):
        measure_run(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["task_options"]["model"] = "small_cnn"
    (other / "config.json").write_text(json.dumps(config))
    (other / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError):
        measure_run(other, SMALL)


def test_bad_settings_name_the_argument() -> None:
    with pytest.raises(ValueError, match="Invalid power_iters: 0"):
        FlatnessSettings(power_iters=0)
    with pytest.raises(ValueError, match="Invalid tol"):
        FlatnessSettings(tol=0.0)


def test_cli_prints_a_table_and_writes_the_profile_plot(
    run_dir: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "flat.png"
    code = main(
        [
            "flatness",
            str(run_dir),
            "--examples",
            "256",
            "--power-iters",
            "20",
            "--trace-samples",
            "3",
            "--profile-points",
            "5",
            "--plot",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| alto | 0 |" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_and_compare_can_measure_flatness_at_the_end(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    tiny = ["--task", "digits", "--model", "mlp", "--batch-size", "256", "--epochs", "1", "--quiet"]
    assert main(["train", *tiny, "--lr", "0.01", "--flatness", "--out", str(tmp_path / "run")]) == 0
    assert "flatness of" in capsys.readouterr().out
    assert (tmp_path / "run" / FLATNESS_FILE).is_file()

    compare = ["compare", *tiny, "--optimizers", "alto,lamb", "--lrs", "0.01", "--jobs", "1"]
    assert main([*compare, "--flatness", "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Flatness of the end points" in report
    assert report.count("| 0.01 | 0 |") == 2

    capsys.readouterr()
    assert main(["train", *tiny, "--flatness", "--dist", "fsdp"]) == 1
    assert "--flatness is not available with --dist fsdp" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["text_classifier", "gpt2_lm"])
def test_hvps_through_the_text_and_lm_models_are_exact(kind: str) -> None:
    """Hessian-vector products through transformers' BERT and GPT-2 (eval mode, no dropout) match
    central differences of the gradient; this needs the math attention kernel (flash attention has
    no double backward), which flatness selects itself."""
    from valleys.bench.analysis.flatness import hvp, top_hessian_eigenvalue
    from valleys.bench.models import gpt2_lm, text_classifier

    torch.manual_seed(0)
    ids = torch.randint(1, 30, (4, 12))
    if kind == "text_classifier":
        model = text_classifier(30, 3, max_length=12, hidden_size=16, layers=1, heads=2).double()
        labels = torch.tensor([0, 1, 2, 1])

        def loss() -> torch.Tensor:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            return torch.nn.functional.cross_entropy(logits, labels)
    else:
        model = gpt2_lm(30, context=12, n_embd=16, n_layer=1, n_head=2).double()

        def loss() -> torch.Tensor:
            logits = model(input_ids=ids).logits[:, :-1]
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(1)
    vector = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    product = hvp(loss, params, vector)

    def gradient_at(sign: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, v in zip(params, vector, strict=True):
                p.add_(v, alpha=sign * 1e-5)
        grads = torch.autograd.grad(loss(), params)
        with torch.no_grad():
            for p, v in zip(params, vector, strict=True):
                p.sub_(v, alpha=sign * 1e-5)
        return list(grads)

    plus, minus = gradient_at(1.0), gradient_at(-1.0)
    scale = max(float(h.abs().max()) for h in product)
    for h, gp, gm in zip(product, plus, minus, strict=True):
        # Central differences in float64 with step 1e-5 are good to ~1e-8 of the largest entry.
        torch.testing.assert_close(h, (gp - gm) / 2e-5, rtol=1e-4, atol=1e-6 * scale)
    top = top_hessian_eigenvalue(loss, params, iters=50, tol=1e-3)
    assert math.isfinite(top.value) and math.isfinite(top.residual)
    if top.converged:
        assert top.residual <= 1e-3 * abs(top.value)


def test_flatness_of_a_language_model_run(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(
        "It is a truth universally acknowledged, that a single man in possession. " * 40
    )
    config = TrainConfig(
        task="text-lm",
        optimizer="alto",
        lr=1e-2,
        batch_size=32,
        epochs=1,
        task_options=TaskOptions(data_file=str(text), context=16),
    )
    train(config, tmp_path / "lm", quiet=True)
    result = measure_run(tmp_path / "lm", SMALL)
    assert result["task"] == "text-lm" and math.isfinite(result["hessian_trace"])
    assert result["distance_travelled"] > 0
