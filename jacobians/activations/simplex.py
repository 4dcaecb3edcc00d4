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
from .base import Activation, _check_pair

__all__ = ["SimplexMapping"]

#: temperatures the checks and tests run besides T = 1 (``variants``)
TEMPERATURES = (0.5, 3.0)


def _rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Σ_k x_k y_k`` along the last axis, kept as a trailing axis of length 1."""
    return np.einsum("...k,...k->...", x, y)[..., None]


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
