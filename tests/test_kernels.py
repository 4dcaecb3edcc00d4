"""The numba kernel set (the ``fast`` extra) against the numpy set and long double, and its
elementary functions against long double, numpy and :mod:`math` over the whole float range.

Skipped when numba is not installed; CI runs the whole suite once with numba and once with
``JACOBIANS_KERNELS=numpy`` (which kernels the package runs does not matter here: these
tests call both sets directly). Which set is chosen: ``test_kernel_selection.py``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jacobians._kernels import numpy_impl
from jacobians.numerics import algebra, buffers
from jacobians.numerics import softmax as nsoftmax

numba = pytest.importorskip("numba", reason="the fast extra (numba) is not installed")
from jacobians._kernels import numba_impl, numba_math  # noqa: E402

LD = np.longdouble
RAISE = {"over": "raise", "divide": "raise", "invalid": "raise"}


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=600,
    )


# -- the numba set ------------------------------------------------------------------------------



def _vectorized(fn):
    @numba.njit(fastmath={"contract"}, error_model="numpy")
    def run(x, out):
        for i in range(x.size):
            out[i] = fn(x[i])

    def call(x):
        out = np.empty_like(x)
        run(x, out)
        return out

    return call


def _vectorized_pair(fn):
    @numba.njit(fastmath={"contract"}, error_model="numpy")
    def run(x, a, b):
        for i in range(x.size):
            a[i], b[i] = fn(x[i])

    def call(x):
        a, b = np.empty_like(x), np.empty_like(x)
        run(x, a, b)
        return a, b

    return call


EXP64 = _vectorized(numba_math.exp64)
EXP32 = _vectorized(numba_math.exp32)
EXP64_IN_BOUNDS = _vectorized(numba_math.exp64_in_bounds)
EXP32_WIDE = _vectorized(numba_math.exp32_wide)
EXP32_WIDE_IN_BOUNDS = _vectorized(numba_math.exp32_wide_in_bounds)
LOG64 = _vectorized(numba_math.log64)
LOG1P64 = _vectorized(numba_math.log1p64)
LOG1P32 = _vectorized(numba_math.log1p32)


def _ulps(value: np.ndarray, ref: np.ndarray, dtype) -> np.ndarray:
    """|value − ref| in units of the last place of ref rounded to dtype (the smallest
    subnormal for subnormal refs); 0 where both are the same inf or NaN."""
    value = value.astype(LD)
    with np.errstate(invalid="ignore", over="ignore"):
        rounded = ref.astype(dtype)
        same = (value == ref) | (np.isnan(value) & np.isnan(ref)) | (np.isinf(rounded) & (value == rounded))
        spacing = np.spacing(np.abs(rounded)).astype(LD)
        err = np.abs(value - ref) / spacing
    return np.where(same, 0, err)


def _all_doubles(rng, n: int, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``n`` float64s drawn uniformly over the bit patterns (every exponent alike, subnormals,
    both signs), clipped to [lo, hi] when given, plus a uniform sample of [lo, hi]."""
    bits = rng.integers(0, 0x7FF0000000000000, size=n, dtype=np.int64) * rng.choice([1, -1], size=n)
    x = np.abs(bits).view(np.float64) * np.sign(bits)
    if lo is not None:
        x = np.concatenate([np.clip(x, lo, hi), rng.uniform(lo, hi, size=n)])
    return x


def _all_floats(rng, n: int, lo: float, hi: float) -> np.ndarray:
    bits = rng.integers(0, 0x7F800000, size=n, dtype=np.int32).view(np.float32)
    signed = np.where(rng.random(n) < 0.5, bits, -bits)
    return np.concatenate([np.clip(signed, lo, hi), rng.uniform(lo, hi, size=n).astype(np.float32)])


SPECIAL64 = np.array([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 1.0, -1.0, np.inf, -np.inf, np.nan])


def test_exp64_is_within_one_ulp_over_the_whole_range(rng):
    """Every float64 in [−746, 710] (bit patterns and a uniform sample), the subnormal outputs
    below −708.4, the overflow edge and the special values, against long double, numpy and math."""
    top = float(np.log(np.finfo(np.float64).max))  # 709.78...
    x = np.concatenate([
        _all_doubles(rng, 1 << 20, -746.0, 710.0),
        rng.uniform(-745.2, -708.4, 1 << 18),  # subnormal outputs
        np.nextafter(top, np.array([-np.inf, np.inf])), [top, -745.13321910194122, -745.1332191019411, 709.0, -709.0],
        SPECIAL64,
    ])
    with np.errstate(**RAISE):
        e = EXP64(x)
    ref = np.exp(x.astype(LD))
    ulps = _ulps(e, ref, np.float64)
    assert float(ulps.max()) <= 1.0, f"{float(ulps.max()):.3f} ulp at x = {x[ulps.argmax()]!r}"
    assert np.all(np.isnan(e) == np.isnan(x))
    assert EXP64(np.array([np.inf, -np.inf, 0.0, 710.0, -746.0])).tolist() == [np.inf, 0.0, 1.0, np.inf, 0.0]
    with np.errstate(over="ignore"):
        assert float(_ulps(e, np.exp(x).astype(LD), np.float64).max()) <= 2.0  # numpy's own exp
    sample = x[:: 97]
    assert float(_ulps(EXP64(sample), np.array([math.exp(v) if v < 709.8 else np.inf for v in sample], LD), np.float64).max()) <= 2.0


