"""The numba kernels (the optional ``fast`` extra): same functions and results as :mod:`.numpy_impl`.

Each public function here validates nothing (its callers did) and has the signature and
the meaning of its twin in :mod:`.numpy_impl`; read the math there. What differs:

* **one pass where numpy needs several**: the exps, the row sums and the outputs of a
  chunk of rows are made while the chunk sits in the core's cache, in one compiled loop
  each, with :mod:`.numba_math`'s vectorized ``exp``/``log1p`` (numpy's are scalar on CPUs
  without AVX-512);
* **float32 work is done in float64** and rounded once when stored (numpy's float32
  ``exp`` is off by up to 2.4 ulp; these kernels' float32 results are within about half
  an ulp of the exact ones), float64 sums and quotients included;
* the dense ``diag(d) − u vᵀ`` is written in one pass, without einsum's zeroing pass.

The shift by the row max is decided as numpy decides it (:func:`~jacobians._math.exp_is_safe`
over the whole input), so both kernel sets compute the same formula on the same rows.

Compiler flags: the loops that add up rows are compiled with ``fastmath={'reassoc',
'contract'}`` (a sum may be reordered, which vectorizes it); everything whose rounding
matters (the elementary functions, the per-entry formulas) is in functions compiled with
``contract`` only, which LLVM inlines with their own flags. A row max uses ``nnan`` only
after the row was checked for NaN.
"""

from __future__ import annotations

import numpy as np

from .._math import EXP_SAFE_BOUND, RATIO_MAX_EXP
from .numba_math import expw, jit, log1p64, log64

__all__ = [
    "softmax",
    "log_softmax",
    "softmax_vjp",
    "ce_index",
    "ce_coefficients",
    "sigmoid_bce_plain",
    "sigmoid_bce_weighted",
    "dense_diag_minus_rank_one",
    "dense_diagonal",
]

_SUMS = {"fastmath": {"reassoc", "contract"}}
_EXACT = {"fastmath": {"contract"}}

#: rows are processed in chunks of about this many entries (a float64 work buffer of
#: 16 KiB: the chunk's exps stay in L1 between the passes over them); read at each call
CHUNK = 2048
#: below this K, row sums run across the rows of a chunk (independent additions) rather
#: than along each row (a chain of K dependent additions)
SHORT_ROWS = 32


# -- row helpers ------------------------------------------------------------------------------


@jit(**_SUMS)
def _count_bad(x, bound):
    """How many entries of the flat ``x`` are outside ``[−bound, bound]`` (NaN included)."""
    bad = 0
    for j in range(x.size):
        bad += not (abs(x[j]) <= bound)
    return bad


@jit(**_SUMS)
def _nan_count(x, start, K):
    c = 0
    for k in range(start, start + K):
        c += x[k] != x[k]
    return c


@jit(fastmath={"nnan", "nsz", "reassoc"})
def _max_no_nan(x, start, K):
    m = -np.inf
    for k in range(start, start + K):
        v = x[k]
        m = v if v > m else m
    return m


@jit(**_SUMS)
def _rowmax(x, start, K):
    """``max(x[start:start + K])`` as numpy's ``max``: NaN when the row holds one."""
    if _nan_count(x, start, K):
        return np.nan
    return np.float64(_max_no_nan(x, start, K))


@jit(**_SUMS)
def _argmax(x, start, K):
    """numpy's ``argmax`` of ``x[start:start + K]``: the first maximum, or the first NaN."""
    top = K
    if _nan_count(x, start, K):
        for k in range(K):
            top = min(top, k if x[start + k] != x[start + k] else K)
        return top
    m = _max_no_nan(x, start, K)
    for k in range(K):
        top = min(top, k if x[start + k] == m else K)
    return top


@jit(**_SUMS)
def _exp_rows(x, K, a, b, shift, e):
    """``e[(i − a)K + k] = exp(x_ik − m_i)`` (float64) for rows ``a <= i < b`` of the flat
    ``x``; ``m_i`` the row max when ``shift``, else 0."""
    if shift:
        for i in range(a, b):
            m = _rowmax(x, i * K, K)
            o = (i - a) * K
            for k in range(K):
                e[o + k] = expw(x[i * K + k] - m, x)
    else:
        base = a * K
        for j in range((b - a) * K):
            e[j] = expw(x[base + j], x)


