"""The numba kernel of the Poisson log link: Identity + PoissonNLL(log_input=True), value,
gradient and the targets' check in one pass over the entries.

Compiled loop behind :func:`.numba_impl.poisson_log`; the math is its numpy twin's,
:func:`.numpy_poisson.poisson_log`. ``w = e^z`` is rounded to z's dtype first (stored in
the gradient's entry and read back), so that it overflows to inf exactly where numpy's and
torch's ``exp`` do; the rest is done in float64 and rounded once when stored.
"""

from __future__ import annotations

import numpy as np

from .numba_math import expw, jit
from .numba_rows import EXACT


@jit(**EXACT)
def _poisson_log(z, y, scale, like, values, grad):
    """``values = w − y z``, ``grad = scale (w − y)``; returns the targets that are not counts."""
    bad = 0
    for j in range(z.size):
        zd = np.float64(z[j])
        yd = np.float64(y[j])
        grad[j] = expw(zd, like)
        w = np.float64(grad[j])  # e^z in z's dtype: inf where its exp overflows
        values[j] = w - yd * zd
        grad[j] = (w - yd) * scale
        bad += not (yd >= 0.0 and yd < np.inf)
    return bad
