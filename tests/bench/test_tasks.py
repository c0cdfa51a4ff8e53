"""Every task loads its real data (or files the test writes) and trains a few steps."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from valleys.bench.data import DatasetMissing
from valleys.bench.run.config import TrainConfig
from valleys.bench.run.train import train
from valleys.bench.tasks import (
    TASKS,
    Split,
    TaskOptions,
    available_tasks,
    build_task,
    normalise_images,
)


def _build(name: str, options: TaskOptions):
    try:
        return build_task(name, options)
    except DatasetMissing as exc:
        pytest.skip(f"{name} data not installed: {exc}")


def _train_a_few_steps(name: str, options: TaskOptions, batch_size: int = 32, **changes):
    task = _build(name, options)
    config = TrainConfig(
        task=name,
        optimizer="alto",
        lr=1e-2,
        batch_size=batch_size,
        epochs=1,
        task_options=options,
        **changes,
    )
    result = train(config, task=task, quiet=True)
    assert result.status == "completed"
    assert result.steps == len(task.train) // batch_size >= 1
    assert math.isfinite(result.final_train_loss)
    assert f"test_{result.metric}" in result.history[0]
    return task, result


def test_registry_lists_every_task_of_the_issue() -> None:
    assert available_tasks() == [
        "fashion-mnist",
        "mnist-5k",
        "digits",
        "cifar10",
        "cifar100",
        "imagefolder",
        "rotten-tomatoes",
        "bbc-news",
        "austen-lm",
        "text-lm",
        "sine",
    ]
    assert TASKS["fashion-mnist"].models == ("resnet20", "small_cnn", "mlp")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mnist", TaskOptions(), "unknown task 'mnist'; valid tasks: fashion-mnist, mnist-5k"),
        ("digits", TaskOptions(model="gpt2"), "valid models: resnet20, small_cnn, mlp"),
        ("cifar10", TaskOptions(), "needs --data-root"),
        ("text-lm", TaskOptions(), "needs --data-file"),
        ("digits", TaskOptions(model_path="/x"), "does not take one"),
        ("digits", TaskOptions(train_limit=0), "train_limit must be >= 1"),
        ("digits", TaskOptions(context=0), "context must be >= 1"),
        ("digits", TaskOptions(width=0), "width must be >= 1"),
        ("digits", TaskOptions(layers=2), "fixed depth"),
        ("austen-lm", TaskOptions(width=30), "multiple of its 4 heads"),
    ],
)
def test_bad_task_choices_are_refused(name: str, options: TaskOptions, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_task(name, options)


def test_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="download the python version"):
        build_task("cifar10", TaskOptions(data_root=str(tmp_path)))


def test_images_are_normalised_with_training_statistics() -> None:
    train_images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    test_images = torch.full((5, 3, 4, 4), 255, dtype=torch.uint8)
    train_x, test_x = normalise_images(train_images, test_images)
    assert train_x.dtype == torch.float32
    torch.testing.assert_close(train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    raw = train_images.float() / 255
    expected = (1 - raw.mean(dim=(0, 2, 3))) / raw.std(dim=(0, 2, 3))
    torch.testing.assert_close(test_x[0, :, 0, 0], expected, atol=1e-4, rtol=0)


def test_subsets_are_fixed_and_independent_of_the_run_seed() -> None:
    split = Split((torch.arange(100).float(),), torch.arange(100))
    first = split.subset(10)
    assert len(first) == 10 and torch.equal(first.targets, split.subset(10).targets)
    assert split.subset(None) is split and split.subset(1000) is split


@pytest.mark.parametrize("model", ["small_cnn", "resnet20", "mlp"])
def test_digits(model: str) -> None:
    task, _ = _train_a_few_steps("digits", TaskOptions(model=model, train_limit=128), 64)
    assert task.train.inputs[0].shape[1:] == (1, 8, 8)
    assert task.info["classes"] == [str(d) for d in range(10)]


def test_digits_is_normalised_on_its_training_split() -> None:
    task = build_task("digits")
    images = task.train.inputs[0]
    assert abs(images.mean().item()) < 1e-5 and images.std().item() == pytest.approx(1, abs=1e-3)
    assert task.model_name == "small_cnn" and task.metric == "accuracy"


@pytest.mark.parametrize("model", ["resnet20", "small_cnn"])
def test_fashion_mnist(model: str) -> None:
    options = TaskOptions(model=model, train_limit=128, test_limit=128)
    task, _ = _train_a_few_steps("fashion-mnist", options, 64)
    assert task.info["train_size"] == 128 and task.info["input_shape"] == [1, 28, 28]
    assert task.model_name == model


def test_fashion_mnist_full_splits() -> None:
    task = _build("fashion-mnist", TaskOptions())
    assert len(task.train) == 60_000 and len(task.test) == 10_000
    assert task.model_name == "resnet20" and task.target == 0.85


def test_mnist_5k() -> None:
    task, _ = _train_a_few_steps("mnist-5k", TaskOptions(model="small_cnn", train_limit=128), 64)
    assert task.info["train_size"] == 128


def _write_cifar(root: Path, num_classes: int, per_batch: int = 12) -> None:
    rng = np.random.default_rng(0)

    def batch(n: int, label_key: str) -> dict:
        return {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        }

    def dump(name: str, obj: dict) -> None:
        with (root / name).open("wb") as handle:
            pickle.dump(obj, handle)

    root.mkdir(parents=True)
    names = [f"class{i}" for i in range(num_classes)]
    if num_classes == 10:
        for i in range(1, 6):
            dump(f"data_batch_{i}", batch(per_batch, "labels"))
        dump("test_batch", batch(per_batch, "labels"))
        dump("batches.meta", {"label_names": names})
    else:
        dump("train", batch(5 * per_batch, "fine_labels"))
        dump("test", batch(per_batch, "fine_labels"))
        dump("meta", {"fine_label_names": names})


@pytest.mark.parametrize(
    ("name", "num_classes", "folder"),
    [("cifar10", 10, "cifar-10-batches-py"), ("cifar100", 100, "cifar-100-python")],
)
def test_cifar_from_pickle_batches(
    tmp_path: Path, name: str, num_classes: int, folder: str
) -> None:
    _write_cifar(tmp_path / folder, num_classes)
    task, _ = _train_a_few_steps(name, TaskOptions(data_root=str(tmp_path)), 16)
    assert len(task.train) == 60 and task.train.inputs[0].shape[1:] == (3, 32, 32)
    assert len(task.info["classes"]) == num_classes


def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    options = TaskOptions(data_root=str(tmp_path), image_size=16, model="small_cnn")
    task, _ = _train_a_few_steps("imagefolder", options, 8)
    assert task.train.inputs[0].shape[1:] == (3, 16, 16)
    assert task.info["classes"] == ["cats", "dogs"]


@pytest.mark.parametrize(("name", "classes"), [("rotten-tomatoes", 2), ("bbc-news", 5)])
def test_text_classification(name: str, classes: int) -> None:
    options = TaskOptions(max_length=32, vocab_size=2000, train_limit=64, test_limit=64)
    task, _ = _train_a_few_steps(name, options, 32)
    ids, mask = task.train.inputs
    assert ids.shape == mask.shape == (64, 32) and ids.dtype == torch.int64
    assert len(task.info["classes"]) == classes


def test_text_classification_fine_tunes_a_local_checkpoint(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from valleys.bench.tokenization import train_wordpiece

    tokenizer = train_wordpiece(["a good film", "a bad film", "great acting", "dull plot"], 200)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    options = TaskOptions(model_path=str(tmp_path), max_length=32, train_limit=64, test_limit=32)
    task, _ = _train_a_few_steps("rotten-tomatoes", options, 32)
    assert task.model_name == "pretrained"


def test_fine_tuning_needs_the_checkpoint_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        _build("rotten-tomatoes", TaskOptions(model_path=str(tmp_path)))


def test_austen_language_model() -> None:
    options = TaskOptions(context=64, train_limit=64, test_limit=32)
    task, result = _train_a_few_steps("austen-lm", options, 32)
    inputs, targets = task.train.inputs[0], task.train.targets
    assert inputs.shape == targets.shape == (64, 64)
    assert task.metric == "perplexity" and not task.higher_is_better
    assert result.best_metric == pytest.approx(math.exp(result.history[0]["test_loss"]))
    assert task.info["vocab_size"] >= 70


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [
        ("digits", TaskOptions(model="small_cnn", width=8), lambda m: m[0].out_channels == 8),
        ("digits", TaskOptions(model="resnet20", width=4), lambda m: m.fc.in_features == 16),
        ("digits", TaskOptions(model="mlp", width=40), lambda m: m[1][0].out_features == 40),
        (
            "rotten-tomatoes",
            TaskOptions(width=32, layers=1, vocab_size=500, train_limit=8, test_limit=8),
            lambda m: m.config.hidden_size == 32 and m.config.num_hidden_layers == 1,
        ),
        (
            "austen-lm",
            TaskOptions(width=16, layers=3, context=16, train_limit=8, test_limit=8),
            lambda m: m.config.n_embd == 16 and m.config.n_layer == 3,
        ),
    ],
)
def test_width_and_layers_size_the_model(
    name: str, options: TaskOptions, size: Callable[[nn.Module], bool]
) -> None:
    assert size(build_task(name, options).build_model())


def test_text_file_language_model(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("It is a truth universally acknowledged. " * 200)
    task, _ = _train_a_few_steps("text-lm", TaskOptions(data_file=str(path), context=32), 32)
    inputs, targets = task.train.inputs[0], task.train.targets
    # Targets are the inputs shifted by one character.
    assert torch.equal(inputs[0, 1:], targets[0, :-1]) and torch.equal(inputs[1, 0], targets[0, -1])


def test_sine_regression() -> None:
    task, result = _train_a_few_steps("sine", TaskOptions(train_limit=2048), 512)
    assert task.metric == "mse" and result.best_metric == result.history[0]["test_loss"]
