"""Classification losses on probabilities / log-probabilities, with torch's semantics.

The separate (unfused) path works on the activation's output ``a``. Where ``a`` has
underflowed to exactly 0 the log is taken of ``max(a, tiny)`` (``tiny`` = the dtype's
smallest normal number), so values and gradients stay finite; this is the only clip in
the toolkit, and the fused rules (see :mod:`jacobians.fused`) never need it.
"""

from __future__ import annotations

import math

import numpy as np

from ..numerics.validation import as_float_array, check_nonnegative_scalar
from ..operators import DiagonalJacobian, DiagonalPlusLowRank
from . import references
from ._targets import (
    IGNORE_INDEX,
    ClassTargets,
    check_class_targets,
    check_ignore_index,
    check_weight,
    class_coefficients,
    class_denominator,
    xp_check_class_targets,
    xp_class_coefficients,
    xp_class_denominator,
)
from .base import ElementwiseLoss, Loss, register_loss
from .generic import concrete, const, device_of, diagonal_blocks, xp_curvature_ratio, xp_floor_tiny, xp_neg_ratio

__all__ = ["CrossEntropy", "NLLLoss", "BinaryCrossEntropy"]


def _rowdot(x, y):
    return np.einsum("...k,...k->...", x, y)


def _floor_tiny(a: np.ndarray) -> np.ndarray:
    """``max(a, tiny)``: keeps ``log a`` and ``1/a`` finite where ``a`` underflowed to 0."""
    return np.maximum(a, np.finfo(a.dtype).tiny)


def _neg_ratio(c: np.ndarray, safe: np.ndarray) -> np.ndarray:
    """``−c / safe`` saturated at the dtype's largest finite value.

    Over an underflowed ``a`` (read as ``tiny``) a class weight above ~4 would overflow to
    inf, and ``inf · 0`` is NaN in the activation's VJP.
    """
    with np.errstate(over="ignore"):
        g = -c / safe
    big = np.finfo(g.dtype).max
    return np.clip(g, -big, big, out=g)


def _curvature_ratio(c: np.ndarray, safe: np.ndarray) -> np.ndarray:
    """``c / safe²`` for ``c >= 0``, saturated at the dtype's largest finite value (see
    :func:`_neg_ratio`): divided twice, so ``safe²`` never underflows to 0."""
    big = np.finfo(safe.dtype).max
    with np.errstate(over="ignore"):
        h = np.minimum(c / safe, big)
        h /= safe
    return np.minimum(h, big, out=h)


def _xp_log1m(xp, a):
    """``log(1 − a)`` for ``a < 1``: ``log1p(−a)`` below 1/4, ``log(1 − a)`` above (where
    ``1 − a`` is rounded by at most 2⁻⁵⁴: ≤ 2 ulp in all). XLA's float64 ``log1p`` on CPU is
    off by up to 128 ulp for arguments in [−0.413, −0.352] (JAX 0.10, see
    :func:`jacobians.xp.shims.log1mexp`)."""
    one = const(xp, 1.0, a)
    small = a < const(xp, 0.25, a)
    return xp.where(small, xp.log1p(-xp.where(small, a, xp.zeros_like(a))), xp.log(one - xp.where(small, -one, a)))


