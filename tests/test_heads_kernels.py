"""The kernels of the new heads (``plackett_luce``, ``poisson_log``, ``poly_index`` of
:mod:`jacobians._kernels`): numba's and numpy's sets against references written
independently — Plackett–Luce by a plain loop over the steps in long double, Poisson and
poly-1 by their formulas in long double — over ties, placed maxima, padding, NaN and
infinite scores, ±1e4 logits and bad targets.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from test_focal_kernels import SETS  # numpy's kernel set, and numba's where it is installed

from jacobians._kernels import numpy_impl

LD = np.longdouble
DTYPES = (np.float64, np.float32)


def _pl_loop(a, y):
    """Plackett–Luce step by step in long double: each step's softmax over the candidates left."""
    n, M = a.shape
    values, grads = np.zeros(n, LD), np.zeros((n, M), LD)
    for i in range(n):
        left = list(range(M))
        for c in y[i]:
            if c < 0:
                break
            s = np.asarray([a[i, k] for k in left], LD)
            m = s.max()
            e = np.exp(s - m)
            values[i] += m + np.log(e.sum()) - LD(a[i, c])
            grads[i, left] += e / e.sum()
            grads[i, c] -= 1
            left.remove(int(c))
    return values, grads


def _rankings(rng, a, R):
    n, M = a.shape
    y = np.argsort(rng.random((n, M)), axis=1)[:, :R]
    y[::3] = np.argsort(-a[::3], axis=1, kind="stable")[:, :R]  # every step places the maximum
    y[1::5, max(R // 2, 1):] = -1  # ragged
    y[4::7] = -1  # no step
    return y.astype(np.int64)


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 2, 3, 10, 60])
def test_plackett_luce_kernel_matches_long_double_loop(name, impl, dtype, M, rng):
    n = 90
    a = rng.normal(size=(n, M)) * 3
    a[::4] = np.round(a[::4])  # ties
    a[2::6] = a[2::6] * 1e3 + rng.choice([1e4, -1e4], size=(len(a[2::6]), 1))  # far apart, shifted
    a = a.astype(dtype)
    y = _rankings(rng, a, min(M, 5))
    keep = a.copy()
    v, g = impl.plackett_luce(a, y, 0.25)
    assert np.array_equal(a, keep) and v.dtype == dtype and g.dtype == dtype
    ev, eg = _pl_loop(a, y)
    eps = np.finfo(dtype).eps
    bound = 64 if (name, dtype) == ("numpy", np.float32) else 16
    scale = 1 + np.abs(np.asarray(a, LD)).max(axis=1)  # the shifted scores' rounding
    assert np.all(np.abs(v - ev) <= bound * eps * (np.abs(ev) + scale)), name
    assert np.all(np.abs(g - eg * LD(0.25)) <= bound * eps * scale[:, None]), name


