"""Poly-1 loss (Leng et al., 2022) on softmax probabilities: cross-entropy plus
``ε (1 − p_t)``.

Not a likelihood: no predictive distribution, so ``Head.fisher`` refuses ``kind='exact'``
and ``'mc'`` (the empirical Fisher works). Its Hessian in ``a`` is cross-entropy's
(``ε (1 − p_t)`` is linear in ``a``), so the GGN of ``Head(Softmax(), PolyLoss())``, split at
the probabilities, is ``Σ_k t_k (e_k − p)(e_k − p)ᵀ`` whatever ε. The fused rule from the logits is :mod:`jacobians.rules.poly1`.

The math is written once with the array API (``xp``); numpy runs it through
:data:`jacobians.xp.numpy_namespace.numpy_xp` (numpy under the standard's names; no array_api_compat needed).
"""

from __future__ import annotations

import math

import numpy as np

from ..numerics.validation import check_nonnegative_scalar
from .base import register_loss
from .focal import SeparableClassLoss
from .generic import const, xp_curvature_ratio, xp_floor_tiny, xp_neg_ratio

__all__ = ["PolyLoss"]


def check_epsilon(epsilon) -> float:
    """ε of the poly-1 loss: a finite number >= −1 (the loss stays >= 0)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise TypeError(f"epsilon must be a real number >= -1; got {type(epsilon).__name__} {epsilon!r}")
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon < -1:
        raise ValueError(f"epsilon must be >= -1 (CE + ε(1 − p_t) is then >= 0); got {epsilon}")
    return epsilon


def poly_parts(xp, a, c, epsilon: float, need_grad: bool, need_hessian: bool = False):
    """``(values, grads, hessian diagonals)`` of ``−Σ c log a + ε (1 − Σ c a)`` per row, with
    ``1 − Σ c a`` as ``(1 − Σc) + Σ c (1 − a)`` (no cancellation for ``Σc = 1``); ``a`` read
    as ``max(a, tiny)`` in the log and the ratios."""
    safe = xp_floor_tiny(xp, a)
    one = const(xp, 1.0, a)
    eps = const(xp, epsilon, a)
    rest = (one - xp.sum(c, axis=-1)) + xp.sum(c * (one - a), axis=-1)
    values = -xp.sum(c * xp.log(safe), axis=-1) + eps * rest
    grads = xp_neg_ratio(xp, c, safe) - eps * c if need_grad else None
    hess = xp_curvature_ratio(xp, c, safe) if need_hessian else None
    return values, grads, hess


@register_loss
class PolyLoss(SeparableClassLoss):
    """Poly-1 loss ``ℓ = CE(p, t) + ε (1 − p_t)`` with ``p_t = Σ_k t_k p_k``, on softmax
    probabilities ``p = a``; ``t`` the (label-smoothed) targets.

    optax's ``poly_loss_cross_entropy`` with ``epsilon`` = ε; note that optax's default is
    ε = 2.0 while **this class's default is ε = 1.0** (the "poly-1" of the paper's name).

    Parameters
    ----------
    epsilon : float, default 1.0
        ε >= −1 (so the loss stays >= 0; ε = 0 is cross-entropy).
    label_smoothing : float, default 0.0
        λ in [0, 1]: ``t = (1 − λ) y + λ/K`` in both terms (optax applies smoothing to the
        labels it is given).
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` divides by the number of rows N.

    Notes
    -----
    Targets are integer indices ``(...,)`` or probability rows ``(..., K)``. Not a
    likelihood: ``fisher(kind='exact' | 'mc')`` is refused. ``Head(Softmax(),
    PolyLoss())`` uses the fused rule from the logits, Hessian in closed form: cross-entropy's
    ``Σt (diag p − p pᵀ)`` plus ε times the Hessian of ``−p_t``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> z, y = np.array([[2.0, 0.0, -1.0]]), np.array([0])
    >>> p = jac.Softmax()(z)[0, 0]
    >>> head = jac.Head(jac.Softmax(), jac.PolyLoss(epsilon=1.0))
    >>> bool(np.isclose(head.loss(z, y), -np.log(p) + (1 - p)))
    True
    """

    name = "poly1"
    input_domain = "open_simplex"
    predictive = None

    def __init__(self, epsilon: float = 1.0, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.epsilon = check_epsilon(epsilon)
        self.label_smoothing = check_nonnegative_scalar(label_smoothing, "label_smoothing", upper=1.0)

    @classmethod
    def variants(cls, K):
        return [{"epsilon": 2.0}, {"epsilon": -0.5, "label_smoothing": 0.1}]

    def coefficient_options(self, K: int) -> dict:
        """Label smoothing of the targets (both terms)."""
        return {"smoothing": self.label_smoothing}

    def parts(self, xp, a, c, need_grad, need_hessian=False):
        return poly_parts(xp, a, c, self.epsilon, need_grad, need_hessian)

    def loop_reference(self, a, y):
        """One sample at a time in float64: optax's formula with the smoothed targets."""
        K = a.shape[-1]
        rows = np.asarray(a, np.float64).reshape(-1, K)
        y = np.asarray(y)
        T = np.eye(K)[y.reshape(-1)] if y.shape == a.shape[:-1] else y.astype(np.float64).reshape(-1, K)
        lam, eps = self.label_smoothing, self.epsilon
        values, grads = [], []
        for p, t in zip(rows, T):
            t = (1 - lam) * t + lam / K
            pt = sum(t[k] * p[k] for k in range(K))
            values.append(sum(-t[k] * math.log(p[k]) for k in range(K)) + eps * (1 - pt))
            grads.append([-t[k] / p[k] - eps * t[k] for k in range(K)])
        return np.array(values), np.array(grads), float(len(values))
