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
over the whole input), so both kernel sets compute the same formula on the same rows; the
check costs no pass of its own (see :func:`_shifted_if_needed`).

Compiler flags: the loops that add up rows are functions of their own compiled with
``fastmath={'reassoc', 'contract'}`` (a sum may be reordered, which vectorizes it) and
call no elementary function; everything whose rounding matters (the elementary functions,
the per-entry formulas, the loops calling them) is compiled with ``contract`` only, the
per-entry helpers inlined by numba into those loops. A row max uses ``nnan`` only after
the row was checked for NaN.
"""

from __future__ import annotations

import numpy as np

from .._math import EXP_SAFE_BOUND, RATIO_MAX_EXP, row_chunks, scratch
from . import INTERFACE
from .numba_math import _as_f64, _as_i64, expw, jit, log1p64, log1p_unit, log64

__all__ = ["target", *INTERFACE]

_SUMS = {"fastmath": {"reassoc", "contract"}}
_EXACT = {"fastmath": {"contract"}}
#: per-entry helpers, inlined by numba into the (``_EXACT``) loops that call them
_ENTRY = {"fastmath": {"contract"}, "inline": "always"}

#: rows are processed in chunks of about this many entries (a float64 work buffer of
#: 16 KiB: the chunk's exps stay in L1 between the passes over them); read at each call
CHUNK = 2048
#: below this K, row sums run across the rows of a chunk (independent additions) rather
#: than along each row (a chain of K dependent additions)
SHORT_ROWS = 32


def target() -> tuple[str, str]:
    """``(cpu, vector level)`` numba compiles for: the host CPU, or ``NUMBA_CPU_NAME`` and
    ``NUMBA_CPU_FEATURES`` when set (e.g. ``haswell`` and AVX2 features, to build the
    AVX2 kernels on an AVX-512 machine)."""
    from llvmlite import binding as ll
    from numba.core import codegen, config

    name = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else codegen.get_host_cpu_features()
    on = {f[1:] for f in str(features).split(",") if f.startswith("+")}
    for flag, level in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sve", "SVE"), ("neon", "NEON")):
        if flag in on:
            return name, level
    return name, "SSE2 or scalar"


def describe() -> str:
    """``'numba <version> (LLVM target <cpu>, <vector level>)'``."""
    import numba

    name, level = target()
    return f"numba {numba.__version__} (LLVM target {name}, {level})"


# Every loop below runs over ``range(n)`` from 0 on C-contiguous views (rows ``x[i]``,
# chunks ``x[a:b]``): LLVM then knows each index is non-negative and in bounds, so it
# vectorizes without runtime overlap checks between the arrays (a loop over
# ``range(a, b)`` indexing whole arrays fell back to scalar code whenever an output sat
# next to an input in memory). ``like`` is a zero of the input's dtype: it picks the
# float32 or float64 ``exp`` (see :func:`.numba_math.expw`).

# -- row helpers ------------------------------------------------------------------------------


@jit(**_SUMS)
def _nan_count(xr):
    c = 0
    for k in range(xr.size):
        c += xr[k] != xr[k]
    return c


@jit(fastmath={"nnan", "nsz", "reassoc"})
def _max_no_nan(xr):
    m = -np.inf
    for k in range(xr.size):
        v = xr[k]
        m = v if v > m else m
    return m


@jit(**_SUMS)
def _rowmax(xr):
    """``max(xr)`` as numpy's ``max``: NaN when the row holds one."""
    if _nan_count(xr):
        return np.nan
    return np.float64(_max_no_nan(xr))


@jit(**_SUMS)
def _argmax(xr):
    """numpy's ``argmax`` of the row: the first maximum, or the first NaN."""
    K = xr.size
    top = K
    if _nan_count(xr):
        for k in range(K):
            top = min(top, k if xr[k] != xr[k] else K)
        return top
    m = _max_no_nan(xr)
    for k in range(K):
        top = min(top, k if xr[k] == m else K)
    return top


@jit(**_EXACT)
def _exp_row(xr, m, like, er):
    """``er[k] = exp(xr[k] − m)`` in float64."""
    for k in range(xr.size):
        er[k] = expw(xr[k] - m, like)


@jit(**_EXACT)
def _exp_flat(xf, bound, like, ef):
    """``ef[j] = exp(xf[j])`` in float64; returns how many entries lie outside
    ``[−bound, bound]`` (NaN included), counted in the same pass."""
    bad = 0
    for j in range(xf.size):
        v = xf[j]
        ef[j] = expw(v, like)
        bad += not (abs(v) <= bound)
    return bad


@jit(**_EXACT)
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