def test_the_in_bounds_exps_are_the_full_ones_bit_for_bit_within_their_bounds(rng):
    """The unshifted kernels' exps skip the clamp, the NaN select and (float64) the second
    power of two: up to their bounds (100 for float32 work, 700 for float64) they give
    :func:`exp32_wide`'s and :func:`exp64`'s numbers to the bit, and the kernels take them
    only below ``EXP_SAFE_BOUND``, which lies within."""
    assert nsoftmax.EXP_SAFE_BOUND[np.dtype(np.float32)] <= 100.0
    assert nsoftmax.EXP_SAFE_BOUND[np.dtype(np.float64)] <= 700.0
    x32 = np.concatenate([_all_floats(rng, 1 << 18, -100.0, 100.0), np.float32([0.0, -0.0, 100.0, -100.0, 1e-45])])
    x32 = x32.astype(np.float64)
    assert np.array_equal(EXP32_WIDE_IN_BOUNDS(x32), EXP32_WIDE(x32))
    bits = rng.integers(0, 0x7FF0000000000000, size=1 << 18, dtype=np.int64).view(np.float64)
    x64 = np.concatenate([np.clip(np.where(rng.random(bits.size) < 0.5, bits, -bits), -700.0, 700.0),
                          rng.uniform(-700.0, 700.0, 1 << 18), [0.0, -0.0, 700.0, -700.0, 5e-324, -1e-300]])
    assert np.array_equal(EXP64_IN_BOUNDS(x64), EXP64(x64))


def test_exp32_is_within_half_an_ulp_and_a_bit(rng):
    """float32 exp computed in float64 and rounded once: correctly rounded but for double
    rounding (numpy's float32 exp is off by up to 2.4 ulp), subnormal outputs included."""
    x = np.concatenate([_all_floats(rng, 1 << 20, -110.0, 100.0), rng.uniform(-103.98, -87.3, 1 << 17).astype(np.float32),
                        np.array([88.72283, 88.72284, -103.97208, -103.97209, 0.0, np.inf, -np.inf, np.nan], np.float32)])
    with np.errstate(**RAISE):
        e = EXP32(x)
    assert e.dtype == np.float32
    ulps = _ulps(e, np.exp(x.astype(LD)), np.float32)
    assert float(ulps.max()) <= 0.51, f"{float(ulps.max()):.3f} ulp at x = {x[ulps.argmax()]!r}"
    with np.errstate(over="ignore", under="ignore"):
        assert float(_ulps(e, np.exp(x).astype(LD), np.float32).max()) <= 3.0  # numpy's float32 exp


def test_log64_is_within_one_ulp_over_the_whole_range(rng):
    x = np.concatenate([np.abs(_all_doubles(rng, 1 << 20)), rng.uniform(0.5, 2.0, 1 << 18),
                        1 + rng.uniform(-1e-6, 1e-6, 1 << 16), np.array([5e-324, 1e-310, 2.2250738585072014e-308, 1.0, 1.7976931348623157e308])])
    with np.errstate(**RAISE):
        y = LOG64(x)
    ulps = _ulps(y, np.log(x.astype(LD)), np.float64)
    assert float(ulps.max()) <= 1.0, f"{float(ulps.max()):.3f} ulp at x = {x[ulps.argmax()]!r}"
    assert float(_ulps(y, np.log(x).astype(LD), np.float64).max()) <= 2.0
    assert float(_ulps(y[::97], np.array([math.log(v) for v in x[::97]], LD), np.float64).max()) <= 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        special = LOG64(np.array([0.0, -0.0, -1.0, -np.inf, np.inf, np.nan, 1.0]))
    assert special[:2].tolist() == [-np.inf, -np.inf] and np.isnan(special[2:4]).all()
    assert special[4] == np.inf and np.isnan(special[5]) and special[6] == 0.0


