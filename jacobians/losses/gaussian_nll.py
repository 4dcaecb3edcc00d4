"""Gaussian negative log-likelihood with a learned variance (torch ``gaussian_nll_loss``).

The input is ``a = [μ | σ²]`` of shape ``(..., 2K)`` and the targets ``y`` have shape
``(..., K)``. Per element, with ``v̄ = max(σ², eps)`` and ``r = μ − y``::

    ℓ = ½ (log v̄ + r² / v̄)  (+ ½ log 2π when full)

torch clamps a detached copy of σ² (``var.clone()``, then ``clamp_`` under ``no_grad``), so
the clamp carries no gradient: every derivative below is taken as if ``v̄`` were the
variable (straight-through), and flows to σ² whether it was clamped or not::

    ∂ℓ/∂μ = r / v̄                 ∂ℓ/∂σ² = ½ (1/v̄ − r²/v̄²)
    ∂²ℓ/∂μ² = 1/v̄   ∂²ℓ/∂μ∂σ² = −r/v̄²   ∂²ℓ/∂σ²² = r²/v̄³ − 1/(2v̄²)

The 2×2 Hessian of an element has determinant ``−1/(2v̄³) < 0``: it is indefinite for every
residual, and so is the GGN split at ``a``. The exact Fisher of the predictive
``y ~ N(μ, v̄)`` is ``diag(1/v̄, 1/(2v̄²))`` (what :meth:`jacobians.Head.sqrt_fisher` factors).
``'mean'`` divides by the N·K elements, ``'none'`` returns ``(..., K)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..activations.elementwise import Identity
from ..activations.mean_variance import MeanVariance
from ..numerics.sampling import Predictive
from ..numerics.validation import as_float_array, check_positive_scalar
from ..operators import DenseJacobian, DiagonalJacobian
from .base import Loss, register_loss
from .generic import concrete, const, diagonal_blocks

__all__ = ["GaussianNLL"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _half(a, name: str = "a") -> int:
    W = a.shape[-1] if a.ndim else 0
    if W < 2 or W % 2:
        raise ValueError(
            f"{name} must have an even last axis 2K >= 2 ([means | variances]) for GaussianNLL; got shape {tuple(a.shape)}"
        )
    return W // 2


def _negative_variance(var_min) -> ValueError:
    return ValueError(
        "a's second half a[..., K:] holds the variances σ² and must be >= 0 for GaussianNLL (torch: 'var has "
        f"negative entry/entries'); got a smallest variance of {var_min}. With Head(Identity(), GaussianNLL()) "
        "the logits' second half is σ² itself; use MeanVariance() to map any logits to a positive variance"
    )


def _pair_blocks(xp, hmm, hmv, hvv):
    """The (..., 2K, 2K) blocks ``[[diag hmm, diag hmv], [diag hmv, diag hvv]]``."""
    top = xp.concat([diagonal_blocks(xp, hmm), diagonal_blocks(xp, hmv)], axis=-1)
    bottom = xp.concat([diagonal_blocks(xp, hmv), diagonal_blocks(xp, hvv)], axis=-1)
    return xp.concat([top, bottom], axis=-2)


def _box_muller(xp, u1, u2):
    """N(0, 1) from uniforms ``u1, u2`` in [0, 1)."""
    return xp.sqrt(-2 * xp.log(1 - u1)) * xp.cos((2 * math.pi) * u2)


@register_loss
class GaussianNLL(Loss):
    """``½ (log max(σ², eps) + (μ − y)² / max(σ², eps))`` per element (torch ``gaussian_nll_loss``).

    Parameters
    ----------
    full : bool, default False
        Add the constant ``½ log 2π`` to every element.
    eps : float, default 1e-6
        The clamp of σ² (> 0), applied without a gradient as torch does.
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` over the N·K elements; ``'none'`` gives ``(..., K)``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> a, y = np.array([[0.5, 2.0]]), np.array([[1.5]])       # μ = 0.5, σ² = 2
    >>> float(jac.GaussianNLL()(a, y))                          # ½ (log 2 + 1/2)
    0.5965735902799727
    >>> jac.GaussianNLL().grad(a, y)                            # [r/σ², ½(1/σ² − r²/σ⁴)]
    array([[-0.5  ,  0.125]])
    """

    name = "gaussian_nll"
    target_kind = "real"
    #: 'none' gives (..., K) for an input (..., 2K) (the Dask backend's chunk layout)
    values_layout = "half"
    #: the last axis is [means | variances]: generated inputs take an even width (checks.fit_width)
    width_multiple = 2

    def pair_mismatch(self, activation):
        """Why ``activation`` does not pair with this loss, or None: its input is ``[μ | σ²]``,
        which only the identity (σ² given) and the mean-variance link give."""
        if isinstance(activation, (Identity, MeanVariance)):
            return None
        return (
            f"GaussianNLL pairs only with identity, mean_variance: its input is structured, and "
            f"{type(activation).__name__}'s output is not it"
        )

    def __init__(self, full: bool = False, eps: float = 1e-6, reduction: str = "mean"):
        super().__init__(reduction)
        if not isinstance(full, (bool, np.bool_)):
            raise TypeError(f"full must be a bool; got {full!r}")
        self.full = bool(full)
        self.eps = check_positive_scalar(eps, "eps")

    @classmethod
    def variants(cls, K):
        return [{"full": True}, {"eps": 0.05}]

    # -- examples for the checks and the test walks --------------------------------------
    def example_targets(self, shape, rng):
        """Standard normal targets ``(..., K)`` for an input of ``shape`` (..., 2K)."""
        K = _half(np.empty((0,) + tuple(shape[-1:])), "shape")
        return rng.normal(size=tuple(shape[:-1]) + (K,))

    def example_input(self, shape, rng):
        """``[μ | σ²]`` with μ standard normal and σ² uniform in [0.5, 2]."""
        K = _half(np.empty((0,) + tuple(shape[-1:])), "shape")
        half = tuple(shape[:-1]) + (K,)
        return np.concatenate([rng.normal(size=half), rng.uniform(0.5, 2.0, size=half)], axis=-1)

    def kinks(self, a, y):
        """Below eps the value is flat in σ² but torch's gradient is not (straight-through):
        the clamp's region is a kink for finite differences. Each variance's distance above
        eps (0 below it); the means have none."""
        K = a.shape[-1] // 2
        var = a[..., K:]
        return np.concatenate([np.full(var.shape, np.inf), np.maximum(var - self.eps, 0.0)], axis=-1)

    # -- validation ----------------------------------------------------------------------
    def check_targets(self, a, y):
        K = _half(a)
        y = as_float_array(y, "y", min_ndim=0, like=a)
        want = a.shape[:-1] + (K,)
        if y.shape != want:
            raise ValueError(
                f"y must have shape {want} (one target per mean, a being [means | variances] of shape {a.shape}); "
                f"got shape {y.shape}"
            )
        return y

    def _prepare(self, a, y):
        a, y = super()._prepare(a, y)
        var = a[..., a.shape[-1] // 2 :]
        if var.size and var.min() < 0:
            raise _negative_variance(var.min())
        return a, y

    def mean_denominator(self, a, y=None):
        """N·K: every element (mean, target) counts."""
        return int(np.prod(np.shape(a))) // 2

    # -- the math --------------------------------------------------------------------------
    def _parts(self, a, y):
        """``(r, v̄)``: residual μ − y and the clamped variance, (..., K)."""
        K = a.shape[-1] // 2
        return a[..., :K] - y, np.maximum(a[..., K:], a.dtype.type(self.eps))

    def per_element(self, a, y):
        """ℓ per element, ``(..., K)``."""
        r, vb = self._parts(a, y)
        values = 0.5 * (np.log(vb) + r**2 / vb)
        return values + a.dtype.type(_HALF_LOG_2PI) if self.full else values

    def per_element_grad(self, a, y):
        """``[r/v̄ | ½(1/v̄ − r²/v̄²)]``, ``(..., 2K)``."""
        r, vb = self._parts(a, y)
        w = r / vb
        return np.concatenate([w, 0.5 * (1 / vb - w * w)], axis=-1)

    def per_sample(self, a, y):
        return self.per_element(a, y).sum(axis=-1)

    def per_sample_grad(self, a, y):
        return self.per_element_grad(a, y)

    def per_sample_hessian(self, a, y):
        return self._hessian_terms(a, y)[0].dense()

    def _terms(self, a, y, need_grad):
        values = self.per_element(a, y)
        return values, (self.per_element_grad(a, y) if need_grad else None), values.size

    def _hessian_terms(self, a, y):
        r, vb = self._parts(a, y)
        w = r / vb
        H = _pair_blocks(np, 1 / vb, -w / vb, (w * w - 0.5 / vb) / vb)
        return DenseJacobian(H.astype(a.dtype, copy=False)), r.size

    def fisher_blocks(self, a):
        """``diag(1/v̄ | 1/(2v̄²))``: ``E[g gᵀ]`` for ``y ~ N(μ, v̄)`` (``E r² = v̄``, ``E r⁴ = 3v̄²``)."""
        a = as_float_array(a, "a")
        _half(a)
        vb = np.maximum(a[..., a.shape[-1] // 2 :], a.dtype.type(self.eps))
        return DiagonalJacobian(np.concatenate([1 / vb, 0.5 / (vb * vb)], axis=-1))

    @property
    def predictive(self):
        """``y ~ N(μ, max(σ², eps))``, K draws from 2K uniforms (Box–Muller)."""
        eps = self.eps

        def draw(a2, u):
            K = _half(a2)
            vb = np.maximum(a2[:, K:], a2.dtype.type(eps))
            return a2[:, :K] + (np.sqrt(vb) * _box_muller(np, u[:, :K], u[:, K : 2 * K])).astype(a2.dtype)

        return Predictive(f"y ~ N(μ, max(σ², {eps}))", lambda W: W, draw, False)

    def sample_targets(self, a, u):
        out = self.predictive.draw(a.reshape(-1, a.shape[-1]), u)
        return out.reshape(a.shape[:-1] + (a.shape[-1] // 2,))

    def loop_reference(self, a, y):
        """One element at a time, in float64: the check's plain reference."""
        W = a.shape[-1]
        K = W // 2
        a2 = np.asarray(a, dtype=np.float64).reshape(-1, W)
        y2 = np.asarray(y, dtype=np.float64).reshape(-1, K)
        values, grads = np.empty((a2.shape[0], K)), np.empty_like(a2)
        for n in range(a2.shape[0]):
            for k in range(K):
                mu, var, t = a2[n, k], a2[n, K + k], y2[n, k]
                v = var if var > self.eps else self.eps
                values[n, k] = 0.5 * (math.log(v) + (mu - t) ** 2 / v) + (_HALF_LOG_2PI if self.full else 0.0)
                grads[n, k] = (mu - t) / v
                grads[n, K + k] = 0.5 / v - 0.5 * (mu - t) ** 2 / v**2
        return values, grads, float(values.size)

    # -- the generic (array API) path ----------------------------------------------------
    def xp_check_targets(self, xp, a, y):
        self._xp_require()
        K = _half(a)
        want = tuple(a.shape[:-1]) + (K,)
        if tuple(y.shape) != want:
            raise ValueError(
                f"y must have shape {want} (one target per mean, a being [means | variances] of shape "
                f"{tuple(a.shape)}); got shape {tuple(y.shape)}"
            )
        var = a[..., K:]
        if concrete(var) and math.prod(var.shape) and bool(xp.any(var < 0)):
            raise _negative_variance(float(xp.min(var)))
        return y if y.dtype == a.dtype else xp.astype(y, a.dtype)

    def xp_mean_denominator(self, xp, a, y=None):
        return math.prod(a.shape) // 2

    def _xp_parts(self, xp, a, y):
        K = a.shape[-1] // 2
        return a[..., :K] - y, xp.maximum(a[..., K:], const(xp, self.eps, a))

    def xp_terms(self, xp, a, y, need_grad):
        r, vb = self._xp_parts(xp, a, y)
        values = 0.5 * (xp.log(vb) + r**2 / vb)
        if self.full:
            values = values + _HALF_LOG_2PI
        grads = None
        if need_grad:
            w = r / vb
            grads = xp.concat([w, 0.5 * (1 / vb - w * w)], axis=-1)
        return values, grads, math.prod(r.shape)

    def xp_per_sample(self, xp, a, y):
        return xp.sum(self.xp_terms(xp, a, y, False)[0], axis=-1)

    def xp_per_sample_grad(self, xp, a, y):
        return self.xp_terms(xp, a, y, True)[1]

    def xp_hessian_terms(self, xp, a, y):
        r, vb = self._xp_parts(xp, a, y)
        w = r / vb
        return _pair_blocks(xp, 1 / vb, -w / vb, (w * w - 0.5 / vb) / vb), math.prod(r.shape), False

    def xp_per_sample_hessian(self, xp, a, y):
        return self.xp_hessian_terms(xp, a, y)[0]

    def xp_fisher_blocks(self, xp, a):
        vb = xp.maximum(a[..., a.shape[-1] // 2 :], const(xp, self.eps, a))
        return diagonal_blocks(xp, xp.concat([1 / vb, 0.5 / (vb * vb)], axis=-1))

    def xp_sample_targets(self, xp, a, u):
        W = a.shape[-1]
        K = _half(a)
        a2 = xp.reshape(a, (-1, W))
        vb = xp.maximum(a2[:, K:], const(xp, self.eps, a))
        y = a2[:, :K] + xp.sqrt(vb) * xp.astype(_box_muller(xp, u[:, :K], u[:, K : 2 * K]), a.dtype)
        return xp.reshape(y, tuple(a.shape[:-1]) + (K,))
