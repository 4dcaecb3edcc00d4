"""Sigmoid + binary cross-entropy from the logits (torch's ``binary_cross_entropy_with_logits``).

Per entry, with ``p`` the ``pos_weight`` and ``y`` smoothed: value
``(1 − y) softplus(z) + p y softplus(−z)``, gradient ``σ(z)(1 − y + p y) − p y``, Hessian
``diag(σ(z) σ(−z) (1 − y + p y))``, each times the reduction's factor
(:meth:`jacobians.Loss.reduction_scale`, ``1/(N·K)`` for ``'mean'``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from ..activations import Sigmoid
from ..losses import BinaryCrossEntropy
from ..numerics.elementwise import sigmoid
from ..numerics.validation import as_float_array
from ..operators import DiagonalJacobian, DiagonalPlusLowRank
from ..xp.blocks import diagonal_blocks
from .base import PairRule, register_rule
from .common import entry_factor, reduce_plainly, reduced

__all__ = ["SigmoidBCE"]


def _plain(z, y, loss):
    """Without ``pos_weight``: ``softplus(z) − y z`` and ``σ(z) − y``, as
    ``z (h − y) + log1p(e)`` and ``(h − y) + (1 − 2h) q`` with ``h = step(z)``,
    ``e = exp(−|z|)``, ``q = e/(1 + e)`` (see :func:`jacobians._kernels.numpy_impl.sigmoid_bce_plain`):
    nothing rounded against 1, a call allocates only its results. The total of the values
    is :func:`~jacobians.numerics.buffers.total`'s (float64 pieces of CHUNK_ENTRIES, rounded once).
    """
    zf, yf = z.reshape(-1), np.broadcast_to(y, z.shape).reshape(-1)
    c = loss.reduction_scale(z, y)  # (0 for a denominator of 0: see jacobians.numerics.empty)
    values, total, grad = _kernels.sigmoid_bce_plain(zf, yf, c, loss.reduction == "none")
    grad = grad.reshape(z.shape)
    return reduced(loss.reduction, None if values is None else values.reshape(z.shape), total, c, grad)


def _curvature_weight(loss, z, y):
    """``1 − y + p y`` (smoothed targets, ``pos_weight`` p)."""
    ys = loss.smoothed(y)
    pw = loss.positive_weight(z.dtype)
    return 1 - ys + (ys if pw is None else pw * ys)


@register_rule
class SigmoidBCE(PairRule):
    """Sigmoid + BinaryCrossEntropy."""

    pairs = ((Sigmoid, BinaryCrossEntropy),)
    canonical = True

    def value_and_grad(self, activation, loss, z, y):
        """value ``(1 − y) softplus(z) + p y softplus(−z)``, grad ``(1 − y) σ(z) − p y σ(−z)``
        (``σ(z)(1 − y + p y) − p y``)."""
        z = as_float_array(z, "z")
        y = loss.smoothed(loss.check_targets(z, y))
        pw = loss.positive_weight(z.dtype)
        if pw is None:
            return _plain(z, y, loss)
        values, grad = _kernels.sigmoid_bce_weighted(z, y, pw * y)
        return loss.reduce(values, grad, values.size)

    def hessian(self, activation, loss, z, y):
        """``diag(σ(z) σ(−z) (1 − y + p y))``: the derivative of ``σ(z)(1 − y + p y) − p y``."""
        z = as_float_array(z, "z")
        y = loss.check_targets(z, y)
        h = sigmoid(z) * sigmoid(-z) * _curvature_weight(loss, z, y)
        return DiagonalJacobian(h * loss.reduction_scale(z, y))

    def sqrt_hessian(self, activation, loss, z, y):
        """``diag(√(c (1 − y + p y)) · e^{−|z|/2} / (1 + e^{−|z|}))``: √(σ(z)σ(−z)) without
        the product underflowing first."""
        z = as_float_array(z, "z")
        y = loss.check_targets(z, y)
        e = np.exp(-np.abs(z))
        root = np.exp(-np.abs(z) / 2) / (1 + e) * np.sqrt(_curvature_weight(loss, z, y) * loss.reduction_scale(z, y))
        return DiagonalJacobian(root).dense()

    def fisher(self, activation, loss, z, y=None):
        """``diag(β²(1 − ε)² σσ̄) + m mᵀ`` with ``β = σ + p σ̄``, ``σ̄ = σ(−z)`` and the mean
        gradient ``m = σσ̄(1 − p) + β ε tanh(z/2)/2`` (``ŷ`` ~ Bernoulli(σ), smoothed to
        ``(1 − ε)ŷ + ε/2``): zero without ``pos_weight`` and smoothing, where the Fisher is
        the Hessian ``diag(σσ̄)``."""
        z = as_float_array(z, "z")
        sig, sig_neg = sigmoid(z), sigmoid(-z)
        pw = loss.positive_weight(z.dtype)
        pw = 1 if pw is None else pw
        eps = z.dtype.type(loss.label_smoothing)
        curv = sig * sig_neg
        beta = sig + pw * sig_neg
        var = curv * (beta * (1 - eps)) ** 2
        if loss.pos_weight is None and not eps:
            return DiagonalJacobian(curv)
        m = curv * (1 - pw) + beta * eps * np.tanh(z / 2) / 2
        return DiagonalPlusLowRank(var, m[..., None], -m[..., None])

    def extreme_value_and_grad(self, activation, loss, z, y):
        """``relu(z) − y z (+ log 2 at z = 0)``, gradient ``step(z) − y`` (step(0) = 1/2)."""
        if loss.label_smoothing or loss.pos_weight is not None:
            return None
        y = np.asarray(y, dtype=np.float64)
        values = np.maximum(z, 0) - y * z + np.where(z == 0, np.log(2.0), 0.0)
        grads = np.where(z > 0, 1.0, np.where(z < 0, 0.0, 0.5)) - y
        return reduce_plainly(loss, values, grads, values.size)

    def extreme_hessian(self, activation, loss, z, y):
        """``σσ̄ (1 − y + p y)``: ¼ of it where z = 0, zero where |z| = 1e4."""
        ys = loss.smoothed(np.asarray(y, np.float64))
        pw = 1.0 if loss.pos_weight is None else loss.pos_weight.astype(np.float64)
        d = np.where(z == 0, 0.25, 0.0) * (1 - ys + pw * ys) * entry_factor(loss, z)
        return d[..., None] * np.eye(z.shape[-1])

    # -- the generic (array API) forms: torch, JAX, CuPy, array-api-strict arrays ----------
    @staticmethod
    def _xp_targets(xp, loss, z, y):
        """``(ys, p y)``: the smoothed targets and the positive weight times them."""
        yv = loss.xp_check_targets(xp, z, y)
        ys = loss.xp_smoothed(xp, yv)
        pw = loss.xp_positive_weight(xp, z)
        return yv, ys, (ys if pw is None else pw * ys)

    def xp_value_and_grad(self, xp, activation, loss, z, y):
        """Generic :meth:`value_and_grad`: value ``(1 − y) softplus(z) + p y softplus(−z)``
        (both terms non-negative), gradient ``(1 − y) σ(z) − p y σ(−z)`` (exact where
        y = 1 and σ(z) rounds to 1)."""
        _, ys, pys = self._xp_targets(xp, loss, z, y)
        sig, sig_neg, sp, sp_neg = _xp_logistic_parts(xp, z)
        values = (1 - ys) * sp + pys * sp_neg
        grad = (1 - ys) * sig - pys * sig_neg
        return loss.xp_reduce(xp, values, grad, math.prod(z.shape))

    def _xp_curvature(self, xp, loss, z, y):
        yv, ys, pys = self._xp_targets(xp, loss, z, y)
        sig, sig_neg, _, _ = _xp_logistic_parts(xp, z, logs=False)
        return sig * sig_neg * ((1 - ys) + pys) * loss.xp_reduction_scale(xp, z, yv)

    def xp_hessian(self, xp, activation, loss, z, y):
        """Generic :meth:`hessian`: ``diag(σ(z) σ(−z) (1 − y + p y))`` dense."""
        return diagonal_blocks(xp, self._xp_curvature(xp, loss, z, y))

    def xp_hvp(self, xp, activation, loss, z, y, v):
        return self._xp_curvature(xp, loss, z, y) * v

    def xp_sqrt_hessian(self, xp, activation, loss, z, y):
        """Generic :meth:`sqrt_hessian`: ``diag(√(c (1 − y + p y)) · e^{−|z|/2} / (1 + e^{−|z|}))``."""
        yv, ys, pys = self._xp_targets(xp, loss, z, y)
        e = xp.exp(-xp.abs(z))
        weight = ((1 - ys) + pys) * loss.xp_reduction_scale(xp, z, yv)
        return diagonal_blocks(xp, xp.exp(-xp.abs(z) / 2) / (1 + e) * xp.sqrt(weight))

    def xp_fisher(self, xp, activation, loss, z, y=None):
        """Generic :meth:`fisher`: ``diag(β²(1 − ε)² σσ̄) + m mᵀ``, dense (``diag(σσ̄)``
        without ``pos_weight`` and smoothing)."""
        from ..xp.shims import expit

        sig, sig_neg = expit(xp, z), expit(xp, -z)
        curv = sig * sig_neg
        if loss.pos_weight is None and not loss.label_smoothing:
            return diagonal_blocks(xp, curv)
        pw = loss.xp_positive_weight(xp, z)
        pw = 1 if pw is None else pw
        eps = loss.label_smoothing
        beta = sig + pw * sig_neg
        var = curv * (beta * (1 - eps)) ** 2
        m = curv * (1 - pw) + beta * eps * xp.tanh(z / 2) / 2
        return diagonal_blocks(xp, var) + m[..., :, None] * m[..., None, :]


def _xp_logistic_parts(xp, z, logs=True):
    """``(σ(z), σ(−z), softplus(z), softplus(−z))``, bit for bit the shims' ``expit`` and
    ``softplus``, from ``exp(min(±z, 0))`` (exactly 1 or ``e = exp(−|z|)``, and ``e`` their
    product) and one ``log1p(e)``: no ``where`` on the sign (torch's CPU ``where`` costs about
    four exp passes on random signs) and half the fresh arrays of calling the shims one by
    one. ``logs=False``: the softplus terms are None."""
    zero = xp.zeros_like(z)
    up, down = xp.exp(xp.minimum(z, zero)), xp.exp(xp.minimum(-z, zero))  # 1 or e, e or 1: no where
    e = up * down
    d = 1 + e
    sig, sig_neg = up / d, down / d
    if not logs:
        return sig, sig_neg, None, None
    log1p_e = xp.log1p(e)
    return sig, sig_neg, log1p_e + xp.maximum(z, zero), log1p_e + xp.maximum(-z, zero)
