"""The generic rule: the chain rule through the activation, for any pair.

First order ``dE/dz = Jᵀ dE/da`` (the activation's VJP); second order::

    H_z = Jᵀ H_a J + Σ_i (∂E/∂a_i) ∇²a_i          (GGN: the first term alone)

with ``H_a`` the loss's Hessian blocks in its input ``a`` (the reduction's factor inside);
the exact Fisher in z is ``Jᵀ F_a J`` with ``F_a`` the loss's (unreduced) Fisher blocks. A
rule that leaves a closed form out falls back to these (:data:`~jacobians.rules.GENERIC`).
"""

from __future__ import annotations

import numpy as np

from ..numerics.algebra import project_columns
from ..operators import (
    DiagonalJacobian,
    DiagonalPlusLowRank,
    DiagonalPlusRankOne,
    JacobianOperator,
    ProjectedDiagonal,
    ScaledSimplexBlock,
    SimplexBlock,
    SumOperator,
)
from .base import PairRule
from .generic import gram_columns, transposed_columns

__all__ = ["ChainRule", "GENERIC", "gram", "projection_form"]


def projection_form(J):
    """``(g, v)`` when ``J = diag(g) − g vᵀ = diag(g) (I − 1 vᵀ)`` with ``v >= 0``, ``Σv = 1``
    (every simplex map and log-softmax), else None."""
    if not isinstance(J, DiagonalPlusRankOne) or not J.projector:
        return None
    return J.d, J.v


def gram(J: JacobianOperator, H: JacobianOperator) -> JacobianOperator:
    """``Jᵀ H J``. For a simplex map (``J = diag(g) P``, ``P = I − 1 vᵀ``) and a diagonal or
    entmax-family H it is ``Pᵀ diag(g² h) P`` (minus ``x xᵀ`` with ``x = Pᵀ(g ⊙ w)`` for
    ``H = diag(c q) − w wᵀ``), whose diagonal is computed without cancellation
    (:class:`~jacobians.operators.ProjectedDiagonal`): where a prediction is confident the
    generic product subtracts numbers far larger than the result."""
    if isinstance(J, DiagonalJacobian) and isinstance(H, SimplexBlock):
        # diag(g) (diag(c q) − w wᵀ) diag(g), its diagonal g² times H's exact one; H kept,
        # so the square root is diag(g) H.sqrt() (the entries cancel on a confident row)
        return ScaledSimplexBlock(J.d, H)
    form = projection_form(J)
    if form is not None:
        g, v = form
        if isinstance(H, DiagonalJacobian):
            return ProjectedDiagonal(g * g * H.d, v)
        if isinstance(H, SimplexBlock):
            x = project_columns((g * H.u)[..., None], v)[..., 0]
            outer = DiagonalPlusLowRank(np.zeros_like(x), x[..., None], x[..., None])
            return SumOperator(ProjectedDiagonal(g * g * H.d, v), outer)
    return J.T @ H @ J


class ChainRule(PairRule):
    """The chain rule for any (activation, loss) pair whose loss is a function of the
    activation's output; every method as :class:`~jacobians.PairRule`'s, plus
    :meth:`~jacobians.rules.ChainRule.ggn` and :meth:`~jacobians.rules.ChainRule.sqrt_ggn`.
    Not registered: it is what a pair without a rule, or a rule without a closed form,
    uses."""

    @staticmethod
    def forward(activation, loss, z, y):
        """``(a, dE/da, J)`` at ``z``: the output, the reduced loss gradient and the Jacobian."""
        a = activation(z)
        g = loss.grad(a, y)
        return a, g, activation.jacobian_operator_from_output(z, a)

    def value_and_grad(self, activation, loss, z, y):
        a = activation(z)
        value, g = loss.value_and_grad(a, y)
        return value, activation.vjp_from_output(z, a, g)

    def ggn(self, activation, loss, z, y) -> JacobianOperator:
        """``Jᵀ H_a J``."""
        a = activation(z)
        return gram(activation.jacobian_operator_from_output(z, a), loss.hessian_operator(a, y))

    def hessian(self, activation, loss, z, y) -> JacobianOperator:
        a, g, J = self.forward(activation, loss, z, y)
        return SumOperator(gram(J, loss.hessian_operator(a, y)), activation.hessian_vjp_operator(z, g))

    def hvp(self, activation, loss, z, y, v) -> np.ndarray:
        return self.hessian(activation, loss, z, y) @ v

    def sqrt_ggn(self, activation, loss, z, y) -> np.ndarray:
        """``Jᵀ S_a`` with ``S_a`` the loss Hessian's own factor: ``S Sᵀ`` is the GGN."""
        a = activation(z)
        J = activation.jacobian_operator_from_output(z, a)
        S = loss.hessian_operator(a, y).sqrt()
        form = projection_form(J)
        if form is not None:  # Jᵀ S = Pᵀ (g ⊙ S), rows projected without cancellation
            g, v = form
            return project_columns(g[..., None] * S, v)
        return J.T.matmat(S)

    def fisher(self, activation, loss, z, y=None) -> JacobianOperator:
        """``Jᵀ F_a J`` with ``F_a = loss.fisher_blocks(a)`` (unreduced; ``fisher_blocks(a, y)``
        for a loss whose predictive reads the targets, ``predictive_needs_targets``)."""
        a = activation(z)
        F = loss.fisher_blocks(a, y) if getattr(loss, "predictive_needs_targets", False) else loss.fisher_blocks(a)
        return gram(activation.jacobian_operator_from_output(z, a), F)

    # -- the generic (array API) forms: torch, JAX, CuPy, array-api-strict arrays ----------
    def xp_sqrt_ggn(self, xp, activation, loss, z, y):
        """Generic :meth:`sqrt_ggn`: ``Jᵀ S_a`` with ``S_a`` the loss Hessian's own factor
        (``loss.xp_sqrt_hessian``), Jᵀ applied by the activation's VJP, column by column."""
        a = activation.xp_forward(xp, z)
        S = loss.xp_sqrt_hessian(xp, a, loss.xp_check_targets(xp, a, y))
        return transposed_columns(xp, activation, z, a, S)

    def xp_fisher(self, xp, activation, loss, z, y=None):
        """Generic :meth:`fisher`: ``Jᵀ F_a J`` with ``F_a = loss.xp_fisher_blocks(a)``, dense."""
        loss.xp_require_twin("fisher_blocks")
        a = activation.xp_forward(xp, z)
        if getattr(loss, "predictive_needs_targets", False):
            F = loss.xp_fisher_blocks(xp, a, None if y is None else loss.xp_check_targets(xp, a, y))
        else:
            F = loss.xp_fisher_blocks(xp, a)
        return gram_columns(xp, activation, z, a, F)


#: the generic rule's one instance
GENERIC = ChainRule()
