"""Activations onto the probability simplex (and its log).

softmax, sparsemax and 1.5-entmax share one Jacobian structure (Peters et al., 2019)::

    J = diag(g) − g gᵀ / Σg,      Jᵀ v = g ⊙ (v − (g·v) / Σg)

with g = p (softmax; p/T with a temperature), g = 1 on the support (sparsemax) and
g = √p (1.5-entmax). :class:`SimplexMapping` implements it once; each mapping only
says how to compute p and g. Log-softmax has ``J = I − 1 pᵀ`` (not symmetric).
"""

from __future__ import annotations

import numpy as np

from .. import _kernels, _math
from .._validation import as_float_array, check_positive_scalar
from ..operators import DiagonalJacobian, DiagonalPlusLowRank, DiagonalPlusRankOne
from .base import Activation, _check_pair, register_activation

__all__ = ["SimplexMapping", "Softmax", "LogSoftmax", "Sparsemax", "Entmax15"]


def _rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Σ_k x_k y_k`` along the last axis, kept as a trailing axis of length 1."""
    return np.einsum("...k,...k->...", x, y)[..., None]


class SimplexMapping(Activation):
    """Base of the entmax family: ``J = diag(g) − g gᵀ/Σg`` with ``g`` from the output.

    Subclasses write ``forward(z)`` and ``gradient_weights(p)`` → ``g``, shape ``(..., K)``.
    """

    output_domain = "simplex"

    def gradient_weights(self, p: np.ndarray) -> np.ndarray:
        """The vector ``g`` of the Jacobian ``diag(g) − g gᵀ/Σg``, from the output ``p``."""
        raise NotImplementedError

    def _factors(self, p):
        g = self.gradient_weights(p)
        return g, g, g / g.sum(axis=-1, keepdims=True)

    def _operator_from_output(self, z, a):
        return DiagonalPlusRankOne(*self._factors(a), projector=True)

    def _vjp_from_output(self, z, a, v):
        d, u, w = self._factors(a)
        # symmetric Jacobian: g ⊙ v − (g·v) g/Σg
        out = v * d
        out -= w * _rowdot(u, v)
        return out

    def jacobian_operator(self, z) -> DiagonalPlusRankOne:
        z = as_float_array(z, "z")
        return self._operator_from_output(z, self.forward(z))

    def jacobian(self, z, *, out=None, workers=None) -> np.ndarray:
        return self.jacobian_operator(z).dense(out=out, workers=workers)

    def vjp(self, z, g) -> np.ndarray:
        z, g = _check_pair(z, g, "g")
        return self._vjp_from_output(z, self.forward(z), g)

    def jvp(self, z, v) -> np.ndarray:
        # J is symmetric for the whole family
        z, v = _check_pair(z, v, "v")
        return self._vjp_from_output(z, self.forward(z), v)

    def hessian_vjp_operator(self, z, g):
        z, g = _check_pair(z, g, "g")
        return self._curvature(z, self.forward(z), g)

    def _curvature(self, z, p, g):
        """``Σ_i g_i ∇²p_i`` from the output ``p``, as an operator (each mapping its own)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no second derivative: write hessian(z) or hessian_vjp(z, g), or "
            "_curvature(z, p, g) -> JacobianOperator, to use second-order methods"
        )


