"""The built-in activations' plain references and kinks (what the checks compare with).

Each built-in activation points at two functions of this module (see
:class:`~jacobians.Activation`):

* ``loop_reference(act, z) -> (a, J)``: one sample ``z`` (K,) in float64, its output and
  dense Jacobian from the textbook definition, with ``np.diag`` and ``np.outer``; the
  sparse mappings' thresholds are found by bisection and then solved exactly on the
  support. This shares no code with the fast kernels (``numerics``, ``_kernels``): it is an
  independent referee, used by :mod:`jacobians.testing` and the checks;
* ``kinks(act, z, a=None) -> distance (..., K)``: each entry's distance, in ``z``, to
  the nearest point where the activation is not differentiable (``a``: ``act(z)`` when
  the caller has it, so that it is not computed again).

The functions are public for the losses' own references and kinks
(:mod:`jacobians.losses.references`); they are not part of the API.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np

from ..numerics import entmax, sparse
from ..numerics.validation import alpha_rows

# ----------------------------------------------------------------------------------------
# plain-loop references, one sample at a time: (a, J) of a 1-d float64 sample
# ----------------------------------------------------------------------------------------


def softmax_sample(act, z):
    T = float(act.temperature)
    x = z / T
    e = np.exp(x - x.max())
    s = e / e.sum()
    return s, (np.diag(s) - np.outer(s, s)) / T


def log_softmax_sample(act, z):
    m = z.max()
    lse = m + math.log(np.exp(z - m).sum())
    a = z - lse
    s = np.exp(a)
    K = z.size
    return a, np.eye(K) - np.outer(np.ones(K), s)  # J[i, j] = δ_ij − s_j


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def elementwise_sample(forward: Callable, derivative: Callable):
    """``sample(act, z) -> (forward(act, z), diag(derivative(act, z)))``."""

    def sample(act, z):
        return forward(act, z), np.diag(derivative(act, z))

    return sample


def _tanh_derivative(act, z):
    with np.errstate(over="ignore"):
        return 1.0 / np.cosh(z) ** 2


sigmoid_sample = elementwise_sample(
    lambda act, z: np.exp(log_sigmoid(z)),
    lambda act, z: np.exp(log_sigmoid(z) + log_sigmoid(-z)),  # σ(z) σ(−z)
)
tanh_sample = elementwise_sample(lambda act, z: np.tanh(z), _tanh_derivative)
relu_sample = elementwise_sample(
    lambda act, z: np.where(z > 0, z, 0.0), lambda act, z: np.where(z > 0, 1.0, 0.0)
)
leaky_relu_sample = elementwise_sample(
    lambda act, z: np.where(z > 0, z, float(act.slope) * z),
    lambda act, z: np.where(z > 0, 1.0, float(act.slope)),
)
identity_sample = elementwise_sample(
    lambda act, z: z.copy(), lambda act, z: np.ones_like(z)
)
softplus_sample = elementwise_sample(
    lambda act, z: np.logaddexp(0.0, z), lambda act, z: np.exp(log_sigmoid(z))
)


#: the points a bisection step evaluates the mass at, as fractions of the bracket
_GRID = np.arange(1, 64) / 64.0


def bisect_threshold(
    x: np.ndarray, mass: Callable[[np.ndarray], np.ndarray], support_only: bool = False
) -> float:
    """τ in [max(x) − 1, max(x)] with ``mass(τ) = 1``, for a decreasing ``mass``.

    Bisection on τ, 63 points a step: ``mass(t)`` takes the points ``t`` (G,) and returns
    the mass at each, (G,); the bracket ``[lo, hi)`` (``mass(lo) >= 1 > mass(hi)``) shrinks
    64-fold a step until no point lies strictly inside it (about 9 steps instead of 53).
    ``support_only``: stop as soon as no entry of ``x`` lies in ``[lo, hi]``: then ``x > τ``
    is the support for every τ of the bracket, the root's included (usually 1 or 2 steps)."""
    lo, hi = float(x.max()) - 1.0, float(x.max())
    for _ in range(200):
        if support_only and not ((x >= lo) & (x <= hi)).any():
            break
        t = lo + (hi - lo) * _GRID
        t = t[(t > lo) & (t < hi)]
        if not t.size:
            break
        above = np.asarray(mass(t)) >= 1.0
        # the mass decreases in t: the points with mass >= 1 come first
        k = int(np.count_nonzero(above))
        if k:
            lo = float(t[k - 1])
        if k < t.size:
            hi = float(t[k])
    return 0.5 * (lo + hi)


def sparsemax_probs(z):
    """Sparsemax of one row, by bisection on its threshold, then exact on the support."""
    x = z - z.max()
    tau = bisect_threshold(
        x, lambda t: np.maximum(x - t[:, None], 0.0).sum(axis=1), support_only=True
    )
    support = x > tau
    if not support.any():
        support = x == x.max()
    tau = (x[support].sum() - 1.0) / support.sum()  # exact on the support
    return np.maximum(x - tau, 0.0)


def simplex_sample(probs: Callable, weights: Callable):
    """``sample(act, z)`` of a mapping ``p = probs(act, z/T)`` with Jacobian
    ``(diag(g) − g gᵀ/Σg)/T``, ``g = weights(act, p)``."""

    def sample(act, z):
        T = float(act.temperature)
        p = probs(act, (z - z.max()) / T)
        g = weights(act, p) / T
        return p, np.diag(g) - np.outer(g, g) / g.sum()

    return sample


