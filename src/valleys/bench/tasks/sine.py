"""The paper's Appendix A regression task: an MLP fitting a noisy sine."""

from __future__ import annotations

from valleys.bench.tasks.task import Split, Task, TaskOptions

__all__ = ["build_sine"]


def build_sine(options: TaskOptions, model_name: str) -> Task:
    """The ``sine`` task (it takes no options)."""
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