def test_log1p64_is_within_one_ulp_over_the_whole_range(rng):
    """x > −1 (bit patterns of both signs, subnormals — where log1p(x) = x exactly — and the
    region near −1), against long double, numpy and math."""
    pos = np.abs(_all_doubles(rng, 1 << 20))
    neg = -np.abs(_all_doubles(rng, 1 << 19, -1.0, 1.0))
    near = -1 + np.geomspace(1e-16, 1, 1 << 16)
    x = np.concatenate([pos, neg[neg > -1], near, rng.uniform(-0.3, 1.0, 1 << 18), [0.0, -0.0, 5e-324, -5e-324, 1e-20, -1e-20, 1.7976931348623157e308]])
    with np.errstate(**RAISE):
        y = LOG1P64(x)
    ulps = _ulps(y, np.log1p(x.astype(LD)), np.float64)
    assert float(ulps.max()) <= 1.0, f"{float(ulps.max()):.3f} ulp at x = {x[ulps.argmax()]!r}"
    tiny = np.abs(x) < 1e-17
    assert np.array_equal(y[tiny], x[tiny])
    assert float(_ulps(y, np.log1p(x).astype(LD), np.float64).max()) <= 2.0
    assert float(_ulps(y[::97], np.array([math.log1p(v) for v in x[::97]], LD), np.float64).max()) <= 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        special = LOG1P64(np.array([-1.0, -1.5, -np.inf, np.inf, np.nan]))
    assert special[0] == -np.inf and np.isnan(special[1:3]).all() and special[3] == np.inf and np.isnan(special[4])
    unit = np.concatenate([rng.random(1 << 18), np.geomspace(1e-300, 1, 1 << 16), [0.0, 1.0, 5e-324]])
    l1, inv = _vectorized_pair(numba_math.log1p_unit)(unit)  # sigmoid + BCE's log1p on [0, 1]
    assert float(_ulps(l1, np.log1p(unit.astype(LD)), np.float64).max()) <= 1.0
    assert np.array_equal(inv, 1 / (1 + unit))
    x32 = _all_floats(rng, 1 << 18, -0.999, 1e30)
    assert float(_ulps(LOG1P32(x32), np.log1p(x32.astype(LD)), np.float32).max()) <= 0.51


def test_the_elementary_functions_vectorize():
    """A loop calling them compiles to vector code (ymm or zmm registers, where the CPU has
    AVX) with no call into the C library's exp or log."""
    import llvmlite.binding as llvm

    @numba.njit(fastmath={"contract"}, error_model="numpy")
    def loop(x, out):
        for i in range(x.size):
            out[i] = numba_math.log1p64(numba_math.exp64(x[i])) + numba_math.log64(x[i])

    loop(np.ones(64), np.empty(64))
    asm = next(iter(loop.inspect_asm().values()))
    assert "exp@" not in asm and "log@" not in asm and "log1p@" not in asm
    if llvm.get_host_cpu_features().get("avx2", False) or os.environ.get("NUMBA_CPU_FEATURES", "").find("+avx2") >= 0:
        assert "ymm" in asm or "zmm" in asm, "no vector registers in the loop"


# -- numba kernels against numpy kernels --------------------------------------------------------

DTYPES = (np.float64, np.float32)


def _edge_logits(rng, dtype, n=200, K=7):
    """Rows across the kernels' branches: normal logits, the unshifted-exp bound B and just
    past it, ±1e4 (shifted), zeros, tiny and subnormal entries, rows spreading up to 2B."""
    B = nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)]
    tiny = np.finfo(dtype).smallest_subnormal
    rows = [
        rng.normal(size=(n, K)),
        rng.normal(size=(n, K)) * 10,
        np.zeros((3, K)),
        np.full((3, K), tiny),
        rng.choice([0.0, tiny, -tiny, 1e-30], size=(n, K)),
        B - rng.random((n, K)) * 2 * B,
        np.where(rng.random((n, K)) < 0.5, B, -B),
    ]
    safe = np.concatenate(rows).astype(dtype)
    past = safe.copy()
    past[::5, 0] = np.nextafter(dtype(B), dtype(np.inf))
    big = (rng.normal(size=(n, K)) * 3 + rng.choice([1e4, -1e4], size=(n, 1))).astype(dtype)
    return {"safe": safe, "past_bound": past, "1e4": big}


def _assert_ulps(a, b, dtype, max_ulps, what):
    ulps = _ulps(np.asarray(a), np.asarray(b).astype(LD), dtype)
    assert float(ulps.max()) <= max_ulps, f"{what}: {float(ulps.max()):.2f} ulp"


