"""Poisson negative log-likelihood of counts (torch ``poisson_nll_loss``), per entry.

``log_input=True`` (the default): ``a`` is the log-rate, ``ℓ = e^a − y·a``; ``log_input=False``:
``a`` is the rate, ``ℓ = a − y·log(a + eps)``. ``full`` adds Stirling's approximation of
``log y!``, ``y log y − y + ½ log(2π y)``, for targets ``y > 1`` only (torch sets it to 0 for
``y <= 1``); it does not depend on ``a``. ``'mean'`` averages over all N·K entries.

The loss is the negative log-likelihood, up to a constant of ``y``, of ``y ~ Poisson(λ)`` with
``λ = e^a`` (``log_input``) or ``λ = a + eps``: that is its predictive distribution, for the
Fisher (exact: ``diag(e^a)`` or ``diag(1/(a + eps))``) and the Monte-Carlo Fisher, whose
counts are drawn by the inverse CDF from the package's counter-based uniforms
(:func:`poisson_from_uniforms`).
"""

from __future__ import annotations

import math

import numpy as np

from ..activations.exp import Exp
from ..numerics.sampling import Predictive
from ..numerics.validation import check_nonnegative_scalar
from ..operators import DiagonalJacobian
from .base import ElementwiseLoss, register_loss
from .generic import concrete, const, device_of, diagonal_blocks

__all__ = ["PoissonNLL"]

#: the largest rate the Monte-Carlo draws take (a window of ±(10√λ + 20) counts is summed)
RATE_MAX = float(2**24)
#: entries × window counts summed at once by the draws
_DRAW_BLOCK = 1 << 20


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return bool(value)


