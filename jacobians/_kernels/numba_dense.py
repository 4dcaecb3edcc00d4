"""The numba kernels writing dense Jacobians ``diag(d) − u vᵀ`` and ``diag(d)``, one pass each.

Compiled without fastmath: the same roundings as :mod:`.numpy_impl`'s einsum, and the
complement sums of a projector's diagonal added in numpy's order (bitwise equal).
"""

from __future__ import annotations

import numpy as np

from .numba_math import jit
from .numba_rows import _argmax


@jit(inline="always")
def _entry_or_zero(x, i, skip, zero):
    return zero if i == skip else x[i]


@jit()
def _numpy_block_sum(x, a, n, skip, zero):
    """numpy's sum of a run of at most 128 entries ``x[a : a + n]`` (``x[skip]`` read as 0):
    sequential below 8, else eight running sums combined pairwise, then the rest."""
    if n < 8:
        res = zero
        for i in range(n):
            res += _entry_or_zero(x, a + i, skip, zero)
        return res
    r0, r1 = _entry_or_zero(x, a, skip, zero), _entry_or_zero(x, a + 1, skip, zero)
    r2, r3 = _entry_or_zero(x, a + 2, skip, zero), _entry_or_zero(x, a + 3, skip, zero)
    r4, r5 = _entry_or_zero(x, a + 4, skip, zero), _entry_or_zero(x, a + 5, skip, zero)
    r6, r7 = _entry_or_zero(x, a + 6, skip, zero), _entry_or_zero(x, a + 7, skip, zero)
    m = n - n % 8
    for i in range(a + 8, a + m, 8):
        r0 += _entry_or_zero(x, i, skip, zero)
        r1 += _entry_or_zero(x, i + 1, skip, zero)
        r2 += _entry_or_zero(x, i + 2, skip, zero)
        r3 += _entry_or_zero(x, i + 3, skip, zero)
        r4 += _entry_or_zero(x, i + 4, skip, zero)
        r5 += _entry_or_zero(x, i + 5, skip, zero)
        r6 += _entry_or_zero(x, i + 6, skip, zero)
        r7 += _entry_or_zero(x, i + 7, skip, zero)
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(a + m, a + n):
        res += _entry_or_zero(x, i, skip, zero)
    return res


@jit()
def _numpy_sum(x, skip, zero, tasks, values):
    """``x.sum()`` as numpy adds up a contiguous row (its pairwise summation: blocks of up to
    128 entries, a longer run halved at a multiple of 8 and its halves' sums added), so
    bitwise equal to it; ``x[skip]`` read as 0; the sums stay in x's dtype. The halving is
    walked with the stacks ``tasks`` (int64, (128, 2)) and ``values`` (x's dtype, 128), not
    by recursion (numba's cache crashes on recursive functions)."""
    n = x.size
    if n <= 128:
        return _numpy_block_sum(x, 0, n, skip, zero)
    tasks[0, 0], tasks[0, 1] = 0, n
    top, nv = 1, 0
    while top:
        top -= 1
        a, m = tasks[top, 0], tasks[top, 1]
        if m < 0:  # both halves done: add them
            nv -= 1
            values[nv - 1] = values[nv - 1] + values[nv]
        elif m <= 128:
            values[nv] = _numpy_block_sum(x, a, m, skip, zero)
            nv += 1
        else:
            m2 = m // 2
            m2 -= m2 % 8
            tasks[top, 0], tasks[top, 1] = 0, -1
            tasks[top + 1, 0], tasks[top + 1, 1] = a + m2, m - m2
            tasks[top + 2, 0], tasks[top + 2, 1] = a, m2
            top += 3
    return values[0]


@jit()
def _complement_row(vr, half, tasks, values):
    """``(total, top, others)`` of a row v >= 0 as :func:`~jacobians.numerics.algebra.complement_sums`
    takes them: ``Σ_{i≠k} v_i`` is ``total − v_k``, except at ``top`` (the first largest
    entry) when ``v_top > total/2``, where it is ``others``, the sum without ``v_top``
    (``top = −1`` when no entry needs it)."""
    zero = half - half
    K = vr.size
    total = _numpy_sum(vr, -1, zero, tasks, values)
    top = _argmax(vr)
    if top < K and vr[top] > half * total:
        return total, top, _numpy_sum(vr, top, zero, tasks, values)
    return total, -1, total


@jit()
def _dense_dmr(d, u, v, exact, projector, half, out):
    """``out[n, j, k] = δ_jk d_nj − u_nj v_nk`` in one pass (no fastmath: the same roundings
    as numpy's ``u_j·(−v_k)`` and ``+ d_j`` on the diagonal); with ``exact`` (not empty) the
    diagonal entries are ``exact[n, j]``; with ``projector`` they are ``d_j Σ_{i≠j} v_i``,
    the complement sums taken per row as numpy's :func:`~jacobians.numerics.algebra.complement_sums`
    (bitwise equal to numpy's ``d * complement_sums(v)``); either written after the row's
    off-diagonal entries."""
    n, K = d.shape
    tasks, values = np.empty((128, 2), np.int64), np.empty(128, d.dtype)
    for i in range(n):
        ur, vr, dr, oi = u[i], v[i], d[i], out[i]
        total, top, others = _complement_row(vr, half, tasks, values) if projector else (half, -1, half)
        for j in range(K):
            uj = ur[j]
            orow = oi[j]
            for k in range(K):
                orow[k] = uj * -vr[k]
            if exact.size:
                orow[j] = exact[i, j]
            elif projector:
                orow[j] = dr[j] * (others if j == top else total - vr[j])
            else:
                orow[j] = orow[j] + dr[j]


@jit()
def _dense_diag(d, out):
    n, K = d.shape
    for i in range(n):
        dr, oi = d[i], out[i]
        for j in range(K):
            orow = oi[j]
            for k in range(K):
                orow[k] = 0.0
            orow[j] = dr[j]
