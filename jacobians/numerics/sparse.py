"""Sparsemax and 1.5-entmax by their exact sort-based algorithms, along the last axis.

No function here writes into its arguments. Every kernel keeps the input's float dtype.
"""

from __future__ import annotations

import numpy as np

from .buffers import rowsum
from .memo import memoized

__all__ = [
    "sparsemax",
    "entmax15",
]


def _shifted(z: np.ndarray) -> np.ndarray:
    """``z − max(z)`` along the last axis, as a new array (every entry <= 0)."""
    return np.subtract(z, z.max(axis=-1, keepdims=True))


@memoized
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


@memoized
def entmax15(z: np.ndarray) -> np.ndarray:
    """1.5-entmax (Peters, Niculae & Martins, 2019), exact sort-based algorithm.

    ``p = [(z/2 − τ)_+]²`` with ``τ`` chosen so that ``Σ p = 1``: the support and τ from the
    sorted row's running moments, then one Newton step on τ (to about 1 ulp).
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
    # one Newton step on Σ (x − τ)² = 1 over the support: the closed form's τ carries the
    # cancellation of Σx² − (Σx)²/k (a few ulp), the step leaves round-off
    u = np.maximum(x - tau_star, 0)
    tau_star += (rowsum(u * u) - 1) / (2 * rowsum(u))
    p = np.maximum(x - tau_star, 0)
    return p * p
