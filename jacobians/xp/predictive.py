"""The built-in predictive distributions' draws on any array API namespace, numpy's arithmetic.

The twins of :data:`jacobians.numerics.sampling.PREDICTIVES`' ``draw``: targets for the rows
``a2`` ``(N, K)`` from uniforms ``u`` ``(N, per_row)`` (:func:`jacobians.xp.random.uniforms_for_rows`,
bitwise numpy's). Each draw does numpy's arithmetic in numpy's precision: the uniforms are
float64 and ``a2``'s values are compared with them in float64 (numpy promotes a float32
``a2`` so), so with float64 uniforms a draw is the same integer (class, Bernoulli outcome)
as numpy's wherever ``a2`` agrees with numpy's to round-off and no uniform sits within that
round-off of a boundary. Where float64 is missing (JAX without ``jax_enable_x64``) the
uniforms are float32 (numpy's truncated, see ``uniforms_for_rows``) and so are the
comparisons.

Nothing is written in place and no Python control flow reads array values (``jax.jit``).
"""

from __future__ import annotations

import math

from .blocks import device_of

__all__ = ["DRAWS", "integer_dtype"]


def integer_dtype(xp, x):
    """The namespace's default integer dtype on x's device (int64; int32 on JAX without x64)."""
    return xp.__array_namespace_info__().default_dtypes(device=device_of(x))["integral"]


def _wide(xp, x, u):
    """``x`` in u's (float64) dtype, as numpy promotes it against the float64 uniforms."""
    return x if x.dtype == u.dtype else xp.astype(x, u.dtype)


def _categorical(xp, a2, u, log: bool):
    """The first k with ``cdf_k >= (1 − u)·Σp`` (a class of probability 0 is never drawn),
    ``cdf`` summed in a2's dtype, the comparison in u's; class indices ``(N,)``."""
    p = xp.exp(a2) if log else a2
    K = a2.shape[-1]
    cdf = _wide(xp, xp.cumulative_sum(p, axis=-1), u)
    threshold = (1 - u[:, :1]) * cdf[:, -1:]
    k = xp.sum(xp.astype(cdf < threshold, integer_dtype(xp, a2)), axis=-1)
    return xp.minimum(k, xp.full(k.shape, K - 1, dtype=k.dtype, device=device_of(k)))


def _bernoulli(xp, a2, u):
    """1 where ``u < a`` (compared in u's dtype), a2's shape and dtype."""
    K = a2.shape[-1]
    return xp.astype(u[:, :K] < _wide(xp, a2, u), a2.dtype)


def _gaussian(xp, a2, u):
    """``a + N(0, ½)`` by Box–Muller in u's dtype: ``sqrt(−log(1 − u₁)) cos(2π u₂)``."""
    K = a2.shape[-1]
    u1, u2 = 1 - u[:, :K], u[:, K : 2 * K]
    noise = xp.sqrt(-xp.log(u1)) * xp.cos((2 * math.pi) * u2)
    return a2 + xp.astype(noise, a2.dtype)


#: predictive name -> ``draw(xp, a2, u)`` (class indices ``(N,)`` or an array of a2's shape)
DRAWS = {
    "categorical": lambda xp, a2, u: _categorical(xp, a2, u, False),
    "categorical_log": lambda xp, a2, u: _categorical(xp, a2, u, True),
    "bernoulli": _bernoulli,
    "gaussian": _gaussian,
}
