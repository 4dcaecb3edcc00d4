"""Identity + mean squared error: the identity's Jacobian is I, so everything is the loss's
own in ``a = z``: gradient ``2(z − y)``, Hessian and exact Fisher ``2I`` (times the
reduction's factor, ``1/(N·K)`` for ``'mean'``)."""

from __future__ import annotations

import numpy as np

from ..activations import Identity
from ..losses import MeanSquaredError
from ..numerics.validation import as_float_array
from ..operators import DiagonalJacobian
from ..xp.blocks import diagonal_blocks
from .base import PairRule, register_rule
from .common import entry_factor, reduce_plainly

__all__ = ["IdentityMSE"]


@register_rule
class IdentityMSE(PairRule):
    """Identity + MeanSquaredError."""

    pairs = ((Identity, MeanSquaredError),)
    canonical = True

    def value_and_grad(self, activation, loss, z, y):
        return loss.value_and_grad(z, y)

    def hessian(self, activation, loss, z, y):
        z = as_float_array(z, "z")
        loss.check_targets(z, y)
        return DiagonalJacobian(np.full_like(z, 2 * loss.reduction_scale(z, y)))

    def fisher(self, activation, loss, z, y=None):
        return DiagonalJacobian(np.full_like(as_float_array(z, "z"), 2))

    def extreme_value_and_grad(self, activation, loss, z, y):
        d = z - np.asarray(y, dtype=np.float64)
        return reduce_plainly(loss, d * d, 2 * d, d.size)

    def extreme_hessian(self, activation, loss, z, y):
        return 2 * entry_factor(loss, z) * np.broadcast_to(np.eye(z.shape[-1]), z.shape + z.shape[-1:])

    # -- the generic (array API) forms: torch, JAX, CuPy, array-api-strict arrays ----------
    def xp_value_and_grad(self, xp, activation, loss, z, y):
        return loss.xp_value_and_grad(xp, z, loss.xp_check_targets(xp, z, y))

    def xp_hessian(self, xp, activation, loss, z, y):
        c = 2 * loss.xp_reduction_scale(xp, z, loss.xp_check_targets(xp, z, y))
        return diagonal_blocks(xp, c * xp.ones_like(z))

    def xp_hvp(self, xp, activation, loss, z, y, v):
        return (2 * loss.xp_reduction_scale(xp, z, loss.xp_check_targets(xp, z, y))) * v

    def xp_sqrt_hessian(self, xp, activation, loss, z, y):
        """``diag(√(2c))``: the factor of the diagonal Hessian (numpy's ``hessian(...).sqrt()``)."""
        c = 2 * loss.xp_reduction_scale(xp, z, loss.xp_check_targets(xp, z, y))
        return diagonal_blocks(xp, xp.sqrt(c * xp.ones_like(z)))

    def xp_fisher(self, xp, activation, loss, z, y=None):
        """``2 I``, unreduced."""
        return diagonal_blocks(xp, 2 * xp.ones_like(z))
