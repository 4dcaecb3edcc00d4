"""The softmax family: softmax + cross-entropy, softmax + KL, log-softmax + NLL — one rule.

Each is a loss ``const − Σ_k c_k log p_k`` of ``p = softmax(z/T)``: gradient
``(p Σc − c)/T``, Hessian ``Σc (diag(p) − p pᵀ)/T²``, both times the reduction's factor
(:meth:`jacobians.Loss.reduction_scale`). Everything works with the shifted logits
``z − max`` and log-sum-exp, and never clips: exact for logits of ±1e4, in float32 too.
"""

from __future__ import annotations

import numpy as np

from .. import _kernels
from ..activations import LogSoftmax, Softmax
from ..losses import CrossEntropy, KLDivergence, NLLLoss
from ..losses.generic import const
from ..numerics import buffers
from ..numerics.validation import as_float_array
from ..operators import DiagonalPlusLowRank, JacobianOperator, SimplexBlock
from ..xp.blocks import centred_product, complement_sums, device_of, diagonal_blocks, simplex_sqrt, with_diagonal
from .base import PairRule, register_rule
from .common import onehot, reduce_plainly, reduced
from .generic import softmax_parts

__all__ = ["SoftmaxFamily", "class_fisher", "xp_class_fisher"]


def _plain_index(x, t, loss, T):
    """Index targets, no weights or smoothing: value ``lse(x) − x_y``, gradient
    ``(s − e_y)/T`` (times :meth:`~jacobians.Loss.reduction_scale`), written in one
    buffer: ``log1p(o / e_y)`` and ``−o / (o + e_y)`` with ``o = Σ_{k≠y} e^{x_k}`` summed
    without the target (see :func:`jacobians._kernels.numpy_impl.ce_index`)."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    idx = t.safe_indices().reshape(-1)
    valid = None if t.valid is None else t.valid.reshape(-1)
    c = loss.reduction_scale(x, t)  # (0 for a denominator of 0: see jacobians.numerics.empty)
    scale = c if T == 1.0 else c / x.dtype.type(T)
    values, g = _kernels.ce_index(x2, idx, valid, scale)
    g = g.reshape(x.shape)
    return reduced(loss.reduction, values.reshape(x.shape[:-1]), buffers.total(values), c, g)


def class_fisher(p: np.ndarray, loss, dtype) -> JacobianOperator:
    """``E_k~p[g(k) g(k)ᵀ]`` for ``g(k) = p s_k − (1 − ε) w_k e_k − (ε/K) w``, the logit
    gradient of ``−Σ_j w_j q_j log p_j`` at the target ``q = (1 − ε) e_k + ε/K``::

        (1 − ε)² diag(p w²) + A p pᵀ − B (p bᵀ + b pᵀ) + P b bᵀ − (1 − ε)(p rᵀ + r pᵀ − b qᵀ − q bᵀ)

    with ``s_k = (1 − ε) w_k + (ε/K) Σw``, ``b = (ε/K) w``, ``A = Σ p s²``, ``B = Σ p s``,
    ``P = Σ p``, ``r = p w s``, ``q = p w``. Without weights and smoothing: ``diag(p) − p pᵀ``.
    """
    K = p.shape[-1]
    eps = float(getattr(loss, "label_smoothing", 0.0))
    w_attr = getattr(loss, "weight", None)
    if w_attr is None and not eps:
        return SimplexBlock(p, np.ones(p.shape[:-1], dtype))
    w = np.ones(K, dtype) if w_attr is None else w_attr.astype(dtype)
    one = dtype.type(1 - eps)
    b = np.broadcast_to(dtype.type(eps / K) * w, p.shape)
    s = one * w + dtype.type(eps / K) * w.sum()
    A = (p * s * s).sum(axis=-1, keepdims=True)
    B = (p * s).sum(axis=-1, keepdims=True)
    P = p.sum(axis=-1, keepdims=True)
    r, q = p * w * s, p * w
    U = np.stack([p, b, one * r, -one * q], axis=-1)
    V = np.stack([-A * p + B * b + one * r, B * p - P * b - one * q, p, b], axis=-1)
    return DiagonalPlusLowRank(one * one * p * w * w, U, V)


@register_rule
class SoftmaxFamily(PairRule):
    """Softmax(T) + CrossEntropy / KLDivergence, LogSoftmax + NLLLoss."""

    # (the order of earlier versions' registry, where NLL came first)
    pairs = ((LogSoftmax, NLLLoss), (Softmax, KLDivergence), (Softmax, CrossEntropy))
    canonical = True

    def value_and_grad(self, activation, loss, z, y):
        """Grad ``(s Σc − c)/T``. ``log p = (z/T − m) − log1p(Σ_{k≠argmax} e^{z_k/T − m})`` is
        never formed from ``log s``, so nothing underflows, and every term of the value is
        non-negative, so nothing cancels (see :func:`~jacobians.numerics.softmax.shifted_exp`)."""
        z = as_float_array(z, "z")
        t = loss.check_targets(z, y)
        T = getattr(activation, "temperature", 1.0)
        x = z if T == 1.0 else z / z.dtype.type(T)
        plain = t.is_index and getattr(loss, "weight", None) is None and not getattr(loss, "label_smoothing", 0.0)
        if plain:  # the reduction is read from loss.reduction_scale, a subclass's own included
            return _plain_index(x, t, loss, T)
        c, denom = loss.coefficients(t, z.dtype)
        values, grad = _kernels.ce_coefficients(x, c)
        if isinstance(loss, KLDivergence):
            values += loss.entropy_term(t, z.dtype)
        if T != 1.0:
            grad /= grad.dtype.type(T)
        return loss.reduce(values, grad, denom)

    @staticmethod
    def _parts(activation, loss, z, y):
        """``(x, t, csum, scale)``: the logits over T, the targets, Σc per row and the
        reduction's factor over T²."""
        z = as_float_array(z, "z")
        t = loss.check_targets(z, y)
        T = getattr(activation, "temperature", 1.0)
        x = z if T == 1.0 else z / z.dtype.type(T)
        if t.is_index and getattr(loss, "weight", None) is None:
            # smoothing keeps Σc = 1: the row sums are 1, or 0 for ignored rows
            csum = np.ones(t.indices.shape, z.dtype) if t.valid is None else t.valid.astype(z.dtype)
        else:
            csum = loss.coefficients(t, z.dtype)[0].sum(axis=-1)
        return x, t, csum, loss.reduction_scale(z, t) / z.dtype.type(T) ** 2

    def hessian(self, activation, loss, z, y):
        """``Σc · (diag(p) − p pᵀ)/T²`` per row (times the reduction's factor)."""
        x, _, csum, scale = self._parts(activation, loss, z, y)
        return SimplexBlock(_kernels.softmax(x), csum * scale)

    def hvp(self, activation, loss, z, y, v):
        """``Σc (p ⊙ (v − p·v))/T²``: the softmax VJP of v (one fused pass), scaled by ``Σc/T``."""
        x, t, csum, scale = self._parts(activation, loss, z, y)
        T = getattr(activation, "temperature", 1.0)
        plain = t.is_index and t.valid is None and getattr(loss, "weight", None) is None
        factor = scale * x.dtype.type(T) if plain else csum * (scale * x.dtype.type(T))
        return _kernels.softmax_vjp(x, v, T, factor)

    def sqrt_hessian(self, activation, loss, z, y):
        """The block's exact factor (:meth:`SimplexBlock.sqrt <jacobians.SimplexBlock.sqrt>`)
        with ``√p = exp(½ log p) = e^{(x − m)/2} / √Σe^{x − m}``: normal where p itself
        underflows, and one exp a row entry."""
        x, _, csum, scale = self._parts(activation, loss, z, y)
        half = np.exp((x - x.max(axis=-1, keepdims=True)) / 2)
        root = half / np.sqrt(np.einsum("...k,...k->...", half, half))[..., None]
        return SimplexBlock(root * root, csum * scale, root_d=root).sqrt()

    def fisher(self, activation, loss, z, y=None):
        z = as_float_array(z, "z")
        T = getattr(activation, "temperature", 1.0)
        x = z if T == 1.0 else z / z.dtype.type(T)
        if isinstance(loss, KLDivergence):  # a one-hot ŷ: −log p_ŷ, whatever the soft targets
            blocks = SimplexBlock(_kernels.softmax(x), np.ones(z.shape[:-1], z.dtype))
        else:
            blocks = class_fisher(_kernels.softmax(x), loss, z.dtype)
        return blocks if T == 1.0 else blocks.scaled(z.dtype.type(1.0 / T**2))

    def extreme_value_and_grad(self, activation, loss, z, y):
        """At one-hot-separated logits: value ``Σ c (z_max − z)/T``, grad ``(e_max Σc − c)/T``
        (None with weights, an ignored index or smoothing)."""
        if getattr(loss, "weight", None) is not None or getattr(loss, "ignore_index", None) is not None:
            return None
        if getattr(loss, "label_smoothing", 0.0):
            return None
        T = getattr(activation, "temperature", 1.0)
        K = z.shape[-1]
        y = np.asarray(y)
        c = onehot(y, K) if y.shape == z.shape[:-1] else y.astype(np.float64)
        top = onehot(z.argmax(axis=-1), K)
        zmax = z.max(axis=-1, keepdims=True)
        values = (c * (zmax - z)).sum(axis=-1) / T
        if isinstance(loss, KLDivergence) and y.shape == z.shape:
            with np.errstate(divide="ignore", invalid="ignore"):
                values = values + np.where(c > 0, c * np.log(np.where(c > 0, c, 1)), 0).sum(axis=-1)
        grads = (top * c.sum(axis=-1, keepdims=True) - c) / T
        return reduce_plainly(loss, values, grads, values.size)

    def extreme_hessian(self, activation, loss, z, y):
        """A one-hot softmax: ``diag(p) − p pᵀ = 0``."""
        return np.zeros(z.shape + z.shape[-1:])

    # -- the generic (array API) forms: torch, JAX, CuPy, array-api-strict arrays ----------
    @staticmethod
    def _xp_parts(xp, activation, loss, z, y):
        """``(x, (d, e, t, top), c, denominator, T)`` for the generic forms: the logits over
        T, their softmax parts (:func:`~jacobians.rules.generic.softmax_parts`) and the
        loss's coefficients (``−Σ c log p`` per row)."""
        T = getattr(activation, "temperature", 1.0)
        x = z if T == 1.0 else z / T
        yv = loss.xp_check_targets(xp, z, y)
        c, denom = loss.xp_coefficients(xp, z, yv)
        return x, softmax_parts(xp, x), c, denom, T, yv

    def xp_value_and_grad(self, xp, activation, loss, z, y):
        """Generic :meth:`value_and_grad`: value ``Σ c ((max − x) + log1p(t))`` (every term
        non-negative), gradient ``(p Σc − c)/T``, with the top entry's ``1 − p`` as
        ``t/(1 + t)`` (exact for a confident row)."""
        if isinstance(loss, KLDivergence):  # its entropy term: the chain rule's generic path
            a = activation.xp_forward(xp, z)
            value, g = loss.xp_value_and_grad(xp, a, loss.xp_check_targets(xp, a, y))
            return value, activation.xp_vjp_from_output(xp, z, a, g)
        yv = loss.xp_check_targets(xp, z, y)
        if yv.is_index and yv.valid is None and getattr(loss, "weight", None) is None and not getattr(loss, "label_smoothing", 0.0):
            return self._xp_plain_index(xp, activation, loss, z, yv)
        x, (d, e, t, top), c, denom, T, _ = self._xp_parts(xp, activation, loss, z, y)
        values = xp.sum(c * (xp.log1p(t) - d), axis=-1)
        csum = xp.sum(c, axis=-1, keepdims=True)
        p = e / (1 + t)
        # at a top entry s·Σc − c = s Σ_{j≠k} c_j − c (1 − s), the others' coefficients summed
        # directly where c_k is the largest (a soft target near 1 would cancel in Σc − c)
        grad = xp.where(top, complement_sums(xp, c) / (1 + t) - c * (t / (1 + t)), p * csum - c)
        if T != 1.0:
            grad = grad / T
        return loss.xp_reduce(xp, values, grad, denom)

    @staticmethod
    def _xp_plain_index(xp, activation, loss, z, yv):
        """Index targets without weights, smoothing or ignored ones (numpy's ``_plain_index``):
        value ``log1p(t) − d_y``, gradient ``s (p − e_y)/T`` with the target's entry ``−s
        t/(1 + t)`` where it is a top entry (no cancellation), ``s`` the reduction's factor;
        no dense coefficients (each fresh (..., K) array costs about an exp pass on a CPU)."""
        from ..xp.shims import take_along_axis  # (array_api_compat: not on `import jacobians`)

        T = getattr(activation, "temperature", 1.0)
        x = z if T == 1.0 else z / T
        m = xp.max(x, axis=-1, keepdims=True)
        _, e, t, _ = softmax_parts(xp, x, m)  # (d and the mask freed here: their pages reused)
        idx = yv.indices[..., None]
        d_y = take_along_axis(xp, x, idx) - m  # d's entry, gathered from x: XLA need not keep d or e
        denom = loss.xp_mean_denominator(xp, z, yv)
        value, s = loss.xp_reduce(xp, xp.log1p(t[..., 0]) - d_y[..., 0], xp.ones_like(t), denom)
        s = s if T == 1.0 else s / T  # the reduction's factor per row, (..., 1)
        r = s / (1 + t)
        g_y = xp.where(d_y == 0, -(t / (1 + t)), xp.exp(d_y) / (1 + t) - 1) * s
        hot = xp.arange(x.shape[-1], dtype=idx.dtype, device=device_of(x)) == idx
        return value, xp.where(hot, g_y, e * r)

    def _xp_weight(self, xp, activation, loss, z, y):
        """``(p, Σc · factor / T²)``: the softmax and each row's curvature weight."""
        x, (d, e, t, top), c, denom, T, yv = self._xp_parts(xp, activation, loss, z, y)
        scale = loss.xp_reduction_scale(xp, z, yv)
        w = xp.sum(c, axis=-1, keepdims=True) * scale
        return e / (1 + t), (w if T == 1.0 else w / T**2), (d, e, t, top)

    def xp_hessian(self, xp, activation, loss, z, y):
        """Generic :meth:`hessian`: ``Σc (diag(p) − p pᵀ)/T²`` dense, its diagonal
        ``p(1 − p)`` with ``1 − p`` from complement sums."""
        p, w, (d, e, t, top) = self._xp_weight(xp, activation, loss, z, y)
        rest = xp.where(top, t, (1 + t) - e) / (1 + t)  # 1 − p_k without cancellation
        # one (..., K, K) array (its fresh pages cost as much as the arithmetic on a CPU)
        return with_diagonal(xp, (-w * p)[..., :, None] * p[..., None, :], w * p * rest)

    def xp_hvp(self, xp, activation, loss, z, y, v):
        """Generic :meth:`hvp`: ``Σc p ⊙ (v − p·v)/T²``, v centred on the top entry."""
        p, w, _ = self._xp_weight(xp, activation, loss, z, y)
        return w * centred_product(xp, p, p, v)

    def xp_sqrt_hessian(self, xp, activation, loss, z, y):
        """Generic :meth:`sqrt_hessian`: ``√w (diag(r) − (r²/Σr²) rᵀ)``, ``r = √p =
        e^{(x − m)/2}/√Σe^{x − m}``, its diagonal ``√w r_k (Σ_{i≠k} r_i²)/Σr²`` from complement
        sums (``w = Σc · factor/T²``; zero rows where ``Σr² = 0``)."""
        _, w, (d, _, _, _) = self._xp_weight(xp, activation, loss, z, y)
        half = xp.exp(d / 2)
        root = half / xp.sqrt(xp.sum(half * half, axis=-1, keepdims=True))
        return simplex_sqrt(xp, root * root, root, w)

    def xp_fisher(self, xp, activation, loss, z, y=None):
        """Generic :meth:`fisher`: :func:`class_fisher` dense (``diag(p) − p pᵀ`` for KL and
        without weights and smoothing), over T²."""
        T = getattr(activation, "temperature", 1.0)
        d, e, t, top = softmax_parts(xp, z if T == 1.0 else z / T)
        p = e / (1 + t)
        F = xp_class_fisher(xp, p, xp.where(top, t, (1 + t) - e) / (1 + t), None if isinstance(loss, KLDivergence) else loss)
        return F if T == 1.0 else F / T**2