def _window_draws(lam: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws for rates ``lam`` (n,) > 0 of one window half-width: the smallest k
    with ``F(k) >= v`` for ``v`` in (0, 1], the pmf summed over ``mode ± W`` from the ratios
    ``p_k / p_{k−1} = λ/k`` (in logs from the mode, normalised by the window's sum)."""
    W = int(np.ceil(10 * np.sqrt(lam.max()) + 20))
    m = np.floor(lam)
    d = np.arange(-W, W + 1, dtype=np.float64)
    k = m[:, None] + d  # the window's counts, (n, 2W + 1)
    s = np.log(lam)[:, None] - np.log(np.maximum(k, 1.0))  # log(p_k / p_{k−1}) for k >= 1
    up = np.cumsum(s[:, W + 1 :], axis=1)  # log(p_{m+d} / p_m), d = 1 .. W
    down = -np.cumsum(s[:, W:0:-1], axis=1)  # log(p_{m−d} / p_m), d = 1 .. W
    logp = np.concatenate([down[:, ::-1], np.zeros((lam.size, 1)), up], axis=1)
    p = np.where(k >= 0, np.exp(logp), 0.0)
    cdf = np.cumsum(p, axis=1)
    below = (cdf < v[:, None] * cdf[:, -1:]).sum(axis=1)
    return np.minimum(m - W + below, m + W)


def poisson_from_uniforms(rate, u) -> np.ndarray:
    """Counts ``y ~ Poisson(rate)`` from uniforms ``u`` in [0, 1) of the same shape, by the
    inverse CDF: ``y`` is the smallest k with ``F(k; rate) >= 1 − u``, a deterministic
    (monotone) function of each uniform, so the counter-based uniforms give the same counts
    for the same rows whatever the chunking.

    Exact in distribution up to the uniforms' 2⁻⁵³ grid and the mass beyond ``mode ± (10√λ
    + 20)`` (below 1e-20), which is left out; the pmf is summed in float64 over that window
    (O(√λ) a draw). A rate of 0 draws 0. ``ValueError`` for a rate that is negative, not
    finite, or above :data:`RATE_MAX` (2²⁴: use the exact Fisher there).
    """
    rate = np.asarray(rate, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    flat, v = rate.reshape(-1), 1.0 - u.reshape(-1)
    bad = ~((flat >= 0) & (flat <= RATE_MAX))
    if bad.any():
        worst = flat[bad][0]
        raise ValueError(
            f"the Poisson rates must be in [0, {RATE_MAX:.0f}] (2**24) to draw counts for the Monte-Carlo Fisher; "
            f"got {worst!r}: use kind='exact' (the closed form) at such rates"
        )
    out = np.zeros(flat.shape)
    idx = np.flatnonzero(flat > 0)
    idx = idx[np.argsort(flat[idx], kind="stable")]  # similar rates share a window
    widths = np.ceil(10 * np.sqrt(flat[idx]) + 20)
    start = 0
    while start < idx.size:  # blocks of rates whose windows are within 2x of each other
        W = widths[start]
        stop = min(int(np.searchsorted(widths, 2 * W, side="right")), start + max(1, int(_DRAW_BLOCK // (4 * W + 1))))
        sel = idx[start:stop]
        out[sel] = _window_draws(flat[sel], v[sel])
        start = stop
    return out.reshape(rate.shape)


def _host(x) -> np.ndarray:
    """A numpy copy of a concrete array of any namespace (DLPack first, then ``np.asarray``)."""
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


def _has_float64(xp, x) -> bool:
    try:
        xp.astype(x[..., :0], xp.float64)
    except (TypeError, ValueError, RuntimeError):  # a namespace or device without float64 (MPS)
        return False
    return True


class _InputDomain:
    """``'real'`` for the log-rate (``log_input``), ``'nonnegative'`` for the rate; the class
    itself reads ``'real'``."""

    def __get__(self, obj, cls=None):
        if obj is None or obj.log_input:
            return "real"
        return "nonnegative"


def poisson_rows(loss, a, y):
    """The plain reference: torch's definition entry by entry with ``math`` in float64."""
    a2 = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])
    y2 = np.asarray(y, dtype=np.float64).reshape(a2.shape)
    values, grads = np.empty_like(a2), np.empty_like(a2)
    for n in range(a2.shape[0]):
        for k in range(a2.shape[1]):
            x, t = float(a2[n, k]), float(y2[n, k])
            if loss.log_input:
                values[n, k] = math.exp(x) - t * x
                grads[n, k] = math.exp(x) - t
            else:
                values[n, k] = x - t * math.log(x + loss.eps)
                grads[n, k] = 1.0 - t / (x + loss.eps)
            if loss.full and t > 1:
                values[n, k] += t * math.log(t) - t + 0.5 * math.log(2 * math.pi * t)
    return values, grads, float(values.size)


@register_loss
class PoissonNLL(ElementwiseLoss):
    """Poisson negative log-likelihood (torch ``poisson_nll_loss``), per entry.

    ``log_input=True``: ``ℓ = e^a − y·a``, gradient ``e^a − y``, second derivative ``e^a``;
    ``log_input=False``: ``ℓ = a − y·log(a + eps)``, gradient ``1 − y/(a + eps)``, second
    derivative ``y/(a + eps)²``. ``full`` adds ``y log y − y + ½ log(2π y)`` where ``y > 1``.

    Parameters
    ----------
    log_input : bool, default True
        ``a`` is the log-rate (pair with :class:`~jacobians.Identity`); False: ``a`` is the
        rate, ≥ 0 (pair with :class:`~jacobians.Exp`).
    full : bool, default False
        Add the Stirling term of ``log y!`` (targets > 1 only).
    eps : float, default 1e-8
        ≥ 0, added to the rate inside the log (``log_input=False`` only).
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` over all N·K entries.

    Targets are counts ``y >= 0`` of a's shape (floats allowed, as torch allows); a negative
    or non-finite target is a ``ValueError``.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import PoissonNLL
    >>> a, y = np.array([[0.0, 1.0]]), np.array([[1.0, 3.0]])
    >>> PoissonNLL(reduction="none")(a, y)         # e^a − y a
    array([[ 1.        , -0.28171817]])
    """

    name = "poisson_nll"
    loop_reference = poisson_rows
    input_domain = _InputDomain()

    def __init__(self, log_input: bool = True, full: bool = False, eps: float = 1e-8, reduction: str = "mean"):
        super().__init__(reduction)
        self.log_input = _check_flag(log_input, "log_input")
        self.full = _check_flag(full, "full")
        self.eps = check_nonnegative_scalar(eps, "eps")

    @classmethod
    def variants(cls, K):
        # the rate's variants take eps >= 0.1: behind a ReLU or a sigmoid the rate reaches 1e-2 or less,
        # where y/(a + eps)² is too stiff for the walks' central differences (the default eps is
        # tested with Exp, in tests/test_poisson_nll.py)
        return [{"log_input": False, "eps": 0.1}, {"full": True}, {"log_input": False, "full": True, "eps": 0.5}]

    def example_targets(self, shape, rng):
        """Counts: Poisson draws of rates from 0.2 to 5 (zeros, ones and counts > 1), float64."""
        return rng.poisson(rng.uniform(0.2, 5.0, size=shape)).astype(np.float64)

    def extreme_magnitude(self, dtype, head=None):
        """The largest ``|z|`` of the checks' extreme logits (not 1e4, where ``e^a`` is
        ``inf`` as torch's): for the log-rate, half the exp limit less 5; the rate: None."""
        if not self.log_input:
            return None
        return float(math.floor(math.log(float(np.finfo(dtype).max)) / 2) - 5)

    def pair_mismatch(self, activation):
        """Why ``activation`` does not pair with this loss, or None: a log-rate behind
        :class:`~jacobians.Exp` is ``e^{e^z}`` (the log link is Exp + ``log_input=False``)."""
        if self.log_input and isinstance(activation, Exp):
            return (
                "Exp + PoissonNLL(log_input=True) takes e^z as the log-rate, a rate of e^(e^z): for the log link "
                "pass log_input=False (Exp outputs the rate), or pair the log-rate with Identity"
            )
        return None

    # -- targets ------------------------------------------------------------------------
    def check_target_form(self, a, y):
        """``y`` as an array of a's shape and dtype, its values not checked (a kernel that
        counts the targets that are not counts in its own pass calls :meth:`check_targets`
        to refuse them)."""
        return super().check_targets(a, y)

    def check_targets(self, a, y):
        y = super().check_targets(a, y)
        bad = ~(np.isfinite(y) & (y >= 0))
        if bad.any():
            raise ValueError(
                f"y must be counts >= 0 (finite; floats allowed), the Poisson targets; got {float(y[bad].reshape(-1)[0])!r} "
                f"at {np.argwhere(bad)[0].tolist()}"
            )
        return y

    def xp_check_targets(self, xp, a, y):
        y = super().xp_check_targets(xp, a, y)
        if concrete(y) and math.prod(y.shape) and not bool(xp.all(xp.isfinite(y) & (y >= 0))):
            raise ValueError("y must be counts >= 0 (finite; floats allowed), the Poisson targets; got a negative or "
                             "non-finite entry")
        return y

    # -- the per-entry math (numpy) ---------------------------------------------------------
    def _stirling(self, xp, y):
        big = y > 1
        ys = xp.where(big, y, xp.ones_like(y))
        term = ys * xp.log(ys) - ys + const(xp, 0.5, y) * xp.log(const(xp, 2 * math.pi, y) * ys)
        return xp.where(big, term, xp.zeros_like(y))

    def _values(self, xp, a, y):
        if self.log_input:
            v = xp.exp(a) - y * a
        else:
            v = a - y * xp.log(a + const(xp, self.eps, a))
        return v + self._stirling(xp, y) if self.full else v

    def _grads(self, xp, a, y):
        if self.log_input:
            return xp.exp(a) - y
        return 1 - y / (a + const(xp, self.eps, a))

    def _curvature(self, xp, a, y):
        if self.log_input:
            return xp.exp(a)
        r = a + const(xp, self.eps, a)
        return y / r / r

    def per_element(self, a, y):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return self._values(np, a, y)

    def per_element_grad(self, a, y):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return self._grads(np, a, y)

    def per_element_hessian(self, a, y):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return self._curvature(np, a, y)

    def fisher_blocks(self, a):
        """``E_y[g²]`` with ``y ~ Poisson(λ)``: ``Var(y)`` = ``e^a`` for the log-rate, ``1/(a + eps)``
        for the rate (the expected second derivative)."""
        with np.errstate(over="ignore", divide="ignore"):
            return DiagonalJacobian(np.exp(a) if self.log_input else 1 / (a + a.dtype.type(self.eps)))

    # -- the predictive: y ~ Poisson(λ), drawn by the inverse CDF ------------------------
    @property
    def predictive(self):
        log_input, eps = self.log_input, self.eps

        def draw(a2, u):
            with np.errstate(over="ignore"):
                rate = np.exp(a2.astype(np.float64)) if log_input else a2.astype(np.float64) + eps
            return poisson_from_uniforms(rate, u).astype(a2.dtype)

        what = "e^a" if log_input else "a + eps"
        return Predictive(f"counts y ~ Poisson({what}), by the inverse CDF", lambda K: K, draw, False)

    def xp_sample_targets(self, xp, a, u):
        """The counts of :meth:`predictive`'s numpy draw, through the host: the inverse CDF sums
        a window whose width depends on the rate (no static shape), so the rates and the
        uniforms are copied to numpy (DLPack where it can), drawn there and copied back to
        ``a``'s device. The same uniforms give the same counts as the numpy path. Under a
        trace (``jax.jit``, ``torch.func``) there are no values to copy: a clear
        NotImplementedError."""
        if not concrete(a, u):
            raise NotImplementedError(
                "PoissonNLL's Monte-Carlo draws (an inverse CDF over a window that depends on the rate) need concrete "
                "rates; under jax.jit or a torch.func transform use kind='exact' (the closed form), or draw outside "
                "the transform"
            )
        wide = xp.astype(a, xp.float64) if _has_float64(xp, a) else a  # as the numpy draw: the rate in float64
        rate = xp.exp(wide) if self.log_input else wide + const(xp, self.eps, wide)
        counts = xp.asarray(poisson_from_uniforms(_host(rate), _host(u)), device=device_of(a))
        return xp.astype(counts, a.dtype)

    # -- the generic (array API) path -------------------------------------------------------
    def xp_per_element(self, xp, a, y):
        return self._values(xp, a, y)

    def xp_per_element_grad(self, xp, a, y):
        return self._grads(xp, a, y)

    def xp_per_element_hessian(self, xp, a, y):
        return self._curvature(xp, a, y)

    def xp_fisher_blocks(self, xp, a):
        """The twin of :meth:`fisher_blocks`, dense."""
        return diagonal_blocks(xp, xp.exp(a) if self.log_input else 1 / (a + const(xp, self.eps, a)))
