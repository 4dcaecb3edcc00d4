"""Focal losses from the logits: Softmax + FocalLoss and Sigmoid + BinaryFocalLoss.

**Softmax + focal.** A loss of the softmax ``p = softmax(z/T)`` that is a sum of terms of
single probabilities, ``ℓ = Σ_k φ_k(p_k)``, has (with ``u_k = p_k φ'_k(p_k)``,
``U = Σu``, ``r_k = u_k + p_k² φ''_k(p_k)``)::

    ∇ℓ = u − p U                   (entry j: (1 − p_j) u_j − p_j Σ_{k≠j} u_k)
    ∇²ℓ = Σ_k r_k (e_k − p)(e_k − p)ᵀ − U (diag(p) − p pᵀ)

(over T and T²). For the focal loss ``φ_k = −c_k (1 − p)^γ log p`` (c = t ⊙ α):
``u_k = −c_k q_k^γ (1 − γ p_k L_k)``, ``r_k = c_k γ p_k q_k^{γ−1} (2 + (1 − γ p_k) L_k)`` with
``q = 1 − p`` and ``L = log p / q``. ``log p = (z − max) − log1p(t)`` and ``q`` (``t/(1+t)`` at
the top entry, ``Σ_{i≠k} e_i / Σe`` elsewhere) come from the shifted logits without
cancellation, so value, gradient and Hessian are exact at logits of ±1e4, in float32 too.
At the largest entry the term ``r (e − p)(e − p)ᵀ`` is ``(r q²) v vᵀ`` with ``v = (e − p)/q``
bounded and ``r q² = c γ p q^{γ+1} (…)`` finite for every γ >= 0 (``r`` alone is unbounded for
γ < 1 as ``q → 0``). γ = 0 gives cross-entropy's ``(u = −c, r = 0)``.

**Sigmoid + binary focal** (torchvision's ``sigmoid_focal_loss``): per entry with ``s = σ(z)``,
``s̄ = σ(−z)``, ``ce = (1 − t) softplus(z) + t softplus(−z)``, ``m = s(1 − t) + s̄ t`` and
``ρ = s s̄ / m`` (bounded by 1; 1 where ``m = 0``)::

    loss = α_t ce m^γ
    ∂/∂z = α_t m^γ [(s(1 − t) − t s̄) + γ ce ρ (1 − 2t)]
    ∂²/∂z² = α_t m^γ [s s̄ + γ (1 − 2t) ρ (2(s(1 − t) − t s̄) + ce (s̄ − s) + (γ − 1) ce ρ (1 − 2t))]

Neither pair is canonical: the GGN is the chain rule's ``Jᵀ H_a J`` (the losses' own Hessians
in the probabilities), and neither loss is a likelihood (no exact or Monte-Carlo Fisher).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._kernels.numpy_focal import single_target, single_target_grad
from ..activations import Sigmoid, Softmax
from ..losses import BinaryFocalLoss, FocalLoss
from ..losses.focal import binary_weight
from ..numerics import buffers
from ..numerics.validation import as_float_array
from ..operators import DenseJacobian, DiagonalJacobian
from ..xp.blocks import complement_sums, device_of, diagonal_blocks, with_diagonal
from ..xp.numpy_namespace import numpy_xp as npx
from .base import PairRule, register_rule
from .common import entry_factor, onehot, reduce_plainly, reduced
from .generic import softmax_parts
from .sigmoid_bce import _plain as _bce_plain
from .softmax import SoftmaxFamily

#: γ = 0 without α is cross-entropy: the softmax family's rule serves it, bit for bit
_CE = SoftmaxFamily()

__all__ = [
    "SoftmaxSeparable",
    "SoftmaxFocal",
    "SigmoidBinaryFocal",
    "softmax_pieces",
    "separable_grad",
    "separable_hessian",
    "separable_hvp",
    "softmax_extreme",
]


# -- a sum of terms of single softmax probabilities: the shared algebra ---------------------
def softmax_pieces(xp, x):
    """``(log p, p, q, (d, e, t, top))`` of rows ``x``: ``q = 1 − p`` as ``t/(1 + t)`` at the
    top entry and ``Σ_{i≠k} e_i / Σe`` elsewhere (:func:`~jacobians.rules.generic.softmax_parts`)."""
    d, e, t, top = softmax_parts(xp, x)
    S = 1 + t
    return d - xp.log1p(t), e / S, xp.where(top, t, S - e) / S, (d, e, t, top)


def separable_grad(xp, p, q, u):
    """``u − p Σu`` per row as ``q u − p Σ_{k≠j} u_k`` (``u <= 0``: complement sums)."""
    return q * u + p * complement_sums(xp, -u)


def separable_hessian(xp, p, q, r, U, r_rest, star=None):
    """``Σ_k r_k (e_k − p)(e_k − p)ᵀ − U (diag p − p pᵀ)`` dense, plus ``s v vᵀ`` for
    ``star = (s, v)``; the diagonal ``r q² + p² Σ_{k≠j} r_k − U p q (+ s v²)`` set directly
    (``r_rest`` = ``Σ_{k≠j} r_k``). ``U``, ``s``: (..., 1)."""
    R = xp.sum(r, axis=-1, keepdims=True)
    H = (R + U)[..., None] * (p[..., :, None] * p[..., None, :])
    H = H - (r[..., :, None] * p[..., None, :] + p[..., :, None] * r[..., None, :])
    dg = r * q * q + p * p * r_rest - U * p * q
    if star is not None:
        s, v = star
        H = H + s[..., None] * (v[..., :, None] * v[..., None, :])
        dg = dg + s * v * v
    return with_diagonal(xp, H, dg)


def separable_hvp(xp, p, r, U, vec, star=None):
    """The product of :func:`separable_hessian`'s blocks with ``vec`` (..., K), in O(K) a row."""
    w = vec - xp.sum(p * vec, axis=-1, keepdims=True)
    out = r * w - p * xp.sum(r * w, axis=-1, keepdims=True) - U * p * w
    if star is not None:
        s, v = star
        out = out + s * xp.sum(v * vec, axis=-1, keepdims=True) * v
    return out


