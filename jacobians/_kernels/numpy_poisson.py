"""The numpy kernel of the Poisson log link (the reference; its numba twin is in
:mod:`.numba_poisson`): Identity + PoissonNLL(log_input=True) from the log-rates. The math
is in :mod:`jacobians.rules.log_link_poisson`'s module doc."""

from __future__ import annotations

import numpy as np

from ..numerics.buffers import row_chunks, scratch

__all__ = ["poisson_log"]


def poisson_log(z, y, scale, need_values):
    """The log-rate's Poisson NLL on flat ``z``, ``y`` (n,) of one dtype: ``(values, total,
    grad, bad)`` with ``w = e^z``, ``values = w − y z`` (None unless ``need_values``),
    ``total`` their sum when not ``need_values`` (pieces of
    CHUNK_ENTRIES summed in float64, rounded once; numba's kernel sums each piece in another
    order: the totals agree to an ulp or two, not to the bit), ``grad = scale · (w − y)`` and ``bad`` the number of targets
    that are not counts (negative, infinite or NaN), for the caller to refuse. ``e^z``
    overflows to inf where ``exp`` of z's dtype does, as torch's."""
    grad = np.empty_like(z)
    values = np.empty_like(z) if need_values else None
    total = 0.0
    bad = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for c in row_chunks(z.size, 1):
            zc, yc, gc = z[c], y[c], grad[c]
            v = values[c] if values is not None else scratch(zc.size, z.dtype, 3)
            np.exp(zc, out=gc)  # w
            np.multiply(yc, zc, out=v)
            np.subtract(gc, v, out=v)  # w − y z
            gc -= yc
            if scale != 1:
                gc *= z.dtype.type(scale)
            if values is None:
                total += v.sum(dtype=np.float64)
            bad += int(np.count_nonzero(~((yc >= 0) & (yc < np.inf))))
    return values, (None if need_values else z.dtype.type(total)), grad, bad
