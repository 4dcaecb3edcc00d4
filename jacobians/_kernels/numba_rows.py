"""The numba kernels' row helpers: maxima, exps and sums of rows and chunks of rows.

Shared by :mod:`.numba_softmax`, :mod:`.numba_losses` and :mod:`.numba_dense`; see
:mod:`.numba_impl` for the compiler flags. Every loop below runs over ``range(n)`` from 0
on C-contiguous views (rows ``x[i]``, chunks ``x[a:b]``): LLVM then knows each index is
non-negative and in bounds, so it vectorizes without runtime overlap checks between the
arrays (a loop over ``range(a, b)`` indexing whole arrays fell back to scalar code
whenever an output sat next to an input in memory). ``like`` is a zero of the input's
dtype: it picks the float32 or float64 ``exp`` (see :func:`.numba_math.expw`).
"""

from __future__ import annotations

import numpy as np

from .numba_math import expw, expw_in_bounds, jit

#: loops that add up rows: a sum may be reordered (which vectorizes it); no elementary function
SUMS = {"fastmath": {"reassoc", "contract"}}
#: loops whose rounding matters (the elementary functions, the per-entry formulas)
EXACT = {"fastmath": {"contract"}}
#: per-entry helpers, inlined by numba into the (``EXACT``) loops that call them
ENTRY = {"fastmath": {"contract"}, "inline": "always"}

#: below this K, row sums run across the rows of a chunk (independent additions) rather
#: than along each row (a chain of K dependent additions)
SHORT_ROWS = 32

NO_SKIP = np.empty(0, dtype=np.int64)
NO_WEIGHTS = np.empty((0, 0))


@jit(**SUMS)
def _nan_count(xr):
    c = 0
    for k in range(xr.size):
        c += xr[k] != xr[k]
    return c


@jit(fastmath={"nnan", "nsz", "reassoc"})
def _max_no_nan(xr):
    """The largest entry of a row without NaN, in four running maxima (LLVM leaves this
    reduction scalar: four independent chains run about 3.5 times as fast as one at K = 1000)."""
    K = xr.size
    m0 = m1 = m2 = m3 = -np.inf
    n4 = K - K % 4
    for k in range(0, n4, 4):
        a, b, c, d = xr[k], xr[k + 1], xr[k + 2], xr[k + 3]
        m0 = a if a > m0 else m0
        m1 = b if b > m1 else m1
        m2 = c if c > m2 else m2
        m3 = d if d > m3 else m3
    for k in range(n4, K):
        v = xr[k]
        m0 = v if v > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@jit(**SUMS)
def _rowmax(xr):
    """``max(xr)`` as numpy's ``max``: NaN when the row holds one."""
    if _nan_count(xr):
        return np.nan
    return np.float64(_max_no_nan(xr))


@jit(**SUMS)
def _argmax(xr):
    """numpy's ``argmax`` of the row: the first maximum, or the first NaN."""
    K = xr.size
    top = K
    if _nan_count(xr):
        for k in range(K):
            top = min(top, k if xr[k] != xr[k] else K)
        return top
    return _first(xr, _max_no_nan(xr))


@jit(**SUMS)
def _first(w, m):
    """The first index of ``m`` in ``w`` (numpy's argmax once ``m`` is the maximum)."""
    K = w.size
    top = K
    for k in range(K):
        top = min(top, k if w[k] == m else K)
    return top


@jit(**EXACT)
def _exp_row(xr, m, like, er):
    """``er[k] = exp(xr[k] − m)`` in float64."""
    for k in range(xr.size):
        er[k] = expw(xr[k] - m, like)


@jit(**EXACT)
def _exp_flat(xf, bound, like, ef):
    """``ef[j] = exp(xf[j])`` in float64; returns how many entries lie outside
    ``[−bound, bound]`` (NaN included), counted in the same pass. ``bound`` is at most 100
    (float32 work) or 700 (float64): the exps are :func:`.numba_math.expw_in_bounds`'s,
    meaningless past the bound, where the count sends the caller down the shifted path."""
    bad = 0
    for j in range(xf.size):
        v = xf[j]
        ef[j] = expw_in_bounds(v, like)
        bad += not (abs(v) <= bound)
    return bad


@jit(**EXACT)
def _exp_rows(xc, shift, bound, like, ec):
    """``ec[i, k] = exp(xc[i, k] − m_i)`` (float64) for a chunk of rows; ``m_i`` the row max
    when ``shift``, else 0 (then one flat loop over the whole chunk: short rows vectorize
    too). Returns the entries outside ``[−bound, bound]`` of an unshifted chunk (0 shifted)."""
    r, K = xc.shape
    if shift:
        for i in range(r):
            _exp_row(xc[i], _rowmax(xc[i]), like, ec[i])
        return 0
    return _exp_flat(xc.reshape(r * K), bound, like, ec.reshape(r * K))


@jit(**EXACT)
def _exp_chunk(x, a, shift, bound, like, e):
    """``exp`` of the rows ``x[a : a + r]`` into ``e[:r]`` (see :func:`_exp_rows`), ``r`` as
    many rows as ``e`` holds or as are left; returns ``(e[:r], entries out of bounds)``."""
    r = min(x.shape[0] - a, e.shape[0])
    return e[:r], _exp_rows(x[a : a + r], shift, bound, like, e[:r])


@jit(**SUMS)
def _sum(v):
    t = 0.0
    for j in range(v.size):
        t += v[j]
    return t


@jit(**SUMS)
def _sum_except(er, skip):
    """``Σ_{k ≠ skip} er[k]``."""
    t = 0.0
    for k in range(er.size):
        t += er[k] if k != skip else 0.0
    return t


@jit(**SUMS)
def _row_sums(ec, skip, weights, s):
    """``s[i] = Σ_{k ≠ skip[i]} ec[i, k] · weights[i, k]`` (``skip`` empty: every k;
    ``weights`` empty: 1). Short rows add across the rows of the chunk (independent
    additions), long ones along each row (a vectorized reduction)."""
    r, K = ec.shape
    if K < SHORT_ROWS:
        for i in range(r):
            s[i] = 0.0
        for k in range(K):
            for i in range(r):
                v = ec[i, k] if weights.size == 0 else ec[i, k] * weights[i, k]
                s[i] += v if (skip.size == 0 or skip[i] != k) else 0.0
    else:
        for i in range(r):
            if weights.size:
                s[i] = _dot(ec[i], weights[i])
            elif skip.size:
                s[i] = _sum_except(ec[i], skip[i])
            else:
                s[i] = _sum(ec[i])


@jit(**SUMS)
def _dot(a, b):
    t = 0.0
    for k in range(a.size):
        t += a[k] * b[k]
    return t
