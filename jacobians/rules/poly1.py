"""Softmax + PolyLoss from the logits: ``ℓ = −Σ_k t_k log p_k + ε (1 − Σ_k t_k p_k)``.

A sum of terms of single probabilities (see :mod:`jacobians.rules.focal`): with
``φ_k = −t_k log p + ε t_k (1 − p)``, ``u_k = p_k φ'_k = −t_k (1 + ε p_k)`` and
``r_k = u_k + p_k² φ''_k = −ε t_k p_k``::

    ∇ℓ = u − p Σu
    ∇²ℓ = Σt (diag p − p pᵀ) + ε [−Σ_k t_k p_k (e_k − p)(e_k − p)ᵀ + p_t (diag p − p pᵀ)]

cross-entropy's Hessian plus ε times the Hessian of ``−p_t``. ``log p`` and ``1 − p`` come
from the shifted logits (exact at ±1e4, float32 too); the value's ``1 − p_t`` is
``(1 − Σt) + Σ t_k (1 − p_k)``. Not canonical: the GGN is the chain rule's ``Jᵀ H_a J = Σ_k t_k (e_k − p)(e_k − p)ᵀ``
(``H_a = diag(t/a²)`` is cross-entropy's: ``ε (1 − p_t)`` is linear in p); not a likelihood.
"""

from __future__ import annotations

import numpy as np

from .. import _kernels
from ..activations import Softmax
from ..losses import PolyLoss
from ..numerics.validation import as_float_array
from ..operators import DenseJacobian
from ..xp.blocks import device_of, with_diagonal
from ..xp.numpy_namespace import numpy_xp as npx
from .base import register_rule
from .focal import SoftmaxSeparable, separable_grad, separable_hvp, softmax_extreme, softmax_pieces

__all__ = ["SoftmaxPoly"]


def poly_logits(xp, x, c, epsilon: float, need_hessian: bool):
    """``(values, grads, curvature)`` per row at logits ``x`` (over T), unreduced;
    ``curvature = (p, q, c, c ⊙ p, r, Σu)`` or None."""
    logp, p, q, _ = softmax_pieces(xp, x)
    rest = (1 - xp.sum(c, axis=-1)) + xp.sum(c * q, axis=-1)
    values = -xp.sum(c * logp, axis=-1) + epsilon * rest
    u = -c * (1 + epsilon * p)  # <= 0 for ε >= −1
    grads = separable_grad(xp, p, q, u)
    if not need_hessian:
        return values, grads, None
    cp = c * p
    r = -epsilon * cp
    return values, grads, (p, q, c, cp, r, xp.sum(u, axis=-1, keepdims=True))


def poly_hessian(xp, p, q, c, cp, epsilon: float):
    """The blocks, dense, with ``M_ij = (Σc − c_i − c_j) + (1 − ε)(c_i + c_j)`` (>= 0 for
    ε <= 1) and ``P = Σ_k c_k p_k``: ``−p_i p_j (M_ij + 2εP)`` off the diagonal and
    ``p_j (Σ_{k≠j} p_k M_jk + 2ε q_j P)`` on it (the rows sum to 0): sums of terms of one
    sign, so a confident row keeps its digits (``1 − ε q_j`` is never formed)."""
    csum = xp.sum(c, axis=-1, keepdims=True)
    P = xp.sum(cp, axis=-1, keepdims=True)
    ci, cj = c[..., :, None], c[..., None, :]
    M = ((csum[..., None] - ci) - cj) + (1 - epsilon) * (ci + cj)
    H = -(p[..., :, None] * p[..., None, :]) * (M + (2 * epsilon) * P[..., None])
    eye = xp.eye(p.shape[-1], dtype=xp.bool, device=device_of(p))
    rest = xp.sum(xp.where(eye, xp.zeros_like(M), M * p[..., None, :]), axis=-1)
    return with_diagonal(xp, H, p * (rest + (2 * epsilon) * q * P))


@register_rule
class SoftmaxPoly(SoftmaxSeparable):
    """Softmax(T) + PolyLoss: value, gradient, Hessian and HVP in closed form from the logits."""

    pairs = ((Softmax, PolyLoss),)

    def logits(self, xp, x, c, loss, need_hessian):
        return poly_logits(xp, x, c, loss.epsilon, need_hessian)

    @staticmethod
    def single(loss, logp, p, q, w):
        """``(−log p + ε (1 − p), −(1 + ε p))`` at the target."""
        return -logp + loss.epsilon * q, -(1 + loss.epsilon * p)

    @staticmethod
    def kernel_index(loss, x, idx, w, scale):
        """:func:`jacobians._kernels.poly_index` (PolyLoss has no per-class weights: ``w`` is None)."""
        values, grads = _kernels.poly_index(x.reshape(-1, x.shape[-1]), idx.reshape(-1), loss.epsilon, scale)
        return values.reshape(x.shape[:-1]), grads.reshape(x.shape)

    def hessian(self, activation, loss, z, y):
        """CE's ``Σt (diag p − p pᵀ)`` plus ε times the Hessian of ``−p_t``, times the reduction's factor."""
        z = as_float_array(z, "z")
        (p, q, c, cp, _, _), scale = self._curvature(npx, activation, loss, z, y)
        return DenseJacobian(poly_hessian(npx, p, q, c, cp, loss.epsilon) * scale)

    def hvp(self, activation, loss, z, y, v):
        z = as_float_array(z, "z")
        (p, _, _, _, r, U), scale = self._curvature(npx, activation, loss, z, y)
        return separable_hvp(npx, p, r, U, v) * scale

    def extreme_value_and_grad(self, activation, loss, z, y):
        """At one-hot-separated logits: cross-entropy's limits (``∇p_t = t ⊙ p − p p_t = 0``)
        plus ``ε ((1 − Σt) + Σ_{k≠m} t_k)`` in the value."""
        value, grads = softmax_extreme(activation, loss, z, y, np.ones(z.shape[-1]), loss.label_smoothing)
        K = z.shape[-1]
        y = np.asarray(y)
        t = np.eye(K)[y] if y.shape == z.shape[:-1] else y.astype(np.float64)
        t = (1 - loss.label_smoothing) * t + loss.label_smoothing / K
        top = np.eye(K)[z.argmax(axis=-1)]
        extra = loss.epsilon * ((1 - t.sum(axis=-1)) + (t * (1 - top)).sum(axis=-1))
        if loss.reduction == "none":
            return value + extra, grads
        return value + (extra.mean() if loss.reduction == "mean" else extra.sum()), grads

    def extreme_hessian(self, activation, loss, z, y):
        """A one-hot softmax: ``diag p − p pᵀ = 0`` and ``p_k (e_k − p) = 0``: zero."""
        return np.zeros(z.shape + z.shape[-1:])

    # -- the generic (array API) forms ---------------------------------------------------
    def xp_hessian(self, xp, activation, loss, z, y):
        (p, q, c, cp, _, _), scale = self._curvature(xp, activation, loss, z, y)
        return poly_hessian(xp, p, q, c, cp, loss.epsilon) * scale

    def xp_hvp(self, xp, activation, loss, z, y, v):
        (p, _, _, _, r, U), scale = self._curvature(xp, activation, loss, z, y)
        return separable_hvp(xp, p, r, U, v) * scale
