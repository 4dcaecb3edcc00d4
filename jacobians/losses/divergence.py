"""The Kullback–Leibler divergence ``KL(y ‖ a)`` on probabilities, with torch's ``kl_div``
semantics: a class loss (the targets, weights and reductions of :mod:`.classification`)
that compares two distributions. Registered after the regression losses (the registries
list the losses in the order :mod:`jacobians.losses` imports their modules)."""

from __future__ import annotations

import numpy as np

from ..operators import DiagonalJacobian
from . import references
from .base import register_loss
from .classification import _ClassLoss, _curvature_ratio, _floor_tiny, _neg_ratio, _rowdot
from .generic import const, device_of, diagonal_blocks, xp_curvature_ratio, xp_floor_tiny, xp_neg_ratio

__all__ = ["KLDivergence"]


def _xlogx(y: np.ndarray) -> np.ndarray:
    """``y log y`` with ``0 log 0 = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, y * np.log(np.where(y > 0, y, 1)), 0).astype(y.dtype, copy=False)


@register_loss
class KLDivergence(_ClassLoss):
    """``KL(y ‖ a) = Σ_k y_k (log y_k − log a_k)`` on probabilities ``a``.

    ``'mean'`` averages the per-sample sums over all N samples (torch's
    ``kl_div(log a, y, reduction='batchmean')`` for ``(N, K)`` inputs; for ``(B, T, K)``
    this divides by B·T, where torch's batchmean divides by B); ``'none'`` gives
    ``(...,)``. Targets as
    for :class:`CrossEntropy` (indices mean one-hot rows, whose entropy term is 0).

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import KLDivergence
    >>> a = np.array([[0.5, 0.5]])
    >>> round(float(KLDivergence()(a, np.array([[0.5, 0.5]]))), 12)
    0.0
    """

    name = "kl_divergence"
    loop_reference = references.kl_rows
    input_domain = "open_simplex"
    predictive = "categorical"

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction)

    def entropy_term(self, t, dtype) -> np.ndarray:
        """``Σ_k y_k log y_k`` per sample (0 for index targets)."""
        if t.is_index:
            return np.zeros(t.indices.shape, dtype=dtype)
        return _xlogx(t.probs).sum(axis=-1)

    def _terms(self, a, t, need_grad):
        c, denom = self.coefficients(t, a.dtype)
        safe = _floor_tiny(a)
        values = self.entropy_term(t, a.dtype) - _rowdot(c, np.log(safe))
        return values, (-c / safe if need_grad else None), denom

    def _hessian_terms(self, a, t):
        """``diag(y / a²)``."""
        c, denom = self.coefficients(t, a.dtype)
        return DiagonalJacobian(_curvature_ratio(c, _floor_tiny(a))), denom

    def fisher_blocks(self, a):
        """With a one-hot ``ŷ`` ~ Categorical(a) the loss is ``−log a_ŷ``: ``diag(1/a)``."""
        return DiagonalJacobian(-_neg_ratio(np.ones_like(a), _floor_tiny(a)))

    # -- the generic (array API) path: a (..., K), targets of a's namespace ---------------
    def xp_entropy_term(self, xp, t, like):
        """``Σ_k y_k log y_k`` per sample, ``(...,)`` in like's dtype (0 for index targets)."""
        if t.is_index:
            return xp.zeros(tuple(t.indices.shape), dtype=like.dtype, device=device_of(like))
        y = t.probs
        pos = y > 0
        zero = const(xp, 0.0, y)
        return xp.sum(xp.where(pos, y * xp.log(xp.where(pos, y, const(xp, 1.0, y))), zero), axis=-1)

    def xp_fisher_blocks(self, xp, a):
        """The twin of :meth:`fisher_blocks`: ``diag(1/a)`` (a read as ``max(a, tiny)``)."""
        return diagonal_blocks(xp, -xp_neg_ratio(xp, xp.ones_like(a), xp_floor_tiny(xp, a)))

    def xp_terms(self, xp, a, y, need_grad):
        """``(Σ y log y − Σ c log max(a, tiny), −c / max(a, tiny), denominator)``."""
        t = self._xp_targets(xp, a, y)
        c, denom = self.xp_coefficients(xp, a, t)
        safe = xp_floor_tiny(xp, a)
        values = self.xp_entropy_term(xp, t, a) - xp.sum(c * xp.log(safe), axis=-1)
        return values, (-c / safe if need_grad else None), denom

    def xp_hessian_terms(self, xp, a, y):
        """``(y / max(a, tiny)², denominator, True)``."""
        c, denom = self.xp_coefficients(xp, a, y)
        return xp_curvature_ratio(xp, c, xp_floor_tiny(xp, a)), denom, True