@pytest.mark.parametrize("name,impl", SETS)
def test_plackett_luce_kernel_nan_and_infinite_scores_as_numpy(name, impl):
    a = np.array([[np.nan, 1.0, 0.0], [np.inf, 1.0, 0.0], [np.inf, np.inf, 0.0], [-np.inf, 0.0, 1.0],
                  [np.nan, 1.0, 0.0]])
    y = np.array([[1, 0, -1], [1, 2, -1], [0, 1, 2], [2, 1, 0], [-1, -1, -1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v0, g0 = numpy_impl.plackett_luce(a, y, 1.0)
        v, g = impl.plackett_luce(a, y, 1.0)
    np.testing.assert_array_equal(np.isnan(v), np.isnan(v0))
    np.testing.assert_array_equal(np.isnan(g), np.isnan(g0))
    np.testing.assert_array_equal(v[~np.isnan(v)], v0[~np.isnan(v0)])
    assert np.isnan(v[0]) and np.isnan(g[0]).all() and v[4] == 0 and not g[4].any()


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_values", [True, False])
def test_poisson_log_kernel_matches_long_double(name, impl, dtype, need_values, rng):
    z = np.concatenate([rng.normal(size=3000) * 3, [0.0, -50.0, 30.0]]).astype(dtype)
    y = rng.poisson(np.exp(np.clip(z, -5, 5))).astype(dtype)
    y[::11] = 0
    y[5] = 2.5  # floats allowed
    values, total, g, bad = impl.poisson_log(z, y, 0.5, need_values)
    zl, yl = np.asarray(z, LD), np.asarray(y, LD)
    ev, eg = np.exp(zl) - yl * zl, np.exp(zl) - yl
    eps = np.finfo(dtype).eps
    scale = np.exp(zl) + np.abs(yl * zl) + np.abs(yl)
    assert bad == 0 and g.dtype == dtype
    assert np.all(np.abs(g - eg * LD(0.5)) <= 4 * eps * scale)
    if need_values:
        assert total is None and np.all(np.abs(values - ev) <= 4 * eps * scale)
    else:
        assert values is None and abs(total - ev.sum()) <= 8 * eps * scale.sum()


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_log_kernel_counts_bad_targets_and_overflows_as_exp(name, impl, dtype):
    big = math.log(float(np.finfo(dtype).max))
    z = np.array([0.0, 1.0, 2.0, 0.0, np.nextafter(dtype(big), dtype(np.inf)), big * 0.99], dtype)
    y = np.array([-1.0, np.nan, np.inf, 1.0, 0.0, 0.0], dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        values, _, g, bad = impl.poisson_log(z, y, 1.0, True)
        w = np.exp(z)
    assert bad == 3
    assert np.isinf(g[4]) == np.isinf(w[4]) and np.isinf(values[4]) == np.isinf(w[4]) and np.isfinite(g[5])


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epsilon", [1.0, 2.0, -0.5])
def test_poly_index_kernel_matches_long_double(name, impl, dtype, epsilon, rng):
    n, K = 150, 9
    x = rng.normal(size=(n, K)) * 4
    x[::5] += rng.choice([1e4, -1e4], size=(len(x[::5]), 1))  # shifted
    x[1::5, 2] = 60.0  # one far above
    x = x.astype(dtype)
    idx = rng.integers(0, K, n)
    idx[::3] = x[::3].argmax(axis=1)
    keep = x.copy()
    v, g = impl.poly_index(x, idx, epsilon, 0.5)
    assert np.array_equal(x, keep) and v.dtype == dtype and g.dtype == dtype
    xl = np.asarray(x, LD)
    d = xl - xl.max(axis=1, keepdims=True)
    p = np.exp(d) / np.exp(d).sum(axis=1, keepdims=True)
    rows = np.arange(n)
    logp = d[rows, idx] - np.log(np.exp(d).sum(axis=1))
    q = np.exp(d).sum(axis=1) - np.exp(d[rows, idx])
    q = q / np.exp(d).sum(axis=1)
    ev = -logp + epsilon * q
    u = -(1 + epsilon * p[rows, idx])
    eg = -p * u[:, None]
    eg[rows, idx] = q * u
    eps = np.finfo(dtype).eps
    bound = 64 if (name, dtype) == ("numpy", np.float32) else 16
    cond = 1 + np.abs(d).max(axis=1)
    assert np.all(np.abs(v - ev) <= bound * eps * (np.abs(ev) + 1) * cond)
    assert np.all(np.abs(g - eg * LD(0.5)) <= bound * eps * cond[:, None])


def _flaw_loop(y, M):
    for row in y.tolist():
        ends = row.index(-1) if -1 in row else len(row)
        if any(c < -1 or c >= M for c in row) or any(c != -1 for c in row[ends:]):
            return True
        if len(set(row[:ends])) < ends:
            return True
    return False


@pytest.mark.parametrize("name,impl", SETS)
def test_ranking_flaw_kernel_matches_a_loop(name, impl, rng):
    M, R = 6, 4
    good = np.argsort(rng.random((40, M)), axis=1)[:, :R].astype(np.int64)
    good[::3, 2:] = -1
    cases = [good]
    for r, s, value in [(5, 1, 7), (6, 0, -2), (7, 3, good[7, 0]), (9, 3, 0), (12, 1, -1)]:
        bad = good.copy()
        bad[r, s] = value
        if (r, s) == (9, 3):
            bad[9, 2] = -1  # a candidate after a −1
        cases.append(bad)
    cases.append(np.zeros((0, R), np.int64))
    for y in cases:
        assert impl.ranking_flaw(y, M) == _flaw_loop(y, M), y


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [2, 3, 10, 40])
def test_plackett_luce_hvp_kernel_matches_long_double_blocks(name, impl, dtype, M, rng):
    """``Σ_i (diag p⁽ⁱ⁾ − p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ) v`` with the steps' softmax in long double, block by block."""
    n = 60
    a = rng.normal(size=(n, M)) * 3
    a[::4] = np.round(a[::4])
    a[2::6] += 1e4
    a = a.astype(dtype)
    y = _rankings(rng, a, min(M, 5))
    v = rng.normal(size=(n, M)).astype(dtype)
    got = impl.plackett_luce_hvp(a, y, v, 0.5)
    exact = np.zeros((n, M), LD)
    for i in range(n):
        left = list(range(M))
        for c in y[i]:
            if c < 0:
                break
            s = np.asarray(a[i, left], LD)
            p = np.exp(s - s.max())
            p /= p.sum()
            vl = np.asarray(v[i, left], LD)
            exact[i, left] += p * (vl - (p * vl).sum())
            left.remove(int(c))
    eps = np.finfo(dtype).eps
    bound = 64 if (name, dtype) == ("numpy", np.float32) else 16
    scale = (1 + np.abs(np.asarray(a, LD)).max(axis=1, keepdims=True)) * (1 + np.abs(v).max(axis=1, keepdims=True))
    assert got.dtype == dtype and np.all(np.abs(got - exact * LD(0.5)) <= bound * eps * scale)