def xp_class_fisher(xp, p, rest, loss):
    """:func:`class_fisher` on the generic path, dense ``(..., K, K)``; ``rest`` is ``1 − p``
    without cancellation (the plain block's diagonal ``p(1 − p)``); ``loss`` None: no weights
    or smoothing."""
    eps = float(getattr(loss, "label_smoothing", 0.0))
    w_attr = getattr(loss, "weight", None)
    if w_attr is None and not eps:
        return with_diagonal(xp, (-p)[..., :, None] * p[..., None, :], p * rest)
    K = p.shape[-1]
    w = xp.ones((K,), dtype=p.dtype, device=device_of(p)) if w_attr is None else const(xp, w_attr, p)
    one = 1 - eps
    b = xp.broadcast_to((eps / K) * w, tuple(p.shape))
    s = one * w + (eps / K) * xp.sum(w, axis=-1, keepdims=True)
    A = xp.sum(p * s * s, axis=-1, keepdims=True)
    B = xp.sum(p * s, axis=-1, keepdims=True)
    P = xp.sum(p, axis=-1, keepdims=True)
    r, q = p * w * s, p * w
    U = xp.stack([p, b, one * r, -one * q], axis=-1)
    V = xp.stack([-A * p + B * b + one * r, B * p - P * b - one * q, p, b], axis=-1)
    return diagonal_blocks(xp, one * one * p * w * w) - xp.matmul(U, xp.matrix_transpose(V))
