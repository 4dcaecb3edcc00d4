"""The mean-variance link of heteroscedastic regression: ``z = [m | s]`` (..., 2K) to
``a = [μ | σ²]`` with ``μ = m`` and ``σ² = softplus(s) + min_variance`` (or ``exp(s) + …``).

Elementwise, so its Jacobian is diagonal: ``[1 … 1 | f'(s)]`` with ``f' = σ(s)`` (expit, the
softplus' derivative, computed without overflow) or ``exp(s)``; the second derivatives
``[0 … 0 | f''(s)]`` with ``f'' = σ(s)σ(−s)`` or ``exp(s)``. Pair it with
:class:`~jacobians.GaussianNLL`.
"""

from __future__ import annotations

import numpy as np

from ..numerics.elementwise import sigmoid, sigmoid_derivative, softplus
from ..numerics.validation import as_float_array, check_nonnegative_scalar
from .base import ElementwiseActivation, register_activation

__all__ = ["MeanVariance"]

#: the links of the variance half
VARIANCE_LINKS = ("softplus", "exp")


def split_width(shape, name: str = "z") -> int:
    """K of a last axis ``2K`` (``ValueError`` naming ``name`` for an odd or empty one)."""
    W = shape[-1] if len(shape) else 0
    if W < 2 or W % 2:
        raise ValueError(
            f"{name} must have an even last axis 2K >= 2 (K means, then K variances); got shape {tuple(shape)}"
        )
    return W // 2


@register_activation
class MeanVariance(ElementwiseActivation):
    """``[m | s] -> [m | f(s) + min_variance]``, ``f`` softplus (default) or exp.

    Parameters
    ----------
    variance : {'softplus', 'exp'}
        The link of the variance half.
    min_variance : float, default 0.0
        Added to every variance (>= 0), a floor that keeps ``σ²`` away from 0.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> jac.MeanVariance()(np.array([[1.5, 0.0]]))          # μ = 1.5, σ² = log 2
    array([[1.5       , 0.69314718]])
    >>> jac.MeanVariance(variance="exp").derivative(np.array([[1.5, 0.0]]))
    array([[1., 1.]])
    """

    name = "mean_variance"
    #: the last axis is [means | variances]: generated inputs take an even width (checks.fit_width)
    width_multiple = 2

    def __init__(self, variance: str = "softplus", min_variance: float = 0.0):
        if variance not in VARIANCE_LINKS:
            raise ValueError(f"variance must be one of {VARIANCE_LINKS}; got {variance!r}")
        self.variance = variance
        self.min_variance = check_nonnegative_scalar(min_variance, "min_variance")

    @classmethod
    def variants(cls, K):
        # (the exp link is not among them: at the checks' ±1e4 logits exp overflows, as torch's does)
        return [{"min_variance": 0.25}]

    def _parts(self, z):
        z = as_float_array(z, "z")
        K = split_width(z.shape)
        return z, z[..., :K], z[..., K:]

    def forward(self, z):
        z, m, s = self._parts(z)
        v = softplus(s) if self.variance == "softplus" else np.exp(s)
        return np.concatenate([m, v + z.dtype.type(self.min_variance)], axis=-1)

    def derivative(self, z):
        z, m, s = self._parts(z)
        d = sigmoid(s) if self.variance == "softplus" else np.exp(s)
        return np.concatenate([np.ones_like(m), d], axis=-1)

    def second_derivative(self, z):
        z, m, s = self._parts(z)
        d2 = sigmoid_derivative(s) if self.variance == "softplus" else np.exp(s)
        return np.concatenate([np.zeros_like(m), d2.astype(z.dtype, copy=False)], axis=-1)

    def loop_reference(self, z):
        """One sample ``z`` (2K,), the obvious way: ``a`` and ``diag(f')``."""
        K = len(z) // 2
        a, d = [], []
        for i, x in enumerate(z):
            x = float(x)
            if i < K:
                a.append(x)
                d.append(1.0)
            elif self.variance == "exp":
                a.append(np.exp(x) + self.min_variance)
                d.append(np.exp(x))
            else:
                a.append(np.log1p(np.exp(x)) if x < 30 else x + np.log1p(np.exp(-x)))
                a[-1] += self.min_variance
                d.append(1.0 / (1.0 + np.exp(-x)))
        return np.array(a), np.diag(d)

    # -- the generic (array API) path ---------------------------------------------------
    def _xp_parts(self, xp, z):
        K = split_width(tuple(z.shape))
        return z[..., :K], z[..., K:]

    def xp_forward(self, xp, z):
        from ..xp import shims

        m, s = self._xp_parts(xp, z)
        v = shims.softplus(xp, s) if self.variance == "softplus" else xp.exp(s)
        return xp.concat([m, v + self.min_variance], axis=-1)

    def xp_derivative(self, xp, z):
        from ..xp import shims

        m, s = self._xp_parts(xp, z)
        d = shims.expit(xp, s) if self.variance == "softplus" else xp.exp(s)
        return xp.concat([xp.ones_like(m), d], axis=-1)

    def xp_second_derivative(self, xp, z):
        m, s = self._xp_parts(xp, z)
        if self.variance == "softplus":
            e = xp.exp(-xp.abs(s))
            d2 = e / (1 + e) ** 2
        else:
            d2 = xp.exp(s)
        return xp.concat([xp.zeros_like(m), d2], axis=-1)
