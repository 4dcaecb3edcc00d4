"""Multi-class hinge loss on raw scores (torch ``MultiMarginLoss`` / ``multi_margin_loss``).

Per row, with index target ``y`` and ``m_i = margin − z_y + z_i``::

    ℓ = Σ_{i≠y} w_y · max(0, m_i)^p / K          (p = 1 or 2)

``weight`` is a per-class vector ``(K,)`` (``w_y`` of the row's target) or None (1). ``'mean'``
divides by the number of rows N (the weights do not renormalise, as torch). The gradient is
exact away from the kinks ``m_i = 0``; the Hessian is zero for p = 1 and, for p = 2, the
piecewise-constant ``2 w_y / K Σ_{i active} (e_i − e_y)(e_i − e_y)ᵀ`` (active: ``m_i > 0``).
Not a likelihood: no predictive distribution, so no exact or Monte-Carlo Fisher.
"""

from __future__ import annotations

import math

import numpy as np

from ..numerics.validation import as_array, check_nonnegative_scalar
from .base import Loss, register_loss
from .generic import concrete, const, device_of

__all__ = ["MultiMargin"]


def multi_margin_rows(loss, a, y):
    """The plain reference: torch's definition one row at a time in float64."""
    K = a.shape[-1]
    rows = np.asarray(a, dtype=np.float64).reshape(-1, K)
    targets = np.asarray(y).reshape(-1)
    values, grads = np.zeros(rows.shape[0]), np.zeros(rows.shape)
    for n, (r, t) in enumerate(zip(rows, targets)):
        t = int(t)
        w = 1.0 if loss.weight is None else float(loss.weight[t])
        for i in range(K):
            if i == t:
                continue
            m = loss.margin - r[t] + r[i]
            if m > 0:
                values[n] += w * m**loss.p / K
                d = w * loss.p * m ** (loss.p - 1) / K
                grads[n, i] += d
                grads[n, t] -= d
    return values, grads, float(rows.shape[0])


def multi_margin_kinks(loss, a, y):
    """Every entry of a row: the row's smallest ``|margin − a_y + a_i|`` (i ≠ y), where a term
    switches on (moving any entry of the row moves some ``m_i``)."""
    K = a.shape[-1]
    idx = np.asarray(y)[..., None]
    m = loss.margin - np.take_along_axis(a, idx, axis=-1) + a
    m = np.where(np.arange(K) == idx, np.inf, np.abs(m))
    return np.broadcast_to(m.min(axis=-1, keepdims=True), a.shape)