@register_activation
class Softmax(SimplexMapping):
    """``s = softmax(z / T)``: ``exp(z/T − m) / Σ exp(z/T − m)`` with ``m`` the row max.

    Jacobian ``J = (diag(s) − s sᵀ) / T``, built as ``einsum('ij,ik->ijk', s, -s)`` plus
    ``s`` added onto the diagonal view ``einsum('ijj->ij', J)`` (with the compiled kernels:
    the same entries in one pass, see :class:`~jacobians.DiagonalPlusRankOne`).

    Parameters
    ----------
    temperature : float, default 1.0
        ``T > 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Softmax
    >>> Softmax()(np.array([[0.0, 0.0], [1e4, -1e4]]))
    array([[0.5, 0.5],
           [1. , 0. ]])
    >>> Softmax().jacobian(np.array([0.0, 0.0]))
    array([[ 0.25, -0.25],
           [-0.25,  0.25]])
    """

    name = "softmax"
    output_domain = "open_simplex"

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_positive_scalar(temperature, "temperature")

    @classmethod
    def variants(cls, K):
        return [{"temperature": 0.5}, {"temperature": 3.0}]

    def _scaled(self, z):
        return z if self.temperature == 1.0 else z / z.dtype.type(self.temperature)

    def forward(self, z):
        return _kernels.softmax(self._scaled(as_float_array(z, "z")))

    def gradient_weights(self, p):
        return p if self.temperature == 1.0 else p / p.dtype.type(self.temperature)

    def _factors(self, p):
        g = self.gradient_weights(p)
        return g, g, p  # Σg = 1/T, so g/Σg = p

    def _vjp_from_output(self, z, s, v):
        out = v - _rowdot(s, v)
        out *= s
        if self.temperature != 1.0:
            out /= out.dtype.type(self.temperature)
        return out

    def vjp(self, z, g) -> np.ndarray:
        # forward and VJP in one pass over each chunk of rows (see _kernels.softmax_vjp)
        z, g = _check_pair(z, g, "g")
        return _kernels.softmax_vjp(self._scaled(z), g, self.temperature)

    def jvp(self, z, v) -> np.ndarray:
        # J is symmetric: the JVP is the VJP's kernel
        z, v = _check_pair(z, v, "v")
        return _kernels.softmax_vjp(self._scaled(z), v, self.temperature)

    def _curvature(self, z, s, g):
        """``Σ_i g_i ∇²s_i = (diag(w) − w sᵀ − s wᵀ)/T²`` with ``w = s ⊙ (g − g·s)``.

        From ``∂²s_i/∂z_j∂z_k = s_i[(δ_ij − s_j)(δ_ik − s_k) − s_j(δ_jk − s_k)]/T²``.
        """
        w = s * (g - _rowdot(s, g))
        t2 = s.dtype.type(self.temperature) ** 2
        U = np.stack([w, s], axis=-1)
        V = np.stack([s, w], axis=-1)
        if self.temperature != 1.0:
            w, U = w / t2, U / t2
        return DiagonalPlusLowRank(w, U, V)


@register_activation
class LogSoftmax(Activation):
    """``log softmax(z) = (z − m) − log Σ exp(z − m)``, exact for huge logits.

    Jacobian ``J = I − 1 sᵀ`` with ``s = softmax(z)``, i.e. ``J[i, j] = δ_ij − s_j``:
    not symmetric. VJP ``g − s Σg``; JVP ``v − (s·v)``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import LogSoftmax
    >>> LogSoftmax()(np.array([1e4, -1e4]))
    array([     0., -20000.])
    >>> LogSoftmax().jacobian(np.array([0.0, 0.0]))
    array([[ 0.5, -0.5],
           [-0.5,  0.5]])
    """

    name = "log_softmax"
    output_domain = "log_simplex"

    def forward(self, z):
        return _kernels.log_softmax(as_float_array(z, "z"))

    def _operator_from_output(self, z, a):
        s = np.exp(a)
        ones = np.ones_like(s)
        return DiagonalPlusRankOne(ones, ones, s, projector=True)

    def jacobian_operator(self, z) -> DiagonalPlusRankOne:
        z = as_float_array(z, "z")
        return self._operator_from_output(z, self.forward(z))

    def jacobian(self, z, *, out=None, workers=None) -> np.ndarray:
        return self.jacobian_operator(z).dense(out=out, workers=workers)

    def _vjp_from_output(self, z, a, g):
        return g - np.exp(a) * g.sum(axis=-1, keepdims=True)

    def vjp(self, z, g):
        z, g = _check_pair(z, g, "g")
        return self._vjp_from_output(z, self.forward(z), g)

    def jvp(self, z, v):
        z, v = _check_pair(z, v, "v")
        return v - _rowdot(_kernels.softmax(z), v)

    def hessian_vjp_operator(self, z, g):
        """``Σ_i g_i ∇²a_i = −(Σg)(diag(s) − s sᵀ)``: every output has the same curvature,
        ``−∇² lse(z)``."""
        z, g = _check_pair(z, g, "g")
        s = _kernels.softmax(z)
        ws = -g.sum(axis=-1, keepdims=True) * s
        return DiagonalPlusRankOne(ws, ws, s, projector=True)


