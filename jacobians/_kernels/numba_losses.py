"""The numba kernels of cross-entropy and of sigmoid + binary cross-entropy.

Compiled loops behind the wrappers of :mod:`.numba_impl` (the math is in
:mod:`.numpy_impl`'s twins); row helpers from :mod:`.numba_rows`.
"""

from __future__ import annotations

import numpy as np

from .numba_math import expw, jit, log1p64, log1p_unit, log64
from .numba_rows import ENTRY, EXACT, NO_WEIGHTS, SUMS, _argmax, _exp_chunk, _exp_row, _row_sums, _rowmax, _sum_except

# -- cross-entropy ----------------------------------------------------------------------


@jit(**ENTRY)
def _ratio_log1p(o, e_y, limit):
    """``(log1p(o / e_y), far)`` as :func:`~jacobians.numerics.softmax.log1p_ratio`: ``far`` when
    ``e_y < o·limit`` (the quotient is then not formed; the value is a placeholder)."""
    floor = o * limit
    far = e_y < floor
    return log1p64(o / (e_y if e_y >= floor else floor)), far


@jit(**EXACT)
def _ratio_rows(o, ey, limit, scale, lv, far, w):
    """Per row: ``lv = log1p(o/e_y)`` and ``far`` (see :func:`_ratio_log1p`), ``w = scale/(o + e_y)``;
    a loop over the rows of a chunk, so that short rows vectorize too."""
    for i in range(o.size):
        lv[i], far[i] = _ratio_log1p(o[i], ey[i], limit)
        w[i] = scale / (o[i] + ey[i])


@jit(**EXACT)
def _far_value(xr, y, like, e):
    """``log Σ_{k≠y} e^{x_k − m} + (m − x_y)`` for a row whose target lies far below its
    maximum; ``e`` a work buffer of K entries."""
    m = _rowmax(xr)
    _exp_row(xr, m, like, e)
    return log64(_sum_except(e, y)) + (m - xr[y])


@jit(**EXACT)
def _scale_rows(ec, w, idx, o, gc):
    """``gc[i] = ec[i] w[i]``, then ``−o[i] w[i]`` at the target ``idx[i]``."""
    for i in range(ec.shape[0]):
        c = w[i]
        er, gr = ec[i], gc[i]
        for k in range(er.size):
            gr[k] = er[k] * c
        gr[idx[i]] = -(o[i] * c)  # s_y − 1 = −o/(o + e_y), without the cancellation


@jit(**EXACT)
def _index_chunk(x, a, shift, bound, idx, limit, scale, like, e, o, ey, lv, far, w, ework):
    """The shared start of the index kernels on the rows ``x[a : a + r]``: their exps into
    ``e`` (:func:`_exp_chunk`), per row ``o`` the others' exps summed, ``ey`` the target's,
    ``lv = log1p(o/e_y)`` (``−log p_y``; the far rows' value from shifted logits) and ``w =
    scale/(o + e_y)``. Returns ``(e[:r], idx[a : a + r], entries out of bounds)``; with
    entries out of bounds nothing past the exps is done."""
    ec, bad = _exp_chunk(x, a, shift, bound, like, e)
    r = ec.shape[0]
    ic = idx[a : a + r]
    if bad:
        return ec, ic, bad
    _row_sums(ec, ic, NO_WEIGHTS, o)
    for i in range(r):
        ey[i] = ec[i, ic[i]]
    _ratio_rows(o[:r], ey[:r], limit, scale, lv, far, w)
    for i in range(r):
        if far[i]:
            lv[i] = _far_value(x[a + i], ic[i], like, ework)
    return ec, ic, bad