class _ClassLoss(Loss):
    """Shared target handling of the class losses (indices or probabilities)."""

    target_kind = "class"
    ignore_index: int | None = None

    def check_targets(self, a, y):
        return check_class_targets(a, y, ignore_index=self.ignore_index)

    def per_sample(self, a, y):
        return self._terms(a, self.check_targets(a, y), need_grad=False)[0]

    def per_sample_grad(self, a, y):
        return self._terms(a, self.check_targets(a, y), need_grad=True)[1]

    def per_sample_hessian(self, a, y):
        return self._hessian_terms(a, self.check_targets(a, y))[0].dense()

    def coefficients(self, t, dtype):
        """``(c, denominator)``: per-sample loss ``−Σ c_k log p_k (+ const)``."""
        return class_coefficients(
            t, dtype, weight=getattr(self, "weight", None), smoothing=getattr(self, "label_smoothing", 0.0)
        )

    def mean_denominator(self, a, y=None):
        """N for probability targets; for index targets the number not ignored, or the
        summed weights of the targets not ignored (torch's)."""
        if y is None:
            return super().mean_denominator(a)
        t = y if isinstance(y, ClassTargets) else self.check_targets(a, y)
        return class_denominator(t, a.dtype, weight=getattr(self, "weight", None))

    # -- the generic (array API) path: a (..., K), targets of a's namespace ---------------
    def xp_check_targets(self, xp, a, y):
        """A :class:`ClassTargets` of ``xp`` arrays (see ``xp_check_class_targets``)."""
        self._xp_require()
        return xp_check_class_targets(xp, a, y, ignore_index=self.ignore_index)

    def _xp_targets(self, xp, a, y):
        return y if isinstance(y, ClassTargets) else self.xp_check_targets(xp, a, y)

    def xp_coefficients(self, xp, a, y):
        """``(c, denominator)``, the twin of :meth:`coefficients`: per-sample loss
        ``−Σ_k c_k log a_k (+ const)``, ``c`` (..., K) in a's dtype and device with the class
        weights and label smoothing folded in, zero rows where ignored; the denominator a
        Python int or a 0-d array (summed weights of the targets not ignored). ``y`` raw or
        validated (a :class:`ClassTargets`)."""
        t = self._xp_targets(xp, a, y)
        return xp_class_coefficients(
            xp, t, a, weight=getattr(self, "weight", None), smoothing=getattr(self, "label_smoothing", 0.0)
        )

    def xp_mean_denominator(self, xp, a, y=None):
        if y is None:
            return super().xp_mean_denominator(xp, a)
        w = getattr(self, "weight", None)
        return xp_class_denominator(xp, self._xp_targets(xp, a, y), a, None if w is None else const(xp, w, a))

    def xp_per_sample(self, xp, a, y):
        return self.xp_terms(xp, a, self._xp_targets(xp, a, y), need_grad=False)[0]

    def xp_per_sample_grad(self, xp, a, y):
        return self.xp_terms(xp, a, self._xp_targets(xp, a, y), need_grad=True)[1]

    def xp_per_sample_hessian(self, xp, a, y):
        h, _, diagonal = self.xp_hessian_terms(xp, a, self._xp_targets(xp, a, y))
        return diagonal_blocks(xp, h) if diagonal else h


