"""Focal losses on probabilities: :class:`FocalLoss` (softmax outputs) and
:class:`BinaryFocalLoss` (sigmoid outputs, torchvision's ``sigmoid_focal_loss``).

Neither is a likelihood: they declare no predictive distribution, so ``Head.fisher`` with
``kind='exact'`` or ``'mc'`` is refused (the empirical Fisher works). Their fused rules
from the logits (:mod:`jacobians.rules.focal`) take ``log p`` and ``1 − p`` from the logits
without cancellation; the methods here are the separate path on the probabilities ``a``.

Second derivative at ``p → 1`` (the target's probability, or ``a → t`` for a binary 0/1
target): with ``γ < 1`` the loss is not twice differentiable there in ``a`` — its second
derivative grows like ``γ(γ + 1)(1 − p)^{γ − 1}``. The separate path keeps it finite: where
it overflows, or ``1 − p`` has rounded to 0, it is read as ``2**100`` (1.3e30; a
saturation, as cross-entropy's ``1/a²`` saturates where ``a`` underflows), so the chain
rule's ``Jᵀ H_a J`` and its sums stay finite (not accurate there: use the fused rule); in the logits the loss is smooth and the fused rule's Hessian is exact.

The math is written once with the array API (``xp``); numpy runs it through
:data:`jacobians.xp.numpy_namespace.numpy_xp` (numpy under the standard's names; no array_api_compat needed).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..numerics.validation import check_nonnegative_scalar
from ..operators import DiagonalJacobian
from ..xp.numpy_namespace import numpy_xp as npx
from ._targets import check_weight, class_coefficients, xp_class_coefficients
from .base import ElementwiseLoss, register_loss
from .classification import _ClassLoss
from .generic import concrete, const, xp_curvature_ratio

__all__ = ["FocalLoss", "BinaryFocalLoss"]


def _big(xp, like):
    return const(xp, xp.finfo(like.dtype).max, like)


#: the separate path's second derivatives (and the binary loss's 1/a terms) saturate here (float32's ``max · eps`` is 4e31):
#: finite in either dtype, with room for the chain rule's sums of such terms
HESSIAN_CAP = 2.0**100


def _cap(xp, x):
    """A second derivative clipped to ``[0, HESSIAN_CAP]`` (``+inf`` included; the losses are
    convex in ``a``, so a negative value is the guards' round-off)."""
    return xp.minimum(xp.maximum(x, xp.zeros_like(x)), const(xp, HESSIAN_CAP, x))


def _capped(xp, x):
    """``x`` (>= 0) read as at most :data:`HESSIAN_CAP`: the binary loss's ``1/a`` terms."""
    return xp.minimum(x, const(xp, HESSIAN_CAP, x))


def _saturate(xp, x):
    """``x`` with ``+inf`` (and values above it) read as the largest finite value."""
    big = _big(xp, x)
    return xp.minimum(xp.maximum(x, -big), big)


def _power_at_zero(gamma: float, power: float) -> float:
    """``m^(γ + power)`` at ``m = 0``: 1 for exponent 0, 0 above, inf below."""
    e = gamma + power
    return 1.0 if e == 0 else (0.0 if e > 0 else math.inf)


def _quiet(fn):
    """Run ``fn`` with numpy's overflow / divide warnings off: the saturations below are
    deliberate (numpy-backed namespaces warn through numpy too)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            return fn(*args, **kwargs)

    return run


@_quiet
def focal_parts(xp, a, c, gamma: float, need_grad: bool, need_hessian: bool = False):
    """``(values, grads, hessian diagonals)`` of ``−Σ_k c_k (1 − a_k)^γ log a_k`` per row.

    ``a`` (..., K) probabilities (read as ``max(a, tiny)`` where they underflowed), ``c``
    (..., K) the targets times α. ``grads`` ``c (1 − a)^γ (γ L − 1/a)`` and the Hessian's
    diagonal ``c [γ (1 − a)^{γ−1} (2/a − (γ − 1) L) + (1 − a)^γ / a²]`` with
    ``L = log a / (1 − a)`` (−1 at a = 1); the gradient saturated at the largest finite value,
    the Hessian at ``2**100``."""
    tiny = const(xp, xp.finfo(a.dtype).smallest_normal, a)
    one = const(xp, 1.0, a)
    p = xp.maximum(a, tiny)
    logp = xp.log(p)
    q = one - xp.minimum(a, one)
    pos = q > 0
    safe_q = xp.where(pos, q, one)
    L = xp.where(pos, logp / safe_q, -one)
    qg = q**gamma if gamma else xp.ones_like(q)
    values = -xp.sum(c * qg * logp, axis=-1)
    grads = hess = None
    if need_grad:
        g = c * qg * (gamma * L - one / p) if gamma else -c / p
        grads = _saturate(xp, g)
    if need_hessian:
        inv_p = one / p
        h = xp_curvature_ratio(xp, qg, p)  # q^γ / p², saturated
        if gamma:
            q1 = xp.where(pos, safe_q ** (gamma - 1), const(xp, _power_at_zero(gamma, -1.0), a))
            h = h + gamma * q1 * (2 * inv_p - (gamma - 1) * L)
        hess = xp.where(c > 0, _cap(xp, c * _cap(xp, h)), xp.zeros_like(a))
    return values, grads, hess


class SeparableClassLoss(_ClassLoss):
    """A class loss ``Σ_k f(a_k; c_k)`` on probabilities with per-class coefficients ``c``
    (the targets, weighted or smoothed): the plumbing focal and poly-1 share. A subclass
    gives :meth:`coefficient_options` (``weight=`` / ``smoothing=`` of the class
    coefficients) and :meth:`parts` (``(values, grads, hessian diagonal)`` written once with
    ``xp``); ``'mean'`` divides by the rows."""

    def coefficient_options(self, K: int) -> dict:
        """Keyword arguments of ``class_coefficients`` for K classes."""
        return {}

    def parts(self, xp, a, c, need_grad: bool, need_hessian: bool = False):
        """``(values (...,), grads (..., K) or None, hessian diagonal (..., K) or None)``."""
        raise NotImplementedError

    def coefficients(self, t, dtype):
        """``(c, N)``: the per-class coefficients and the rows ``'mean'`` divides by."""
        c, _ = class_coefficients(t, dtype, **self.coefficient_options(t.n_classes))
        return c, float(math.prod(c.shape[:-1]))

    def _terms(self, a, t, need_grad):
        c, denom = self.coefficients(t, a.dtype)
        values, grads, _ = self.parts(npx, a, c, need_grad)
        return values, grads, denom

    def _hessian_terms(self, a, t):
        c, denom = self.coefficients(t, a.dtype)
        return DiagonalJacobian(self.parts(npx, a, c, False, True)[2]), denom

    # -- the generic (array API) path ----------------------------------------------------
    def xp_coefficients(self, xp, a, y):
        t = self._xp_targets(xp, a, y)
        c, _ = xp_class_coefficients(xp, t, a, **self.coefficient_options(a.shape[-1]))
        return c, math.prod(a.shape[:-1])

    def xp_terms(self, xp, a, y, need_grad):
        c, denom = self.xp_coefficients(xp, a, y)
        values, grads, _ = self.parts(xp, a, c, need_grad)
        return values, grads, denom

    def xp_hessian_terms(self, xp, a, y):
        c, denom = self.xp_coefficients(xp, a, y)
        return self.parts(xp, a, c, False, True)[2], denom, True


@register_loss
class FocalLoss(SeparableClassLoss):
    """Focal loss on softmax probabilities (Lin et al., 2017):
    ``ℓ = −Σ_k t_k α_k (1 − p_k)^γ log p_k`` per sample.

    Parameters
    ----------
    gamma : float, default 2.0
        γ >= 0; γ = 0 is cross-entropy (with class weights α that do not renormalise).
    alpha : array_like of shape (K,), optional
        Per-class weights α_k >= 0; None: all 1. ``'mean'`` divides by the number of rows
        whatever α (unlike cross-entropy's ``weight``).
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` divides by the number of rows N; ``'none'`` gives shape ``(...,)``.

    Notes
    -----
    Targets are integer indices ``(...,)`` or probability rows ``(..., K)`` (``t`` above).
    Not a likelihood: ``fisher(kind='exact' | 'mc')`` is refused; ``'empirical'`` works.
    With γ < 1 the second derivative in ``p`` is unbounded as ``p_k → 1``; see
    ``jacobians.losses.focal``. ``Head(Softmax(), FocalLoss())`` uses the fused rule
    from the logits (exact at logits of ±1e4, float32 too; Hessian in closed form).

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> z, y = np.array([[2.0, 0.0, -1.0]]), np.array([0])
    >>> p = jac.Softmax()(z)[0, 0]
    >>> head = jac.Head(jac.Softmax(), jac.FocalLoss(gamma=2.0))
    >>> bool(np.isclose(head.loss(z, y), -(1 - p) ** 2 * np.log(p)))
    True
    """

    name = "focal"
    input_domain = "open_simplex"
    predictive = None

    def __init__(self, gamma: float = 2.0, alpha=None, reduction: str = "mean"):
        super().__init__(reduction)
        self.gamma = check_nonnegative_scalar(gamma, "gamma")
        self.alpha = check_weight(alpha, "alpha")

    @classmethod
    def variants(cls, K):
        return [{"gamma": 0.0}, {"gamma": 0.5}, {"gamma": 1.0, "alpha": np.linspace(0.5, 2.0, K)}]

    def check_alpha_shape(self, K: int) -> None:
        """``ValueError`` unless ``alpha`` (when set) has shape ``(K,)``."""
        if self.alpha is not None and self.alpha.shape != (K,):
            raise ValueError(f"alpha must have shape (K,) = ({K},) to match a; got shape {self.alpha.shape}")

    def coefficient_options(self, K: int) -> dict:
        """Class weights α (checked against K)."""
        self.check_alpha_shape(K)
        return {"weight": self.alpha}

    def parts(self, xp, a, c, need_grad, need_hessian=False):
        return focal_parts(xp, a, c, self.gamma, need_grad, need_hessian)

    def loop_reference(self, a, y):
        """One sample at a time in float64, the definition written out."""
        K = a.shape[-1]
        rows = np.asarray(a, np.float64).reshape(-1, K)
        y = np.asarray(y)
        T = np.eye(K)[y.reshape(-1)] if y.shape == a.shape[:-1] else y.astype(np.float64).reshape(-1, K)
        al = np.ones(K) if self.alpha is None else np.asarray(self.alpha, np.float64)
        g = self.gamma
        values, grads = [], []
        for p, t in zip(rows, T):
            values.append(sum(-t[k] * al[k] * (1 - p[k]) ** g * math.log(p[k]) for k in range(K)))
            grads.append([t[k] * al[k] * (g * (1 - p[k]) ** (g - 1) * math.log(p[k]) - (1 - p[k]) ** g / p[k])
                          for k in range(K)])
        return np.array(values), np.array(grads), float(len(values))


def binary_weight(xp, alpha, t):
    """``α_t = α t + (1 − α)(1 − t)``, or None when α is None (disabled)."""
    if alpha is None:
        return None
    return const(xp, alpha, t) * t + const(xp, 1.0 - alpha, t) * (1 - t)


@_quiet
def binary_focal_parts(xp, a, t, gamma: float, alpha, need_grad: bool, need_hessian: bool = False):
    """``(values, grads, hessians)`` per entry of ``α_t ce(a, t) m^γ`` with ``ce = −t log a −
    (1 − t) log(1 − a)`` and ``m = a(1 − t) + (1 − a) t`` (torchvision's ``1 − p_t``).

    The logs and ratios read ``a`` and ``1 − a`` as at least ``tiny``; the gradient is
    saturated at ``±2**100`` and the second derivative ``α_t [ce'' m^γ + 2γ ce' m^{γ−1} (1 − 2t)
    + γ(γ − 1) ce m^{γ−2} (1 − 2t)²]`` (>= 0: the loss is convex in ``a``) takes its limit
    where ``m = 0`` and is clipped to ``[0, 2**100]`` (both bounds act only where ``a`` or
    ``1 − a`` rounded to 0 or below ~1e-30)."""
    tiny = const(xp, xp.finfo(a.dtype).smallest_normal, a)
    one = const(xp, 1.0, a)
    pa = xp.maximum(a, tiny)
    b = one - a
    pb = xp.maximum(b, tiny)
    low = a < 0.5
    la = xp.log(pa)
    lb = xp.where(low, xp.log1p(-xp.where(low, a, xp.zeros_like(a))), xp.log(pb))
    ce = -(t * la + (one - t) * lb)
    m = a * (one - t) + b * t
    mg = m**gamma if gamma else xp.ones_like(m)
    at = binary_weight(xp, alpha, t)
    values = ce * mg if at is None else at * ce * mg
    grads = hess = None
    s = one - 2 * t
    pos = m > 0
    safe_m = xp.where(pos, m, one)
    m1 = xp.where(pos, safe_m ** (gamma - 1), const(xp, _power_at_zero(gamma, -1.0), a))
    dce = _capped(xp, (one - t) / pb) - _capped(xp, t / pa)
    ratio = xp.where(pos, ce / safe_m, one)  # ce/m -> 1 where m -> 0 (ce = 0 there)
    if need_grad:
        g = dce * mg + (gamma * ratio * mg * s if gamma else 0)  # γ ce m^{γ−1} = γ (ce/m) m^γ
        grads = g if at is None else at * g
    if need_hessian:
        h = _cap(xp, xp_curvature_ratio(xp, one - t, pb) + xp_curvature_ratio(xp, t, pa)) * mg  # (1 − t)/b² + t/a²
        if gamma:
            h = h + gamma * m1 * s * (2 * dce + (gamma - 1) * ratio * s)
            h = xp.where(pos, h, const(xp, gamma * (gamma + 1), a) * m1)
        h = _cap(xp, h)
        hess = h if at is None else xp.where(at > 0, _cap(xp, at * h), xp.zeros_like(h))
    return values, grads, hess


def check_binary_alpha(alpha):
    """torchvision's α: None or a negative value (−1) disables it; else a number in [0, 1]."""
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a number in [0, 1], or None / -1 to disable it; got {alpha!r}")
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha > 1:
        raise ValueError(f"alpha must be in [0, 1], or None / -1 to disable it; got {alpha}")
    return None if alpha < 0 else alpha


@register_loss
class BinaryFocalLoss(ElementwiseLoss):
    """Binary focal loss per entry on sigmoid probabilities, torchvision's ``sigmoid_focal_loss``.

    On ``p = a``::

        ce = −t log p − (1 − t) log(1 − p),   p_t = p t + (1 − p)(1 − t)
        loss = α_t · ce · (1 − p_t)^γ,          α_t = α t + (1 − α)(1 − t)

    Parameters
    ----------
    gamma : float, default 2.0
        γ >= 0; γ = 0 without α is binary cross-entropy.
    alpha : float or None, default 0.25
        In [0, 1]; None or a negative value (torchvision's −1) disables the weight.
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` over all N·K entries; ``'none'`` gives ``(..., K)``.

    Notes
    -----
    Targets have the shape of ``a``, values in [0, 1] (soft targets allowed). Not a
    likelihood: ``fisher(kind='exact' | 'mc')`` is refused. ``Head(Sigmoid(),
    BinaryFocalLoss())`` uses the fused rule from the logits (exact for any logits).

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> a, t = np.array([[0.9, 0.2]]), np.array([[1.0, 0.0]])
    >>> loss = jac.BinaryFocalLoss(gamma=2.0, alpha=0.25, reduction="none")
    >>> bool(np.allclose(loss(a, t), [0.25 * -np.log(0.9) * 0.1**2, 0.75 * -np.log(0.8) * 0.2**2]))
    True
    """

    name = "binary_focal"
    input_domain = "open_unit_interval"
    target_kind = "probability"
    predictive = None

    def __init__(self, gamma: float = 2.0, alpha=0.25, reduction: str = "mean"):
        super().__init__(reduction)
        self.gamma = check_nonnegative_scalar(gamma, "gamma")
        self.alpha = check_binary_alpha(alpha)

    @classmethod
    def variants(cls, K):
        return [{"gamma": 0.0, "alpha": None}, {"gamma": 0.5, "alpha": 0.75}, {"gamma": 1.0, "alpha": None}]

    def check_targets(self, a, y):
        y = super().check_targets(a, y)
        if y.size and not (y.min() >= 0 and y.max() <= 1):
            raise ValueError(f"y: binary targets must be in [0, 1]; got values in [{y.min()}, {y.max()}]")
        return y

    def per_element(self, a, y):
        return binary_focal_parts(npx, a, y, self.gamma, self.alpha, False)[0]

    def per_element_grad(self, a, y):
        return binary_focal_parts(npx, a, y, self.gamma, self.alpha, True)[1]

    def per_element_hessian(self, a, y):
        return binary_focal_parts(npx, a, y, self.gamma, self.alpha, False, True)[2]

    def _terms(self, a, y, need_grad):
        values, grads, _ = binary_focal_parts(npx, a, y, self.gamma, self.alpha, need_grad)
        return values, grads, values.size

    # -- the generic (array API) path ----------------------------------------------------
    def xp_check_targets(self, xp, a, y):
        y = super().xp_check_targets(xp, a, y)
        if concrete(y) and math.prod(y.shape):
            mn, mx = xp.min(y), xp.max(y)
            if not (bool(mn >= 0) and bool(mx <= 1)):
                raise ValueError(f"y: binary targets must be in [0, 1]; got values in [{float(mn)}, {float(mx)}]")
        return y

    def xp_per_element(self, xp, a, y):
        return binary_focal_parts(xp, a, y, self.gamma, self.alpha, False)[0]

    def xp_per_element_grad(self, xp, a, y):
        return binary_focal_parts(xp, a, y, self.gamma, self.alpha, True)[1]

    def xp_per_element_hessian(self, xp, a, y):
        return binary_focal_parts(xp, a, y, self.gamma, self.alpha, False, True)[2]

    def loop_reference(self, a, y):
        """One entry at a time in float64, torchvision's formula on probabilities."""
        K = a.shape[-1]
        rows = np.asarray(a, np.float64).reshape(-1, K)
        T = np.asarray(y, np.float64).reshape(-1, K)
        g, al = self.gamma, self.alpha
        values, grads = np.empty_like(rows), np.empty_like(rows)
        for n in range(rows.shape[0]):
            for k in range(K):
                p, t = rows[n, k], T[n, k]
                ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
                m = p * (1 - t) + (1 - p) * t
                w = 1.0 if al is None else al * t + (1 - al) * (1 - t)
                values[n, k] = w * ce * m**g
                dce = -t / p + (1 - t) / (1 - p)
                grads[n, k] = w * (dce * m**g + (g * ce * m ** (g - 1) * (1 - 2 * t) if g else 0.0))
        return values, grads, float(values.size)