@jit(**EXACT)
def _ce_index(x, shift, bound, idx, valid, scale, limit, R, like, g, values):
    K = x.shape[1]
    e = np.empty((R, K))
    o, w, lv, ey = np.empty(R), np.empty(R), np.empty(R), np.empty(R)
    far = np.zeros(R, dtype=np.bool_)
    ework = np.empty(K)
    for a in range(0, x.shape[0], R):
        ec, ic, bad = _index_chunk(x, a, shift, bound, idx, limit, scale, like, e, o, ey, lv, far, w, ework)
        if bad:
            return False
        r = ec.shape[0]
        for i in range(r):
            if valid.size:
                w[i] *= valid[a + i]
                lv[i] *= valid[a + i]
            values[a + i] = lv[i]
        _scale_rows(ec, w, ic, o, g[a : a + r])
    return True


@jit(**ENTRY)
def _top_entry(s_top, c_rest, c_top, rest, total):
    """``s·Σc − c`` at the row's maximum as ``s Σ_{k≠top} c_k − c (1 − s)``, ``1 − s =
    rest/total``, with ``Σ_{k≠top} c_k`` summed directly (not ``Σc − c``: a soft target near 1
    at the top would cancel)."""
    return s_top * c_rest - c_top * (rest / total)


@jit(**SUMS)
def _coefficient_sums(cr, sh):
    """``(Σ_k c_k, Σ_k c_k sh_k)``."""
    csum = 0.0
    cdot = 0.0
    for k in range(cr.size):
        csum += cr[k]
        cdot += cr[k] * sh[k]
    return csum, cdot


@jit(**EXACT)
def _ce_coefficients(x, c, like, values, g):
    n, K = x.shape
    e = np.empty(K)
    sh = np.empty(K)
    for i in range(n):
        xr, cr, gr = x[i], c[i], g[i]
        top = _argmax(xr)
        m = np.float64(xr[top])
        for k in range(K):
            sh[k] = xr[k] - m
        _exp_row(xr, m, like, e)
        rest = _sum_except(e, top)
        csum, cdot = _coefficient_sums(cr, sh)
        values[i] = log1p64(rest) * csum - cdot
        total = 1.0 + rest
        for k in range(K):
            gr[k] = (e[k] / total) * csum - cr[k]
        gr[top] = _top_entry(1.0 / total, _sum_except(cr, top), cr[top], rest, total)


# -- sigmoid + binary cross-entropy ----------------------------------------------------


@jit(**ENTRY)
def _bce_entry(z, y, like):
    """``(z (h − y) + log1p(e), (h − y) + (1 − 2h) q)`` with ``h = step(z)``, ``e = exp(−|z|)``,
    ``q = e/(1 + e)``: the value and gradient of one plain sigmoid + BCE entry (one division:
    ``q = e · (1/(1 + e))`` shares log1p's quotient)."""
    zd = np.float64(z)
    e = expw(-abs(zd), like)
    l1, inv = log1p_unit(e)
    h = 1.0 if zd > 0 else 0.0
    hy = h - y
    return zd * hy + l1, hy + (1.0 - 2.0 * h) * (e * inv)


@jit(**EXACT)
def _bce_plain(z, y, scale, like, values, grad):
    for j in range(z.size):
        v, d = _bce_entry(z[j], np.float64(y[j]), like)
        values[j] = v
        grad[j] = d * scale


@jit(**ENTRY)
def _bce_weighted_entry(z, y, py, like):
    zd = np.float64(z)
    e = expw(-abs(zd), like)
    l1, inv = log1p_unit(e)  # inv = 1/(1 + e) = σ(|z|)
    pos = zd > 0
    sig = inv if pos else e * inv
    sig_neg = e * inv if pos else inv
    value = (1.0 - y) * (max(zd, 0.0) + l1) + py * (max(-zd, 0.0) + l1)
    return value, (1.0 - y) * sig - py * sig_neg


@jit(**EXACT)
def _bce_weighted(z, y, py, like, values, grad):
    for j in range(z.size):
        v, d = _bce_weighted_entry(z[j], np.float64(y[j]), np.float64(py[j]), like)
        values[j] = v
        grad[j] = d