@register_loss
class CrossEntropy(_ClassLoss):
    """Cross-entropy ``−Σ_k c_k log a_k`` on probabilities ``a`` (e.g. softmax outputs).

    Same values and gradients as ``torch.nn.functional.cross_entropy`` on the logits,
    with ``c = w ⊙ ((1 − ε) y + ε/K)``.

    Parameters
    ----------
    label_smoothing : float, default 0.0
        ε in [0, 1].
    weight : array_like, shape (K,), optional
        Class weights. With index targets ``'mean'`` divides by the summed weights of
        the targets; with probability targets by N (torch).
    ignore_index : int, optional
        Index targets equal to it contribute nothing (and are not counted by ``'mean'``).
    reduction : {'mean', 'sum', 'none'}
        ``'none'`` gives shape ``(...,)``.

    Notes
    -----
    Targets are integer indices ``(...,)`` or one-hot / soft rows ``(..., K)``. Where
    ``a`` underflowed to 0 the separate path uses ``max(a, tiny)``; ``Head(Softmax(),
    CrossEntropy())`` uses the fused rule, exact for any logits.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import CrossEntropy
    >>> a = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4], [0.02, 0.9, 0.08]])
    >>> y = np.array([0, 1, 1])
    >>> round(float(CrossEntropy()(a, y)), 6)
    0.385060
    >>> CrossEntropy().grad(a, y)[0]
    array([-0.47619048,  0.        ,  0.        ])
    """

    name = "cross_entropy"
    loop_reference = references.cross_entropy_rows
    input_domain = "open_simplex"
    predictive = "categorical"

    def __init__(
        self, label_smoothing: float = 0.0, weight=None, ignore_index: int | None = None, reduction: str = "mean"
    ):
        super().__init__(reduction)
        self.label_smoothing = check_nonnegative_scalar(label_smoothing, "label_smoothing", upper=1.0)
        self.weight = check_weight(weight)
        self.ignore_index = check_ignore_index(ignore_index)

    @classmethod
    def variants(cls, K):
        w = np.linspace(0.5, 2.0, K)
        return [
            {"label_smoothing": 0.1},
            {"weight": w},
            {"ignore_index": IGNORE_INDEX},
            {"label_smoothing": 0.2, "weight": w, "ignore_index": IGNORE_INDEX},
        ]

    def _terms(self, a, t, need_grad):
        c, denom = self.coefficients(t, a.dtype)
        safe = _floor_tiny(a)
        values = -_rowdot(c, np.log(safe))
        return values, (_neg_ratio(c, safe) if need_grad else None), denom

    def _hessian_terms(self, a, t):
        """``diag(c / a²)`` (``a`` read as ``max(a, tiny)``, saturated at the largest float)."""
        c, denom = self.coefficients(t, a.dtype)
        return DiagonalJacobian(_curvature_ratio(c, _floor_tiny(a))), denom

    def fisher_blocks(self, a):
        """With ``ŷ`` ~ Categorical(a) and the target ``q = (1 − ε) e_ŷ + ε/K``, the gradient is
        ``−w ⊙ q / a``, so ``E[g gᵀ] = (1 − ε)² diag(w²/a) + (1 − ε)(w βᵀ + β wᵀ) + (Σa) β βᵀ``
        with ``β = (ε/K) w / a``: ``diag(1/a)`` without weights or smoothing."""
        K, dt = a.shape[-1], a.dtype
        safe = _floor_tiny(a)
        w = np.ones(K, dt) if self.weight is None else self.weight.astype(dt)
        one = dt.type(1 - self.label_smoothing)
        d = -_neg_ratio(np.broadcast_to(one * one * w * w, a.shape), safe)  # (1 − ε)² w² / a
        if not self.label_smoothing:
            return DiagonalJacobian(d)
        beta = dt.type(self.label_smoothing / K) * w / safe
        U = np.stack([-one * np.broadcast_to(w, a.shape), -beta], axis=-1)
        V = np.stack([beta, one * w + a.sum(axis=-1, keepdims=True) * beta], axis=-1)
        return DiagonalPlusLowRank(d, U, V)

    def xp_fisher_blocks(self, xp, a):
        """The twin of :meth:`fisher_blocks`, dense: ``(1 − ε)² diag(w²/a) + (1 − ε)(w βᵀ +
        β wᵀ) + (Σa) β βᵀ`` with ``β = (ε/K) w / a`` (a read as ``max(a, tiny)``)."""
        K = a.shape[-1]
        safe = xp_floor_tiny(xp, a)
        w = xp.ones((K,), dtype=a.dtype, device=device_of(a)) if self.weight is None else const(xp, self.weight, a)
        one = const(xp, 1 - self.label_smoothing, a)
        d = -xp_neg_ratio(xp, xp.broadcast_to(one * one * w * w, tuple(a.shape)), safe)  # (1 − ε)² w² / a
        if not self.label_smoothing:
            return diagonal_blocks(xp, d)
        beta = const(xp, self.label_smoothing / K, a) * w / safe
        U = xp.stack([-one * xp.broadcast_to(w, tuple(a.shape)), -beta], axis=-1)
        V = xp.stack([beta, one * w + xp.sum(a, axis=-1, keepdims=True) * beta], axis=-1)
        return diagonal_blocks(xp, d) - xp.matmul(U, xp.matrix_transpose(V))

    def xp_terms(self, xp, a, y, need_grad):
        """``(−Σ_k c_k log max(a_k, tiny), −c / max(a, tiny), denominator)``."""
        c, denom = self.xp_coefficients(xp, a, y)
        safe = xp_floor_tiny(xp, a)
        values = -xp.sum(c * xp.log(safe), axis=-1)
        return values, (xp_neg_ratio(xp, c, safe) if need_grad else None), denom

    def xp_hessian_terms(self, xp, a, y):
        """``(c / max(a, tiny)², denominator, True)``: diagonal blocks."""
        c, denom = self.xp_coefficients(xp, a, y)
        return xp_curvature_ratio(xp, c, xp_floor_tiny(xp, a)), denom, True


