"""The sparse maps onto the simplex: sparsemax, 1.5-entmax and α-entmax (Peters et al., 2019),
each ``p = map(z / T)`` with the weights ``g`` of :mod:`.simplex` (1, √p and p^{2−α} on the
support) and their curvature as a structured operator."""

from __future__ import annotations

import numpy as np

from ..backend import backend_aware
from ..numerics import entmax, sparse
from ..numerics.validation import alpha_rows, as_float_array, check_alpha, check_positive_scalar
from ..operators import DiagonalJacobian, DiagonalPlusLowRank
from ..xp.blocks import device_of as _xp_device
from ..xp.blocks import diagonal_blocks as _xp_diag
from . import references
from .base import _check_pair, register_activation
from .simplex import TEMPERATURES, SimplexMapping, _rowdot, _xp_rowdot

__all__ = ["Sparsemax", "Entmax15", "Entmax"]


def _support_curvature(g, h, v, temperature):
    """``Σ_i v_i ∇²p_i`` of an entmax-family map ``p = map(z/T)``, as an operator.

    With ``J = diag(g) − g gᵀ/G`` (``G = Σg``, g of the map at ``z/T`` without the 1/T) and
    ``∂g_i/∂x_k = h_i (δ_ik − g_k/G)`` on the support (α-entmax: ``g = p^{2−α}``,
    ``h = (2 − α) p^{3−2α}``; 1.5-entmax ``h = ½``; sparsemax ``h = 0``), ``v`` zero off
    the support, ``ν = v·g``, ``μ = v·h``, ``H = Σh``::

        C = diag(h ⊙ (v − ν/G)) − ((v⊙h) gᵀ + g (v⊙h)ᵀ)/G + ν (h gᵀ + g hᵀ)/G² + (μ/G² − νH/G³) g gᵀ

    (differentiate ``Σ_i v_i J_ij = v_j g_j − ν g_j/G`` in ``x_k``), over ``T²``.
    """
    G = g.sum(axis=-1, keepdims=True)
    nu, mu = _rowdot(v, g), _rowdot(v, h)
    H = h.sum(axis=-1, keepdims=True)
    c = mu / G**2 - nu * H / G**3
    d = h * (v - nu / G)
    # a row whose support is one entry has p = e_k near z: no curvature (exact zeros, where
    # the terms above cancel only to round-off); the rest over T²
    scale = (np.count_nonzero(g, axis=-1) > 1)[..., None] / g.dtype.type(temperature) ** 2
    # C = diag(d) − (b gᵀ + g bᵀ) + c g gᵀ with b = (v⊙h/G − ν h/G²), written (scaled) as
    # [b, g, √|c| g][g, b, −sign(c) √|c| g]ᵀ
    b = (v * h - nu / G * h) / G * scale
    sg = np.sqrt(np.abs(c) * scale) * g
    U = np.stack([b, g, sg], axis=-1)
    W = np.stack([g, b, -np.sign(c) * sg], axis=-1)
    return DiagonalPlusLowRank(d * scale, U, W, symmetric=True)


def _xp_support_curvature(xp, g, h, v, temperature):
    """:func:`_support_curvature` on the generic path, dense ``(..., K, K)``:
    ``C = diag(d) − (b gᵀ + g bᵀ) + c g gᵀ``, each term times the row's scale (0 for a
    support of one entry, else 1/T²)."""
    G = xp.sum(g, axis=-1, keepdims=True)
    nu, mu = _xp_rowdot(xp, v, g), _xp_rowdot(xp, v, h)
    H = xp.sum(h, axis=-1, keepdims=True)
    c = mu / G**2 - nu * H / G**3
    d = h * (v - nu / G)
    support = xp.sum(xp.astype(g != 0, g.dtype), axis=-1, keepdims=True)
    scale = xp.astype(support > 1, g.dtype) / temperature**2
    b = (v * h - nu / G * h) / G * scale
    low = b[..., :, None] * g[..., None, :] + g[..., :, None] * b[..., None, :]
    return _xp_diag(xp, d * scale) - low + (c * scale)[..., None] * (g[..., :, None] * g[..., None, :])


def _xp_power_on_support(xp, p, e):
    """``p^e = exp(e log p)`` where ``p > 0``, else 0 (numerics.entmax's power), ``(..., K)``."""
    on = p > 0
    return xp.where(on, xp.exp(e * xp.log(xp.where(on, p, xp.ones_like(p)))), xp.zeros_like(p))


