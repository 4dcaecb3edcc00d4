"""Losses with gradients dE/da, every reduction, torch's semantics."""

from .base import LOSSES, ElementwiseLoss, Loss, get_loss, register_loss
from .classification import BinaryCrossEntropy, CrossEntropy, KLDivergence, NLLLoss
from .fenchel_young import Entmax15Loss, EntmaxLoss, FenchelYoungLoss, SparsemaxLoss
from .regression import Huber, MeanAbsoluteError, MeanSquaredError

__all__ = [
    "LOSSES",
    "Loss",
    "ElementwiseLoss",
    "FenchelYoungLoss",
    "get_loss",
    "register_loss",
    "CrossEntropy",
    "NLLLoss",
    "BinaryCrossEntropy",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "Huber",
    "KLDivergence",
    "SparsemaxLoss",
    "Entmax15Loss",
    "EntmaxLoss",
]
