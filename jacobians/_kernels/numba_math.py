"""Vectorizable ``exp``, ``log`` and ``log1p`` for the numba kernels (imported with numba only).

numba's ``math.exp``/``math.log`` are calls into the C library, one element at a time, and
this numba has no SVML: a loop calling them is never vectorized. These are written as
range reduction plus polynomial with the power of two assembled by a bit cast (the
``@intrinsic`` casts below), so that LLVM inlines them into the kernels' loops and runs
them on vector registers (ymm with AVX2, zmm with AVX-512). No branches: the special cases
(±inf, NaN, zero, subnormal inputs and outputs, overflow) are selects on the lane.

Accuracy (``tests/test_kernels.py`` checks it over the whole float range against long
double, numpy and :mod:`math`):

* :func:`exp64` — float64, within 0.77 ulp on normal results (measured; Taylor polynomial
  of degree 13 on ``|r| ≤ ln2/2``, truncation error 4e-18 relative, ``1 + r`` added
  exactly: the rounding of ``r`` itself is most of what is left), 0.81 on subnormal
  results (rounded once);
* :func:`exp32` — ``exp`` of a float32 computed in float64 (degree 8: 3e-10 relative) and
  rounded once to float32: within 0.51 ulp (numpy's own float32 ``exp`` is off by up to
  2.4 ulp);
* :func:`log64`, :func:`log1p64` — float64, within 0.81 ulp (fdlibm's reduction to
  ``[√2/2, √2)`` and its polynomial in ``s = f/(2 + f)``; ``log1p`` adds the exact
  rounding error of ``1 + x``, from a TwoSum, as a correction ``c/u``).

Every function is compiled with ``fastmath={'contract'}`` only: fused multiply-adds are
allowed (they only remove roundings), reassociation is not — the TwoSum and the
Cody–Waite reduction depend on the order of their operations. They are inlined by numba
(``inline='always'``) and take the flags of the function they are inlined into: call them
only from functions compiled with ``contract`` alone (sums that need ``reassoc`` to
vectorize go in a function of their own).

numba's on-disk cache keys each compiled function on its own source file: an edit here
is not seen by the cached kernels of the ``numba_*.py`` modules, which inline these
functions. After editing this file, delete ``jacobians/_kernels/__pycache__/*.nb[ic]`` (or
touch every ``numba_*.py`` kernel module); an installed release replaces all files together.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["exp64", "exp64_in_bounds", "exp32", "exp32_wide", "exp32_wide_in_bounds", "expw", "expw_in_bounds", "log64", "log1p64", "log1p_unit", "log1p32", "jit"]


def jit(fn=None, **options):
    """``numba.njit(cache=True, error_model='numpy', nogil=True, **options)``, usable as a decorator.

    ``error_model='numpy'``: a division by zero gives inf or NaN as in numpy instead of
    raising, and the loops can be vectorized. ``cache=True`` keeps the compiled code on disk
    (beside the module, or under ``NUMBA_CACHE_DIR``, or the user's cache folder when the
    install is read-only); where no cache folder can be written at all, the function is
    compiled in memory on each run instead of failing.
    """
    if fn is None:
        return lambda f: jit(f, **options)
    options = {"error_model": "numpy", "nogil": True, **options}
    try:
        return njit(cache=True, **options)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(cache=False, **options)(fn)


#: the elementary functions: fused multiply-adds allowed, no reassociation; inlined by numba
#: into their callers (LLVM's inliner gives up on a loop calling two of them), which must
#: therefore be compiled without reassociation too
_jit = jit(fastmath={"contract"}, inline="always")


@intrinsic
def _as_f64(typingctx, bits):
    """The float64 whose IEEE bits are the int64 ``bits`` (a bit cast, no conversion)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _as_i64(typingctx, x):
    """The int64 holding the IEEE bits of the float64 ``x`` (a bit cast, no conversion)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


#: 1.5·2**52: adding it rounds a float64 of magnitude < 2**51 to an integer held in the
#: low bits of the sum (no float -> int conversion, which AVX2 lacks for int64)
_MAGIC = 6755399441055744.0
_MAGIC_BITS = 0x4338000000000000
_LOG2E = 1.4426950408889634
#: ln 2 split so that ``n·LN2_HI`` is exact for |n| < 2**11 (fdlibm's constants)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INF = np.inf


@_jit
def _pow2(t):
    """``2**n`` from ``t = n + _MAGIC`` (the integer n in t's low bits, ``−1022 ≤ n ≤ 1023``)."""
    return _as_f64((_as_i64(t) + 1023) << 52)


@_jit
def _reduce(x):
    """``(t, n, r)`` with ``x = n ln2 + r``, ``n = round(x/ln2)`` (``t = n + _MAGIC``) and
    ``|r| ≤ ln2/2`` (Cody–Waite: ``n·LN2_HI`` is exact, ``x − n·LN2_HI`` too)."""
    t = x * _LOG2E + _MAGIC
    nf = t - _MAGIC
    r = x - nf * _LN2_HI
    return t, nf, r - nf * _LN2_LO


@_jit
def _exp_poly(q, r):
    """``e**r`` from the Horner sum ``q`` of the Taylor coefficients from 1/8! up: the
    terms 1/7! … 1/2!, then ``1 + r + r²q`` with ``1 + r`` split exactly (Fast2Sum:
    ``|r| < 1``), so that the result is rounded once."""
    q = q * r + 0.0001984126984126984
    q = q * r + 0.001388888888888889
    q = q * r + 0.008333333333333333
    q = q * r + 0.041666666666666664
    q = q * r + 0.16666666666666666
    q = q * r + 0.5
    h = 1.0 + r
    return h + (((1.0 - h) + r) + (r * r) * q)


@_jit
def _exp64_poly(r):
    """``e**r`` for ``|r| ≤ ln2/2``: the Taylor polynomial of degree 13 (truncation 4e-18 relative)."""
    q = 1.6059043836821613e-10  # 1/13!
    q = q * r + 2.08767569878681e-09
    q = q * r + 2.505210838544172e-08
    q = q * r + 2.755731922398589e-07
    q = q * r + 2.755731922398589e-06
    return _exp_poly(q * r + 2.48015873015873e-05, r)


@_jit
def exp64(x):
    """``e**x`` for a float64 ``x``, within 0.77 ulp (0.81 on subnormal results); 0 below
    −745.2, inf above 709.8, NaN for NaN.

    ``x = n ln2 + r`` (:func:`_reduce`); ``e**r`` by its Taylor polynomial of degree 13
    (truncation 4e-18 relative); ``2**n`` as two factors ``2**n1·2**n2`` (each a normal
    number) so that a subnormal result is rounded once and an overflow gives inf.
    """
    xc = min(max(x, -746.0), 710.0)
    _, nf, r = _reduce(xc)
    p = _exp64_poly(r)
    t1 = nf * 0.5 + _MAGIC  # n1 = round(n/2), n2 = n − n1: both in [−539, 513]
    t2 = (nf - (t1 - _MAGIC)) + _MAGIC
    y = (p * _pow2(t1)) * _pow2(t2)
    return x if x != x else y


@_jit
def exp64_in_bounds(x):
    """:func:`exp64` for ``|x| ≤ 700`` only: there the same number (``2**n`` one normal
    factor: scaling by it is exact), without the clamp, the second factor and the NaN
    select. Outside, and for NaN, the result is meaningless: for a loop that counts such
    entries and discards its results when it meets one (:func:`.numba_rows._exp_flat`)."""
    t, _, r = _reduce(x)
    return _exp64_poly(r) * _pow2(t)


@_jit
def exp32_wide(x):
    """``e**x`` to float32's needs, in float64 (3e-10 relative): for float32 work done in float64.

    Same reduction as :func:`exp64`; the polynomial has degree 8, and ``2**n`` is one
    normal float64 factor (every float32 result, subnormal ones included, is a normal
    float64 before its final rounding). ``x`` is clamped to [−110, 100]: 0 and inf once
    rounded to float32.
    """
    y = exp32_wide_in_bounds(min(max(np.float64(x), -110.0), 100.0))
    return x if x != x else y


@_jit
def exp32_wide_in_bounds(x):
    """:func:`exp32_wide` for ``|x| ≤ 100`` only (the same number there), without the clamp
    and the NaN select; see :func:`exp64_in_bounds`."""
    t, _, r = _reduce(np.float64(x))
    return _exp_poly(2.48015873015873e-05, r) * _pow2(t)  # 1/8!


@_jit
def exp32(x):
    """``e**x`` for a float32 ``x``, computed in float64 and rounded once: ≤ 0.51 ulp."""
    return np.float32(exp32_wide(x))


def expw(x, like):
    """``e**x`` in float64 for a kernel working on numbers like ``like`` (an element of its
    input, passed for its type only): :func:`exp64` for float64, :func:`exp32_wide`
    (accurate to float32's needs, faster) for float32. (A scalar, not the array: passing an
    array to a compiled function costs reference counting calls, which stop vectorization.)"""
    raise NotImplementedError("expw is compiled by numba only")


def expw_in_bounds(x, like):
    """:func:`expw` for ``|x| ≤ 100`` (float32 work) or ``≤ 700`` (float64), meaningless
    elsewhere: :func:`exp32_wide_in_bounds`, :func:`exp64_in_bounds`."""
    raise NotImplementedError("expw_in_bounds is compiled by numba only")


def _expw32(x, like):
    return exp32_wide(x)


def _expw64(x, like):
    return exp64(x)


def _expw32_in_bounds(x, like):
    return exp32_wide_in_bounds(x)


def _expw64_in_bounds(x, like):
    return exp64_in_bounds(x)


@overload(expw_in_bounds, inline="always", jit_options={"fastmath": {"contract"}})
def _expw_in_bounds_impl(x, like):
    return _expw32_in_bounds if like == types.float32 else _expw64_in_bounds


@overload(expw, inline="always", jit_options={"fastmath": {"contract"}})
def _expw_impl(x, like):
    return _expw32 if like == types.float32 else _expw64


# fdlibm's log polynomial: log(1 + f) = f − f²/2 + s (f²/2 + R(s²)), s = f / (2 + f)
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
#: bits of √2/2's high word, as in fdlibm: the reduction puts the mantissa in [√2/2, √2)
_SQRT_HALF_BITS = 0x3FE6A09E00000000
_TINY = 2.2250738585072014e-308


@_jit
def _log_reduced(u, cu):
    """``log(u) + cu`` for a positive normal ``u`` and a correction ``cu`` much smaller than 1."""
    ix = _as_i64(u) + (0x3FF0000000000000 - _SQRT_HALF_BITS)
    k = ((ix >> 52) & 0x7FF) - 1023
    m = _as_f64((ix & 0x000FFFFFFFFFFFFF) + _SQRT_HALF_BITS)  # u / 2**k, in [√2/2, √2)
    dk = _as_f64(k + _MAGIC_BITS) - _MAGIC  # float(k) without an int64 -> float conversion
    f = m - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + (t1 + t2)) + (dk * _LN2_LO + cu))) - f)