def softmax_extreme(activation, loss, z, y, weight, smoothing: float = 0.0):
    """Cross-entropy's limits at one-hot-separated logits (plain float64), the coefficients
    ``c = ((1 − λ) t + λ/K) ⊙ weight``: value ``Σ c (z_m − z)/T``, gradient
    ``(e_m Σ_{k≠m} c_k − c ⊙ (1 − e_m))/T``, reduced over the rows."""
    T = _temperature(activation)
    K = z.shape[-1]
    y = np.asarray(y)
    t = onehot(y, K) if y.shape == z.shape[:-1] else y.astype(np.float64)
    c = ((1 - smoothing) * t + smoothing / K) * np.asarray(weight, np.float64)
    top = onehot(z.argmax(axis=-1), K)
    values = (c * (z.max(axis=-1, keepdims=True) - z)).sum(axis=-1) / T
    grads = (top * (c * (1 - top)).sum(axis=-1, keepdims=True) - c * (1 - top)) / T
    return reduce_plainly(loss, values, grads, values.size)


def _temperature(activation):
    return float(getattr(activation, "temperature", 1.0))


def focal_logits(xp, x, c, gamma: float, need_hessian: bool):
    """``(values, grads, curvature)`` of the focal loss at logits ``x`` (already over T), per
    row, unreduced; ``curvature`` = ``(p, q, r, U, r_rest, star)`` for the Hessian (or None)."""
    logp, p, q, (d, e, t, top) = softmax_pieces(xp, x)
    one = xp.ones_like(q)
    qg = q**gamma if gamma else one
    pos = q > 0
    L = xp.where(pos, logp / xp.where(pos, q, one), -one)
    values = -xp.sum(c * qg * logp, axis=-1)
    u = -c * qg * (1 - gamma * (p * L)) if gamma else -c
    grads = separable_grad(xp, p, q, u)
    if not need_hessian:
        return values, grads, None
    U = xp.sum(u, axis=-1, keepdims=True)
    if not gamma:
        r = xp.zeros_like(p)
        return values, grads, (p, q, r, U, r, None)
    K = x.shape[-1]
    am = xp.arange(K, device=device_of(x)) == xp.argmax(x, axis=-1, keepdims=True)
    shape = c * gamma * p * (2 + (1 - gamma * p) * L)
    r = xp.where(am, xp.zeros_like(p), shape * (qg / xp.where(am, one, q)))  # q >= 1/2 off the argmax
    s = xp.sum(xp.where(am, shape * qg * q, xp.zeros_like(p)), axis=-1, keepdims=True)
    tpos = t > 0
    off = xp.where(am, xp.zeros_like(e), e)  # e_k <= t off the top (no overflow where t is subnormal)
    v = xp.where(am, one, xp.where(tpos, -off / xp.where(tpos, t, xp.ones_like(t)), xp.zeros_like(e)))
    r_rest = xp.sum(r, axis=-1, keepdims=True) - r
    return values, grads, (p, q, r, U, r_rest, (s, v))


