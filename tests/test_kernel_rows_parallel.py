"""Compiled kernels on row blocks over every core (``numba_impl._on_rows``): each row's result
is the single-threaded kernel's, bit for bit, however the rows are split — including when
one block holds a logit out of the unshifted bound, which makes every row run shifted (the
shift is decided for the whole array, as numpy decides it)."""

from __future__ import annotations

import numpy as np
import pytest

numba_impl = pytest.importorskip("jacobians._kernels.numba_impl", reason="the fast extra (numba) is not installed",
                                 exc_type=ImportError)
from jacobians.numerics import softmax as nsoftmax  # noqa: E402


def _single(monkeypatch, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(numba_impl, "ROWS_PARALLEL_MIN_SECONDS", float("inf"))
        return fn(*args)


def _parallel(monkeypatch, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(numba_impl, "ROWS_PARALLEL_MIN_SECONDS", 0.0)  # every size split
        return fn(*args)


def _logits(rng, n, K, dtype, far_row):
    x = rng.normal(scale=4.0, size=(n, K)).astype(dtype)
    if far_row is not None:  # one entry past the unshifted bound, in one block only
        x[far_row, 0] = dtype(1.5 * nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)])
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("far_row", [None, 0, -1])
@pytest.mark.parametrize("n, K", [(4097, 10), (600, 100), (37, 1000)])
def test_focal_index_rows_in_parallel_equal_one_thread(monkeypatch, dtype, far_row, n, K):
    rng = np.random.default_rng(n + K)
    x = _logits(rng, n, K, dtype, far_row)
    idx = rng.integers(0, K, size=n)
    for w in (None, rng.uniform(0.1, 2.0, size=n)):
        for gamma in (2.0, 0.5):
            ref = _single(monkeypatch, numba_impl.focal_index, x, idx, w, gamma, 1 / n)
            got = _parallel(monkeypatch, numba_impl.focal_index, x, idx, w, gamma, 1 / n)
            for a, b in zip(got, ref):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, K", [(4097, 10), (600, 100), (37, 1000)])
def test_focal_coefficient_rows_in_parallel_equal_one_thread(monkeypatch, dtype, n, K):
    rng = np.random.default_rng(n * K)
    x = _logits(rng, n, K, dtype, n // 2)
    c = rng.dirichlet(np.ones(K), size=n).astype(dtype)
    for gamma in (2.0, 1.5):
        ref = _single(monkeypatch, numba_impl.focal_coefficients, x, c, gamma, 1 / n)
        got = _parallel(monkeypatch, numba_impl.focal_coefficients, x, c, gamma, 1 / n)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)


def test_a_row_split_reaches_every_row(monkeypatch):
    """A planted slip (one block skipped) must show: every row of the output is written."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 10))
    idx = rng.integers(0, 10, size=5000)
    values, g = _parallel(monkeypatch, numba_impl.focal_index, x, idx, None, 2.0, 1.0)
    ref_values, ref_g = _single(monkeypatch, numba_impl.focal_index, x, idx, None, 2.0, 1.0)
    assert np.all(np.isfinite(values)) and np.array_equal(values, ref_values) and np.array_equal(g, ref_g)


@pytest.mark.parametrize("kernel, n, K, split", [
    ("focal_coefficients", 8192, 10, True),   # ≈ 0.5 ms of one core: split, in float32 too
    ("focal_coefficients", 256, 10, False),
    ("focal_index", 4096, 10, False),         # ≈ 0.15 ms: one core
    ("focal_index", 4096, 100, True),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_are_split_by_the_estimated_time_not_the_dtype(monkeypatch, kernel, n, K, split, dtype):
    seen = []
    monkeypatch.setattr(numba_impl, "run_in_row_blocks", lambda work, n_rows, *a, **k: (seen.append(n_rows), work(slice(0, n_rows))))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, K)).astype(dtype)
    if kernel == "focal_index":
        numba_impl.focal_index(x, rng.integers(0, K, size=n), None, 2.0, 1 / n)
    else:
        numba_impl.focal_coefficients(x, rng.dirichlet(np.ones(K), size=n).astype(dtype), 2.0, 1 / n)
    assert bool(seen) == split


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("need_values", [True, False])
def test_poisson_pieces_in_parallel_equal_one_thread(monkeypatch, dtype, need_values):
    """The Poisson kernel's pieces on every core: the same values, gradient, bad-target count
    and (the pieces' sums added in order) the same total, to the bit."""
    rng = np.random.default_rng(7)
    n = 5 * (1 << 16) + 123  # six pieces, the last one short
    z = (rng.normal(size=n) * 3).astype(dtype)
    y = rng.poisson(np.exp(np.clip(z, -5, 5))).astype(dtype)
    y[[5, n - 3]] = -1.0  # bad targets in the first and last piece
    z[n // 2] = dtype(1e4)  # past the exp limit: inf, as exp
    ref = _single(monkeypatch, numba_impl.poisson_log, z, y, 0.25, need_values)
    got = _parallel(monkeypatch, numba_impl.poisson_log, z, y, 0.25, need_values)
    assert got[3] == ref[3] == 2
    for a, b in zip(got[:3], ref[:3]):
        if b is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, b)
    if not need_values:  # the total against the values' own float64 sum (an independent order)
        values = numba_impl.poisson_log(z, y, 0.25, True)[0]
        finite = np.isfinite(values)
        assert np.isinf(got[1]) == (not finite.all())