def _assert_close_at_scale(a, b, scale, dtype, k, what, numpy_result=None):
    """``|a − b| <= k·eps·scale`` entry by entry (``b`` exact; ``scale`` what the entry's
    round-off scales with), or within k·eps·scale of numpy's own error where that is larger
    (the rounding of ``z − max`` on the shifted path, which both kernels share)."""
    unit = np.finfo(dtype).eps * np.asarray(scale, LD)
    err = np.abs(np.asarray(a, LD) - np.asarray(b, LD))
    allowed = k * unit + np.finfo(dtype).tiny
    if numpy_result is not None:
        allowed = allowed + np.abs(np.asarray(numpy_result, LD) - np.asarray(b, LD))
    assert np.all(err <= allowed), f"{what}: {float((err / allowed).max()):.2f} of the allowed error"


#: the most a numba kernel's result may be off the long-double reference, in ulps, and
#: the most it may be off numpy's (float64: both kernels are a few ulp from exact, with
#: different summation orders, so they differ by up to the sum of their errors; float32:
#: the numba kernels work in float64, numpy's float32 exp alone is off by 2.4 ulp and its
#: shifted logits z − max are rounded to float32, up to ~64 ulp on tiny probabilities)
EXACT_ULPS = {np.float64: 4.0, np.float32: 1.0}
NUMPY_ULPS = {np.float64: 6.0, np.float32: 128.0}


def _check_ulps(got, numpy_result, exact, dtype, what, exact_ulps=None):
    """``got`` (numba) within EXACT_ULPS of ``exact`` in every entry, or within EXACT_ULPS
    more than numpy's own error there where that is larger (the shifted path rounds
    ``z − max``: a tiny probability then carries the relative error of its exponent in
    both kernels); and
    within NUMPY_ULPS of numpy's result where numpy's is within EXACT_ULPS of exact."""
    mine = _ulps(np.asarray(got), exact, dtype)
    theirs = _ulps(np.asarray(numpy_result), exact, dtype)
    bound = EXACT_ULPS[dtype] if exact_ulps is None else exact_ulps
    bound = np.maximum(bound, theirs + bound)
    worst = int(np.argmax(mine - bound))
    assert np.all(mine <= bound), (
        f"{what}: {float(mine.flat[worst]):.2f} ulp from exact where numpy is {float(theirs.flat[worst]):.2f}"
    )
    good = theirs <= EXACT_ULPS[dtype]
    _assert_ulps(np.asarray(got)[good], np.asarray(numpy_result)[good], dtype, NUMPY_ULPS[dtype], f"{what} vs numpy")


def _ld_log_softmax(x):
    xl = np.asarray(x, LD)
    top = xl.argmax(axis=-1)[..., None]
    m = np.take_along_axis(xl, top, axis=-1)
    e = np.exp(xl - m)
    np.put_along_axis(e, top, 0, axis=-1)
    return (xl - m) - np.log1p(e.sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_log_softmax_match_numpy_and_long_double(dtype, rng):
    for name, x in _edge_logits(rng, dtype).items():
        with np.errstate(**RAISE):
            s, ref = numba_impl.softmax(x), numpy_impl.softmax(x)
            ls, lref = numba_impl.log_softmax(x), numpy_impl.log_softmax(x)
        assert s.dtype == dtype and ls.dtype == dtype
        exact = _ld_log_softmax(x)
        _check_ulps(s, ref, np.exp(exact), dtype, f"softmax {name}")
        _check_ulps(ls, lref, exact, dtype, f"log_softmax {name}")


def _ld_centred_vjp(s, g):
    """``s ⊙ (g − s·g)`` in long double, written without cancellation: ``s_k Σ_j s_j (g_k − g_j)``
    (``g − s·g`` itself, in long double, keeps only eps_LD·|g| of a confident row's result)."""
    return s * np.einsum("...j,...kj->...k", s, g[..., :, None] - g[..., None, :])


def _centred_scale(s, g):
    """What the round-off of ``s ⊙ (g' − s·g')`` scales with, entry by entry, for ``g'`` the
    gradient centred on its entry of largest ``s`` (both kernels' form):
    ``s ⊙ (|g'| + s·|g'|)``."""
    gc = g - np.take_along_axis(g, s.argmax(axis=-1)[..., None], axis=-1)
    return s * (np.abs(gc) + (s * np.abs(gc)).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1.0, 0.5])
def test_softmax_vjp_matches_numpy_and_long_double(dtype, T, rng):
    for name, x in _edge_logits(rng, dtype).items():
        g = rng.normal(size=x.shape).astype(dtype)
        with np.errstate(**RAISE):
            out, ref = numba_impl.softmax_vjp(x, g, T), numpy_impl.softmax_vjp(x, g, T)
        s = np.exp(_ld_log_softmax(x))
        gl = g.astype(LD)
        exact = _ld_centred_vjp(s, gl) / LD(T)
        scale = _centred_scale(s, gl) / LD(T)
        _assert_close_at_scale(out, exact, scale, dtype, 16, f"softmax_vjp {name}", ref)
    one = rng.normal(size=(5, 1)).astype(dtype)
    assert np.array_equal(numba_impl.softmax_vjp(one, one), np.zeros_like(one))
    assert np.array_equal(numba_impl.softmax(one), np.ones_like(one))


