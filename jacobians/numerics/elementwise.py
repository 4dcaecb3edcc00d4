"""Elementwise functions without overflow or cancellation: sigmoid, softplus and the
derivatives of sigmoid and tanh.

No function here writes into its arguments.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "sigmoid",
    "sigmoid_derivative",
    "log_sigmoid",
    "softplus",
    "tanh_derivative",
]


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
