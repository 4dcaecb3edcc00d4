"""Regression losses, per entry, with torch's reductions (``'mean'`` over all N·K)."""

from __future__ import annotations

import numpy as np

from ..numerics.validation import check_positive_scalar
from ..operators import DiagonalJacobian
from . import references
from .base import ElementwiseLoss, register_loss
from .generic import const, device_of, diagonal_blocks

__all__ = ["MeanSquaredError", "MeanAbsoluteError", "Huber"]


@register_loss
class MeanSquaredError(ElementwiseLoss):
    """``(a − y)²`` per entry (torch ``mse_loss``); gradient ``2(a − y)``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import MeanSquaredError
    >>> a, y = np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])
    >>> float(MeanSquaredError()(a, y)), MeanSquaredError().grad(a, y)
    (2.5, array([[1., 2.]]))
    """

    name = "mse"
    loop_reference = references.mse_rows
    predictive = "gaussian"

    def per_element(self, a, y):
        d = a - y
        return d * d

    def per_element_grad(self, a, y):
        return 2 * (a - y)

    def per_element_hessian(self, a, y):
        return np.full_like(a, 2)

    def fisher_blocks(self, a):
        """With ``ŷ = a + N(0, ½)`` the gradient is ``2(a − ŷ)``: ``E[g gᵀ] = 2 I``, the Hessian."""
        return DiagonalJacobian(np.full_like(a, 2))

    # -- the generic (array API) path: a, y (..., K) of one namespace, a's dtype ----------
    def xp_per_element(self, xp, a, y):
        """``(a − y)²``, ``(..., K)``."""
        d = a - y
        return d * d

    def xp_per_element_grad(self, xp, a, y):
        """``2(a − y)``, ``(..., K)``."""
        return const(xp, 2.0, a) * (a - y)

    def xp_per_element_hessian(self, xp, a, y):
        """2, ``(..., K)``."""
        return xp.full(a.shape, 2.0, dtype=a.dtype, device=device_of(a))

    def xp_fisher_blocks(self, xp, a):
        """The twin of :meth:`fisher_blocks`: ``2 I``."""
        return diagonal_blocks(xp, xp.full(a.shape, 2.0, dtype=a.dtype, device=device_of(a)))


@register_loss
class MeanAbsoluteError(ElementwiseLoss):
    """``|a − y|`` per entry (torch ``l1_loss``); gradient ``sign(a − y)`` (0 at 0).

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import MeanAbsoluteError
    >>> MeanAbsoluteError(reduction="none")(np.array([[1.0, -2.0]]), np.array([[0.0, 0.0]]))
    array([[1., 2.]])
    """

    name = "mae"
    loop_reference = references.mae_rows
    kinks = references.mae_kinks

    def per_element(self, a, y):
        return np.abs(a - y)

    def per_element_grad(self, a, y):
        return np.sign(a - y)

    def per_element_hessian(self, a, y):
        """Zero (the kink at ``a = y`` has no second derivative)."""
        return np.zeros_like(a)

    # -- the generic (array API) path: a, y (..., K) of one namespace, a's dtype ----------
    def xp_per_element(self, xp, a, y):
        """``|a − y|``, ``(..., K)``."""
        return xp.abs(a - y)

    def xp_per_element_grad(self, xp, a, y):
        """``sign(a − y)``, ``(..., K)``."""
        return xp.sign(a - y)

    def xp_per_element_hessian(self, xp, a, y):
        """Zero, ``(..., K)``."""
        return xp.zeros_like(a)


@register_loss
class Huber(ElementwiseLoss):
    """Huber loss (torch ``huber_loss``), per entry with ``x = a − y``::

        0.5 x²              if |x| <= delta
        delta (|x| − delta/2)  otherwise

    Gradient ``clip(x, −delta, delta)``.

    Parameters
    ----------
    delta : float, default 1.0
        > 0.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Huber
    >>> Huber(reduction="none")(np.array([[0.5, 3.0]]), np.array([[0.0, 0.0]]))
    array([[0.125, 2.5  ]])
    """

    name = "huber"
    loop_reference = references.huber_rows
    kinks = references.huber_kinks

    def __init__(self, delta: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.delta = check_positive_scalar(delta, "delta")

    @classmethod
    def variants(cls, K):
        return [{"delta": 0.3}]

    def per_element(self, a, y):
        x = np.abs(a - y)
        delta = a.dtype.type(self.delta)
        return np.where(x <= delta, 0.5 * x * x, delta * (x - 0.5 * delta))

    def per_element_grad(self, a, y):
        delta = a.dtype.type(self.delta)
        return np.clip(a - y, -delta, delta)

    def per_element_hessian(self, a, y):
        """1 inside ``|a − y| <= delta``, 0 outside (torch's ``huber_loss`` double backward)."""
        return (np.abs(a - y) <= a.dtype.type(self.delta)).astype(a.dtype)

    # -- the generic (array API) path: a, y (..., K) of one namespace, a's dtype ----------
    def xp_per_element(self, xp, a, y):
        """``0.5 x²`` inside ``|x| <= delta``, ``delta (|x| − delta/2)`` outside, ``(..., K)``."""
        x = xp.abs(a - y)
        delta, half = const(xp, self.delta, a), const(xp, 0.5, a)
        return xp.where(x <= delta, half * x * x, delta * (x - half * delta))

    def xp_per_element_grad(self, xp, a, y):
        """``clip(a − y, −delta, delta)``, ``(..., K)``."""
        delta = const(xp, self.delta, a)
        return xp.minimum(xp.maximum(a - y, -delta), delta)

    def xp_per_element_hessian(self, xp, a, y):
        """1 inside ``|a − y| <= delta``, 0 outside, ``(..., K)``."""
        return xp.astype(xp.abs(a - y) <= const(xp, self.delta, a), a.dtype)