@jit(**_SUMS)
def _row_sums(e, K, r, skip, s):
    """``s[i] = Σ_k e[iK + k]`` for ``i < r``, leaving out column ``skip[i]`` when ``skip``
    has entries (``skip[i] = −1`` leaves out nothing)."""
    if K < SHORT_ROWS:
        for i in range(r):
            s[i] = 0.0
        for k in range(K):
            for i in range(r):
                s[i] += e[i * K + k] if (skip.size == 0 or skip[i] != k) else 0.0
    else:
        for i in range(r):
            t = 0.0
            if skip.size == 0:
                for k in range(K):
                    t += e[i * K + k]
            else:
                y = skip[i]
                for k in range(K):
                    t += e[i * K + k] if k != y else 0.0
            s[i] = t


@jit(**_SUMS)
def _row_dots(e, g, base, K, r, s):
    """``s[i] = Σ_k e[iK + k] g[base + iK + k]`` for ``i < r``."""
    if K < SHORT_ROWS:
        for i in range(r):
            s[i] = 0.0
        for k in range(K):
            for i in range(r):
                s[i] += e[i * K + k] * g[base + i * K + k]
    else:
        for i in range(r):
            t = 0.0
            for k in range(K):
                t += e[i * K + k] * g[base + i * K + k]
            s[i] = t


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def _shift(x) -> bool:
    """numpy's decision (:func:`~jacobians._math.exp_is_safe`): shift unless every entry is in ``[−B, B]``."""
    bound = EXP_SAFE_BOUND.get(x.dtype)
    return x.size == 0 or bound is None or _count_bad(x, bound) > 0


_NO_SKIP = np.empty(0, dtype=np.int64)


# -- softmax, log-softmax, the softmax VJP ------------------------------------------------------------