def _xp_entmax_weights(xp, p, alpha):
    """``p^{2−α}`` on the support, else 0 (numerics.entmax.entmax_weights, its special
    cases α = 2 and 1.5 included), ``(..., K)``."""
    if not hasattr(alpha, "shape"):
        if alpha == 2.0:
            return xp.astype(p > 0, p.dtype)
        if alpha == 1.5:
            return xp.sqrt(p)
    return _xp_power_on_support(xp, p, 2 - alpha)


def _xp_sorted_down(xp, x):
    """``x`` sorted along the last axis, largest first, and ``1, 2, …, K`` in x's dtype."""
    ks = xp.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=_xp_device(x))
    return xp.sort(x, axis=-1, descending=True), ks


def _xp_at(xp, x, ks, k):
    """``x[..., k − 1]`` per row (``k`` ``(..., 1)`` a float count, ``ks`` = 1..K): a
    one-hot sum, exact, jit-safe, without integer indices."""
    return xp.sum(xp.where(ks == k, x, xp.zeros_like(x)), axis=-1, keepdims=True)


class _TemperedSparseMapping(SimplexMapping):
    """A sparse mapping of ``z / T``: the ``temperature`` parameter and its variants."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_positive_scalar(temperature, "temperature")

    @classmethod
    def variants(cls, K):
        return [{"temperature": T} for T in TEMPERATURES]


@register_activation
class Sparsemax(_TemperedSparseMapping):
    """Euclidean projection onto the simplex (Martins & Astudillo, 2016): sparse outputs.

    ``p = max(z/T − τ, 0)``; Jacobian ``(diag(g) − g gᵀ/|S|)/T`` with ``g`` the support
    indicator. Pair it with :class:`~jacobians.SparsemaxLoss` for classification.

    Parameters
    ----------
    temperature : float, default 1.0
        ``T > 0``: ``p = sparsemax(z / T)``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Sparsemax
    >>> Sparsemax()(np.array([[0.5, 0.2, -2.0]]))
    array([[0.65, 0.35, 0.  ]])
    >>> Sparsemax(temperature=2.0)(np.array([[0.5, 0.2, -2.0]]))   # z/2: flatter
    array([[0.575, 0.425, 0.   ]])
    """

    name = "sparsemax"
    loop_reference = references.sparsemax_sample
    kinks = references.sparsemax_kinks

    def forward(self, z):
        return sparse.sparsemax(self.scaled_logits(as_float_array(z, "z")))

    def gradient_weights(self, p):
        return self._per_temperature((p > 0).astype(p.dtype))

    def _curvature(self, z, p, g):
        # piecewise linear: no curvature off the support boundaries
        return DiagonalJacobian(np.zeros_like(p))

    def xp_forward(self, xp, z):
        """numerics.sparse.sparsemax's sort-based threshold on the generic path: τ from the
        cumulative sums at the support's size, ``(..., K)``."""
        x = self.xp_scaled_logits(xp, z)
        shifted = x - xp.max(x, axis=-1, keepdims=True)
        srt, ks = _xp_sorted_down(xp, shifted)
        cumsum = xp.cumulative_sum(srt, axis=-1)
        k = xp.sum(xp.astype(1 + ks * srt > cumsum, x.dtype), axis=-1, keepdims=True)  # >= 1
        tau = (_xp_at(xp, cumsum, ks, k) - 1) / k
        return xp.maximum(shifted - tau, xp.zeros_like(shifted))

    def xp_gradient_weights(self, xp, p):
        return self._xp_per_temperature(xp.astype(p > 0, p.dtype))

    def xp_curvature(self, xp, z, p, g):
        return xp.zeros(tuple(p.shape) + (p.shape[-1],), dtype=p.dtype, device=_xp_device(p))