def _indices(rng, x, where):
    n, K = x.shape
    return x.argmin(axis=-1) if where == "bottom" else rng.integers(0, K, size=n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", ["bottom", "anywhere"])
def test_cross_entropy_index_kernel_matches_numpy_and_long_double(dtype, where, rng):
    for name, x in _edge_logits(rng, dtype).items():
        idx = _indices(rng, x, where)
        rows = np.arange(x.shape[0])
        for valid in (None, rng.random(x.shape[0]) < 0.7):
            scale = dtype(1.0 / x.shape[0])
            with np.errstate(**RAISE):
                v, g = numba_impl.ce_index(x, idx, valid, scale)
                vref, gref = numpy_impl.ce_index(x, idx, valid, scale)
            assert v.dtype == dtype and g.dtype == dtype
            ls = _ld_log_softmax(x)
            keep = np.ones(x.shape[0], bool) if valid is None else valid
            exact_v = -ls[rows, idx] * keep
            p_other = -np.expm1(ls[rows, idx])  # 1 − s_y = Σ_{k≠y} s_k, no cancellation
            exact_g = np.exp(ls) * LD(scale) * keep[:, None]
            exact_g[rows, idx] = -p_other * LD(scale) * keep
            _check_ulps(v, vref, exact_v, dtype, f"CE values {name}")
            _check_ulps(g, gref, exact_g, dtype, f"CE gradient {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_coefficient_kernel_matches_numpy_and_long_double(dtype, rng):
    for name, x in _edge_logits(rng, dtype).items():
        c = rng.dirichlet(np.ones(x.shape[1]), size=x.shape[0]).astype(dtype) * rng.choice([1.0, 2.5], size=(x.shape[0], 1)).astype(dtype)
        c[::7] = np.eye(x.shape[1], dtype=dtype)[0]
        with np.errstate(**RAISE):
            v, g = numba_impl.ce_coefficients(x, c)
            vref, gref = numpy_impl.ce_coefficients(x, c)
        ls = _ld_log_softmax(x)
        cl = c.astype(LD)
        _check_ulps(v, vref, -(cl * ls).sum(axis=-1), dtype, f"CE values {name}", exact_ulps=EXACT_ULPS[dtype] + 2)
        s = np.exp(ls)
        csum = cl.sum(axis=-1, keepdims=True)
        _assert_close_at_scale(g, s * csum - cl, s * csum + cl, dtype, 4, f"CE gradient {name}", gref)


def _bce_inputs(rng, dtype):
    z = np.concatenate([rng.normal(size=500) * 3, rng.normal(size=200) * 40, [0.0, -0.0, 1e-30, -1e-30, 5e-324, 700, -700, 1e4, -1e4],
                        rng.uniform(-110, 110, 300)]).astype(dtype)
    y = np.concatenate([rng.random(z.size - 300) < 0.5, rng.random(300)]).astype(dtype)
    return z, y


def _softplus_ld(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_kernels_match_numpy_and_long_double(dtype, rng):
    z, y = _bce_inputs(rng, dtype)
    zl, yl = z.astype(LD), y.astype(LD)
    with np.errstate(**RAISE):
        v, _, g = numba_impl.sigmoid_bce_plain(z, y, dtype(1.0), True)
        vref, _, gref = numpy_impl.sigmoid_bce_plain(z, y, dtype(1.0), True)
        _, total, g2 = numba_impl.sigmoid_bce_plain(z, y, dtype(0.5), False)
        _, tref, _ = numpy_impl.sigmoid_bce_plain(z, y, dtype(0.5), False)
    exact_v = (1 - yl) * _softplus_ld(zl) + yl * _softplus_ld(-zl)
    _check_ulps(v, vref, exact_v, dtype, "BCE values")
    sig, sig_neg = np.exp(-_softplus_ld(-zl)), np.exp(-_softplus_ld(zl))
    exact_g = (1 - yl) * sig - yl * sig_neg
    gscale = (1 - yl) * sig + yl * sig_neg
    _assert_close_at_scale(g, exact_g, gscale, dtype, 2, "BCE gradient", gref)
    _assert_close_at_scale(g2, exact_g / 2, gscale / 2, dtype, 2, "BCE gradient, scaled")
    assert abs(LD(total) - exact_v.sum()) <= 4 * np.finfo(dtype).eps * exact_v.sum()
    assert abs(LD(tref) - exact_v.sum()) <= 64 * np.finfo(dtype).eps * exact_v.sum()
    py = y * rng.uniform(0.5, 3.0, size=y.size).astype(dtype)
    pl = py.astype(LD)
    with np.errstate(**RAISE):
        v, g = numba_impl.sigmoid_bce_weighted(z, y, py)
        vref, gref = numpy_impl.sigmoid_bce_weighted(z, y, py)
    exact_v = (1 - yl) * _softplus_ld(zl) + pl * _softplus_ld(-zl)
    _check_ulps(v, vref, exact_v, dtype, "weighted BCE values")
    _assert_close_at_scale(g, (1 - yl) * sig - pl * sig_neg, (1 - yl) * sig + pl * sig_neg, dtype, 4, "weighted BCE gradient", gref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_entry_out_of_bounds_in_the_last_chunk_shifts_every_row(dtype, rng):
    """The numba kernels run unshifted and start again shifted at the first chunk holding
    an entry outside ±B: rows of earlier chunks must be redone too (numpy's global
    decision), not left with their unshifted values."""
    B = nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)]
    x = rng.normal(size=(3000, 7)).astype(dtype)
    x[-1, 3] = dtype(1.5 * B)
    assert numba_impl._chunk_rows(7) < 3000 and not nsoftmax.exp_is_safe(x)
    g = rng.normal(size=x.shape).astype(dtype)
    idx = rng.integers(0, 7, size=3000)
    shifted = x - x.max(axis=-1, keepdims=True)  # the same rows, every one safe: computed unshifted
    pairs = [
        (numba_impl.softmax(x), numba_impl.softmax(shifted)),
        (numba_impl.softmax_vjp(x, g), numba_impl.softmax_vjp(shifted, g)),
        (numba_impl.ce_index(x, idx, None, 1.0)[1], numba_impl.ce_index(shifted, idx, None, 1.0)[1]),
    ]
    for got, expected in pairs:  # float64: bitwise (x − max is rounded alike); float32: the
        # kernel takes x − max in float64, exactly, where the reference rounded it to float32
        if dtype == np.float64:
            np.testing.assert_array_equal(got[:-1], expected[:-1])
        else:
            np.testing.assert_allclose(got[:-1], expected[:-1], rtol=8 * np.finfo(dtype).eps, atol=16 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_builds_are_bitwise_equal(dtype, rng):
    d, u, v = (rng.normal(size=(9, 6)).astype(dtype) for _ in range(3))
    for args in ((d, u, v), (d, d, v)):
        a, b = np.full((9, 6, 6), np.nan, dtype), np.full((9, 6, 6), np.nan, dtype)
        numba_impl.dense_diag_minus_rank_one(*args, a)
        numpy_impl.dense_diag_minus_rank_one(*args, b)
        np.testing.assert_array_equal(a, b)
    a, b = np.full((9, 6, 6), np.nan, dtype), np.full((9, 6, 6), np.nan, dtype)
    numba_impl.dense_diagonal(d, a)
    numpy_impl.dense_diagonal(d, b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_builds_with_an_exact_diagonal_are_bitwise_equal(dtype, rng):
    """A projector's exact diagonal (``d ⊙`` complement sums) replaces ``d_j − u_j v_j`` in
    both kernel sets, written after the off-diagonal entries."""
    d, u, v, exact = (rng.normal(size=(9, 6)).astype(dtype) for _ in range(4))
    a, b = np.full((9, 6, 6), np.nan, dtype), np.full((9, 6, 6), np.nan, dtype)
    numba_impl.dense_diag_minus_rank_one(d, u, v, a, exact)
    numpy_impl.dense_diag_minus_rank_one(d, u, v, b, exact)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.einsum("ijj->ij", a), exact)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 3, 8, 100, 129, 300, 1031])
def test_dense_builds_of_a_projector_take_the_complement_sums_per_row(dtype, K, rng):
    """``projector=True``: the kernels compute the diagonal ``d_j Σ_{i≠j} v_j`` themselves,
    row by row (numba: numpy's pairwise summation replayed, blocks of 128 and halvings
    past them), bitwise equal to numpy's ``d * complement_sums(v)``, confident rows (the
    sum without the top entry taken directly), ties, a zero row and a NaN row included."""
    z = rng.normal(size=(8, K)) * 3
    z[:3, K // 2] += 40 if dtype == np.float64 else 20  # confident: 1 − v_top far below eps
    z[3, :] = 0.0  # ties: the first largest entry is the top
    v = np.exp(z - z.max(-1, keepdims=True))
    v = (v / v.sum(-1, keepdims=True)).astype(dtype)
    v[4] = 0
    v[5, 0] = np.nan
    d = (rng.random((8, K)) + 0.5).astype(dtype)
    exact = d * algebra.complement_sums(v)
    a, b = np.full((8, K, K), 7, dtype), np.full((8, K, K), 7, dtype)
    with np.errstate(invalid="ignore"):
        numba_impl.dense_diag_minus_rank_one(d, d, v, a, projector=True)
        numpy_impl.dense_diag_minus_rank_one(d, d, v, b, projector=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.einsum("ijj->ij", a), exact)
    off = ~np.eye(K, dtype=bool)
    np.testing.assert_array_equal(a[:, off], (d[:, :, None] * -v[:, None, :])[:, off])
    # the diagonal against long double: Σ_{i≠j} v_i summed without v_j, then times d_j
    vl = v[:4].astype(LD)
    others = vl.sum(-1, keepdims=True) - vl
    top = vl.argmax(-1)
    others[np.arange(4), top] = [np.delete(row, t).sum() for row, t in zip(vl, top)]
    _assert_ulps(np.einsum("ijj->ij", a)[:4], d[:4].astype(LD) * others, dtype, 2 + K / 64, "projector diagonal")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1.0, 0.5])
