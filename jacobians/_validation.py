"""Input checks shared by every module.

Every public entry point turns its array arguments into read-only-safe numpy arrays
here, so that a bad input fails early with an error that names the argument, what was
expected and what came.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "as_float_array",
    "check_reduction",
    "check_same_shape",
    "check_nonnegative_scalar",
    "check_positive_scalar",
    "REDUCTIONS",
]

REDUCTIONS = ("mean", "sum", "none")


def as_float_array(x, name: str, *, min_ndim: int = 1, like: np.ndarray | None = None) -> np.ndarray:
    """Return ``x`` as a float32 or float64 array without copying when possible.

    float32 and float64 stay as they are; integer and bool inputs are promoted to
    float64; float16 is promoted to float32; anything else is a ``TypeError``. When
    ``like`` is given, the result takes ``like``'s dtype (used for targets and upstream
    gradients, so that they never upcast float32 work).

    The array returned may be the caller's own: callers never write into it.
    """
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        elif arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    elif kind in "iub":
        arr = arr.astype(np.float64)
    else:
        raise TypeError(
            f"{name} must be a real numeric array (float32/float64, or int/bool promoted "
            f"to float64); got dtype {arr.dtype}"
        )
    if like is not None and arr.dtype != like.dtype:
        arr = arr.astype(like.dtype)
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), shape (..., K); "
            f"got a {arr.ndim}-d array of shape {arr.shape}"
        )
    if min_ndim >= 1 and arr.shape[-1] == 0:
        raise ValueError(f"{name} must have K >= 1 entries on its last axis; got shape {arr.shape}")
    return arr


def check_same_shape(x: np.ndarray, name: str, ref: np.ndarray, ref_name: str) -> None:
    """Raise ``ValueError`` unless ``x.shape == ref.shape``."""
    if x.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name}, {ref.shape}; got shape {x.shape}"
        )


def check_reduction(reduction) -> str:
    """Return ``reduction`` if it is one of ``'mean'``, ``'sum'``, ``'none'``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return reduction


def _check_real_scalar(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def check_positive_scalar(value, name: str) -> float:
    """Return ``float(value)`` if it is a finite number > 0."""
    value = _check_real_scalar(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return value


def check_nonnegative_scalar(value, name: str, *, upper: float | None = None) -> float:
    """Return ``float(value)`` if it is a finite number >= 0 (and <= ``upper``)."""
    value = _check_real_scalar(value, name)
    if value < 0 or (upper is not None and value > upper):
        bound = f"in [0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be {bound}; got {value}")
    return value
