"""Structured Jacobians: O(N·K) memory, dense only when asked for.

Every built-in activation's Jacobian is one of two shapes:

* :class:`~jacobians.DiagonalJacobian` — ``J = diag(d)`` (elementwise activations);
* :class:`~jacobians.DiagonalPlusRankOne` — ``J = diag(d) − u vᵀ`` (softmax, sparsemax,
  1.5-entmax with ``u = g``, ``v = g / Σg``; log-softmax with ``d = 1``, ``u = 1``,
  ``v = softmax``).

A user's activation that only writes ``jacobian(z)`` gets a :class:`~jacobians.DenseJacobian`.
All three support ``op @ v`` (JVP), ``g @ op`` (VJP), ``op.dense(out=None)``,
``op.diagonal()`` and ``op.nbytes``; ``op[rows]`` selects rows of the flattened batch.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> z = np.array([[1.0, 2.0, 3.0]])
>>> op = jac.Softmax().jacobian_operator(z)
>>> op.shape
(1, 3, 3)
>>> np.allclose(op.dense(), jac.Softmax().jacobian(z))
True
>>> np.allclose(np.ones((1, 3)) @ op, 0.0)  # the softmax Jacobian's columns sum to 0
True
"""

from .algebra import as_low_rank, product, total, transpose
from .base import DenseJacobian, JacobianOperator
from .blocks import ProjectedDiagonal, ScaledSimplexBlock, SimplexBlock, SumOperator
from .structured import (
    DiagonalJacobian,
    DiagonalPlusLowRank,
    DiagonalPlusRankOne,
    SimplexJacobian,
)
from .structured import simplex_product as simplex_product  # for the activations

__all__ = [
    "JacobianOperator",
    "DenseJacobian",
    "DiagonalJacobian",
    "DiagonalPlusRankOne",
    "SimplexJacobian",
    "DiagonalPlusLowRank",
    "SimplexBlock",
    "ScaledSimplexBlock",
    "ProjectedDiagonal",
    "SumOperator",
    "as_low_rank",
    "product",
    "total",
    "transpose",
]
