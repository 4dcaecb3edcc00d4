"""The algebra of operators: the structured operators compose into ``diag(d) − U Vᵀ``.

Each function calls the operators' own methods (see :mod:`jacobians.operators.base`):
a class with a closed form gives it there, and everything else falls back to the dense
form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import JacobianOperator, _check_compatible

if TYPE_CHECKING:
    from .base import DenseJacobian
    from .structured import DiagonalPlusLowRank


def as_low_rank(op: JacobianOperator) -> DiagonalPlusLowRank | DenseJacobian:
    """``op`` as :class:`~jacobians.DiagonalPlusLowRank` (a diagonal has rank 0), or a dense
    one as it is.

    A :class:`~jacobians.DenseJacobian` is returned as it is; an operator with no low-rank
    form becomes a :class:`~jacobians.DenseJacobian` of its dense blocks.
    """
    return op._low_rank()


def transpose(op: JacobianOperator) -> JacobianOperator:
    """``op`` with each block transposed, ``M[..., j, i]``, keeping its structure."""
    return op.T


def total(*ops: JacobianOperator) -> JacobianOperator:
    """``Σ ops``, block by block: diagonals add, low-rank parts stack their columns."""
    first = ops[0]
    for op in ops[1:]:
        _check_compatible(first, op)
    return first._total(ops)


def product(a: JacobianOperator, b: JacobianOperator) -> JacobianOperator:
    """``A @ B`` block by block, in closed form for the structured operators::

        (D₁ − U₁V₁ᵀ)(D₂ − U₂V₂ᵀ) = D₁D₂ − [D₁U₂ − U₁(V₁ᵀU₂)] V₂ᵀ − U₁ (D₂V₁)ᵀ

    (rank r₁ + r₂); a dense operand gives a dense product.
    """
    _check_compatible(a, b)
    return a._times(b)