@register_loss
class MultiMargin(Loss):
    """Multi-class margin (hinge) loss on scores, torch ``MultiMarginLoss(p, margin, weight)``.

    Parameters
    ----------
    p : {1, 2}, default 1
    margin : float, default 1.0
        ≥ 0.
    weight : array_like (K,) or None
        A weight per class, applied by the row's target class.
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` over the N rows.

    Targets are class indices ``(...,)`` in ``[0, K)`` (one-hot rows ``(..., K)`` are read as
    their indices; probability rows are refused).

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import MultiMargin
    >>> z, y = np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3])
    >>> round(float(MultiMargin()(z, y)), 6)      # torch's documented example
    0.325
    """

    name = "multi_margin"
    target_kind = "class"
    loop_reference = multi_margin_rows
    kinks = multi_margin_kinks

    def __init__(self, p: int = 1, margin: float = 1.0, weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        if isinstance(p, (bool, np.bool_)) or p not in (1, 2):
            raise ValueError(f"p must be 1 or 2 (torch's MultiMarginLoss); got {p!r}")
        self.p = int(p)
        self.margin = check_nonnegative_scalar(margin, "margin")
        if weight is not None:
            weight = np.array(as_array(weight, "weight"), dtype=np.float64)
            if weight.ndim != 1 or weight.size == 0 or not np.all(np.isfinite(weight)):
                raise ValueError(f"weight must be a finite 1-d array (K,), one weight per class; got {weight!r}")
            weight.flags.writeable = False
        self.weight = weight

    @classmethod
    def variants(cls, K):
        return [{"p": 2}, {"p": 2, "margin": 0.5, "weight": np.linspace(0.5, 2.0, K)}]

    def example_targets(self, shape, rng):
        """Class indices ``shape[:-1]`` (no one-hot or soft forms: torch takes indices only)."""
        return rng.integers(0, shape[-1], size=shape[:-1])

    def pair_mismatch(self, activation):
        """Why ``activation`` does not pair with this loss, or None. MultiMargin is torch's hinge
        on raw scores: a map onto the simplex (softmax, sparsemax, entmax) or log-softmax is
        refused. Log-softmax shifts a row by a constant, which every margin ``a_i − a_y``
        cancels (the head is Identity's); on probabilities the hinge is not torch's loss, and
        the sparse maps' flat regions leave gradients that are round-off of zero."""
        d = activation.domain
        if d.issubset("simplex") or d.issubset("log_simplex"):
            return (
                f"{type(activation).__name__} + MultiMargin: MultiMargin is torch's hinge on raw scores, not on "
                "probabilities or log-probabilities (log-softmax only shifts each row, which the margins cancel); "
                "pair it with Identity (or an elementwise map)"
            )
        return None

    # -- targets ----------------------------------------------------------------------------
    def _check_weight(self, K):
        if self.weight is not None and self.weight.shape != (K,):
            raise ValueError(f"weight must have shape ({K},), one weight per class of a; got shape {self.weight.shape}")

    def check_targets(self, a, y):
        y = as_array(y, "y")
        K = a.shape[-1]
        if y.shape == a.shape:  # one-hot rows: their indices (soft rows have no hinge)
            if y.size and not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=-1) == 1)):
                raise ValueError("y of a's shape must be one-hot rows (MultiMargin takes class indices, not probabilities)")
            y = np.argmax(y, axis=-1) if y.size else np.zeros(a.shape[:-1], dtype=np.int64)
        if y.shape != a.shape[:-1]:
            raise ValueError(f"y must be class indices of shape {a.shape[:-1]} (one per row of a); got shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"y must be integer class indices (torch's MultiMarginLoss takes indices); got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= K):
            bad = y[(y < 0) | (y >= K)].reshape(-1)[0]
            raise ValueError(f"y: class index {int(bad)} is out of range for K = {K} (indices in [0, {K}))")
        self._check_weight(K)
        return y

    # -- the math (numpy and the array API share it) -------------------------------------------
    def _parts(self, xp, a, y):
        """``(one-hot of y, w_y (..., 1), margins m (..., K) with m_y = 0, active mask)``."""
        K = a.shape[-1]
        ks = xp.reshape(xp.arange(K, device=device_of(a)), (1,) * (a.ndim - 1) + (K,))
        hot = ks == y[..., None]
        e = xp.astype(hot, a.dtype)
        zy = xp.sum(a * e, axis=-1, keepdims=True)
        m = xp.where(hot, xp.zeros_like(a), const(xp, self.margin, a) - zy + a)
        if self.weight is None:
            w = xp.ones_like(zy)
        else:
            w = xp.sum(e * const(xp, self.weight, a), axis=-1, keepdims=True)
        return e, w, m, m > 0

    def _values(self, xp, a, y):
        e, w, m, active = self._parts(xp, a, y)
        h = xp.where(active | xp.isnan(m), m, xp.zeros_like(m))  # max(m, 0), a NaN kept in its row
        terms = h if self.p == 1 else h * h
        return xp.sum(terms, axis=-1) * w[..., 0] / const(xp, a.shape[-1], a)

    def _grads(self, xp, a, y):
        e, w, m, active = self._parts(xp, a, y)
        nan = xp.isnan(m)
        d = xp.astype(active, a.dtype) if self.p == 1 else 2 * m
        d = xp.where(active | nan, d, xp.zeros_like(m))
        d = xp.where(nan, m, d)  # a NaN kept in its row
        d = d * (w / const(xp, a.shape[-1], a))
        return d - e * xp.sum(d, axis=-1, keepdims=True)

    def _hessians(self, xp, a, y):
        e, w, m, active = self._parts(xp, a, y)
        K = a.shape[-1]
        if self.p == 1:
            return xp.zeros(tuple(a.shape) + (K,), dtype=a.dtype, device=device_of(a))
        d = xp.where(xp.isnan(m), m, xp.astype(active, a.dtype)) * (2 * w / const(xp, K, a))
        # Σ_i d_i (e_i − e_y)(e_i − e_y)ᵀ = diag(d) − d e_yᵀ − e_y dᵀ + (Σ d) e_y e_yᵀ
        eye = xp.astype(xp.reshape(xp.arange(K, device=device_of(a)), (K, 1)) == xp.arange(K, device=device_of(a)),
                        a.dtype)
        H = d[..., :, None] * eye - d[..., :, None] * e[..., None, :] - e[..., :, None] * d[..., None, :]
        return H + xp.sum(d, axis=-1)[..., None, None] * (e[..., :, None] * e[..., None, :])

    def per_sample(self, a, y):
        return self._values(np, a, y)

    def per_sample_grad(self, a, y):
        return self._grads(np, a, y)

    def per_sample_hessian(self, a, y):
        return self._hessians(np, a, y)

    # -- the generic (array API) path -------------------------------------------------------
    def xp_check_targets(self, xp, a, y):
        self._xp_require()
        K = a.shape[-1]
        if tuple(y.shape) == tuple(a.shape):  # one-hot rows: their indices
            if concrete(y) and math.prod(y.shape) and not bool(
                xp.all((y == 0) | (y == 1)) & xp.all(xp.sum(y, axis=-1) == 1)
            ):
                raise ValueError("y of a's shape must be one-hot rows (MultiMargin takes class indices, not probabilities)")
            y = xp.argmax(y, axis=-1)
        if tuple(y.shape) != tuple(a.shape[:-1]):
            raise ValueError(
                f"y must be class indices of shape {tuple(a.shape[:-1])} (one per row of a); got shape {tuple(y.shape)}"
            )
        if not xp.isdtype(y.dtype, "integral"):
            raise ValueError(f"y must be integer class indices (torch's MultiMarginLoss takes indices); got dtype {y.dtype}")
        if concrete(y) and math.prod(y.shape) and not bool(xp.all((y >= 0) & (y < K))):
            raise ValueError(f"y: a class index is out of range for K = {K} (indices in [0, {K}))")
        self._check_weight(K)
        return y

    def xp_per_sample(self, xp, a, y):
        return self._values(xp, a, y)

    def xp_per_sample_grad(self, xp, a, y):
        return self._grads(xp, a, y)

    def xp_per_sample_hessian(self, xp, a, y):
        return self._hessians(xp, a, y)