@_jit
def log64(x):
    """``log(x)`` for a float64 ``x``, within 0.81 ulp; −inf at 0, NaN below 0 or for NaN, inf at inf.

    Subnormal inputs are scaled by 2**54 first.
    """
    small = x < _TINY
    u = x * 18014398509481984.0 if small else x
    y = _log_reduced(u, 0.0)
    y = y - 37.42994775023705 if small else y  # 54 ln 2
    y = -_INF if x == 0.0 else y
    y = _INF if x == _INF else y
    return x + np.nan if not x >= 0.0 else y


@_jit
def log1p64(x):
    """``log(1 + x)`` for a float64 ``x``, within 0.81 ulp; −inf at −1, NaN below −1 or for NaN.

    ``u = 1 + x`` rounded, ``c`` its exact rounding error (TwoSum), then
    ``log(u) + c/u``: ``log1p(x) = x`` exactly for ``|x|`` below 2**−53.
    """
    u = 1.0 + x
    b = u - x
    c = (1.0 - b) + (x - (u - b))  # u + c = 1 + x exactly
    c = 0.0 if u == _INF else c
    y = _log_reduced(u, c / u)
    y = -_INF if x == -1.0 else y
    y = _INF if x == _INF else y
    return x + np.nan if not x >= -1.0 else y


@_jit
def log1p_unit(x):
    """``(log1p(x), 1/fl(1 + x))`` for ``0 <= x <= 1`` (NaN gives NaN, NaN): :func:`log1p64`'s
    result with one division, whose quotient the caller may reuse (sigmoid + BCE needs
    ``x/(1 + x)``). ``1 + x`` is split exactly by Fast2Sum (``1 >= x``)."""
    u = 1.0 + x
    c = (1.0 - u) + x
    inv = 1.0 / u
    y = _log_reduced(u, c * inv)
    return (x if x != x else y), inv


@_jit
def log1p32(x):
    """``log(1 + x)`` for a float32 ``x``: :func:`log1p64` rounded once to float32."""
    return np.float32(log1p64(np.float64(x)))
