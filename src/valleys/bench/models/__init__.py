"""Models the benchmark tasks train: ResNet-20, a small CNN, the paper's MLP, small BERT and GPT-2.

``transformers`` is imported only when a transformer model is built.
"""

from valleys.bench.models.cnn import small_cnn
from valleys.bench.models.mlp import mlp
from valleys.bench.models.resnet import resnet20
from valleys.bench.models.transformers_models import (
    gpt2_lm,
    text_classifier,
    text_classifier_from_pretrained,
)

__all__ = [
    "gpt2_lm",
    "mlp",
    "resnet20",
    "small_cnn",
    "text_classifier",
    "text_classifier_from_pretrained",
]
