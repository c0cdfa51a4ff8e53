"""PyTorch optimizers built on the E adaptor (Zhao et al., NeurIPS 2025). Depends on torch only."""

from ._functional import alto, eadam, esgd, explore
from .alto import ALTO, Lamb
from .eadam import EAdam, EAdamW
from .esgd import ESGD
from .explore import Explore
from .groups import NORM_MODULES, param_groups
from .hybrid import MuonAdamW, hidden_matrix_names, muon_param_groups
from .registry import (
    LARGE_BATCH,
    OptimizerInfo,
    available_optimizers,
    create_optimizer,
    explore_defaults,
    optimizer_info,
)
from .schedules import ConstantE, CosineE, EScheduler, LambdaE, LinearE

__all__ = [
    "ALTO",
    "ESGD",
    "LARGE_BATCH",
    "NORM_MODULES",
    "ConstantE",
    "CosineE",
    "EAdam",
    "EAdamW",
    "EScheduler",
    "Explore",
    "Lamb",
    "LambdaE",
    "LinearE",
    "MuonAdamW",
    "OptimizerInfo",
    "alto",
    "available_optimizers",
    "create_optimizer",
    "eadam",
    "esgd",
    "explore",
    "explore_defaults",
    "hidden_matrix_names",
    "muon_param_groups",
    "optimizer_info",
    "param_groups",
]
