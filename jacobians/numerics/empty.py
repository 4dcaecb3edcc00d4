"""``'mean'`` over nothing: the one rule every path follows.

When ``'mean'`` has nothing to divide by — an empty batch, or a class loss whose targets are
all ignored or weighted 0, so its denominator is 0 — the *value* is NaN, and every
*derivative* is zero: each row's share ``c·∇ℓ_n`` of ``E = c·Σ_n ℓ_n`` is taken with ``c = 0``,
so per-row gradients and curvature blocks are 0 (empty for an empty batch) and what the last
layer sums over the rows is 0, as torch's autograd gives. Every call that takes ``'mean'``
over nothing says so with an :class:`EmptyMeanWarning` (a :class:`RuntimeWarning`) pointing at
the caller's line. ``'sum'`` of nothing is 0, without a warning.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np

__all__ = ["mean_scale", "mean_value", "mean_value_of_scale", "EmptyMeanWarning"]


class EmptyMeanWarning(RuntimeWarning):
    """``'mean'`` divided by a denominator of 0 (an empty batch, or every target ignored)."""


def mean_scale(denom, dtype):
    """The factor ``'mean'`` puts on every row's derivatives: ``1/denom``, or 0 (with an
    :class:`EmptyMeanWarning`) when ``denom`` is 0."""
    t = np.dtype(dtype).type
    largest = _LARGEST.get(t)
    if largest is not None and (d := float(t(denom))) != 0 and abs(q := 1.0 / d) <= largest:
        # 1/d in float64 rounded once to dtype is float32's own quotient too (float64 carries
        # more than twice float32's digits: the double rounding is harmless); near and past
        # dtype's largest number, the division in dtype below decides
        return t(q)
    one = t(1.0)
    d = t(denom)
    if d == 0:
        _warn()
        return t(0.0)
    with np.errstate(over="ignore"):  # a denominator below float32's 1/max: inf, as the division gives
        return one / d


#: the float dtypes :func:`mean_scale` divides in plain floats, and their largest numbers
_LARGEST = {np.float32: float(np.finfo(np.float32).max), np.float64: float(np.finfo(np.float64).max)}


def mean_value(total, denom, dtype):
    """The ``'mean'`` value ``total · (1/denom)``; NaN with an :class:`EmptyMeanWarning` when
    ``denom`` is 0."""
    if np.dtype(dtype).type(denom) == 0:
        _warn()
        return np.dtype(dtype).type(np.nan)
    with np.errstate(invalid="ignore"):
        return total * mean_scale(denom, dtype)


def mean_value_of_scale(total, scale, dtype, *, warn=True):
    """The ``'mean'`` value ``total · scale`` from the factor ``scale = mean_scale(denom)``
    (as :func:`mean_value`): NaN with an :class:`EmptyMeanWarning` when ``scale`` is 0
    (``warn=False``: the caller's :func:`mean_scale` has warned already, once a call)."""
    if scale == 0:
        if warn:
            _warn()
        return np.dtype(dtype).type(np.nan)
    if math.isfinite(scale):  # (only an infinite scale times a total of 0 is invalid)
        return total * scale
    with np.errstate(invalid="ignore"):
        return total * scale


def _warn() -> None:
    warnings.warn(
        "'mean' over nothing (an empty batch, or every target ignored or weighted 0: the "
        "denominator is 0): the value is NaN and every derivative is 0",
        EmptyMeanWarning,
        stacklevel=_caller_level(),
    )


#: the folder of the package (this module sits in its numerics/ subfolder)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside the package (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
