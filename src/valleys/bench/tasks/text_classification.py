"""Text classification tasks: texts as token ids and attention masks, a Transformer encoder.

The tokenizer is a WordPiece vocabulary trained on the training texts, or the one saved with a
pretrained checkpoint when one is fine-tuned (``model_path``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from valleys.bench.tasks.task import Split, Task, TaskOptions

__all__ = ["text_classification_task"]


def text_classification_task(
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
                return models.text_classifier(
                    vocab_size,
                    num_classes,
                    options.max_length,
                    hidden_size=options.width or 128,
                    layers=options.layers or 2,
                )

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
