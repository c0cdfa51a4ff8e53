"""Small BERT and GPT-2 models from Hugging Face ``transformers``, built from configs.

The models are initialised at random (nothing is downloaded) so that they can be trained from
scratch here; :func:`text_classifier_from_pretrained` loads a checkpoint the user already has on
disk. All return the ``transformers`` model, whose forward returns a ``ModelOutput`` (``.logits``,
and ``.loss`` when ``labels`` are passed).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


def text_classifier(
    vocab_size: int,
    num_classes: int,
    max_length: int = 128,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
) -> nn.Module:
    """A ``BertForSequenceClassification`` with a small ``BertConfig``, randomly initialised.

    Feed-forward width is ``4 · hidden_size`` as in BERT; ``max_length`` sets the number of position
    embeddings. ``[PAD]`` is id 0, as :func:`valleys.bench.tokenization.train_wordpiece` assigns it.
    Call it with ``input_ids`` and ``attention_mask`` ``[B, T]``, ``T ≤ max_length``; ``.logits`` is
    ``[B, num_classes]``.
    """
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_length,
        num_labels=num_classes,
        pad_token_id=0,
    )
    return BertForSequenceClassification(config)


def text_classifier_from_pretrained(path: str | Path, num_classes: int) -> nn.Module:
    """The sequence classifier saved in the local folder ``path``, with a ``num_classes`` head.

    Loads with ``AutoModelForSequenceClassification`` and ``local_files_only=True`` (nothing is
    downloaded); a classification head of another size, or none, is replaced by a fresh one.
    """
    from transformers import AutoModelForSequenceClassification

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no Hugging Face checkpoint at {folder} (config.json missing): save one there with "
            "`model.save_pretrained(path)`"
        )
    return AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=num_classes, local_files_only=True, ignore_mismatched_sizes=True
    )


def gpt2_lm(
    vocab_size: int, context: int = 128, n_embd: int = 128, n_layer: int = 4, n_head: int = 4
) -> nn.Module:
    """A ``GPT2LMHeadModel`` with a small ``GPT2Config``, randomly initialised.

    ``context`` is the number of positions. GPT-2's beginning/end-of-text ids (50256) would fall
    outside a small vocabulary, so they are unset. Call it with ``input_ids`` ``[B, T]``,
    ``T ≤ context``; ``.logits`` is ``[B, T, vocab_size]``, and passing ``labels=input_ids`` gives
    the next-token cross-entropy as ``.loss``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=context,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    # transformers infers the loss from the class name, finds none for "GPT2LMHeadModel" and warns
    # on every loss computation before falling back to this same causal-LM loss.
    model.loss_type = "ForCausalLM"
    return model
