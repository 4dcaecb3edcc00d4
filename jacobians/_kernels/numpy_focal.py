"""The numpy kernels of the focal losses from the logits (the reference; their numba twins
are in :mod:`.numba_focal`): softmax + focal with index targets or coefficient rows, and
sigmoid + binary focal. The math is in :mod:`jacobians.rules.focal`'s module doc."""

from __future__ import annotations

import numpy as np

from ..numerics import softmax as nsoftmax
from ..xp.blocks import complement_sums
from ..xp.numpy_namespace import numpy_xp as npx

__all__ = ["focal_index", "focal_coefficients", "binary_focal", "poly_index", "single_target", "single_target_grad"]


def _focal_u(c, p, q, logp, gamma):
    """``(c q^γ log p, u = −c q^γ (1 − γ p L))`` with ``L = log p / q`` (−1 where q = 0);
    ``c`` None: 1."""
    with np.errstate(divide="ignore", invalid="ignore"):  # (log p / q where q = 0: masked)
        qg = q**gamma
        L = np.where(q > 0, logp / np.where(q > 0, q, 1), -1)
    cq = qg if c is None else c * qg
    return cq * logp, -cq * (1 - gamma * (p * L))


def single_target(x, idx):
    """Index targets, numpy, one pass each: ``(e, S, log p_y, p_y, q_y)`` with ``e = exp(x −
    max)`` zeroed at the target (a fresh array: the others' terms), ``S = Σ exp(x − max)``,
    ``log p_y`` = ``−log1p(o)`` at a top target, else ``(x_y − max) − log S``, and ``1 − p_y =
    o/S``, ``o`` the others' exp summed without the target (nothing cancels)."""
    e = x - x.max(axis=-1, keepdims=True)
    at = idx[..., None]
    d_y = np.take_along_axis(e, at, axis=-1)[..., 0]
    np.exp(e, out=e)
    e_y = np.take_along_axis(e, at, axis=-1)[..., 0]
    np.put_along_axis(e, at, 0, axis=-1)
    o = e.sum(axis=-1)
    S = o + e_y
    logp = np.where(d_y == 0, -np.log1p(o), d_y - np.log(S))  # S >= 1: no cancellation
    return e, S, logp, e_y / S, o / S


def single_target_grad(e, S, idx, u_y, q_y):
    """The gradient ``u − p Σu`` when only the target's ``u_y`` is nonzero: ``−p_j u_y`` off
    the target (``e_j/S``), ``(1 − p_y) u_y`` at it; written into ``e``."""
    e *= (-u_y / S)[..., None]
    np.put_along_axis(e, idx[..., None], (q_y * u_y)[..., None], axis=-1)
    return e


def focal_index(x, idx, w, gamma, scale):
    """Softmax + focal of rows ``x`` (n, K) (the logits over T) with target indices ``idx``
    (n,) and row weights ``w`` (n,) or None: ``(values (n,), g (n, K))``, ``values = −w
    q^γ log p`` at the target, ``g = scale · (u − p Σu)`` with only the target's ``u`` nonzero.

    One pass each: ``e = exp(x − max)``, ``o`` the others' exps summed without the target,
    ``S = o + e_y``; ``log p_y = −log1p(o)`` at a top target, else ``(x_y − max) − log S``
    (S >= 1), ``1 − p_y = o/S`` (nothing cancels); ``g = −u e/S`` off the target,
    ``(1 − p_y) u`` at it, written into ``e``."""
    e, S, logp, p_y, q_y = single_target(x, idx)
    v, u = _focal_u(w, p_y, q_y, logp, gamma)
    u *= x.dtype.type(scale)
    return -v, single_target_grad(e, S, idx, u, q_y)


def focal_coefficients(x, c, gamma, scale):
    """Softmax + focal of rows ``x`` (..., K) (the logits over T) with coefficient rows ``c``
    (targets times α): ``(values (...,), g (..., K))``, ``values = −Σ_k c_k q_k^γ log p_k``
    and ``g = scale · (q u − p Σ_{k≠j} u_k)`` (complement sums: ``u <= 0``).

    ``log p = (x − max) − log1p(rest)`` and ``q = 1 − p`` as ``rest/S`` at the row's first
    maximum, ``(S − e)/S`` elsewhere (>= 1/2), from :func:`~jacobians.numerics.softmax.shifted_exp`."""
    shifted, e, rest, top = nsoftmax.shifted_exp(x)
    S = 1 + rest
    logp = shifted - np.log1p(rest)
    q = S - e
    np.put_along_axis(q, top, rest, axis=-1)
    q /= S
    e /= S  # p
    v, u = _focal_u(c, e, q, logp, gamma)
    g = e * complement_sums(npx, -u)
    g += q * u
    if scale != 1:
        g *= x.dtype.type(scale)
    return -v.sum(axis=-1), g


def binary_focal(z, t, gamma, alpha, scale):
    """Sigmoid + binary focal per entry of ``z`` and targets ``t`` (same shape): ``(values,
    scale · grads)``, torchvision's ``α_t ce m^γ`` (``alpha`` None: no α_t), seven buffers
    (each fresh array costs about an exp pass): ``ce = log1p(e^{−|z|}) + z·(1 − t | −t)``
    (by the sign of z: one sign each), ``m = σ(z)(1 − t) + σ(−z) t``, the gradient
    ``α_t m^γ [(σ(z)(1 − t) − t σ(−z)) + γ ce ρ (1 − 2t)]``, ``ρ = σσ̄/m`` (1 where m = 0)."""
    a = np.abs(z)
    np.negative(a, out=a)
    np.exp(a, out=a)  # e = exp(−|z|)
    ce = np.log1p(a)
    sb = a + 1
    np.reciprocal(sb, out=sb)  # 1/(1 + e)
    np.multiply(a, sb, out=a)  # e/(1 + e)
    pos = z >= 0
    s = np.where(pos, sb, a)  # σ(z)
    np.copyto(sb, a, where=pos)  # σ(−z)
    omt = 1 - t
    np.negative(t, out=a)
    np.copyto(a, omt, where=pos)
    np.multiply(a, z, out=a)
    ce += a  # (1 − t) softplus(z) + t softplus(−z)
    m = s * omt
    np.multiply(t, sb, out=a)  # t σ(−z)
    diff = m - a  # σ(z)(1 − t) − t σ(−z)
    m += a  # 1 − p_t
    if gamma:
        np.multiply(s, sb, out=sb)
        np.divide(sb, m, out=sb, where=m > 0)
        np.copyto(sb, 1, where=m == 0)  # ρ = σσ̄/m
        sb *= ce
        np.subtract(omt, t, out=omt)
        sb *= omt
        sb *= gamma
        diff += sb
        np.power(m, gamma, out=m)
        diff *= m
        ce *= m
    if alpha is not None:
        np.multiply(t, 2 * alpha - 1, out=a)
        a += 1 - alpha  # α_t
        diff *= a
        ce *= a
    if scale != 1:
        diff *= z.dtype.type(scale)
    return ce, diff


def poly_index(x, idx, epsilon, scale):
    """Softmax + poly-1 of rows ``x`` (n, K) (the logits over T) with target indices ``idx``
    (n,): ``(values (n,), g (n, K))``, ``values = −log p_y + ε (1 − p_y)`` and ``g = scale ·
    (u − p u)`` with the target's ``u = −(1 + ε p_y)`` (:func:`single_target`)."""
    e, S, logp, p_y, q_y = single_target(x, idx)
    u = -(1 + epsilon * p_y) * x.dtype.type(scale)
    return -logp + epsilon * q_y, single_target_grad(e, S, idx, u, q_y)
