"""The numba kernels of softmax, log-softmax, the softmax VJP and the simplex maps' product.

Compiled loops behind the wrappers of :mod:`.numba_impl` (the math is in
:mod:`.numpy_impl`'s twins); row helpers from :mod:`.numba_rows`.
"""

from __future__ import annotations

import numpy as np

from .numba_math import _as_i64, jit, log1p64
from .numba_rows import (
    ENTRY,
    EXACT,
    NO_SKIP,
    NO_WEIGHTS,
    SUMS,
    _argmax,
    _exp_chunk,
    _exp_row,
    _row_sums,
    _sum_except,
)


@jit(**EXACT)
def _divide_rows(ec, s, out):
    """``out[i, k] = ec[i, k] / s[i]``: a division, as numpy's softmax (a product with
    ``1/s[i]`` measured no faster, and is up to an ulp less accurate)."""
    for i in range(ec.shape[0]):
        t = s[i]
        er, orow = ec[i], out[i]
        for k in range(er.size):
            orow[k] = er[k] / t


@jit(**EXACT)
def _softmax(x, shift, bound, R, like, out):
    e = np.empty((R, x.shape[1]))
    s = np.empty(R)
    for a in range(0, x.shape[0], R):
        ec, bad = _exp_chunk(x, a, shift, bound, like, e)
        if bad:
            return False
        _row_sums(ec, NO_SKIP, NO_WEIGHTS, s)
        _divide_rows(ec, s, out[a : a + ec.shape[0]])
    return True


@jit(**EXACT)
def _log_softmax(x, like, out):
    n, K = x.shape
    e = np.empty(K)
    for i in range(n):
        xr, orow = x[i], out[i]
        top = _argmax(xr)
        m = np.float64(xr[top])
        _exp_row(xr, m, like, e)
        lr = log1p64(_sum_except(e, top))
        for k in range(K):
            orow[k] = (xr[k] - m) - lr


@jit(**SUMS)
def _index_bits(K):
    """How many low bits hold an index below ``K`` (at least 1)."""
    nb = 1
    while (1 << nb) < K:
        nb += 1
    return nb


@jit(**ENTRY)
def _keyed(v, k, low):
    """The int64 bits of ``v >= 0`` (ordered as the values; NaN above every number) with
    their low bits replaced by ``low − k``: the integer maximum of a row's keys (which
    vectorizes) is a largest entry, ``low − (max & low)`` its index, the first among
    entries equal up to those bits."""
    return (_as_i64(v) & ~low) | (low - k)


@jit(**SUMS)
def _sums_and_centres(ec, gc, s, gt):
    """``s[i] = Σ_k ec[i, k]`` and ``gt[i]``: ``gc[i]`` at a largest entry of ``ec[i] >= 0``
    (what :func:`jacobians.numerics.softmax.softmax_vjp` centres on), in one pass: the sum,
    and an integer maximum (which vectorizes) of the entries' bits with their low ``nb`` bits
    replaced by ``2^nb − 1 − k``. The entry found is the first of the largest up to the
    dropped bits: within a relative 2^(nb − 52) of the largest, which keeps the centred
    product exact (a row whose largest entry is near 1 has no second entry that close), and
    the first largest itself unless two entries differ only in those bits. A row of NaN
    centres on an entry of its own (the product is NaN either way)."""
    K = ec.shape[1]
    nb = _index_bits(K)
    low = (1 << nb) - 1
    for i in range(ec.shape[0]):
        er = ec[i]
        t = 0.0
        mb = 0
        for k in range(K):
            v = er[k]
            t += v
            b = _keyed(v, k, low)
            mb = b if b > mb else mb
        s[i] = t
        gt[i] = gc[i, low - (mb & low)]


@jit(**SUMS)
def _centres(v, x, xt):
    """``xt[i]``: ``x[i]`` at a largest entry of ``v[i] >= 0``, found as
    :func:`_sums_and_centres` finds it (one integer maximum of :func:`_keyed`)."""
    low = (1 << _index_bits(v.shape[1])) - 1
    for i in range(v.shape[0]):
        vr = v[i]
        mb = 0
        for k in range(vr.size):
            b = _keyed(np.float64(vr[k]), k, low)
            mb = b if b > mb else mb
        xt[i] = x[i, low - (mb & low)]


@jit(**SUMS)
def _centred_dots(ec, gc, gt, dot):
    """``dot[i] = Σ_k ec[i, k] (gc[i, k] − gt[i])``, row by row for every K (see
    :func:`_sums_and_centres`)."""
    for i in range(ec.shape[0]):
        er, gr, c = ec[i], gc[i], gt[i]
        t = 0.0
        for k in range(er.size):
            t += er[k] * (gr[k] - c)
        dot[i] = t


@jit(**EXACT)
def _vjp_rows(ec, gc, s, gt, dot, f, frows, out):
    """``out[i] = f_i · s_i ⊙ (g' − s_i·g')`` with ``g' = gc[i] − gt[i]`` (``gt[i]`` the entry of
    the largest s: see :func:`jacobians.numerics.softmax.softmax_vjp`) and ``s_i = ec[i] / s[i]``: one
    division a row (``s·g' = (e·g')/Σe``), the softmax entries as ``e_k · (1/Σe)``;
    ``f_i = frows[i]``, or ``f`` when ``frows`` is empty (the factor over T, as numpy's kernel
    rounds it)."""
    for i in range(ec.shape[0]):
        inv = 1.0 / s[i]
        d = dot[i] / s[i]
        c = inv * (frows[i] if frows.size else f)
        t = gt[i]
        er, gr, orow = ec[i], gc[i], out[i]
        for k in range(er.size):
            orow[k] = (er[k] * c) * ((gr[k] - t) - d)


@jit(**EXACT)
def _softmax_vjp(x, shift, bound, g, f, frows, R, like, out):
    e = np.empty((R, x.shape[1]))
    s = np.empty(R)
    dot = np.empty(R)
    gt = np.empty(R)
    for a in range(0, x.shape[0], R):
        ec, bad = _exp_chunk(x, a, shift, bound, like, e)
        if bad:
            return False
        r = ec.shape[0]
        gc = g[a : a + r]
        _sums_and_centres(ec, gc, s, gt)
        _centred_dots(ec, gc, gt, dot)
        _vjp_rows(ec, gc, s, gt, dot, f, frows[a : a + r] if frows.size else frows, out[a : a + r])
    return True


@jit(**EXACT)
def _simplex_vjp(w, v, x, R, xt, dot, out):
    n, K = w.shape
    for a in range(0, n, R):
        r = min(n - a, R)
        vc, xc, oc = v[a : a + r], x[a : a + r], out[a : a + r]
        _centres(vc, xc, xt)
        _centred_dots(vc, xc, xt, dot)
        for i in range(r):
            t, d = xt[i], dot[i]
            wr, xr, orow = w[a + i], xc[i], oc[i]
            for k in range(K):
                orow[k] = wr[k] * ((xr[k] - t) - d)
