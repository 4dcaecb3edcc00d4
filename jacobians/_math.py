"""Numerically stable kernels, pure functions of arrays along the last axis.

No function here writes into its arguments. Every kernel keeps the input's float dtype.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "logsumexp",
    "softmax",
    "log_softmax",
    "sigmoid",
    "sigmoid_derivative",
    "log_sigmoid",
    "softplus",
    "sparsemax",
    "entmax15",
    "tanh_derivative",
]


def _shifted(z: np.ndarray) -> np.ndarray:
    """``z − max(z)`` along the last axis, as a new array (every entry <= 0)."""
    return np.subtract(z, z.max(axis=-1, keepdims=True))


def logsumexp(z: np.ndarray) -> np.ndarray:
    """``log Σ_k exp(z_k)`` along the last axis, shape ``(...,)``; exact for huge logits."""
    m = z.max(axis=-1)
    e = np.exp(z - m[..., None])
    return m + np.log(e.sum(axis=-1))


def softmax(z: np.ndarray) -> np.ndarray:
    """``exp(z − m) / Σ exp(z − m)`` with ``m = max(z)``: never overflows."""
    e = _shifted(z)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def log_softmax(z: np.ndarray) -> np.ndarray:
    """``(z − m) − log Σ exp(z − m)``: exact where ``log(softmax(z))`` would give -inf."""
    shifted = _shifted(z)
    lse = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    shifted -= lse
    return shifted


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(−z))`` computed from ``exp(−|z|)``, so exp never overflows."""
    e = np.exp(-np.abs(z))
    out = 1.0 / (1.0 + e)
    return np.where(z >= 0, out, e * out).astype(z.dtype, copy=False)


def sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    """``σ(z) σ(−z) = exp(−|z|) / (1 + exp(−|z|))²``; no cancellation in ``1 − σ``."""
    e = np.exp(-np.abs(z))
    return e / (1.0 + e) ** 2


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    """``log σ(z) = −softplus(−z)``, exact for large ``|z|``."""
    return -softplus(-z)


def softplus(z: np.ndarray) -> np.ndarray:
    """``log(1 + exp(z)) = max(z, 0) + log1p(exp(−|z|))``."""
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def tanh_derivative(z: np.ndarray) -> np.ndarray:
    """``1 − tanh²(z) = 4 e^{−2|z|} / (1 + e^{−2|z|})²``: accurate where tanh(z) rounds to ±1."""
    e = np.exp(-2.0 * np.abs(z))
    return 4.0 * e / (1.0 + e) ** 2


def sparsemax(z: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the simplex (Martins & Astudillo, 2016).

    ``p = max(z − τ, 0)`` with ``τ`` chosen so that ``Σ p = 1``; sort-based, O(K log K).
    """
    shifted = _shifted(z)  # shift-invariant; keeps cumulative sums small
    K = z.shape[-1]
    srt = -np.sort(-shifted, axis=-1)
    cumsum = np.cumsum(srt, axis=-1)
    ks = np.arange(1, K + 1, dtype=z.dtype)
    in_support = 1 + ks * srt > cumsum
    k = in_support.sum(axis=-1, keepdims=True)  # >= 1 always
    tau = (np.take_along_axis(cumsum, k - 1, axis=-1) - 1) / k.astype(z.dtype)
    return np.maximum(shifted - tau, 0)


def entmax15(z: np.ndarray) -> np.ndarray:
    """1.5-entmax (Peters, Niculae & Martins, 2019), exact sort-based algorithm.

    ``p = [(z/2 − τ)_+]²`` with ``τ`` chosen so that ``Σ p = 1``.
    """
    x = _shifted(z) / 2
    K = z.shape[-1]
    srt = -np.sort(-x, axis=-1)
    rho = np.arange(1, K + 1, dtype=z.dtype)
    mean = np.cumsum(srt, axis=-1) / rho
    mean_sq = np.cumsum(srt * srt, axis=-1) / rho
    ss = rho * (mean_sq - mean * mean)
    delta = np.maximum((1 - ss) / rho, 0)
    tau = mean - np.sqrt(delta)
    support = (tau <= srt).sum(axis=-1, keepdims=True)
    tau_star = np.take_along_axis(tau, support - 1, axis=-1)
    p = np.maximum(x - tau_star, 0)
    return p * p
