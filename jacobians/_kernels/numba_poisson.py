"""The numba kernel of the Poisson log link: Identity + PoissonNLL(log_input=True), value,
gradient and the targets' check in one pass over the entries, after numpy's ``exp``.

Compiled loop behind :func:`.numba_impl.poisson_log`; the math is its numpy twin's,
:func:`.numpy_poisson.poisson_log`. ``w = e^z`` is numpy's ``exp`` in z's dtype, written
into the gradient's buffer first (chunk by chunk, while the chunk is in cache): it
overflows to inf exactly where numpy's and torch's ``exp`` do, and numpy's float32 ``exp``
(16 lanes with AVX-512) is about four times as fast as a float64 one here. The rest is done
in float64 and rounded once when stored.
"""

from __future__ import annotations

import numpy as np

from .numba_math import jit
from .numba_rows import EXACT


@jit(**EXACT)
def _poisson_log(z, y, scale, values, grad):
    """With ``grad = e^z`` on entry: ``values = w − y z``, ``grad = scale (w − y)``; returns
    the number of targets that are not counts (negative, infinite or NaN)."""
    bad = 0
    for j in range(z.size):
        zd = np.float64(z[j])
        yd = np.float64(y[j])
        w = np.float64(grad[j])
        values[j] = w - yd * zd
        grad[j] = (w - yd) * scale
        bad += (yd < 0.0) | (yd != yd) | (yd == np.inf)
    return bad

