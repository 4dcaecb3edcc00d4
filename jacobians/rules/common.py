"""What the built-in rules share: the reduction of a rule that applied its factor itself, and
plain helpers of the extreme-logit limits (independent of the library's own reductions and
kernels: the checks compare the rules against them)."""

from __future__ import annotations

import numpy as np

from ..numerics.empty import mean_value_of_scale

__all__ = ["reduced", "onehot", "reduce_plainly", "entry_factor"]


def reduced(reduction, values, total, c, grad):
    """``(value, grad)`` of a rule that applied the factor ``c``
    (:meth:`~jacobians.Loss.reduction_scale`) to ``grad`` itself: ``values`` for
    ``'none'``, the ``total`` for ``'sum'``, ``total · c`` for ``'mean'`` (NaN for a
    denominator of 0, without a second warning: ``reduction_scale`` gave the call's one)."""
    if reduction == "none":
        return values, grad
    if reduction == "sum":
        return total, grad
    return mean_value_of_scale(total, c, grad.dtype, warn=False), grad


def onehot(idx, K: int) -> np.ndarray:
    """Rows of the K×K identity (float64)."""
    return np.eye(K)[idx]


def reduce_plainly(loss, values, grads, denom):
    """``(value, grad)`` reduced as ``loss.reduction`` says, by plain sums over ``denom``."""
    red = loss.reduction
    if red == "none":
        return values, grads
    if red == "sum":
        return values.sum(), grads
    return values.sum() / denom, grads / denom


def entry_factor(loss, z) -> float:
    """An elementwise loss's factor: ``1/(N·K)`` for ``'mean'``, else 1."""
    return {"mean": 1.0 / z.size, "sum": 1.0, "none": 1.0}[loss.reduction]
