"""Activations onto the probability simplex (and its log).

softmax, sparsemax, 1.5-entmax and α-entmax share one Jacobian structure (Peters et al.,
2019)::

    J = diag(g) − g gᵀ / Σg,      Jᵀ v = g ⊙ (v − (g·v) / Σg)

with g = p (softmax), g = 1 on the support (sparsemax), g = √p (1.5-entmax) and
g = p^{2−α} on the support (α-entmax), each divided by the temperature T: every mapping
here is ``p = map(z / T)``. :class:`SimplexMapping` implements the structure once; each
mapping only says how to compute p and g. Log-softmax has ``J = I − 1 pᵀ`` (not symmetric).
"""

from __future__ import annotations

import numpy as np

from ..numerics.validation import as_float_array
from ..operators import DiagonalPlusRankOne, SimplexJacobian, simplex_product
from ..xp.blocks import centred_product, complement_sums, with_diagonal
from .base import Activation, _check_pair, _no_xp_path

__all__ = ["SimplexMapping"]

#: temperatures the checks and tests run besides T = 1 (``variants``)
TEMPERATURES = (0.5, 3.0)


def _rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Σ_k x_k y_k`` along the last axis, kept as a trailing axis of length 1."""
    return np.einsum("...k,...k->...", x, y)[..., None]


# -- generic (array API) helpers: xp the namespace, arrays (..., K) of one float dtype ------


def _xp_rowdot(xp, x, y):
    """``Σ_k x_k y_k`` along the last axis, kept as a trailing axis of length 1."""
    return xp.sum(x * y, axis=-1, keepdims=True)


def _xp_projector_dense(xp, d, u, v):
    """Dense ``diag(d) − u vᵀ`` for ``v`` a distribution (``Σv = 1``, numpy's projector
    form): the diagonal is ``d_i − u_i v_i = d_i Σ_{j≠i} v_j`` (with ``u = d``), taken from
    complement sums. Shape ``(..., K, K)``."""
    return with_diagonal(xp, (-u)[..., :, None] * v[..., None, :], d * complement_sums(xp, v))


class SimplexMapping(Activation):
    """Base of the entmax family: ``J = diag(g) − g gᵀ/Σg`` with ``g`` from the output.

    Subclasses write ``forward(z)`` and ``gradient_weights(p)`` → ``g``, shape ``(..., K)``.
    A temperature ``T`` (attribute ``temperature``, default 1) means ``p = map(z / T)``:
    ``forward`` maps ``scaled_logits`` and ``g`` carries the factor 1/T
    (``_per_temperature``).
    """

    output_domain = "simplex"
    #: class default, for subclasses without a temperature; instances set their own
    temperature: float = 1.0

    def gradient_weights(self, p: np.ndarray) -> np.ndarray:
        """The vector ``g`` of the Jacobian ``diag(g) − g gᵀ/Σg``, from the output ``p``."""
        raise NotImplementedError

    def scaled_logits(self, z):
        """The logits the map is applied to: ``(z − max z)/T``, shape of ``z`` (the map is
        shift-invariant; shifting first keeps the large logits' digits), or ``z`` itself for
        T = 1. ``p = map(scaled_logits(z))`` at temperature 1; the Fenchel–Young rule takes
        its Hessian there."""
        if self.temperature == 1.0:
            return z
        return np.subtract(z, z.max(axis=-1, keepdims=True)) / z.dtype.type(self.temperature)

    def _per_temperature(self, g):
        """``g / T``, in place (``g`` is a new array)."""
        if self.temperature != 1.0:
            g /= g.dtype.type(self.temperature)
        return g

    def _factors(self, p):
        g = self.gradient_weights(p)
        with np.errstate(invalid="ignore"):  # a NaN row has an empty support: 0/0, its NaN
            return g, g, g / g.sum(axis=-1, keepdims=True)

    def jacobian_operator_from_output(self, z, a):
        return SimplexJacobian(*self._factors(a))

    def vjp_from_output(self, z, a, v):
        d, _, w = self._factors(a)
        # symmetric Jacobian: g ⊙ (v − w·v) with w = g/Σg, of v centred on the largest g
        return simplex_product(d, w, v)

    def jacobian_operator(self, z) -> DiagonalPlusRankOne:
        z = as_float_array(z, "z")
        return self.jacobian_operator_from_output(z, self.forward(z))

    def jacobian(self, z, *, out=None, workers=None) -> np.ndarray:
        return self.jacobian_operator(z).dense(out=out, workers=workers)

    def vjp(self, z, g) -> np.ndarray:
        z, g = _check_pair(z, g, "g")
        return self.vjp_from_output(z, self.forward(z), g)

    def jvp(self, z, v) -> np.ndarray:
        # J is symmetric for the whole family
        z, v = _check_pair(z, v, "v")
        return self.vjp_from_output(z, self.forward(z), v)

    def hessian_vjp_operator(self, z, g):
        z, g = _check_pair(z, g, "g")
        return self._curvature(z, self.forward(z), g)

    def _curvature(self, z, p, g):
        """``Σ_i g_i ∇²p_i`` from the output ``p``, as an operator (each mapping its own)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no second derivative: write hessian(z) or hessian_vjp(z, g), or "
            "_curvature(z, p, g) -> JacobianOperator, to use second-order methods"
        )

    # -- generic path: everything from xp_forward and xp_gradient_weights ----------------
    def xp_scaled_logits(self, xp, z):
        """:meth:`scaled_logits` on the generic path: ``(z − max z)/T``, or ``z`` for T = 1."""
        if self.temperature == 1.0:
            return z
        return (z - xp.max(z, axis=-1, keepdims=True)) / self.temperature

    def xp_gradient_weights(self, xp, p):
        """The weights ``g`` (``(..., K)``, with the factor 1/T) of ``J = diag(g) − g gᵀ/Σg``
        from the output ``p`` ``(..., K)``, on the generic path."""
        raise _no_xp_path(self, "xp_gradient_weights(xp, p)")

    def _xp_per_temperature(self, g):
        return g if self.temperature == 1.0 else g / self.temperature

    def xp_jacobian_from_output(self, xp, z, a):
        """``diag(g) − g wᵀ`` with ``w = g/Σg``, shape ``(..., K, K)``; symmetric."""
        g = self.xp_gradient_weights(xp, a)
        return _xp_projector_dense(xp, g, g, g / xp.sum(g, axis=-1, keepdims=True))

    def xp_vjp_from_output(self, xp, z, a, v):
        """``g ⊙ (v' − w·v')``, ``v`` centred on the largest ``g``, shape ``(..., K)``."""
        g = self.xp_gradient_weights(xp, a)
        return centred_product(xp, g, g / xp.sum(g, axis=-1, keepdims=True), v)

    def xp_jacobian(self, xp, z):
        return self.xp_jacobian_from_output(xp, z, self.xp_forward(xp, z))

    def xp_vjp(self, xp, z, g):
        return self.xp_vjp_from_output(xp, z, self.xp_forward(xp, z), g)

    def xp_jvp(self, xp, z, v):
        # J is symmetric for the whole family
        return self.xp_vjp_from_output(xp, z, self.xp_forward(xp, z), v)

    def xp_hessian_vjp(self, xp, z, g):
        return self.xp_curvature(xp, z, self.xp_forward(xp, z), g)

    def xp_curvature(self, xp, z, p, g):
        """``Σ_i g_i ∇²p_i`` from the output ``p``, dense ``(..., K, K)`` (each mapping its
        own: ``_curvature``'s twin)."""
        raise _no_xp_path(self, "xp_curvature(xp, z, p, g) or xp_hessian_vjp(xp, z, g)", "second-order methods")