@jit(**_SUMS)
def _softmax(x, K, shift, chunk, out):
    n = x.size // K if K else 0
    R = max(1, chunk // K) if K else 1
    e = np.empty(R * K)
    s = np.empty(R)
    for a in range(0, n, R):
        b = min(n, a + R)
        _exp_rows(x, K, a, b, shift, e)
        _row_sums(e, K, b - a, _NO_SKIP, s)
        base = a * K
        for i in range(b - a):
            t = s[i]
            for k in range(K):
                out[base + i * K + k] = e[i * K + k] / t


def softmax(x, out=None):
    xf = _flat(x)
    res = np.empty(x.shape, dtype=x.dtype) if out is None else out
    _softmax(xf, x.shape[-1], _shift(xf), CHUNK, res.reshape(-1))
    return res


@jit(**_SUMS)
def _log_softmax(x, K, out):
    n = x.size // K if K else 0
    for i in range(n):
        base = i * K
        top = _argmax(x, base, K)
        m = np.float64(x[base + top])
        rest = 0.0
        for k in range(K):
            rest += expw(x[base + k] - m, x) if k != top else 0.0
        lr = log1p64(rest)
        for k in range(K):
            out[base + k] = (x[base + k] - m) - lr


def log_softmax(x):
    out = np.empty(x.shape, dtype=x.dtype)
    _log_softmax(_flat(x), x.shape[-1], out.reshape(-1))
    return out


@jit(**_SUMS)
def _softmax_vjp(x, g, K, shift, temperature, chunk, out):
    n = x.size // K if K else 0
    R = max(1, chunk // K) if K else 1
    e = np.empty(R * K)
    s = np.empty(R)
    dot = np.empty(R)
    for a in range(0, n, R):
        b = min(n, a + R)
        r = b - a
        base = a * K
        _exp_rows(x, K, a, b, shift, e)
        _row_sums(e, K, r, _NO_SKIP, s)
        for i in range(r):
            t = s[i]
            for k in range(K):
                e[i * K + k] = e[i * K + k] / t  # the softmax, divided as numpy divides it
        _row_dots(e, g, base, K, r, dot)
        for i in range(r):
            d = dot[i]
            if temperature == 1.0:
                for k in range(K):
                    out[base + i * K + k] = e[i * K + k] * (g[base + i * K + k] - d)
            else:
                for k in range(K):
                    out[base + i * K + k] = (e[i * K + k] * (g[base + i * K + k] - d)) / temperature


def softmax_vjp(x, g, temperature=1.0):
    xf = _flat(x)
    out = np.empty(x.shape, dtype=x.dtype)
    _softmax_vjp(xf, _flat(g), x.shape[-1], _shift(xf), float(temperature), CHUNK, out.reshape(-1))
    return out


# -- cross-entropy --------------------------------------------------------------------------------


@jit(**_EXACT)
def _ratio_log1p(o, e_y, limit):
    """``(log1p(o / e_y), far)`` as :func:`~jacobians._math.log1p_ratio`: ``far`` when
    ``e_y < o·limit`` (the quotient is then not formed; the value is a placeholder)."""
    floor = o * limit
    far = e_y < floor
    return log1p64(o / (e_y if e_y >= floor else floor)), far


@jit(**_SUMS)
def _far_value(x, K, i, y):
    """``log Σ_{k≠y} e^{x_k − m} + (m − x_y)`` for row ``i`` (its target far below its maximum)."""
    base = i * K
    m = _rowmax(x, base, K)
    t = 0.0
    for k in range(K):
        t += expw(x[base + k] - m, x) if k != y else 0.0
    return log64(t) + (m - x[base + y])


@jit(**_SUMS)
def _ce_index(x, K, idx, valid, scale, shift, limit, chunk, g, values):
    n = idx.size
    R = max(1, chunk // K)
    e = np.empty(R * K)
    o = np.empty(R)
    w = np.empty(R)
    lv = np.empty(R)
    far = np.zeros(R, dtype=np.bool_)
    for a in range(0, n, R):
        b = min(n, a + R)
        r = b - a
        base = a * K
        _exp_rows(x, K, a, b, shift, e)
        _row_sums(e, K, r, idx[a:b], o)
        for i in range(r):
            e_y = e[i * K + idx[a + i]]
            lv[i], far[i] = _ratio_log1p(o[i], e_y, limit)
            w[i] = scale / (o[i] + e_y)
        for i in range(r):
            if far[i]:
                lv[i] = _far_value(x, K, a + i, idx[a + i])
            if valid.size:
                w[i] *= valid[a + i]
                lv[i] *= valid[a + i]
            values[a + i] = lv[i]
        for i in range(r):
            c = w[i]
            for k in range(K):
                g[base + i * K + k] = e[i * K + k] * c
            g[base + i * K + idx[a + i]] = -(o[i] * c)  # s_y − 1 = −o/(o + e_y)


def ce_index(x, idx, valid, scale):
    n, K = x.shape
    xf = _flat(x)
    g = np.empty((n, K), dtype=x.dtype)
    values = np.empty(n, dtype=x.dtype)
    v = np.empty(0, dtype=np.bool_) if valid is None else np.ascontiguousarray(valid, dtype=np.bool_)
    if n:
        limit = 2.0 ** -RATIO_MAX_EXP[x.dtype]
        _ce_index(xf, K, np.ascontiguousarray(idx, dtype=np.int64), v, float(scale), _shift(xf), limit,
                  CHUNK, g.reshape(-1), values)
    return values, g


@jit(**_EXACT)
def _top_entry(s_top, csum, c_top, rest, total):
    """``s·Σc − c`` at the row's maximum as ``s (Σc − c) − c (1 − s)``, ``1 − s = rest/total``."""
    return s_top * (csum - c_top) - c_top * (rest / total)


@jit(**_SUMS)
def _ce_coefficients(x, c, K, values, g):
    n = x.size // K if K else 0
    e = np.empty(K)
    for i in range(n):
        base = i * K
        top = _argmax(x, base, K)
        m = np.float64(x[base + top])
        rest = 0.0
        csum = 0.0
        cdot = 0.0
        for k in range(K):
            sh = x[base + k] - m
            v = expw(sh, x)
            e[k] = v
            rest += v if k != top else 0.0
            csum += c[base + k]
            cdot += c[base + k] * sh
        values[i] = log1p64(rest) * csum - cdot
        total = 1.0 + rest
        for k in range(K):
            g[base + k] = (e[k] / total) * csum - c[base + k]
        g[base + top] = _top_entry(1.0 / total, csum, c[base + top], rest, total)


def ce_coefficients(x, c):
    K = x.shape[-1]
    values = np.empty(x.shape[:-1], dtype=x.dtype)
    g = np.empty(x.shape, dtype=x.dtype)
    _ce_coefficients(_flat(x), _flat(np.asarray(c, dtype=x.dtype)), K, values.reshape(-1), g.reshape(-1))
    return values, g


# -- sigmoid + binary cross-entropy -------------------------------------------------------------------


@jit(**_EXACT)
def _bce_entry(z, y, like):
    """``(z (h − y) + log1p(e), (h − y) + (1 − 2h) q)`` with ``h = step(z)``, ``e = exp(−|z|)``,
    ``q = e/(1 + e)``: the value and gradient of one plain sigmoid + BCE entry."""
    zd = np.float64(z)
    e = expw(-abs(zd), like)
    q = e / (1.0 + e)
    h = 1.0 if zd > 0 else 0.0
    hy = h - y
    return zd * hy + log1p64(e), hy + (1.0 - 2.0 * h) * q


@jit(**_SUMS)
def _bce_plain_values(z, y, scale, values, grad):
    for j in range(z.size):
        v, d = _bce_entry(z[j], np.float64(y[j]), z)
        values[j] = v
        grad[j] = d * scale


@jit(**_SUMS)
def _bce_plain_total(z, y, scale, grad):
    total = 0.0
    for j in range(z.size):
        v, d = _bce_entry(z[j], np.float64(y[j]), z)
        total += v
        grad[j] = d * scale
    return total


def sigmoid_bce_plain(z, y, scale, need_values):
    zf, yf = _flat(z), _flat(y)
    grad = np.empty_like(zf)
    if need_values:
        values = np.empty_like(zf)
        _bce_plain_values(zf, yf, float(scale), values, grad)
        return values, z.dtype.type(0.0), grad
    total = _bce_plain_total(zf, yf, float(scale), grad)
    return None, z.dtype.type(total), grad


@jit(**_EXACT)
def _bce_weighted_entry(z, y, py, like):
    zd = np.float64(z)
    e = expw(-abs(zd), like)
    inv = 1.0 / (1.0 + e)
    pos = zd > 0
    sig = inv if pos else e * inv
    sig_neg = e * inv if pos else inv
    l1 = log1p64(e)
    value = (1.0 - y) * (max(zd, 0.0) + l1) + py * (max(-zd, 0.0) + l1)
    return value, (1.0 - y) * sig - py * sig_neg


@jit(**_SUMS)
def _bce_weighted(z, y, py, values, grad):
    for j in range(z.size):
        v, d = _bce_weighted_entry(z[j], np.float64(y[j]), np.float64(py[j]), z)
        values[j] = v
        grad[j] = d


def sigmoid_bce_weighted(z, y, py):
    values = np.empty(z.shape, dtype=z.dtype)
    grad = np.empty(z.shape, dtype=z.dtype)
    _bce_weighted(_flat(z), _flat(np.broadcast_to(y, z.shape)), _flat(np.broadcast_to(py, z.shape)),
                  values.reshape(-1), grad.reshape(-1))
    return values, grad


# -- dense Jacobians ------------------------------------------------------------------------------------


@jit()
def _dense_dmr(d, u, v, K, out):
    """``out[n, j, k] = δ_jk d_nj − u_nj v_nk`` in one pass (no fastmath: the same roundings
    as numpy's ``u_j·(−v_k)`` and ``+ d_j`` on the diagonal)."""
    n = d.size // K if K else 0
    for i in range(n):
        row = i * K
        for j in range(K):
            uj = u[row + j]
            base = (row + j) * K
            for k in range(K):
                out[base + k] = uj * -v[row + k]
            out[base + j] = out[base + j] + d[row + j]


def dense_diag_minus_rank_one(d, u, v, out):
    _dense_dmr(_flat(d), _flat(u), _flat(v), d.shape[-1], out.reshape(-1))


@jit()
def _dense_diag(d, K, out):
    n = d.size // K if K else 0
    for i in range(n):
        row = i * K
        for j in range(K):
            base = (row + j) * K
            for k in range(K):
                out[base + k] = 0.0
            out[base + j] = d[row + j]


def dense_diagonal(d, out):
    _dense_diag(_flat(d), d.shape[-1], out.reshape(-1))