def test_softmax_vjp_with_a_factor_matches_numpy_and_long_double(dtype, T, rng):
    """``f · s ⊙ (g − s·g) / T`` with a scalar factor or one per row (the curvature's HVP)."""
    x = (rng.normal(size=(4, 60, 13)) * 3).astype(dtype)
    g = rng.normal(size=x.shape).astype(dtype)
    s = np.exp(_ld_log_softmax(x))
    gl = g.astype(LD)
    for factor in (dtype(0.25), rng.uniform(0.1, 3.0, size=x.shape[:-1]).astype(dtype)):
        with np.errstate(**RAISE):
            out, ref = numba_impl.softmax_vjp(x, g, T, factor), numpy_impl.softmax_vjp(x, g, T, factor)
        f = (np.asarray(factor, dtype) / dtype(T)).astype(LD)[..., None] if np.ndim(factor) else LD(np.asarray(factor, dtype) / dtype(T))
        exact = f * _ld_centred_vjp(s, gl)
        scale = np.abs(f) * _centred_scale(s, gl)
        _assert_close_at_scale(out, exact, scale, dtype, 16, f"softmax_vjp factor {np.ndim(factor)}-d", ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_rows_results_do_not_depend_on_the_rows_with_it(dtype, rng):
    """Chunks of a batch (Dask) get the whole batch's rows to the bit: row sums in a fixed
    order per row, and BCE totals added as :func:`jacobians.numerics.buffers.total` adds the values."""
    for K in (7, 100):
        x = rng.normal(size=(3001, K)).astype(dtype)
        g = rng.normal(size=x.shape).astype(dtype)
        idx = rng.integers(0, K, size=x.shape[0])
        part = slice(1234, 1999)
        np.testing.assert_array_equal(numba_impl.softmax(x)[part], numba_impl.softmax(x[part]))
        np.testing.assert_array_equal(numba_impl.log_softmax(x)[part], numba_impl.log_softmax(x[part]))
        np.testing.assert_array_equal(numba_impl.softmax_vjp(x, g)[part], numba_impl.softmax_vjp(x[part], g[part]))
        for a, b in zip(numba_impl.ce_index(x, idx, None, 0.5), numba_impl.ce_index(x[part], idx[part], None, 0.5)):
            np.testing.assert_array_equal(a[part], b)
        c = np.abs(g)
        for a, b in zip(numba_impl.ce_coefficients(x, c), numba_impl.ce_coefficients(x[part], c[part])):
            np.testing.assert_array_equal(a[part], b)
    z, y = rng.normal(size=200_001).astype(dtype) * 4, (rng.random(200_001) < 0.5).astype(dtype)
    for impl in (numba_impl, numpy_impl):
        values, _, _ = impl.sigmoid_bce_plain(z, y, dtype(1.0), True)
        _, total, _ = impl.sigmoid_bce_plain(z, y, dtype(1.0), False)
        assert total.dtype == dtype and total == buffers.total(values), impl.__name__


def test_cross_entropy_index_kernels_on_fortran_ordered_logits(rng):
    """numpy's kernel writes its gradient in a C-ordered buffer whatever the input's layout
    (a flat view of it indexes the targets)."""
    x = np.asfortranarray(rng.normal(size=(40, 9)))
    idx = rng.integers(0, 9, size=40)
    ref = numpy_impl.ce_index(np.ascontiguousarray(x), idx, None, 1.0)
    for impl in (numpy_impl, numba_impl):
        for a, b in zip(impl.ce_index(x, idx, None, 1.0), ref if impl is numpy_impl else impl.ce_index(np.ascontiguousarray(x), idx, None, 1.0)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kernel", ["softmax", "log_softmax", "ce_index"])
def test_nan_and_inf_rows_as_numpy(kernel):
    """A NaN anywhere in a row makes the row NaN; +inf makes its value NaN, as in numpy."""
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0]])
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if kernel == "ce_index":
            idx = np.array([0, 1, 1, 1])
            a, b = numba_impl.ce_index(x, idx, None, 1.0), numpy_impl.ce_index(x, idx, None, 1.0)
        else:
            a, b = getattr(numba_impl, kernel)(x), getattr(numpy_impl, kernel)(x)
    for p, q in zip(np.atleast_1d(a) if kernel != "ce_index" else a, np.atleast_1d(b) if kernel != "ce_index" else b):
        np.testing.assert_array_equal(np.isnan(p), np.isnan(q))
        np.testing.assert_allclose(np.nan_to_num(p), np.nan_to_num(q), rtol=1e-15, atol=1e-300)