def entmax15_probs(z):
    """1.5-entmax of one row, by bisection on its threshold, then exact on the support."""
    x = (z - z.max()) / 2.0
    tau = bisect_threshold(
        x,
        lambda t: (np.maximum(x - t[:, None], 0.0) ** 2).sum(axis=1),
        support_only=True,
    )
    support = x > tau
    if not support.any():
        support = x == x.max()
    xs = x[support]
    k = xs.size
    # Σ_S (x_j − τ)² = 1: the smaller root of k τ² − 2τ Σx + Σx² − 1 = 0
    disc = max(xs.sum() ** 2 - k * ((xs * xs).sum() - 1.0), 0.0)
    tau = (xs.sum() - math.sqrt(disc)) / k
    return np.maximum(x - tau, 0.0) ** 2


def entmax_probs(z, alpha: float):
    """α-entmax of one row: bisection on τ, then Newton on the support, all in float64."""
    x = (alpha - 1.0) * (z - z.max())
    beta = 1.0 / (alpha - 1.0)
    tau = bisect_threshold(
        x, lambda t: (np.maximum(x - t[:, None], 0.0) ** beta).sum(axis=1)
    )
    support = x > tau
    if not support.any():
        support = x == x.max()
    xs = x[support]
    for _ in range(
        8
    ):  # exact on the support: Newton on Σ_S (x_j − τ)^β = 1, kept below min x_S
        u = xs - tau
        step = ((u**beta).sum() - 1.0) / (beta * (u ** (beta - 1.0)).sum())
        if not (tau + step < xs.min()) or step == 0:
            break
        tau += step
    return np.maximum(x - tau, 0.0) ** beta


sparsemax_sample = simplex_sample(
    lambda act, x: sparsemax_probs(x), lambda act, p: (p > 0).astype(np.float64)
)
entmax15_sample = simplex_sample(
    lambda act, x: entmax15_probs(x), lambda act, p: np.sqrt(p)
)
entmax_sample = simplex_sample(
    lambda act, x: entmax_probs(x, float(act.alpha)),
    lambda act, p: np.where(
        p > 0, np.where(p > 0, p, 1.0) ** (2.0 - float(act.alpha)), 0.0
    ),
)


def row_objects(obj, z: np.ndarray) -> list:
    """``obj`` for each row of ``z``: copies with a scalar ``alpha`` when it has one per
    row (what a reference of one sample reads)."""
    n = int(np.prod(z.shape[:-1], dtype=np.int64))
    if not isinstance(getattr(obj, "alpha", None), np.ndarray):
        return [obj] * n
    out = []
    for a in alpha_rows(obj.alpha, z).reshape(-1):
        row = copy.copy(obj)
        row.alpha = float(a)
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------
# kinks: each entry's distance to the nearest point where the map is not differentiable
# ----------------------------------------------------------------------------------------


def abs_distance(act, z, a=None):
    """The kink at 0 (ReLU, leaky ReLU)."""
    return np.abs(z)


def sparsemax_distance(x, p=None):
    """Distance of each entry of ``x`` to sparsemax's support edge (``p``: sparsemax(x)
    when known)."""
    # on the support p = x − τ, elsewhere x <= τ: τ = max(x − p)
    tau = (x - (sparse.sparsemax(x) if p is None else p)).max(axis=-1, keepdims=True)
    return np.abs(x - tau)


def entmax15_distance(x, p=None):
    """Distance of each entry of ``x`` to 1.5-entmax's support edge (``p``: entmax15(x)
    when known)."""
    # on the support √p = x/2 − τ, elsewhere x/2 <= τ; the kink is at x = 2τ
    tau = (x / 2 - np.sqrt(sparse.entmax15(x) if p is None else p)).max(
        axis=-1, keepdims=True
    )
    return np.abs(x - 2 * tau)


def entmax_distance(x, alpha, p=None):
    """Distance of each entry of ``x`` to α-entmax's support edge, in ``x``'s units.

    On the support ``p^{α−1} = (α − 1) x − τ``, elsewhere ``(α − 1) x <= τ``: τ is the row's
    largest ``(α − 1) x − p^{α−1}``, and the edge is at ``x = τ/(α − 1)``. ``p``:
    ``entmax(x, alpha)`` when already known."""
    am1 = alpha - 1.0
    p = entmax.entmax(x, alpha) if p is None else p
    xs = (x - x.max(axis=-1, keepdims=True)) * am1
    tau = (xs - np.power(p, am1)).max(axis=-1, keepdims=True)
    return np.abs(xs - tau) / am1


def tempered(act, z, distance):
    """``distance`` of a map of ``z / T``, measured in z: T times the distance in z/T."""
    T = float(getattr(act, "temperature", 1.0))
    if T == 1.0:
        return distance(z)
    return distance((z - z.max(axis=-1, keepdims=True)) / T) * T


# ``a = act(z)`` is the map these evaluate — ``act(z)`` computes ``map((z − max z)/T)``,
# or ``map(z)`` at T = 1, as :func:`tempered` does — so they skip computing it again


def sparsemax_kinks(act, z, a=None):
    return tempered(act, z, lambda x: sparsemax_distance(x, a))


def entmax15_kinks(act, z, a=None):
    # p = (z/2 − τ)² near its support boundary makes log-losses (BCE) steep there: 10× the margin
    return tempered(act, z, lambda x: entmax15_distance(x, a)) / 10


def entmax_kinks(act, z, a=None):
    # the same for any α (p = u^{1/(α−1)}); beyond α = 2 p's slope is unbounded at the edge,
    # and central differences need the 10× margin too (their error grows as (step/distance)²)
    return (
        tempered(act, z, lambda x: entmax_distance(x, alpha_rows(act.alpha, x), a)) / 10
    )