class SoftmaxSeparable(PairRule):
    """What the softmax rules of sums of single-probability terms share (focal, poly-1): the
    logits over T, the coefficients, the reduction. A subclass writes ``logits(xp, x, c,
    loss, need_hessian) -> (values, grads, curvature)`` at the logits over T, unreduced."""

    canonical = False

    def logits(self, xp, x, c, loss, need_hessian):  # pragma: no cover - every subclass writes it
        raise NotImplementedError

    def _run(self, xp, activation, loss, z, c, need_hessian):
        T = _temperature(activation)
        x = z if T == 1.0 else z / T
        values, grads, curv = self.logits(xp, x, c, loss, need_hessian)
        return values, (grads if T == 1.0 else grads / T), curv, T

    #: ``single(loss, log p_y, p_y, q_y, w) -> (values, u_y)`` for index targets (w the
    #: per-row weight), or None: the fast path of :meth:`value_and_grad`
    single = None

    def value_and_grad(self, activation, loss, z, y):
        z = as_float_array(z, "z")
        t = loss.check_targets(z, y)
        if self.single is not None and t.is_index and t.valid is None and not getattr(loss, "label_smoothing", 0.0):
            return self._single_target(activation, loss, z, t)
        c, denom = loss.coefficients(t, z.dtype)
        T = _temperature(activation)
        scale = loss.reduction_scale(z, t)
        fused = self.kernel_rows(loss, z if T == 1.0 else z / z.dtype.type(T), c,
                                 scale if T == 1.0 else scale / z.dtype.type(T))
        if fused is None:
            values, grads, _, _ = self._run(npx, activation, loss, z, c, False)
            return loss.reduce(values, grads, denom)
        values, grads = fused
        return reduced(loss.reduction, values, buffers.total(values), scale, grads)

    #: ``kernel_index(loss, x, idx, w, scale) -> (values, grads)`` and ``kernel_rows(loss, x,
    #: c, scale) -> (values, grads)`` (``x`` the logits over T, ``scale`` the gradient's
    #: factor): a compiled kernel of :mod:`jacobians._kernels` for :meth:`value_and_grad`,
    #: or None (the numpy forms here)
    def kernel_index(self, loss, x, idx, w, scale):
        return None

    def kernel_rows(self, loss, x, c, scale):
        return None

    def _single_target(self, activation, loss, z, t):
        T = _temperature(activation)
        x = z if T == 1.0 else z / z.dtype.type(T)
        alpha = getattr(loss, "alpha", None)
        if alpha is not None:
            loss.check_alpha_shape(z.shape[-1])
        w = None if alpha is None else alpha.astype(z.dtype)[t.indices]
        scale = loss.reduction_scale(z, t)
        factor = scale if T == 1.0 else scale / z.dtype.type(T)
        fused = self.kernel_index(loss, x, t.indices, w, factor)
        if fused is None:
            e, S, logp, p_y, q_y = single_target(x, t.indices)
            with np.errstate(divide="ignore", invalid="ignore"):  # (log p / q where q = 0: masked)
                values, u_y = self.single(loss, logp, p_y, q_y, w)
            grad = single_target_grad(e, S, t.indices, u_y * factor, q_y)
        else:
            values, grad = fused
        return reduced(loss.reduction, values, buffers.total(values), scale, grad)

    def xp_value_and_grad(self, xp, activation, loss, z, y):
        c, denom = loss.xp_coefficients(xp, z, y)
        values, grads, _, _ = self._run(xp, activation, loss, z, c, False)
        return loss.xp_reduce(xp, values, grads, denom)

    def _curvature(self, xp, activation, loss, z, y):
        """``(curvature, factor)``: the subclass's curvature parts and the reduction's factor over T²."""
        if xp is npx:
            t = loss.check_targets(z, y)
            c, _ = loss.coefficients(t, z.dtype)
            scale = loss.reduction_scale(z, t)
        else:
            c, _ = loss.xp_coefficients(xp, z, y)
            scale = loss.xp_reduction_scale(xp, z, y)
        _, _, curv, T = self._run(xp, activation, loss, z, c, True)
        return curv, scale / (T * T)