def test_inputs_are_not_written_and_read_only_inputs_work(rng):
    x = rng.normal(size=(50, 9))
    g = rng.normal(size=(50, 9))
    for a in (x, g):
        a.setflags(write=False)
    keep = x.copy(), g.copy()
    numba_impl.softmax(x), numba_impl.softmax_vjp(x, g), numba_impl.log_softmax(x)
    numba_impl.ce_index(x, np.zeros(50, np.int64), None, 1.0), numba_impl.ce_coefficients(x, np.abs(g))
    numba_impl.sigmoid_bce_plain(x.reshape(-1), np.abs(g).reshape(-1) % 1, 1.0, False)
    np.testing.assert_array_equal(x, keep[0])
    np.testing.assert_array_equal(g, keep[1])


# -- on-disk cache ----------------------------------------------------------------------------------


def test_a_second_process_starts_warm(tmp_path):
    """Compiled kernels are cached on disk (NUMBA_CACHE_DIR here): a second process loads
    them instead of compiling (numba's cache hit counters)."""
    code = """
        import numpy as np, jacobians as jac
        from jacobians._kernels import numba_impl
        z = np.random.default_rng(0).normal(size=(8, 5))
        jac.Head(jac.Softmax(), jac.CrossEntropy()).value_and_grad(z, np.arange(8) % 5)
        print(numba_impl._ce_index.stats.cache_hits.__len__(), sum(numba_impl._ce_index.stats.cache_hits.values()),
              sum(numba_impl._ce_index.stats.cache_misses.values()))
    """
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache"), "JACOBIANS_KERNELS": "numba"}
    cold, warm = _run(code, **env), _run(code, **env)
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr + warm.stderr
    assert int(cold.stdout.split()[1]) == 0 and int(cold.stdout.split()[2]) >= 1  # compiled
    assert int(warm.stdout.split()[1]) >= 1 and int(warm.stdout.split()[2]) == 0  # loaded
    assert any((tmp_path / "cache").rglob("*.nbi"))