@jit(**_EXACT)
def _exp_chunk(x, a, shift, bound, like, e):
    """``exp`` of the rows ``x[a : a + r]`` into ``e[:r]`` (see :func:`_exp_rows`), ``r`` as
    many rows as ``e`` holds or as are left; returns ``(e[:r], entries out of bounds)``."""
    r = min(x.shape[0] - a, e.shape[0])
    return e[:r], _exp_rows(x[a : a + r], shift, bound, like, e[:r])


def _chunk_rows(K):
    """Rows a chunk holds: about :data:`CHUNK` entries, at least one row."""
    return max(1, CHUNK // max(K, 1))


@jit(**_SUMS)
def _sum(v):
    t = 0.0
    for j in range(v.size):
        t += v[j]
    return t


@jit(**_SUMS)
def _sum_except(er, skip):
    """``Σ_{k ≠ skip} er[k]``."""
    t = 0.0
    for k in range(er.size):
        t += er[k] if k != skip else 0.0
    return t


@jit(**_SUMS)
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


@jit(**_SUMS)
def _dot(a, b):
    t = 0.0
    for k in range(a.size):
        t += a[k] * b[k]
    return t


def _rows(x):
    """``x`` as C-contiguous rows ``(n, K)`` (no copy when it is C-contiguous already)."""
    K = x.shape[-1]
    n = x.size // K if K else 0
    return np.ascontiguousarray(x).reshape(n, K)


def _shifted_if_needed(kernel, x, *args) -> None:
    """``kernel(x, shift, bound, *args)`` as numpy decides the shift
    (:func:`~jacobians._math.exp_is_safe`: unshifted only when every entry is in ``[−B, B]``),
    without a pass of its own: the kernel runs unshifted, counting the entries out of
    bounds as it takes their exps, and returns False at the first chunk holding one;
    it then runs again, shifted, over every row."""
    bound = EXP_SAFE_BOUND[x.dtype]
    if not kernel(x, False, bound, *args):
        kernel(x, True, bound, *args)


_NO_SKIP = np.empty(0, dtype=np.int64)
_NO_WEIGHTS = np.empty((0, 0))
_NO_FACTORS = np.empty(0)


# -- softmax, log-softmax, the softmax VJP ------------------------------------------------------------


@jit(**_EXACT)
def _divide_rows(ec, s, out):
    """``out[i, k] = ec[i, k] / s[i]``: a division, as numpy's softmax (a product with
    ``1/s[i]`` measured no faster, and is up to an ulp less accurate)."""
    for i in range(ec.shape[0]):
        t = s[i]
        er, orow = ec[i], out[i]
        for k in range(er.size):
            orow[k] = er[k] / t


@jit(**_EXACT)
def _softmax(x, shift, bound, R, like, out):
    e = np.empty((R, x.shape[1]))
    s = np.empty(R)
    for a in range(0, x.shape[0], R):
        ec, bad = _exp_chunk(x, a, shift, bound, like, e)
        if bad:
            return False
        _row_sums(ec, _NO_SKIP, _NO_WEIGHTS, s)
        _divide_rows(ec, s, out[a : a + ec.shape[0]])
    return True


def softmax(x, out=None):
    x2 = _rows(x)
    res = np.empty(x.shape, dtype=x.dtype) if out is None else out
    if x2.size:
        _shifted_if_needed(_softmax, x2, _chunk_rows(x2.shape[1]), x.dtype.type(0), res.reshape(x2.shape))
    return res


@jit(**_EXACT)
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


def log_softmax(x):
    x2 = _rows(x)
    out = np.empty(x.shape, dtype=x.dtype)
    if x2.size:
        _log_softmax(x2, x.dtype.type(0), out.reshape(x2.shape))
    return out


@jit(**_SUMS)
def _at_max(er, gr, m):
    """``gr[k]`` at the first k where ``er[k] == m`` (the row's maximum), else ``gr[0]``: a
    masked sum (one term when the maximum is unique, exact) and a search only on a tie."""
    t = 0.0
    c = 0
    for k in range(er.size):
        eq = er[k] == m
        t += gr[k] if eq else 0.0
        c += eq
    if c == 1:
        return t
    for k in range(er.size):
        if er[k] == m:
            return gr[k]
    return gr[0]


@jit(**_SUMS)
def _max_bits(er):
    """The int64 bits of ``max(er)`` for entries >= 0 (NaN included: larger than any number),
    whose bits are ordered as their values: an integer maximum, which vectorizes."""
    mb = 0
    for k in range(er.size):
        mb = max(mb, _as_i64(np.float64(er[k])))
    return mb


@jit(**_SUMS)
def _sums_and_centres(ec, gc, s, m, gt):
    """``s[i] = Σ_k ec[i, k]`` (as :func:`_row_sums`) and ``gt[i]``: ``gc[i]`` at the first
    largest entry of ``ec[i] >= 0`` (what :func:`jacobians._math.softmax_vjp` centres on);
    ``m`` a work buffer. Short rows run across the rows of a chunk (the sums, and ``gc`` at
    the running maximum by selects, in one pass); long rows take the sum and the maximum in
    one pass (the maximum of the bits: see :func:`_max_bits`), then :func:`_at_max`."""
    r, K = ec.shape
    if K < SHORT_ROWS:
        for i in range(r):
            s[i] = 0.0
            m[i] = -np.inf
            gt[i] = gc[i, 0]
        for k in range(K):
            for i in range(r):
                v = ec[i, k]
                s[i] += v
                top = v > m[i]
                m[i] = v if top else m[i]
                gt[i] = gc[i, k] if top else gt[i]
        return
    for i in range(r):
        er = ec[i]
        t = 0.0
        mb = 0
        for k in range(K):
            v = er[k]
            t += v
            mb = max(mb, _as_i64(v))
        s[i] = t
        gt[i] = _at_max(er, gc[i], _as_f64(mb))


@jit(**_SUMS)
def _centres(v, x, xt):
    """``xt[i]``: ``x[i]`` at the first largest entry of ``v[i] >= 0``."""
    for i in range(v.shape[0]):
        xt[i] = _at_max(v[i], x[i], _as_f64(_max_bits(v[i])))


@jit(**_SUMS)
def _centred_dots(ec, gc, gt, dot):
    """``dot[i] = Σ_k ec[i, k] (gc[i, k] − gt[i])`` (short rows across the rows of a chunk, as
    :func:`_row_sums`)."""
    r, K = ec.shape
    if K < SHORT_ROWS:
        for i in range(r):
            dot[i] = 0.0
        for k in range(K):
            for i in range(r):
                dot[i] += ec[i, k] * (gc[i, k] - gt[i])
    else:
        for i in range(r):
            er, gr, c = ec[i], gc[i], gt[i]
            t = 0.0
            for k in range(K):
                t += er[k] * (gr[k] - c)
            dot[i] = t


@jit(**_EXACT)
def _vjp_rows(ec, gc, s, gt, dot, f, frows, out):
    """``out[i] = f_i · s_i ⊙ (g' − s_i·g')`` with ``g' = gc[i] − gt[i]`` (``gt[i]`` the entry of
    the largest s: see :func:`jacobians._math.softmax_vjp`) and ``s_i = ec[i] / s[i]``: one
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


@jit(**_SUMS)
def _sums_at_top(ec, gc, s, gt):
    """``s[i] = Σ_k ec[i, k]`` and ``gt[i]``: ``gc[i]`` at the first largest entry of
    ``ec[i] >= 0`` (NaN: larger than any number; no entry equals it, and ``gc[i, 0]`` is
    taken). The sum and the maximum of the bits (ordered as the values, see
    :func:`_max_bits`) in one pass, then the first index holding it: integer reductions,
    which vectorize."""
    for i in range(ec.shape[0]):
        er = ec[i]
        K = er.size
        t = 0.0
        mb = 0
        for k in range(K):
            v = er[k]
            t += v
            b = _as_i64(v)
            mb = b if b > mb else mb
        s[i] = t
        m = _as_f64(mb)
        top = K
        for k in range(K):
            top = min(top, k if er[k] == m else K)
        gt[i] = gc[i, top] if top < K else gc[i, 0]


@jit(**_EXACT)
def _softmax_vjp(x, shift, bound, g, f, frows, R, like, out):
    e = np.empty((R, x.shape[1]))
    s = np.empty(R)
    dot = np.empty(R)
    gt = np.empty(R)
    q = np.empty(R)
    for a in range(0, x.shape[0], R):
        ec, bad = _exp_chunk(x, a, shift, bound, like, e)
        if bad:
            return False
        r = ec.shape[0]
        gc = g[a : a + r]
        if x.shape[1] < SHORT_ROWS:
            _sums_and_centres(ec, gc, s, q, gt)
        else:
            _sums_at_top(ec, gc, s, gt)
        _centred_dots(ec, gc, gt, dot)
        _vjp_rows(ec, gc, s, gt, dot, f, frows[a : a + r] if frows.size else frows, out[a : a + r])
    return True


def softmax_vjp(x, g, temperature=1.0, factor=None):
    if x.shape[-1] == 1:  # one class: s = 1 exactly and the VJP is g − g (numpy divides e/e)
        from . import numpy_impl

        return numpy_impl.softmax_vjp(x, g, temperature, factor)
    x2 = _rows(x)
    out = np.empty(x.shape, dtype=x.dtype)
    # the factor over T in x's dtype, as numpy's kernel forms it (then used in float64)
    f = np.asarray(1.0 if factor is None else factor, dtype=x.dtype) / x.dtype.type(temperature)
    if f.ndim:
        frows = np.ascontiguousarray(np.broadcast_to(f, x.shape[:-1]), dtype=np.float64).reshape(-1)
        fs = 1.0
    else:
        frows, fs = _NO_FACTORS, float(f)
    if x2.size:
        _shifted_if_needed(_softmax_vjp, x2, _rows(g), fs, frows, _chunk_rows(x2.shape[1]), x.dtype.type(0),
                           out.reshape(x2.shape))
    return out


@jit(**_EXACT)
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


def simplex_vjp(w, v, x):
    x2 = _rows(x)
    out = np.empty(x.shape, dtype=x.dtype)
    if x2.size:
        R = _chunk_rows(x2.shape[1])
        _simplex_vjp(_rows(w), _rows(v), x2, R, np.empty(R), np.empty(R), out.reshape(x2.shape))
    return out


# -- cross-entropy --------------------------------------------------------------------------------


@jit(**_ENTRY)
def _ratio_log1p(o, e_y, limit):
    """``(log1p(o / e_y), far)`` as :func:`~jacobians._math.log1p_ratio`: ``far`` when
    ``e_y < o·limit`` (the quotient is then not formed; the value is a placeholder)."""
    floor = o * limit
    far = e_y < floor
    return log1p64(o / (e_y if e_y >= floor else floor)), far


@jit(**_EXACT)
def _ratio_rows(o, ey, limit, scale, lv, far, w):
    """Per row: ``lv = log1p(o/e_y)`` and ``far`` (see :func:`_ratio_log1p`), ``w = scale/(o + e_y)``;
    a loop over the rows of a chunk, so that short rows vectorize too."""
    for i in range(o.size):
        lv[i], far[i] = _ratio_log1p(o[i], ey[i], limit)
        w[i] = scale / (o[i] + ey[i])


@jit(**_EXACT)
def _far_value(xr, y, like, e):
    """``log Σ_{k≠y} e^{x_k − m} + (m − x_y)`` for a row whose target lies far below its
    maximum; ``e`` a work buffer of K entries."""
    m = _rowmax(xr)
    _exp_row(xr, m, like, e)
    return log64(_sum_except(e, y)) + (m - xr[y])


@jit(**_EXACT)
def _scale_rows(ec, w, idx, o, gc):
    """``gc[i] = ec[i] w[i]``, then ``−o[i] w[i]`` at the target ``idx[i]``."""
    for i in range(ec.shape[0]):
        c = w[i]
        er, gr = ec[i], gc[i]
        for k in range(er.size):
            gr[k] = er[k] * c
        gr[idx[i]] = -(o[i] * c)  # s_y − 1 = −o/(o + e_y), without the cancellation


@jit(**_EXACT)
def _ce_index(x, shift, bound, idx, valid, scale, limit, R, like, g, values):
    K = x.shape[1]
    e = np.empty((R, K))
    o, w, lv, ey = np.empty(R), np.empty(R), np.empty(R), np.empty(R)
    far = np.zeros(R, dtype=np.bool_)
    ework = np.empty(K)
    for a in range(0, x.shape[0], R):
        ec, bad = _exp_chunk(x, a, shift, bound, like, e)
        if bad:
            return False
        r = ec.shape[0]
        ic = idx[a : a + r]
        _row_sums(ec, ic, _NO_WEIGHTS, o)
        for i in range(r):
            ey[i] = ec[i, ic[i]]
        _ratio_rows(o[:r], ey[:r], limit, scale, lv, far, w)
        for i in range(r):
            if far[i]:
                lv[i] = _far_value(x[a + i], ic[i], like, ework)
            if valid.size:
                w[i] *= valid[a + i]
                lv[i] *= valid[a + i]
            values[a + i] = lv[i]
        _scale_rows(ec, w, ic, o, g[a : a + r])
    return True


def ce_index(x, idx, valid, scale):
    n, K = x.shape
    x2 = _rows(x)
    g = np.empty((n, K), dtype=x.dtype)
    values = np.empty(n, dtype=x.dtype)
    v = np.empty(0, dtype=np.bool_) if valid is None else np.ascontiguousarray(valid, dtype=np.bool_)
    if n:
        limit = 2.0 ** -RATIO_MAX_EXP[x.dtype]
        _shifted_if_needed(_ce_index, x2, np.ascontiguousarray(idx, dtype=np.int64), v, float(scale), limit,
                           _chunk_rows(K), x.dtype.type(0), g, values)
    return values, g


@jit(**_ENTRY)
def _top_entry(s_top, csum, c_top, rest, total):
    """``s·Σc − c`` at the row's maximum as ``s (Σc − c) − c (1 − s)``, ``1 − s = rest/total``."""
    return s_top * (csum - c_top) - c_top * (rest / total)


@jit(**_SUMS)
def _coefficient_sums(cr, sh):
    """``(Σ_k c_k, Σ_k c_k sh_k)``."""
    csum = 0.0
    cdot = 0.0
    for k in range(cr.size):
        csum += cr[k]
        cdot += cr[k] * sh[k]
    return csum, cdot


@jit(**_EXACT)
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
        gr[top] = _top_entry(1.0 / total, csum, cr[top], rest, total)


def ce_coefficients(x, c):
    x2 = _rows(x)
    values = np.empty(x.shape[:-1], dtype=x.dtype)
    g = np.empty(x.shape, dtype=x.dtype)
    if x2.size:
        _ce_coefficients(x2, _rows(np.asarray(c, dtype=x.dtype)), x.dtype.type(0), values.reshape(-1), g.reshape(x2.shape))
    return values, g


# -- sigmoid + binary cross-entropy -------------------------------------------------------------------


@jit(**_ENTRY)
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


@jit(**_EXACT)
def _bce_plain(z, y, scale, like, values, grad):
    for j in range(z.size):
        v, d = _bce_entry(z[j], np.float64(y[j]), like)
        values[j] = v
        grad[j] = d * scale


def sigmoid_bce_plain(z, y, scale, need_values):
    zf, yf = _rows(z).reshape(-1), _rows(y).reshape(-1)
    grad = np.empty_like(zf)
    like = z.dtype.type(0)
    if need_values:
        values = np.empty_like(zf)
        _bce_plain(zf, yf, float(scale), like, values, grad)
        return values, None, grad
    # the values of each piece of CHUNK_ENTRIES into a reused buffer, added as numpy's kernel
    # (and _math.total, and a Dask graph gathering the values) adds them: the same total to the bit
    total = 0.0
    for c in row_chunks(zf.size, 1):
        v = scratch(c.stop - c.start, z.dtype, 3)
        _bce_plain(zf[c], yf[c], float(scale), like, v, grad[c])
        total += v.sum(dtype=np.float64)
    return None, z.dtype.type(total), grad


@jit(**_ENTRY)
def _bce_weighted_entry(z, y, py, like):
    zd = np.float64(z)
    e = expw(-abs(zd), like)
    l1, inv = log1p_unit(e)  # inv = 1/(1 + e) = σ(|z|)
    pos = zd > 0
    sig = inv if pos else e * inv
    sig_neg = e * inv if pos else inv
    value = (1.0 - y) * (max(zd, 0.0) + l1) + py * (max(-zd, 0.0) + l1)
    return value, (1.0 - y) * sig - py * sig_neg


@jit(**_EXACT)
def _bce_weighted(z, y, py, like, values, grad):
    for j in range(z.size):
        v, d = _bce_weighted_entry(z[j], np.float64(y[j]), np.float64(py[j]), like)
        values[j] = v
        grad[j] = d


def sigmoid_bce_weighted(z, y, py):
    values = np.empty(z.shape, dtype=z.dtype)
    grad = np.empty(z.shape, dtype=z.dtype)
    flat = [_rows(np.broadcast_to(a, z.shape)).reshape(-1) for a in (z, y, py)]
    _bce_weighted(*flat, z.dtype.type(0), values.reshape(-1), grad.reshape(-1))
    return values, grad


# -- dense Jacobians ------------------------------------------------------------------------------------


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
    """``(total, top, others)`` of a row v >= 0 as :func:`~jacobians._math.complement_sums`
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
    the complement sums taken per row as numpy's :func:`~jacobians._math.complement_sums`
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


def dense_diag_minus_rank_one(d, u, v, out, exact=None, projector=False):
    if out.size:
        ex = np.empty((0, 0), dtype=d.dtype) if exact is None else _rows(exact)
        _dense_dmr(_rows(d), _rows(u), _rows(v), ex, bool(projector and exact is None), d.dtype.type(0.5), out)


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


def dense_diagonal(d, out):
    if out.size:
        _dense_diag(_rows(d), out)