@register_rule
class SoftmaxFocal(SoftmaxSeparable):
    """Softmax(T) + FocalLoss: value, gradient, Hessian and HVP in closed form from the logits."""

    pairs = ((Softmax, FocalLoss),)

    def logits(self, xp, x, c, loss, need_hessian):
        return focal_logits(xp, x, c, loss.gamma, need_hessian)

    single = True  # index targets: the kernel below

    @staticmethod
    def kernel_index(loss, x, idx, w, scale):
        """:func:`jacobians._kernels.focal_index`: ``−w q^γ log p`` and ``u = −w q^γ (1 − γ p log p / q)`` at the target."""
        values, grads = _kernels.focal_index(x.reshape(-1, x.shape[-1]), idx.reshape(-1),
                                             None if w is None else w.reshape(-1), loss.gamma, scale)
        return values.reshape(x.shape[:-1]), grads.reshape(x.shape)

    @staticmethod
    def kernel_rows(loss, x, c, scale):
        """:func:`jacobians._kernels.focal_coefficients` (c = t ⊙ α)."""
        return _kernels.focal_coefficients(x, c, loss.gamma, scale)

    @staticmethod
    def _is_ce(loss) -> bool:
        return loss.gamma == 0 and loss.alpha is None

    def value_and_grad(self, activation, loss, z, y):
        if self._is_ce(loss):
            return _CE.value_and_grad(activation, loss, z, y)
        return super().value_and_grad(activation, loss, z, y)

    def hessian(self, activation, loss, z, y):
        """``Σ_k r_k (e_k − p)(e_k − p)ᵀ − U (diag p − p pᵀ)`` (module doc), times the reduction's factor."""
        if self._is_ce(loss):
            return _CE.hessian(activation, loss, z, y)
        z = as_float_array(z, "z")
        (p, q, r, U, r_rest, star), scale = self._curvature(npx, activation, loss, z, y)
        return DenseJacobian(separable_hessian(npx, p, q, r, U, r_rest, star) * scale)

    def hvp(self, activation, loss, z, y, v):
        if self._is_ce(loss):
            return _CE.hvp(activation, loss, z, y, v)
        z = as_float_array(z, "z")
        (p, _, r, U, _, star), scale = self._curvature(npx, activation, loss, z, y)
        return separable_hvp(npx, p, r, U, v, star) * scale

    def extreme_value_and_grad(self, activation, loss, z, y):
        """At one-hot-separated logits (p = e_m, 1 − p_m = 0): whatever γ, cross-entropy's
        value ``Σ c (z_m − z)/T`` and gradient ``(e_m Σ_{k≠m} c_k − c off m)/T``, c = t ⊙ α."""
        return softmax_extreme(activation, loss, z, y, np.ones(z.shape[-1]) if loss.alpha is None else loss.alpha)

    def extreme_hessian(self, activation, loss, z, y):
        """A one-hot softmax: every term carries ``diag p − p pᵀ = 0``, ``p_k`` or ``(1 − p_m)``: zero."""
        return np.zeros(z.shape + z.shape[-1:])

    # -- the generic (array API) forms ---------------------------------------------------
    def xp_value_and_grad(self, xp, activation, loss, z, y):
        if self._is_ce(loss):
            return _CE.xp_value_and_grad(xp, activation, loss, z, y)
        return super().xp_value_and_grad(xp, activation, loss, z, y)

    def xp_hessian(self, xp, activation, loss, z, y):
        if self._is_ce(loss):
            return _CE.xp_hessian(xp, activation, loss, z, y)
        (p, q, r, U, r_rest, star), scale = self._curvature(xp, activation, loss, z, y)
        return separable_hessian(xp, p, q, r, U, r_rest, star) * scale

    def xp_hvp(self, xp, activation, loss, z, y, v):
        if self._is_ce(loss):
            return _CE.xp_hvp(xp, activation, loss, z, y, v)
        (p, _, r, U, _, star), scale = self._curvature(xp, activation, loss, z, y)
        return separable_hvp(xp, p, r, U, v, star) * scale


def binary_focal_logits(xp, z, t, gamma: float, alpha, need_hessian: bool):
    """``(values, grads, hessians)`` per entry of the binary focal loss at logits ``z`` (module
    doc), unreduced; ``hessians`` None unless asked."""
    one = xp.ones_like(z)
    e = xp.exp(-xp.abs(z))  # one exp and one log1p serve σ(±z) and softplus(±z)
    d = 1 + e
    hi = 1 / d
    lo = e * hi if xp is npx else e / d  # (as numpy's sigmoid and the shims' expit round)
    pos, neg = z >= 0, z <= 0
    s, sb = xp.where(pos, hi, lo), xp.where(neg, hi, lo)
    l1 = xp.log1p(e)
    zero = xp.zeros_like(z)
    ce = (one - t) * (l1 + xp.maximum(z, zero)) + t * (l1 + xp.maximum(-z, zero))
    m = s * (one - t) + sb * t
    mg = m**gamma if gamma else one
    at = binary_weight(xp, alpha, t)
    w = mg if at is None else at * mg
    diff = s * (one - t) - t * sb
    sign = one - 2 * t
    pos = m > 0
    rho = xp.where(pos, s * sb / xp.where(pos, m, one), one)
    values = ce * w
    grads = w * (diff + gamma * ce * rho * sign) if gamma else w * diff
    hess = None
    if need_hessian:
        inner = s * sb
        if gamma:
            inner = inner + gamma * sign * rho * (2 * diff + ce * (sb - s) + (gamma - 1) * ce * rho * sign)
        hess = w * inner
    return values, grads, hess