@register_loss
class NLLLoss(_ClassLoss):
    """Negative log-likelihood ``−Σ_k c_k a_k`` on log-probabilities ``a`` (log-softmax).

    torch's ``nll_loss``: ``c = w ⊙ y``; with index targets ``'mean'`` divides by the
    summed weights of the targets. The gradient is ``−c`` (over the denominator).

    Parameters
    ----------
    weight : array_like, shape (K,), optional
    ignore_index : int, optional
    reduction : {'mean', 'sum', 'none'}

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import NLLLoss
    >>> logp = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
    >>> round(float(NLLLoss()(logp, np.array([0, 1]))), 6)
    0.490415
    """

    name = "nll"
    loop_reference = references.nll_rows
    input_domain = "log_simplex"
    predictive = "categorical_log"

    def __init__(self, weight=None, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(reduction)
        self.weight = check_weight(weight)
        self.ignore_index = check_ignore_index(ignore_index)

    @classmethod
    def variants(cls, K):
        w = np.linspace(0.5, 2.0, K)
        return [{"weight": w}, {"ignore_index": IGNORE_INDEX}, {"weight": w, "ignore_index": IGNORE_INDEX}]

    def _terms(self, a, t, need_grad):
        c, denom = self.coefficients(t, a.dtype)
        return -_rowdot(c, a), (-c if need_grad else None), denom

    def _hessian_terms(self, a, t):
        """Linear in ``a``: zero."""
        return DiagonalJacobian(np.zeros_like(a)), self.coefficients(t, a.dtype)[1]

    def fisher_blocks(self, a):
        """With ``ŷ`` ~ Categorical(exp a) the gradient is ``−w_ŷ e_ŷ``: ``diag(exp(a) w²)``."""
        w2 = 1 if self.weight is None else self.weight.astype(a.dtype) ** 2
        return DiagonalJacobian(np.exp(a) * w2)

    def xp_fisher_blocks(self, xp, a):
        """The twin of :meth:`fisher_blocks`: ``diag(exp(a) w²)``."""
        p = xp.exp(a)
        return diagonal_blocks(xp, p if self.weight is None else p * const(xp, self.weight, a) ** 2)

    def xp_terms(self, xp, a, y, need_grad):
        """``(−Σ_k c_k a_k, −c, denominator)``."""
        c, denom = self.xp_coefficients(xp, a, y)
        return -xp.sum(c * a, axis=-1), (-c if need_grad else None), denom

    def xp_hessian_terms(self, xp, a, y):
        """Linear in ``a``: zero diagonals."""
        return xp.zeros_like(a), self.xp_coefficients(xp, a, y)[1], True


#: torch clamps log terms of binary_cross_entropy at -100 and the gradient's a(1 - a) at
#: 1e-12 — a single-precision constant in torch's kernel, hence the float32 rounding here
_BCE_LOG_FLOOR = -100.0
_BCE_GRAD_EPS = float(np.float32(1e-12))


@register_loss
class BinaryCrossEntropy(ElementwiseLoss):
    """Binary cross-entropy on probabilities ``a`` in [0, 1], per entry.

    ``e = −(p · y log a + (1 − y) log(1 − a))`` with ``p`` the ``pos_weight`` and ``y``
    smoothed to ``y(1 − ε) + ε/2`` (Keras's label smoothing; torch has none).
    ``'mean'`` averages over all N·K entries and ``'none'`` gives ``(..., K)``, as torch's
    ``binary_cross_entropy``; like torch, the separate path clamps each log at −100 and
    the gradient's denominator ``a(1 − a)`` at 1e-12.

    Parameters
    ----------
    label_smoothing : float, default 0.0
        ε in [0, 1].
    pos_weight : array_like, optional
        Weight of the positive term, broadcast against ``a`` (typically shape (K,)), as
        in ``binary_cross_entropy_with_logits``.
    reduction : {'mean', 'sum', 'none'}

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import BinaryCrossEntropy
    >>> a = np.array([[0.9, 0.2]])
    >>> y = np.array([[1.0, 0.0]])
    >>> round(float(BinaryCrossEntropy()(a, y)), 6)
    0.164252
    >>> BinaryCrossEntropy().grad(a, y)      # (a − y) / (a (1 − a)) / (N K)
    array([[-0.55555556,  0.625     ]])
    """

    name = "binary_cross_entropy"
    loop_reference = references.bce_rows
    input_domain = "unit_interval"
    target_kind = "probability"
    predictive = "bernoulli"

    def __init__(self, label_smoothing: float = 0.0, pos_weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        self.label_smoothing = check_nonnegative_scalar(label_smoothing, "label_smoothing", upper=1.0)
        if pos_weight is not None:
            pos_weight = as_float_array(pos_weight, "pos_weight", min_ndim=0).copy()
            if not np.all(np.isfinite(pos_weight)) or np.any(pos_weight < 0):
                raise ValueError(f"pos_weight must be finite and >= 0; got {pos_weight}")
            pos_weight.flags.writeable = False
        self.pos_weight = pos_weight

    @classmethod
    def variants(cls, K):
        pw = np.linspace(0.5, 3.0, K)
        return [{"label_smoothing": 0.1}, {"pos_weight": pw}, {"label_smoothing": 0.2, "pos_weight": pw}]

    def check_targets(self, a, y):
        y = super().check_targets(a, y)
        if y.size and not (y.min() >= 0 and y.max() <= 1):
            raise ValueError(f"y: binary targets must be in [0, 1]; got values in [{y.min()}, {y.max()}]")
        if self.pos_weight is not None:
            try:
                np.broadcast_shapes(self.pos_weight.shape, a.shape)
            except ValueError:
                raise ValueError(
                    f"pos_weight of shape {self.pos_weight.shape} does not broadcast against a of shape {a.shape}"
                ) from None
        return y

    def smoothed(self, y: np.ndarray) -> np.ndarray:
        """Targets after label smoothing, ``y(1 − ε) + ε/2``."""
        eps = self.label_smoothing
        return y if not eps else y * y.dtype.type(1 - eps) + y.dtype.type(eps / 2)

    def positive_weight(self, dtype):
        """``pos_weight`` in ``dtype`` (None without one)."""
        return None if self.pos_weight is None else self.pos_weight.astype(dtype, copy=False)

    _pos_weight = positive_weight  # the name before it was public

    def per_element(self, a, y):
        y = self.smoothed(y)
        with np.errstate(divide="ignore"):
            log_a = np.maximum(np.log(a), _BCE_LOG_FLOOR)
            log_1ma = np.maximum(np.log1p(-a), _BCE_LOG_FLOOR)
        pw = self.positive_weight(a.dtype)
        pos = y * log_a if pw is None else pw * y * log_a
        return -(pos + (1 - y) * log_1ma)

    def per_element_grad(self, a, y):
        y = self.smoothed(y)
        pw = self.positive_weight(a.dtype)
        numer = a - y if pw is None else a * (pw * y + 1 - y) - pw * y
        return numer / np.maximum(a * (1 - a), a.dtype.type(_BCE_GRAD_EPS))

    def per_element_hessian(self, a, y):
        """The derivative of :meth:`per_element_grad`: ``p y / a² + (1 − y) / (1 − a)²``
        where its clamp is inactive (``a(1 − a) >= 1e-12``), ``(p y + 1 − y) / 1e-12``
        where the clamped gradient ``(a(p y + 1 − y) − p y) / 1e-12`` is linear in ``a``.
        (torch's double backward regularizes the first expression with
        ``(a + 1e-12)²(1 − a + 1e-12)²`` instead.)"""
        y = self.smoothed(y)
        pw = self.positive_weight(a.dtype)
        pos = y if pw is None else pw * y
        eps = a.dtype.type(_BCE_GRAD_EPS)
        clamped = a * (1 - a) < eps
        inside = _curvature_ratio(pos, _floor_tiny(a)) + _curvature_ratio(1 - y, _floor_tiny(1 - a))
        return np.where(clamped, (pos + 1 - y) / eps, inside)

    # -- the generic (array API) path: a, y (..., K) of one namespace, a's dtype ----------
    def xp_check_targets(self, xp, a, y):
        """``y`` of a's shape in a's dtype, in [0, 1] (checked on concrete arrays only: not
        under ``jax.jit``); ``pos_weight`` broadcasting against ``a``."""
        y = super().xp_check_targets(xp, a, y)
        if concrete(y) and math.prod(y.shape):
            mn, mx = xp.min(y), xp.max(y)
            if not (bool(mn >= 0) and bool(mx <= 1)):
                raise ValueError(f"y: binary targets must be in [0, 1]; got values in [{float(mn)}, {float(mx)}]")
        if self.pos_weight is not None:
            try:
                np.broadcast_shapes(self.pos_weight.shape, tuple(a.shape))
            except ValueError:
                raise ValueError(
                    f"pos_weight of shape {self.pos_weight.shape} does not broadcast against a of shape {tuple(a.shape)}"
                ) from None
        return y

    def xp_smoothed(self, xp, y):
        """Targets after label smoothing, ``y(1 − ε) + ε/2``, ``y``'s shape and dtype."""
        eps = self.label_smoothing
        return y if not eps else y * const(xp, 1 - eps, y) + const(xp, eps / 2, y)

    def xp_positive_weight(self, xp, a):
        """``pos_weight`` as an array of a's namespace, dtype and device (None without one)."""
        return None if self.pos_weight is None else const(xp, self.pos_weight, a)

    def xp_per_element(self, xp, a, y):
        """``−(p y log a + (1 − y) log(1 − a))``, each log clamped at −100, ``(..., K)``."""
        y = self.xp_smoothed(xp, y)
        floor, one = const(xp, _BCE_LOG_FLOOR, a), const(xp, 1.0, a)
        pos_a, pos_1ma = a > 0, a < one  # log(0) = -inf is never taken (numpy-backed namespaces warn)
        log_a = xp.where(pos_a, xp.maximum(xp.log(xp.where(pos_a, a, one)), floor), floor)
        log_1ma = xp.where(pos_1ma, xp.maximum(_xp_log1m(xp, xp.where(pos_1ma, a, -one)), floor), floor)
        pw = self.xp_positive_weight(xp, a)
        pos = y * log_a if pw is None else pw * y * log_a
        return -(pos + (const(xp, 1.0, a) - y) * log_1ma)

    def xp_per_element_grad(self, xp, a, y):
        """``(a(p y + 1 − y) − p y) / max(a(1 − a), 1e-12)``, ``(..., K)``."""
        y = self.xp_smoothed(xp, y)
        one = const(xp, 1.0, a)
        pw = self.xp_positive_weight(xp, a)
        numer = a - y if pw is None else a * (pw * y + one - y) - pw * y
        return numer / xp.maximum(a * (one - a), const(xp, _BCE_GRAD_EPS, a))

    def xp_per_element_hessian(self, xp, a, y):
        """As :meth:`per_element_hessian`, ``(..., K)``."""
        y = self.xp_smoothed(xp, y)
        one = const(xp, 1.0, a)
        pw = self.xp_positive_weight(xp, a)
        pos = y if pw is None else pw * y
        eps = const(xp, _BCE_GRAD_EPS, a)
        clamped = a * (one - a) < eps
        inside = xp_curvature_ratio(xp, pos, xp_floor_tiny(xp, a)) + xp_curvature_ratio(
            xp, one - y, xp_floor_tiny(xp, one - a)
        )
        return xp.where(clamped, (pos + one - y) / eps, inside)