def test_no_writable_cache_folder_compiles_in_memory():
    """Where no cache folder can be written (here NUMBA_CACHE_DIR under a file), the kernels
    are compiled in memory instead of failing."""
    out = _run("""
        import numpy as np, jacobians as jac
        print(jac.kernels(), jac.Softmax()(np.array([0.0, 0.0])))
    """, NUMBA_CACHE_DIR="/dev/null/cache", JACOBIANS_KERNELS="numba")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "numba" and "[0.5 0.5]" in out.stdout


def test_kernels_read_their_inputs_read_only_one_signature_a_dtype():
    """Writable and read-only inputs reach the compiled loops as one (read-only) type: numba
    then compiles and loads one signature of each kernel a dtype, not one for each
    combination of writable and read-only arguments. Checked in a fresh process (this one's
    dispatchers hold the signatures of every test so far)."""
    r = _run("""
        import numpy as np
        from jacobians._kernels import numba_impl as k
        from jacobians._kernels import numba_softmax, numba_losses
        rng = np.random.default_rng(0)
        for dt in (np.float64, np.float32):
            for frozen_x in (False, True):
                for frozen_g in (False, True):
                    x, g = rng.normal(size=(3, 4)).astype(dt), rng.normal(size=(3, 4)).astype(dt)
                    y = rng.integers(0, 4, size=3)
                    x.flags.writeable, g.flags.writeable, y.flags.writeable = not frozen_x, not frozen_g, not frozen_g
                    want = x.copy()
                    k.softmax(x), k.log_softmax(x), k.softmax_vjp(x, g), k.ce_index(x, y, None, 1.0)
                    k.softmax_vjp(x, g, factor=np.full(3, 0.5))
                    assert np.array_equal(x, want) and x.flags.writeable is not frozen_x
        for f in (numba_softmax._softmax, numba_softmax._log_softmax, numba_softmax._softmax_vjp,
                  numba_losses._ce_index):
            assert len(f.signatures) == 2, (f, f.signatures)
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