@register_activation
class Entmax15(_TemperedSparseMapping):
    """1.5-entmax (Peters, Niculae & Martins, 2019): between softmax and sparsemax.

    ``p = [(z/(2T) − τ)_+]²``; Jacobian ``(diag(g) − g gᵀ/Σg)/T`` with ``g = √p``.

    Parameters
    ----------
    temperature : float, default 1.0
        ``T > 0``: ``p = entmax15(z / T)``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Entmax15
    >>> p = Entmax15()(np.array([[1.0, 0.5, -3.0]]))
    >>> np.round(p, 4)          # z/2 − τ = 0.821, 0.571 on the support: p = 0.674, 0.326
    array([[0.674, 0.326, 0.   ]])
    """

    name = "entmax15"
    loop_reference = references.entmax15_sample
    kinks = references.entmax15_kinks

    def forward(self, z):
        return sparse.entmax15(self.scaled_logits(as_float_array(z, "z")))

    def gradient_weights(self, p):
        return self._per_temperature(np.sqrt(p))

    def _curvature(self, z, p, v):
        # g = √p: h = (2 − α) p^{3 − 2α} = ½ on the support
        on = (p > 0).astype(p.dtype)
        return _support_curvature(np.sqrt(p), on * p.dtype.type(0.5), v * on, self.temperature)

    def xp_forward(self, xp, z):
        """numerics.sparse.entmax15 on the generic path: τ from the sorted row's running
        moments at the support's size, then one Newton step, ``(..., K)``."""
        x = self.xp_scaled_logits(xp, z)
        x = (x - xp.max(x, axis=-1, keepdims=True)) / 2
        srt, rho = _xp_sorted_down(xp, x)
        mean = xp.cumulative_sum(srt, axis=-1) / rho
        mean_sq = xp.cumulative_sum(srt * srt, axis=-1) / rho
        ss = rho * (mean_sq - mean * mean)
        tau = mean - xp.sqrt(xp.maximum((1 - ss) / rho, xp.zeros_like(ss)))
        support = xp.sum(xp.astype(tau <= srt, x.dtype), axis=-1, keepdims=True)
        tau_star = _xp_at(xp, tau, rho, support)
        u = xp.maximum(x - tau_star, xp.zeros_like(x))
        tau_star = tau_star + (xp.sum(u * u, axis=-1, keepdims=True) - 1) / (2 * xp.sum(u, axis=-1, keepdims=True))
        p = xp.maximum(x - tau_star, xp.zeros_like(x))
        return p * p

    def xp_gradient_weights(self, xp, p):
        return self._xp_per_temperature(xp.sqrt(p))

    def xp_curvature(self, xp, z, p, v):
        on = xp.astype(p > 0, p.dtype)
        return _xp_support_curvature(xp, xp.sqrt(p), on * 0.5, v * on, self.temperature)


