"""valleys: the E optimizer adaptor and ALTO (NeurIPS 2025) for PyTorch.

``from valleys import ALTO, Explore, create_optimizer`` is all most users need; the benchmark
harness lives in :mod:`valleys.bench` (``pip install valleys[bench]``).
"""

from .optim import (
    ALTO,
    ESGD,
    EAdam,
    EAdamW,
    Explore,
    Lamb,
    available_optimizers,
    create_optimizer,
    param_groups,
)

# The one place the version is defined: the build reads this literal (pyproject.toml's dynamic
# version), `valleys --version` prints it. Bump it with a CHANGELOG.md entry.
__version__ = "0.1.0"

__all__ = [
    "ALTO",
    "ESGD",
    "EAdam",
    "EAdamW",
    "Explore",
    "Lamb",
    "__version__",
    "available_optimizers",
    "create_optimizer",
    "param_groups",
]
