"""The checked weights of a linear last layer ``z = φ Wᵀ + b`` (for the posterior and the
influence functions)."""

from __future__ import annotations

import numpy as np

from ..numerics.validation import as_float_array

__all__ = ["check_weights"]


def check_weights(W, b, bias: bool, D: int | None = None):
    """``(W (K, D), b (K,) or None)`` as float arrays, finite, with ``b`` given exactly when
    ``bias`` and D the features' width when it is known; a clear ValueError otherwise."""
    W = as_float_array(W, "W", min_ndim=2)
    if W.ndim != 2 or (D is not None and W.shape[1] != D):
        width = "" if D is None else f" with D = {D} (the features' width)"
        raise ValueError(f"W must have shape (K, D){width}; got shape {W.shape}")
    K = W.shape[0]
    if bias and b is None:
        raise ValueError(f"b is None but bias=True: pass b of shape (K,) = ({K},), or bias=False")
    if not bias and b is not None:
        raise ValueError("b was given but bias=False: pass b=None, or bias=True")
    if bias:
        b = as_float_array(b, "b", min_ndim=0)
        if b.shape != (K,):
            raise ValueError(f"b must have shape (K,) = ({K},) to match W of shape {W.shape}; got shape {b.shape}")
    for name, arr in (("W", W), ("b", b)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite; got {int(np.size(arr) - np.isfinite(arr).sum())} non-finite entries")
    return W, b
