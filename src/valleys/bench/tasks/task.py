"""What a task is: its options, its data as tensors, its loss and metrics, its registry entry."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KINDS", "Split", "Task", "TaskOptions", "TaskSpec"]

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
        width: the model's width (None: the model's own default): ``small_cnn``'s first
            convolution (32), ``resnet20``'s first stage (16), the text Transformer's hidden size
            (128), GPT-2's embedding size (128), the image MLP's hidden layers (256). Transformer
            widths must be multiples of their 4 attention heads.
        layers: Transformer blocks of the text classifier (2) and GPT-2 (4) (None: those defaults).
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
    width: int | None = None
    layers: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option out of range."""
        for name in ("image_size", "max_length", "context", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("width", "layers", "train_limit", "test_limit"):
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
