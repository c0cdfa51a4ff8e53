"""Tokenisers for the text tasks: a WordPiece model trained offline, and characters.

The WordPiece tokeniser follows BERT's uncased recipe (normaliser, pre-tokeniser, ``[CLS] … [SEP]``
template) with the `tokenizers` library, and is trained on the training split only so that no test
text leaks into the vocabulary. ``[PAD]`` has id 0, the default ``pad_token_id`` of ``BertConfig``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000) -> Tokenizer:
    """A lower-casing BERT-style WordPiece tokeniser trained on ``texts``.

    The vocabulary holds at most ``vocab_size`` entries, the special tokens
    ``[PAD] [UNK] [CLS] [SEP] [MASK]`` first (ids 0–4). Encodings are wrapped as
    ``[CLS] text [SEP]``.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, tokenizer.token_to_id(CLS)), (SEP, tokenizer.token_to_id(SEP))],
    )
    return tokenizer


def encode_batch(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, both ``int64 [len(texts), max_length]``.

    Texts are truncated to ``max_length`` tokens (special tokens included, so ``[SEP]`` survives)
    and right-padded with the tokeniser's padding token (``[PAD]`` unless padding was configured on
    it); the mask is 1 on real tokens and 0 on padding. The tokeniser's own truncation and padding
    settings are restored afterwards.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    saved_truncation, saved_padding = tokenizer.truncation, tokenizer.padding
    if saved_padding is not None:
        pad_id, pad_token = saved_padding["pad_id"], saved_padding["pad_token"]
    else:
        pad_id, pad_token = tokenizer.token_to_id(PAD), PAD
        if pad_id is None:
            raise ValueError(f"tokenizer has no {PAD} token; call enable_padding(...) on it first")
    try:
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
        encodings = tokenizer.encode_batch(list(texts))
    finally:
        if saved_truncation is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**saved_truncation)
        if saved_padding is None:
            tokenizer.no_padding()
        else:
            tokenizer.enable_padding(**saved_padding)
    # reshape gives an empty batch its [0, max_length] shape.
    shape = (len(encodings), max_length)
    input_ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.int64)
    mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.int64)
    return input_ids.reshape(shape), mask.reshape(shape)


def char_vocabulary(text: str) -> tuple[str, ...]:
    """The distinct characters of ``text``, sorted by code point (id = position)."""
    return tuple(sorted(set(text)))


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def encode_chars(text: str, vocab: Sequence[str]) -> torch.Tensor:
    """``text`` as an ``int64 [len(text)]`` tensor of positions in ``vocab``.

    Raises ``ValueError`` naming the first character of ``text`` that ``vocab`` lacks.
    """
    if any(len(char) != 1 for char in vocab) or len(set(vocab)) != len(vocab):
        raise ValueError("vocab must be distinct single characters")
    codes = _code_points("".join(vocab))
    order = np.argsort(codes)
    sorted_codes = codes[order]
    points = _code_points(text)
    slots = np.searchsorted(sorted_codes, points)
    known = slots < len(sorted_codes)
    known[known] = sorted_codes[slots[known]] == points[known]
    if not known.all():
        position = int(np.argmin(known))
        raise ValueError(f"character {text[position]!r} at position {position} is not in vocab")
    return torch.from_numpy(order[slots])


def decode_chars(ids: torch.Tensor | Sequence[int], vocab: Sequence[str]) -> str:
    """The text whose :func:`encode_chars` encoding is ``ids``."""
    return "".join(vocab[i] for i in torch.as_tensor(ids).flatten().tolist())
