"""Fenchel–Young losses of the entmax family (Blondel et al., 2020; Peters et al., 2019).

They are functions of the logits, not of the mapped probabilities::

    L(z, y) = ⟨z, p − y⟩ + H(p) − H(y),     ∇_z L = p − y,

with ``p`` the mapping of ``z`` (sparsemax / 1.5-entmax) and ``H`` the Tsallis entropy
``H_α(p) = (1 − Σ p^α) / (α(α − 1))`` (α = 2 and 1.5). ``L >= 0``, and ``L = 0`` iff
``p = y``. With index targets ``H(y) = 0`` and the loss is entmax's
``SparsemaxLoss`` / ``Entmax15Loss``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .. import _math
from ..activations.simplex import Entmax15, Sparsemax
from ..operators import SimplexBlock
from ._targets import check_class_targets
from .base import Loss, register_loss

__all__ = ["FenchelYoungLoss", "SparsemaxLoss", "Entmax15Loss"]


class FenchelYoungLoss(Loss):
    """Base of the Fenchel–Young losses: a mapping ``p(z)`` and its Tsallis index α."""

    target_kind = "class"
    alpha: ClassVar[float]

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction)

    @staticmethod
    def mapping(z: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def tsallis_entropy(self, p: np.ndarray) -> np.ndarray:
        """``H_α(p) = (1 − Σ p^α) / (α(α − 1))`` per row."""
        alpha = self.alpha
        powered = p * p if alpha == 2 else p * np.sqrt(p) if alpha == 1.5 else p**alpha
        return (1 - powered.sum(axis=-1)) / p.dtype.type(alpha * (alpha - 1))

    def check_targets(self, a, y):
        return check_class_targets(a, y)

    def per_sample(self, z, y):
        return self._terms(z, self.check_targets(z, y), need_grad=False)[0]

    def per_sample_grad(self, z, y):
        return self._terms(z, self.check_targets(z, y), need_grad=True)[1]

    def per_sample_hessian(self, z, y):
        return self._hessian_terms(z, self.check_targets(z, y))[0].dense()

    @staticmethod
    def curvature_weights(p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """``d`` of the mapping's Jacobian ``diag(d) − d dᵀ/Σd`` from its output ``p``."""
        raise NotImplementedError

    def _hessian_terms(self, z, t):
        """The mapping's Jacobian ``diag(d) − d dᵀ/Σd`` (``∇²L = ∂p/∂z``, whatever y)."""
        d = self.curvature_weights(self.mapping(z))
        return SimplexBlock(d, 1.0), int(np.prod(z.shape[:-1]))

    def _terms(self, z, t, need_grad):
        p = self.mapping(z)
        y = t.dense(z.dtype)
        # ⟨z, p − y⟩ = ⟨z − m, p − y⟩ + m (1 − Σy): the shift keeps huge logits exact
        m = z.max(axis=-1, keepdims=True)
        diff = p - y
        values = np.einsum("...k,...k->...", z - m, diff) + m[..., 0] * (1 - y.sum(axis=-1))
        values += self.tsallis_entropy(p)
        if not t.is_index:
            values -= self.tsallis_entropy(y)
        n = int(np.prod(z.shape[:-1]))
        return values, (diff if need_grad else None), n


@register_loss
class SparsemaxLoss(FenchelYoungLoss):
    """Sparsemax loss (Martins & Astudillo, 2016) on logits ``z``: gradient ``sparsemax(z) − y``.

    ``Head(Sparsemax(), SparsemaxLoss())`` runs the fused rule only (the loss is not a
    function of sparsemax's output); ``Head(Identity(), SparsemaxLoss())`` runs every
    method.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import SparsemaxLoss
    >>> z = np.array([[2.0, 0.0, -1.0]])
    >>> float(SparsemaxLoss()(z, np.array([0])))   # confident and right: zero loss
    0.0
    >>> SparsemaxLoss().grad(z, np.array([1]))
    array([[ 1., -1.,  0.]])
    """

    name = "sparsemax_loss"
    alpha = 2.0
    logits_of = Sparsemax

    @staticmethod
    def mapping(z):
        return _math.sparsemax(z)

    @staticmethod
    def curvature_weights(p):
        return (p > 0).astype(p.dtype)


@register_loss
class Entmax15Loss(FenchelYoungLoss):
    """1.5-entmax loss (Peters et al., 2019) on logits ``z``: gradient ``entmax15(z) − y``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Entmax15Loss
    >>> float(Entmax15Loss()(np.array([[4.0, 0.0]]), np.array([0])))
    0.0
    """

    name = "entmax15_loss"
    alpha = 1.5
    logits_of = Entmax15

    @staticmethod
    def mapping(z):
        return _math.entmax15(z)

    @staticmethod
    def curvature_weights(p):
        return np.sqrt(p)