@register_activation
class Sparsemax(SimplexMapping):
    """Euclidean projection onto the simplex (Martins & Astudillo, 2016): sparse outputs.

    ``p = max(z − τ, 0)``; Jacobian ``diag(g) − g gᵀ/|S|`` with ``g`` the support
    indicator. Pair it with :class:`~jacobians.SparsemaxLoss` for classification.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Sparsemax
    >>> Sparsemax()(np.array([[0.5, 0.2, -2.0]]))
    array([[0.65, 0.35, 0.  ]])
    """

    name = "sparsemax"

    def forward(self, z):
        return _math.sparsemax(as_float_array(z, "z"))

    def gradient_weights(self, p):
        return (p > 0).astype(p.dtype)

    def _curvature(self, z, p, g):
        # piecewise linear: no curvature off the support boundaries
        return DiagonalJacobian(np.zeros_like(p))


@register_activation
class Entmax15(SimplexMapping):
    """1.5-entmax (Peters, Niculae & Martins, 2019): between softmax and sparsemax.

    ``p = [(z/2 − τ)_+]²``; Jacobian ``diag(g) − g gᵀ/Σg`` with ``g = √p``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Entmax15
    >>> p = Entmax15()(np.array([[1.0, 0.5, -3.0]]))
    >>> np.round(p, 4)          # z/2 − τ = 0.821, 0.571 on the support: p = 0.674, 0.326
    array([[0.674, 0.326, 0.   ]])
    """

    name = "entmax15"

    def forward(self, z):
        return _math.entmax15(as_float_array(z, "z"))

    def gradient_weights(self, p):
        return np.sqrt(p)

    def _curvature(self, z, p, v):
        """``Σ_i v_i ∇²p_i`` on the support S (zero elsewhere), with ``g = √p``,
        ``G = Σg``, ``n = |S|``, ``V = Σ_S v`` and ``ν = v·g``::

            ½ [diag(v − ν/G) − (v gᵀ + g vᵀ)/G + (V/G² − nν/G³) g gᵀ + ν (1 gᵀ + g 1ᵀ)/G²]

        from ``p_i = g_i²``, ``∂g_i/∂z_j = (δ_ij − g_j/G)/2`` and ``∂G/∂z_k = (1 − n g_k/G)/2``.
        """
        on = (p > 0).astype(p.dtype)
        g = np.sqrt(p)
        v = v * on
        G = g.sum(axis=-1, keepdims=True)
        n = on.sum(axis=-1, keepdims=True)
        V = v.sum(axis=-1, keepdims=True)
        nu = _rowdot(v, g)
        half = p.dtype.type(0.5)
        d = half * (v - nu / G) * on
        # diag(d) − U Vᵀ with U = [v/2G, −ν/2G² 1, g], V = [g, g, v/2G − ½(V/G² − nν/G³) g − ν/2G² 1]
        last = half * v / G - half * (V / G**2 - n * nu / G**3) * g - half * nu / G**2 * on
        U = np.stack([half * v / G, -half * nu / G**2 * on, g], axis=-1)
        W = np.stack([g, g, last], axis=-1)
        return DiagonalPlusLowRank(d, U, W)
