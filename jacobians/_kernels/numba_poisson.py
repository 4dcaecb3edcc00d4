"""The numba kernel of the Poisson log link: Identity + PoissonNLL(log_input=True), value,
gradient and the targets' check in one pass over the entries (float32: after numpy's ``exp``).

Compiled loops behind :func:`.numba_impl.poisson_log`; the math is its numpy twin's,
:func:`.numpy_poisson.poisson_log`. For float32, ``w = e^z`` is numpy's float32 ``exp``,
written into the gradient's buffer first (chunk by chunk, while the chunk is in cache):
numpy vectorizes it with AVX2 and AVX-512 alike. For float64 the loop takes ``w`` itself
with :func:`.numba_math.exp64` (within 0.77 ulp; inf past the float's exp limit, as numpy's
and torch's ``exp``): numpy's float64 ``exp`` is vectorized only with AVX-512, and on an
AVX2 build (``NUMBA_CPU_NAME=haswell``, numpy without its AVX-512 loops) the whole pass went
from 171 to 57 µs at 4096 × 10 (71 → 73 µs with AVX-512). The rest is done in float64 and
rounded once when stored.
"""

from __future__ import annotations

import numpy as np

from .numba_math import exp64, jit
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



@jit(**EXACT)
def _poisson_log_exp(z, y, scale, values, grad):
    """:func:`_poisson_log` taking ``w = e^z`` itself (float64 ``z``: :func:`.numba_math.exp64`,
    vectorized where numpy's float64 ``exp`` may not be)."""
    bad = 0
    for j in range(z.size):
        zd = z[j]
        yd = y[j]
        w = exp64(zd)
        values[j] = w - yd * zd
        grad[j] = (w - yd) * scale
        bad += (yd < 0.0) | (yd != yd) | (yd == np.inf)
    return bad
