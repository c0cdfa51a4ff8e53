"""Character-level language modelling tasks: a corpus cut into fixed-length windows, GPT-2."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from valleys.bench.tasks.task import Split, Task, TaskOptions

__all__ = ["language_model_task"]

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


def language_model_task(
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
            return models.gpt2_lm(
                vocab_size=vocab_size,
                context=options.context,
                n_embd=options.width or 128,
                n_layer=options.layers or 4,
            )

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
