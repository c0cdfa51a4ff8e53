"""Benchmark tasks: each task is real data, a model, a loss and the metrics reported on it.

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

:mod:`~valleys.bench.tasks.task` holds the types, one module per family builds its tasks
(:mod:`~valleys.bench.tasks.image`, :mod:`~valleys.bench.tasks.text_classification`,
:mod:`~valleys.bench.tasks.language_model`, :mod:`~valleys.bench.tasks.sine`) and
:mod:`~valleys.bench.tasks.registry` names them.
"""

from valleys.bench.tasks.image import normalise_images
from valleys.bench.tasks.registry import (
    TASKS,
    available_tasks,
    build_task,
    check_task_options,
    get_task_spec,
    resolve_model,
)
from valleys.bench.tasks.task import KINDS, Split, Task, TaskOptions, TaskSpec

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