@register_activation
class Entmax(_TemperedSparseMapping):
    r"""α-entmax (Peters, Niculae & Martins, 2019) for any α > 1: softmax (α → 1),
    1.5-entmax, sparsemax (α = 2) and sparser maps beyond.

    ``p = argmax_{p ∈ Δ} pᵀ(z/T) + H_α(p)`` with the Tsallis entropy
    ``H_α(p) = (1 − Σ p^α)/(α(α − 1))``, i.e.::

        p_i = [(α − 1) z_i/T − τ]_+^{1/(α − 1)},     τ such that Σ p = 1.

    Exact, not approximate: the support is found by bisection over the sorted logits, then τ
    is solved on it by safeguarded Newton to the dtype's precision (``|Σp − 1|`` a few ulp;
    at α = 2 and 1.5 the result is :class:`Sparsemax`'s and :class:`Entmax15`'s to a few
    ulp). Exact for logits of ±1e4, float32 included.

    Jacobian ``(diag(g) − g gᵀ/Σg)/T`` with ``g = p^{2−α}`` on the support (0 off it): the
    shared structure of :class:`SimplexMapping`. For α > 2, ``g`` grows without bound as
    an entry nears the support's edge (``p_i = u^{1/(α−1)}`` has an infinite slope there).

    Parameters
    ----------
    alpha : float or array_like, default 1.5
        α > 1 and finite. An array gives each row its own α: it broadcasts against the batch
        axes ``z.shape[:-1]`` (shape ``(...,)``), or, as in the entmax package, against
        ``z.shape[:-1] + (1,)`` (shape ``(..., 1)``); a shape that both readings accept with
        different rows is refused. α = 1 is softmax: use :class:`Softmax`.
    temperature : float, default 1.0
        ``T > 0``: ``p = entmax_α(z / T)``.

    Notes
    -----
    :meth:`alpha_vjp` gives ``Σ_i g_i ∂p_i/∂α`` per row, to learn α. Pair the map with
    :class:`~jacobians.EntmaxLoss` of the same α for classification.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Entmax
    >>> z = np.array([[1.0, 0.5, -3.0]])
    >>> np.round(Entmax(alpha=1.5)(z), 4)          # 1.5-entmax
    array([[0.674, 0.326, 0.   ]])
    >>> Entmax(alpha=2.0)(z)                       # sparsemax
    array([[0.75, 0.25, 0.  ]])
    >>> z2 = np.array([[1.0, 0.8, -0.5], [1.0, 0.8, -0.5]])
    >>> np.round(Entmax(alpha=[1.2, 3.0])(z2), 4)   # one α per row: the larger, the sparser
    array([[0.522 , 0.4134, 0.0646],
           [0.7   , 0.3   , 0.    ]])
    """

    name = "entmax"
    loop_reference = references.entmax_sample
    kinks = references.entmax_kinks

    def __init__(self, alpha=1.5, temperature: float = 1.0):
        self.alpha = check_alpha(alpha)
        super().__init__(temperature)

    @classmethod
    def variants(cls, K):
        # one α of each form of the kernel (numerics.entmax: NEAR_ONE, FLAT, STEEP); 1.5 is the default.
        # Not 3: 3-entmax is linear on a support of two entries, so its curvature there is 0
        # and the second-order checks would compare round-off of cancelling terms with 0
        return [{"alpha": 1.2}, {"alpha": 1.75}, {"alpha": 2.5, "temperature": TEMPERATURES[1]}]

    def _alpha(self, z):
        return alpha_rows(self.alpha, z)

    def forward(self, z):
        z = as_float_array(z, "z")
        return entmax.entmax(self.scaled_logits(z), self._alpha(z))

    def gradient_weights(self, p):
        return self._per_temperature(entmax.entmax_weights(p, self._alpha(p)))

    def vjp(self, z, g) -> np.ndarray:
        # forward and VJP in one pass over each chunk of rows (see numerics.entmax.entmax_vjp)
        z, g = _check_pair(z, g, "g")
        return entmax.entmax_vjp(self.scaled_logits(z), self._alpha(z), g, self.temperature)

    def _curvature(self, z, p, v):
        # g = p^{2−α}, h = ∂g/∂p · g = (2 − α) p^{3−2α} on the support (see _support_curvature)
        alpha = self._alpha(p)
        a = alpha.astype(p.dtype) if isinstance(alpha, np.ndarray) else p.dtype.type(alpha)
        on = p > 0
        with np.errstate(divide="ignore", over="ignore"):
            h = np.where(on, (2 - a) * np.exp((3 - 2 * a) * np.log(np.where(on, p, 1))), 0).astype(p.dtype, copy=False)
        return _support_curvature(entmax.entmax_weights(p, alpha), h, v * on, self.temperature)

    # -- generic path: τ by bisection of a fixed number of steps (jit-safe), then Newton ----
    def xp_alpha(self, xp, z):
        """α for the rows of ``z`` on the generic path (``_alpha``'s twin): a float, or one
        per row ``(..., 1)`` in z's dtype and on its device."""
        alpha = alpha_rows(self.alpha, np.broadcast_to(np.empty((), dtype=np.float64), tuple(z.shape)))
        if not isinstance(alpha, np.ndarray):
            return alpha
        alpha = np.array(alpha, dtype=np.float64).reshape(tuple(z.shape[:-1]) + (1,))  # a writable copy for torch
        return xp.asarray(alpha, dtype=z.dtype, device=_xp_device(z))

    def xp_forward(self, xp, z):
        """``p = [(α − 1)x − τ]_+^{1/(α−1)}`` (``x`` the scaled logits shifted to max 0):
        τ in ``[−1, −K^{1−α}]`` by bisection, one step a mantissa bit (60 in float64, 30 in
        float32), then one Newton step on the support, as numerics.entmax; ``(..., K)``."""
        x = self.xp_scaled_logits(xp, z)
        alpha = self.xp_alpha(xp, z)
        X = (alpha - 1) * (x - xp.max(x, axis=-1, keepdims=True))
        beta = 1 / (alpha - 1)
        zero = xp.zeros_like(X)
        lo = xp.full(tuple(X.shape[:-1]) + (1,), -1.0, dtype=X.dtype, device=_xp_device(X))
        hi = lo * 0 - (1 / X.shape[-1]) ** (alpha - 1)
        for _ in range(60 if X.dtype == xp.float64 else 30):
            mid = (lo + hi) / 2
            over = xp.sum(xp.maximum(X - mid, zero) ** beta, axis=-1, keepdims=True) >= 1
            lo, hi = xp.where(over, mid, lo), xp.where(over, hi, mid)
        tau = (lo + hi) / 2
        u = xp.maximum(X - tau, zero)
        on = u > 0
        f = xp.sum(u**beta, axis=-1, keepdims=True) - 1
        slope = beta * xp.sum(xp.where(on, xp.where(on, u, xp.ones_like(u)) ** (beta - 1), zero), axis=-1, keepdims=True)
        tau = tau + f / slope
        return xp.maximum(X - tau, zero) ** beta

    def xp_gradient_weights(self, xp, p):
        return self._xp_per_temperature(_xp_entmax_weights(xp, p, self.xp_alpha(xp, p)))

    def xp_vjp(self, xp, z, g):
        return self.xp_vjp_from_output(xp, z, self.xp_forward(xp, z), g)

    def xp_curvature(self, xp, z, p, v):
        alpha = self.xp_alpha(xp, p)
        on = xp.astype(p > 0, p.dtype)
        h = (2 - alpha) * _xp_power_on_support(xp, p, 3 - 2 * alpha)
        return _xp_support_curvature(xp, _xp_entmax_weights(xp, p, alpha), h, v * on, self.temperature)

    def xp_alpha_vjp(self, xp, z, g):
        """:meth:`alpha_vjp` on the generic path, shape ``z.shape[:-1]`` (the same formula)."""
        p = self.xp_forward(xp, z)
        alpha = self.xp_alpha(xp, z)
        w = _xp_entmax_weights(xp, p, alpha)
        beta = 1 / (alpha - 1)
        on = p > 0
        plogp = xp.where(on, p * xp.log(xp.where(on, p, xp.ones_like(p))), xp.zeros_like(p))
        gw = _xp_rowdot(xp, g, w) / xp.sum(w, axis=-1, keepdims=True)  # ŵ·g
        entropy = xp.sum(plogp, axis=-1, keepdims=True)
        out = beta * beta * (_xp_rowdot(xp, g, p) - gw) - beta * (_xp_rowdot(xp, g, plogp) - gw * entropy)
        return out[..., 0]

    @backend_aware("alpha_vjp")
    def alpha_vjp(self, z, g) -> np.ndarray:
        r"""``Σ_i g_i ∂p_i/∂α`` per row, shape ``z.shape[:-1]``: the gradient of α.

        With ``w = p^{2−α}`` on the support (the Jacobian's weights), ``ŵ = w/Σw``,
        ``β = 1/(α − 1)`` and ``H = Σ_j p_j log p_j`` (Correia et al., 2019)::

            ∂p_i/∂α = β² (p_i − ŵ_i) − β (p_i log p_i − ŵ_i H)

        (differentiate ``log p_i = β log u_i``, ``u_i = (α − 1) z_i/T − τ``, with τ(α)
        implicit in ``Σ_i ∂p_i/∂α = 0``; independent of T given p). Sum over rows for a
        shared α; a per-row α gets its own entry. As α → 1 the two terms cancel to O(1):
        about log10(β) digits are lost.

        Parameters
        ----------
        z : array_like, shape (..., K)
        g : array_like, shape (..., K)
            dE/dp.

        Returns
        -------
        ndarray, shape (...,)

        Examples
        --------
        >>> import numpy as np
        >>> from jacobians import Entmax
        >>> z, g = np.array([[1.0, 0.5, -3.0]]), np.array([[1.0, 0.0, 0.0]])
        >>> act, h = Entmax(alpha=1.5), 1e-6
        >>> numeric = (Entmax(1.5 + h)(z)[0, 0] - Entmax(1.5 - h)(z)[0, 0]) / (2 * h)
        >>> bool(np.isclose(act.alpha_vjp(z, g)[0], numeric))
        True
        """
        z, g = _check_pair(z, g, "g")
        p = self.forward(z)
        alpha = self._alpha(z)
        w = entmax.entmax_weights(p, alpha)
        beta = 1.0 / (np.asarray(alpha, dtype=np.float64) - 1.0)
        beta = beta.astype(p.dtype) if isinstance(alpha, np.ndarray) else float(beta)
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(p), 0)
        sum_w = w.sum(axis=-1, keepdims=True)
        gw = _rowdot(g, w) / sum_w  # ŵ·g
        entropy = plogp.sum(axis=-1, keepdims=True)
        out = beta * beta * (_rowdot(g, p) - gw) - beta * (_rowdot(g, plogp) - gw * entropy)
        return out[..., 0]
