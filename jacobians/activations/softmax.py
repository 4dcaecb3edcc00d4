"""Softmax and log-softmax: the simplex map whose weights are its output (``g = p``), and its log
(``J = I − 1 pᵀ``, not symmetric). Registered before the elementwise activations and the
sparse maps: the registries list them in import order."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from ..numerics.validation import as_float_array, check_positive_scalar
from ..operators import DiagonalPlusLowRank, DiagonalPlusRankOne, simplex_product
from ..xp.blocks import centred_product
from ..xp.blocks import diagonal_blocks as _xp_diag
from . import references
from .base import Activation, _check_pair, register_activation
from .simplex import SimplexMapping, _rowdot, _xp_projector_dense, _xp_rowdot


def _xp_softmax(xp, x):
    """``exp(x − m) / Σ exp(x − m)`` per row, ``m`` the row max (generic path), ``(..., K)``."""
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)

__all__ = ["Softmax", "LogSoftmax"]


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
    loop_reference = references.softmax_sample
    output_domain = "open_simplex"

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_positive_scalar(temperature, "temperature")

    @classmethod
    def variants(cls, K):
        return [{"temperature": 0.5}, {"temperature": 3.0}]

    def scaled_logits(self, z):
        """``z/T`` (``z`` itself for T = 1): softmax needs no shift here, its kernels take
        the maximum out themselves."""
        return z if self.temperature == 1.0 else z / z.dtype.type(self.temperature)

    def forward(self, z):
        return _kernels.softmax(self.scaled_logits(as_float_array(z, "z")))

    def gradient_weights(self, p):
        return p if self.temperature == 1.0 else p / p.dtype.type(self.temperature)

    def _factors(self, p):
        g = self.gradient_weights(p)
        return g, g, p  # Σg = 1/T, so g/Σg = p

    def vjp_from_output(self, z, s, v):
        # s ⊙ (v' − s·v') / T, v centred on the largest s (see _kernels.softmax_vjp)
        out = simplex_product(s, s, v)
        if self.temperature != 1.0:
            out /= out.dtype.type(self.temperature)
        return out

    def vjp(self, z, g) -> np.ndarray:
        # forward and VJP in one pass over each chunk of rows (see _kernels.softmax_vjp)
        z, g = _check_pair(z, g, "g")
        return _kernels.softmax_vjp(self.scaled_logits(z), g, self.temperature)

    def jvp(self, z, v) -> np.ndarray:
        # J is symmetric: the JVP is the VJP's kernel
        z, v = _check_pair(z, v, "v")
        return _kernels.softmax_vjp(self.scaled_logits(z), v, self.temperature)

    def _curvature(self, z, s, g):
        """``Σ_i g_i ∇²s_i = (diag(w) − w sᵀ − s wᵀ)/T²`` with ``w = s ⊙ (g − g·s)``.

        From ``∂²s_i/∂z_j∂z_k = s_i[(δ_ij − s_j)(δ_ik − s_k) − s_j(δ_jk − s_k)]/T²``.
        """
        w = simplex_product(s, s, g)  # s ⊙ (g − g·s), centred: no cancellation on a confident row
        t2 = s.dtype.type(self.temperature) ** 2
        U = np.stack([w, s], axis=-1)
        V = np.stack([s, w], axis=-1)
        if self.temperature != 1.0:
            w, U = w / t2, U / t2
        return DiagonalPlusLowRank(w, U, V, symmetric=True)

    # -- generic path (see SimplexMapping): g = s/T, w = g/Σg = s -------------------------
    def xp_scaled_logits(self, xp, z):
        return z if self.temperature == 1.0 else z / self.temperature

    def xp_forward(self, xp, z):
        return _xp_softmax(xp, self.xp_scaled_logits(xp, z))

    def xp_gradient_weights(self, xp, p):
        return self._xp_per_temperature(p)

    def xp_jacobian_from_output(self, xp, z, s):
        g = self.xp_gradient_weights(xp, s)
        return _xp_projector_dense(xp, g, g, s)

    def xp_vjp_from_output(self, xp, z, s, v):
        # s ⊙ (v' − s·v') / T, v centred on the largest s (as _kernels.softmax_vjp)
        return self._xp_per_temperature(centred_product(xp, s, s, v))

    def xp_vjp(self, xp, z, g):
        return self.xp_vjp_from_output(xp, z, self.xp_forward(xp, z), g)

    def xp_jvp(self, xp, z, v):
        # J is symmetric
        return self.xp_vjp_from_output(xp, z, self.xp_forward(xp, z), v)

    def xp_curvature(self, xp, z, s, g):
        """``(diag(w) − w sᵀ − s wᵀ)/T²``, ``w = s ⊙ (g − g·s)`` (see ``_curvature``),
        dense ``(..., K, K)``."""
        w = centred_product(xp, s, s, g)
        H = _xp_diag(xp, w) - (w[..., :, None] * s[..., None, :] + s[..., :, None] * w[..., None, :])
        return H if self.temperature == 1.0 else H / self.temperature**2


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
    loop_reference = references.log_softmax_sample
    output_domain = "log_simplex"

    def forward(self, z):
        return _kernels.log_softmax(as_float_array(z, "z"))

    def jacobian_operator_from_output(self, z, a):
        s = np.exp(a)
        ones = np.ones_like(s)
        return DiagonalPlusRankOne(ones, ones, s, projector=True)

    def jacobian_operator(self, z) -> DiagonalPlusRankOne:
        z = as_float_array(z, "z")
        return self.jacobian_operator_from_output(z, self.forward(z))

    def jacobian(self, z, *, out=None, workers=None) -> np.ndarray:
        return self.jacobian_operator(z).dense(out=out, workers=workers)

    def vjp_from_output(self, z, a, g):
        return g - np.exp(a) * g.sum(axis=-1, keepdims=True)

    def vjp(self, z, g):
        z, g = _check_pair(z, g, "g")
        return self.vjp_from_output(z, self.forward(z), g)

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

    # -- generic path: shapes as the numpy methods', z's dtype and device ------------------
    def xp_forward(self, xp, z):
        """``(z − m) − log1p(Σ_{k≠argmax} exp(z_k − m))`` (the shim's logsumexp of the
        shifted logits), ``(..., K)``."""
        from ..xp import shims

        x = z - xp.max(z, axis=-1, keepdims=True)
        return x - shims.logsumexp(xp, x, axis=-1, keepdims=True)

    def xp_jacobian_from_output(self, xp, z, a):
        """``I − 1 sᵀ``, ``s = exp(a)``, diagonal from complement sums, ``(..., K, K)``."""
        s = xp.exp(a)
        ones = xp.ones_like(s)
        return _xp_projector_dense(xp, ones, ones, s)

    def xp_jacobian(self, xp, z):
        return self.xp_jacobian_from_output(xp, z, self.xp_forward(xp, z))

    def xp_vjp_from_output(self, xp, z, a, g):
        """``g − s Σg``, ``(..., K)``."""
        return g - xp.exp(a) * xp.sum(g, axis=-1, keepdims=True)

    def xp_vjp(self, xp, z, g):
        return self.xp_vjp_from_output(xp, z, self.xp_forward(xp, z), g)

    def xp_jvp(self, xp, z, v):
        """``v − s·v``, ``(..., K)``."""
        return v - _xp_rowdot(xp, _xp_softmax(xp, z), v)

    def xp_hessian_vjp(self, xp, z, g):
        """``−(Σg)(diag(s) − s sᵀ)``, ``(..., K, K)``."""
        s = _xp_softmax(xp, z)
        ws = -xp.sum(g, axis=-1, keepdims=True) * s
        return _xp_projector_dense(xp, ws, ws, s)
