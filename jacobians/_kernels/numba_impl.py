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

The shift by the row max is decided as numpy decides it (:func:`~jacobians.numerics.softmax.exp_is_safe`
over the whole input), so both kernel sets compute the same formula on the same rows; the
check costs no pass of its own (see :func:`_shifted_if_needed`).

Compiler flags: the loops that add up rows are functions of their own compiled with
``fastmath={'reassoc', 'contract'}`` (a sum may be reordered, which vectorizes it) and
call no elementary function; everything whose rounding matters (the elementary functions,
the per-entry formulas, the loops calling them) is compiled with ``contract`` only, the
per-entry helpers inlined by numba into those loops. A row max uses ``nnan`` only after
the row was checked for NaN.

This module holds the interface (thin Python wrappers that shape the arrays and pick the
chunk size); the compiled loops live by job in :mod:`.numba_rows` (row helpers, flags),
:mod:`.numba_softmax`, :mod:`.numba_losses` and :mod:`.numba_dense`.
"""

from __future__ import annotations

import numpy as np

from ..numerics.buffers import row_chunks, scratch
from ..numerics.parallel import run_in_row_blocks
from ..numerics.softmax import EXP_SAFE_BOUND, RATIO_MAX_EXP
from .interface import INTERFACE
from .numba_dense import _dense_diag, _dense_dmr
from .numba_focal import (
    _binary_focal,
    _binary_focal_sq,
    _focal_coefficient_chunks,
    _focal_coefficient_chunks_sq,
    _focal_coefficients,
    _focal_coefficients_sq,
    _focal_index,
    _poly_index,
)
from .numba_losses import _bce_plain, _bce_weighted, _ce_coefficients, _ce_index
from .numba_poisson import _poisson_log, _poisson_log_exp
from .numba_ranking import _plackett_luce, _plackett_luce_hvp, _ranking_flaw
from .numba_rows import _sum
from .numba_softmax import _log_softmax, _simplex_vjp, _softmax, _softmax_vjp

__all__ = ["target", *INTERFACE]

#: rows are processed in chunks of about this many entries (a float64 work buffer of
#: 16 KiB: the chunk's exps stay in L1 between the passes over them); read at each call
CHUNK = 2048


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


def _chunk_rows(K):
    """Rows a chunk holds: about :data:`CHUNK` entries, at least one row."""
    return max(1, CHUNK // max(K, 1))


def _frozen(x):
    """A read-only view of ``x`` (``x`` itself when read-only already). The kernels read
    every input through one: numba compiles (and loads from its cache) a signature for
    each combination of writable and read-only arguments, which would be four of every
    kernel of two inputs; with them, one a dtype."""
    if not x.flags.writeable:
        return x
    v = x.view()
    v.flags.writeable = False
    return v


def _rows(x):
    """``x`` as read-only C-contiguous rows ``(n, K)`` (no copy when it is C-contiguous
    already; :func:`_frozen`): what the kernels read."""
    K = x.shape[-1]
    n = x.size // K if K else 0
    return _frozen(np.ascontiguousarray(x).reshape(n, K))


def _shifted_if_needed(kernel, x, *args) -> None:
    """``kernel(x, shift, bound, *args)`` as numpy decides the shift
    (:func:`~jacobians.numerics.softmax.exp_is_safe`: unshifted only when every entry is in ``[−B, B]``),
    without a pass of its own: the kernel runs unshifted, counting the entries out of
    bounds as it takes their exps, and returns False at the first chunk holding one;
    it then runs again, shifted, over every row."""
    bound = EXP_SAFE_BOUND[x.dtype]
    if not kernel(x, False, bound, *args):
        kernel(x, True, bound, *args)


_NO_FACTORS = _frozen(np.empty(0))

#: a row kernel runs its rows on every core once one core would take about this long: the
#: kernels release the GIL (compiled ``nogil``) and rows do not interact, but handing rows to
#: another thread has a fixed cost (about 120 µs on a 2-core VM, where the idle core must be
#: woken); measured, a split paid from 200–300 µs of one core's work on, whatever the kernel
ROWS_PARALLEL_MIN_SECONDS = 250e-6

#: one core's time of each row kernel, ``(ns a row, ns an entry)``, fitted to its single-thread
#: times (2-core Intel Xeon, AVX-512; N = 256…4096, K = 10 and 100, both dtypes: within 20 %).
#: The coefficient rows cost more: a pass per row over the ``K`` entries for each of their sums
#: and maxima, where the index rows take their exps over whole chunks.
FOCAL_INDEX_COST = (20.0, 1.6)
FOCAL_COEFFICIENTS_COST = (125.0, 4.8)
FOCAL_COEFFICIENT_CHUNKS_COST = (20.0, 4.0)
POISSON_LOG_COST = (0.0, 1.8)  # (its "rows" are pieces of CHUNK_ENTRIES)

#: coefficient rows shorter than this go a chunk of rows at a time (against the row-at-a-time
#: kernel, AVX-512 / AVX2 builds: 4.0–4.5× / 3.1–3.8× at K = 4, 2.5–2.8× / 2.5× at 10,
#: 1.7–1.9× / 1.9–2.0× at 31, 1.2× / 1.3× at 100, 0.8–0.9× / 0.9–1.0× at 1000)
COEFFICIENT_CHUNKS_BELOW = 128


def _on_rows(work, n_rows: int, K: int, out_nbytes: int, cost: tuple[float, float]) -> None:
    """``work(rows)`` over the rows: on the calling thread alone when the estimated time
    (``cost``: ns a row, ns an entry) is under :data:`ROWS_PARALLEL_MIN_SECONDS`, else over
    row blocks on every core (:func:`~jacobians.numerics.parallel.run_in_row_blocks`)."""
    if _one_core(n_rows, K, cost):
        work(slice(0, n_rows))
    else:
        run_in_row_blocks(work, n_rows, out_nbytes, None, min_bytes=0)


def _one_core(n_rows: int, K: int, cost: tuple[float, float]) -> bool:
    """True when one core's estimated time (``cost``: ns a row, ns an entry) is under
    :data:`ROWS_PARALLEL_MIN_SECONDS`."""
    return n_rows * (cost[0] + K * cost[1]) * 1e-9 < ROWS_PARALLEL_MIN_SECONDS


def _shifted_rows_if_needed(call, n_rows: int, K: int, out_nbytes: int, cost: tuple[float, float]) -> None:
    """:func:`_shifted_if_needed` over row blocks on every core (:func:`_on_rows`): ``call(rows, shift)`` runs
    the kernel on the rows ``rows`` and returns False when it met an entry out of bounds
    unshifted. The shift is decided for the whole array, as numpy decides it: one block out
    of bounds and every row runs again shifted (each row's result is the single-threaded
    kernel's, bit for bit, however the rows are split)."""
    if _one_core(n_rows, K, cost):  # (without the closures below)
        every = slice(0, n_rows)
        if not call(every, False):
            call(every, True)
        return
    out_of_bounds = []

    def unshifted(rows):
        if not call(rows, False):
            out_of_bounds.append(rows)

    _on_rows(unshifted, n_rows, K, out_nbytes, cost)
    if out_of_bounds:
        _on_rows(lambda rows: call(rows, True), n_rows, K, out_nbytes, cost)


# -- softmax, log-softmax, the softmax VJP, the simplex maps' product --------------------


def softmax(x, out=None):
    x2 = _rows(x)
    res = np.empty(x.shape, dtype=x.dtype) if out is None else out
    if x2.size:
        _shifted_if_needed(_softmax, x2, _chunk_rows(x2.shape[1]), x.dtype.type(0), res.reshape(x2.shape))
    return res


def log_softmax(x):
    x2 = _rows(x)
    out = np.empty(x.shape, dtype=x.dtype)
    if x2.size:
        _log_softmax(x2, x.dtype.type(0), out.reshape(x2.shape))
    return out


def softmax_vjp(x, g, temperature=1.0, factor=None):
    if x.shape[-1] == 1:  # one class: s = 1 exactly and the VJP is g − g (numpy divides e/e)
        from . import numpy_impl

        return numpy_impl.softmax_vjp(x, g, temperature, factor)
    x2 = _rows(x)
    out = np.empty(x.shape, dtype=x.dtype)
    # the factor over T in x's dtype, as numpy's kernel forms it (then used in float64)
    f = np.asarray(1.0 if factor is None else factor, dtype=x.dtype) / x.dtype.type(temperature)
    if f.ndim:
        frows = _frozen(np.ascontiguousarray(np.broadcast_to(f, x.shape[:-1]), dtype=np.float64).reshape(-1))
        fs = 1.0
    else:
        frows, fs = _NO_FACTORS, float(f)
    if x2.size:
        _shifted_if_needed(_softmax_vjp, x2, _rows(g), fs, frows, _chunk_rows(x2.shape[1]), x.dtype.type(0),
                           out.reshape(x2.shape))
    return out


def simplex_vjp(w, v, x):
    x2 = _rows(x)
    out = np.empty(x.shape, dtype=x.dtype)
    if x2.size:
        R = _chunk_rows(x2.shape[1])
        _simplex_vjp(_rows(w), _rows(v), x2, R, np.empty(R), np.empty(R), out.reshape(x2.shape))
    return out


# -- cross-entropy, sigmoid + binary cross-entropy --------------------------------------


def ce_index(x, idx, valid, scale):
    n, K = x.shape
    x2 = _rows(x)
    g = np.empty((n, K), dtype=x.dtype)
    values = np.empty(n, dtype=x.dtype)
    v = _frozen(np.empty(0, dtype=np.bool_) if valid is None else np.ascontiguousarray(valid, dtype=np.bool_))
    if n:
        limit = 2.0 ** -RATIO_MAX_EXP[x.dtype]
        _shifted_if_needed(_ce_index, x2, _frozen(np.ascontiguousarray(idx, dtype=np.int64)), v, float(scale), limit,
                           _chunk_rows(K), x.dtype.type(0), g, values)
    return values, g


def ce_coefficients(x, c):
    x2 = _rows(x)
    values = np.empty(x.shape[:-1], dtype=x.dtype)
    g = np.empty(x.shape, dtype=x.dtype)
    if x2.size:
        _ce_coefficients(x2, _rows(np.asarray(c, dtype=x.dtype)), x.dtype.type(0), values.reshape(-1), g.reshape(x2.shape))
    return values, g


def sigmoid_bce_plain(z, y, scale, need_values):
    zf, yf = _rows(z).reshape(-1), _rows(y).reshape(-1)
    grad = np.empty_like(zf)
    like = z.dtype.type(0)
    if need_values:
        values = np.empty_like(zf)
        _bce_plain(zf, yf, float(scale), like, values, grad)
        return values, None, grad
    # the values of each piece of CHUNK_ENTRIES into a reused buffer, added as numpy's kernel
    # (and numerics.buffers.total, and a Dask graph gathering the values) adds them: the same total to the bit
    total = 0.0
    for c in row_chunks(zf.size, 1):
        v = scratch(c.stop - c.start, z.dtype, 3)
        _bce_plain(zf[c], yf[c], float(scale), like, v, grad[c])
        total += v.sum(dtype=np.float64)
    return None, z.dtype.type(total), grad


def sigmoid_bce_weighted(z, y, py):
    values = np.empty(z.shape, dtype=z.dtype)
    grad = np.empty(z.shape, dtype=z.dtype)
    flat = [_rows(np.broadcast_to(a, z.shape)).reshape(-1) for a in (z, y, py)]
    _bce_weighted(*flat, z.dtype.type(0), values.reshape(-1), grad.reshape(-1))
    return values, grad


# -- focal losses -------------------------------------------------------------------------


def _gamma_int(gamma):
    """γ as 0, 1, 2 or 3 when it is one of them (the kernels multiply), else −1 (``pow``)."""
    return int(gamma) if gamma in (0.0, 1.0, 2.0, 3.0) else -1


def focal_index(x, idx, w, gamma, scale):
    n, K = x.shape
    g = np.empty((n, K), dtype=x.dtype)
    values = np.empty(n, dtype=x.dtype)
    wr = _NO_FACTORS if w is None else _frozen(np.ascontiguousarray(w, dtype=np.float64))
    if n and K:
        xr, ir = _rows(x), _frozen(np.ascontiguousarray(idx, dtype=np.int64))
        bound, limit, like = EXP_SAFE_BOUND[x.dtype], 2.0 ** -RATIO_MAX_EXP[x.dtype], x.dtype.type(0)
        args = (float(gamma), _gamma_int(gamma), float(x.dtype.type(scale)), limit, _chunk_rows(K), like)

        def call(rows, shift):
            return _focal_index(xr[rows], shift, bound, ir[rows], wr[rows] if wr.size else wr, *args, g[rows], values[rows])

        _shifted_rows_if_needed(call, n, K, g.nbytes, FOCAL_INDEX_COST)
    return values, g


def poly_index(x, idx, epsilon, scale):
    n, K = x.shape
    g = np.empty((n, K), dtype=x.dtype)
    values = np.empty(n, dtype=x.dtype)
    if n and K:
        _shifted_if_needed(_poly_index, _rows(x), _frozen(np.ascontiguousarray(idx, dtype=np.int64)), float(epsilon),
                           float(x.dtype.type(scale)), 2.0 ** -RATIO_MAX_EXP[x.dtype], _chunk_rows(K), x.dtype.type(0),
                           g, values)
    return values, g


def focal_coefficients(x, c, gamma, scale):
    x2 = _rows(x)
    values = np.empty(x.shape[:-1], dtype=x.dtype)
    g = np.empty(x.shape, dtype=x.dtype)
    if x2.size:
        n, K = x2.shape
        c2, v2, g2 = _rows(np.asarray(c, dtype=x.dtype)), values.reshape(-1), g.reshape(x2.shape)
        s, like = float(x.dtype.type(scale)), x.dtype.type(0)
        if K < COEFFICIENT_CHUNKS_BELOW:  # a chunk of rows at a time (the exps unshifted where they may be)
            kernel = _focal_coefficient_chunks_sq if gamma == 2 else _focal_coefficient_chunks
            bound, R, gf, gi = EXP_SAFE_BOUND[x.dtype], _chunk_rows(K), float(gamma), _gamma_int(gamma)

            def call(rows, shift):
                return kernel(x2[rows], shift, bound, c2[rows], gf, gi, s, R, like, v2[rows], g2[rows])

            _shifted_rows_if_needed(call, n, K, g.nbytes, FOCAL_COEFFICIENT_CHUNKS_COST)
        else:  # a row at a time, each shifted by its maximum
            kernel = _focal_coefficients_sq if gamma == 2 else _focal_coefficients
            args = (float(gamma), _gamma_int(gamma), s, like)
            _on_rows(lambda rows: kernel(x2[rows], c2[rows], *args, v2[rows], g2[rows]), n, K, g.nbytes,
                     FOCAL_COEFFICIENTS_COST)
    return values, g


def binary_focal(z, t, gamma, alpha, scale):
    values = np.empty(z.shape, dtype=z.dtype)
    grad = np.empty(z.shape, dtype=z.dtype)
    zf, tf = (_rows(np.broadcast_to(a, z.shape)).reshape(-1) for a in (z, t))
    if zf.size:
        kernel = _binary_focal_sq if gamma == 2 else _binary_focal
        kernel(zf, tf, float(gamma), _gamma_int(gamma), -1.0 if alpha is None else float(alpha),
                      float(z.dtype.type(scale)), z.dtype.type(0), values.reshape(-1), grad.reshape(-1))
    return values, grad


# -- ranking -------------------------------------------------------------------------------


def plackett_luce(a, y, scale):
    n, M = a.shape
    R = y.shape[-1]
    if not (n and M and R):
        from . import numpy_impl

        return numpy_impl.plackett_luce(a, y, scale)
    values = np.empty(n, dtype=a.dtype)
    g = np.empty((n, M), dtype=a.dtype)
    _plackett_luce(_rows(a), _frozen(np.ascontiguousarray(y, dtype=np.int64)), float(a.dtype.type(scale)),
                   a.dtype.type(0), values, g)
    return values, g


def plackett_luce_hvp(a, y, v, scale):
    n, M = a.shape
    if not (n and M and y.shape[-1]):
        from . import numpy_impl

        return numpy_impl.plackett_luce_hvp(a, y, v, scale)
    out = np.empty((n, M), dtype=a.dtype)
    _plackett_luce_hvp(_rows(a), _frozen(np.ascontiguousarray(y, dtype=np.int64)), _rows(np.asarray(v, dtype=a.dtype)),
                       float(a.dtype.type(scale)), a.dtype.type(0), out)
    return out


def ranking_flaw(y, M):
    return bool(y.size) and bool(_ranking_flaw(_frozen(np.ascontiguousarray(y, dtype=np.int64)), int(M)))


# -- the Poisson log link ------------------------------------------------------------------


def poisson_log(z, y, scale, need_values):
    zf, yf = _rows(z).reshape(-1), _rows(y).reshape(-1)
    grad = np.empty_like(zf)
    values = np.empty_like(zf) if need_values else None
    s = float(z.dtype.type(scale))
    # the values piece by piece (pieces of CHUNK_ENTRIES, on every core when large), each
    # piece summed in float64, the pieces' sums then added in order: the same total however
    # the pieces are shared among the threads
    pieces = row_chunks(zf.size, 1)
    totals = np.zeros(len(pieces))
    bad = np.zeros(len(pieces), dtype=np.int64)

    def work(block):
        with np.errstate(over="ignore", invalid="ignore"):  # (inf at z past the exp limit, as torch's)
            for i in range(block.start, block.stop):
                c = pieces[i]
                v = values[c] if need_values else scratch(c.stop - c.start, z.dtype, 3)  # (per thread)
                if z.dtype == np.float64:
                    bad[i] = _poisson_log_exp(zf[c], yf[c], s, v, grad[c])
                else:
                    np.exp(zf[c], out=grad[c])
                    bad[i] = _poisson_log(zf[c], yf[c], s, v, grad[c])
                if not need_values:
                    totals[i] = _sum(v)  # (a vectorized float64 sum: numpy's pairwise one cost as much as the exps)

    _on_rows(work, len(pieces), pieces[0].stop - pieces[0].start, grad.nbytes, POISSON_LOG_COST)
    total = 0.0
    for t in totals.tolist():
        total += t
    return values, (None if need_values else z.dtype.type(total)), grad, int(bad.sum())


# -- dense Jacobians --------------------------------------------------------------------


def dense_diag_minus_rank_one(d, u, v, out, exact=None, projector=False):
    if out.size:
        ex = _frozen(np.empty((0, 0), dtype=d.dtype)) if exact is None else _rows(exact)
        _dense_dmr(_rows(d), _rows(u), _rows(v), ex, bool(projector and exact is None), d.dtype.type(0.5), out)


def dense_diagonal(d, out):
    if out.size:
        _dense_diag(_rows(d), out)