@register_rule
class SigmoidBinaryFocal(PairRule):
    """Sigmoid + BinaryFocalLoss: value, gradient and the (diagonal) Hessian from the logits."""

    pairs = ((Sigmoid, BinaryFocalLoss),)
    canonical = False

    def value_and_grad(self, activation, loss, z, y):
        z = as_float_array(z, "z")
        y = loss.check_targets(z, y)
        if loss.gamma == 0 and loss.alpha is None:  # binary cross-entropy: its rule's kernel
            return _bce_plain(z, y, loss)
        c = loss.reduction_scale(z, y)
        values, grads = _kernels.binary_focal(z, y, loss.gamma, loss.alpha, c)
        return reduced(loss.reduction, values, buffers.total(values), c, grads)

    def hessian(self, activation, loss, z, y):
        z = as_float_array(z, "z")
        y = loss.check_targets(z, y)
        h = binary_focal_logits(npx, z, y, loss.gamma, loss.alpha, True)[2]
        return DiagonalJacobian(h * loss.reduction_scale(z, y))

    def hvp(self, activation, loss, z, y, v):
        return self.hessian(activation, loss, z, y) @ v

    def extreme_value_and_grad(self, activation, loss, z, y):
        """At z in {−1e4, 0, 1e4} (plain float64): ``z = ±1e4`` gives ``σ`` of 1 or 0, ``ce`` of
        ``(1 − t) z`` or ``−t z``, ``1 − p_t`` of ``1 − t`` or ``t``, gradient ``α_t (1 − p_t)^γ
        (σ − t)``; ``z = 0`` gives ``α_t 2^{−γ} log 2`` and ``α_t 2^{−γ} (½ − t)(1 + γ log 2)``."""
        t = np.asarray(y, np.float64)
        a = np.ones_like(t) if loss.alpha is None else loss.alpha * t + (1 - loss.alpha) * (1 - t)
        g, log2 = loss.gamma, np.log(2.0)
        pos, zero = z > 0, z == 0
        m = np.where(zero, 0.5, np.where(pos, 1 - t, t))
        ce = np.where(zero, log2, np.where(pos, (1 - t) * z, -t * z))
        values = a * ce * m**g
        grads = np.where(zero, a * 0.5**g * (0.5 - t) * (1 + g * log2), a * m**g * (np.where(pos, 1.0, 0.0) - t))
        return reduce_plainly(loss, values, grads, values.size)

    def extreme_hessian(self, activation, loss, z, y):
        """Zero at ``z = ±1e4`` (σσ̄ = 0); at ``z = 0`` ``α_t 2^{−γ} [¼ + (γ/2)(1 − 2t)²(1 + (γ − 1) log 2 / 2)]``."""
        t = np.asarray(y, np.float64)
        a = np.ones_like(t) if loss.alpha is None else loss.alpha * t + (1 - loss.alpha) * (1 - t)
        g = loss.gamma
        d = a * 0.5**g * (0.25 + g / 2 * (1 - 2 * t) ** 2 * (1 + (g - 1) * np.log(2.0) / 2))
        d = np.where(z == 0, d, 0.0) * entry_factor(loss, z)
        return d[..., None] * np.eye(z.shape[-1])

    def xp_value_and_grad(self, xp, activation, loss, z, y):
        yv = loss.xp_check_targets(xp, z, y)
        values, grads, _ = binary_focal_logits(xp, z, yv, loss.gamma, loss.alpha, False)
        return loss.xp_reduce(xp, values, grads, math.prod(z.shape))

    def _xp_diagonal(self, xp, loss, z, y):
        yv = loss.xp_check_targets(xp, z, y)
        h = binary_focal_logits(xp, z, yv, loss.gamma, loss.alpha, True)[2]
        return h * loss.xp_reduction_scale(xp, z, yv)

    def xp_hessian(self, xp, activation, loss, z, y):
        return diagonal_blocks(xp, self._xp_diagonal(xp, loss, z, y))

    def xp_hvp(self, xp, activation, loss, z, y, v):
        return self._xp_diagonal(xp, loss, z, y) * v
