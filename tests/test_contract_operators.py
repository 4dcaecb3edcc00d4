"""``contract``, ``diagonal`` and the structured Jacobian operators against explicit
per-sample matrices built with ``np.diag`` / ``np.outer``."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import readonly

import jacobians as jac
from jacobians import testing
from jacobians._kernels import numpy_impl
from jacobians.contract import contraction_expression
from jacobians.numerics.parallel import PARALLEL_MIN_BYTES

TIGHT = {"rtol": 1e-12, "atol": 1e-14}


# -- contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
@pytest.mark.parametrize(("gdt", "jdt"), [(np.float64, np.float64), (np.float32, np.float32), (np.float32, np.float64), (np.int64, np.float64)])
def test_contract_is_the_chain_rule(batch, gdt, jdt, rng):
    K, M = 4, 3
    g = (rng.normal(size=batch + (M,)) * 3).astype(gdt)
    J = rng.normal(size=batch + (M, K)).astype(jdt)
    out = jac.contract(g, J)
    expected = np.einsum("...i,...ij->...j", g.astype(np.float64), J.astype(np.float64))
    assert out.shape == batch + (K,)
    if gdt == jdt == np.float32:
        assert out.dtype == np.float32
        testing.assert_grad_close(out, expected)
    else:
        assert out.dtype == np.float64
        testing.assert_grad_close(out, expected, **TIGHT)


def test_contract_sums_over_rows_not_columns(rng):
    J = rng.normal(size=(2, 3, 3))
    g = rng.normal(size=(2, 3))
    rows = np.array([sum(g[n, i] * J[n, i, :] for i in range(3)) for n in range(2)])  # Σ_i g_i J[i, :]
    testing.assert_grad_close(jac.contract(g, J), rows, **TIGHT)
    assert not np.allclose(jac.contract(g, J), jac.contract(g, np.swapaxes(J, -1, -2)))


def test_contraction_expression_is_built_once_per_shape():
    assert contraction_expression((4, 3), (4, 3, 3)) is contraction_expression((4, 3), (4, 3, 3))
    assert contraction_expression((4, 3), (4, 3, 3)) is not contraction_expression((5, 3), (5, 3, 3))


def test_contract_leaves_inputs_alone(rng):
    g, J = readonly(rng.normal(size=(3, 4))), readonly(rng.normal(size=(3, 4, 4)))
    g0, J0 = g.copy(), J.copy()
    jac.contract(g, J)
    jac.contract(g.astype(np.float32), J)
    np.testing.assert_array_equal(g, g0)
    np.testing.assert_array_equal(J, J0)


def test_contract_errors():
    with pytest.raises(ValueError, match=r"g must have shape \(2, 3\) to contract with J of shape \(2, 3, 4\).*got shape \(2, 4\)"):
        jac.contract(np.zeros((2, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"got shape \(3, 3\)"):
        jac.contract(np.zeros((3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="J must have at least 2 dimension"):
        jac.contract(np.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match="g must be a real numeric array"):
        jac.contract(np.array(["x", "y"]), np.zeros((2, 2)))


# -- diagonal ------------------------------------------------------------------------------------


def test_diagonal_is_a_writable_view(rng):
    J = rng.normal(size=(2, 3, 4, 4))
    d = jac.diagonal(J)
    assert d.shape == (2, 3, 4)
    np.testing.assert_array_equal(d, np.array([[np.diag(J[b, t]) for t in range(3)] for b in range(2)]))
    d[...] = 7.0
    assert np.all(np.einsum("...ii->...i", J) == 7.0)
    off = ~np.eye(4, dtype=bool)
    assert not np.any(J[..., off] == 7.0)
    d += 1.0
    assert np.all(np.einsum("...ii->...i", J) == 8.0)


def test_diagonal_errors():
    with pytest.raises(ValueError, match=r"J must have shape \(\.\.\., K, K\); got shape \(2, 3, 4\)"):
        jac.diagonal(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="got shape"):
        jac.diagonal(np.zeros(3))
    with pytest.raises(TypeError, match="J must be a numpy array.*got list"):
        jac.diagonal([[1.0, 0.0], [0.0, 1.0]])


# -- operators -----------------------------------------------------------------------------------


def _explicit(kind, params):
    """The dense Jacobians, sample by sample, from the definitions."""
    if kind == "dense":
        return params[0]
    if kind == "diagonal":
        (d,) = params
        return np.array([np.diag(row) for row in d.reshape(-1, d.shape[-1])]).reshape(d.shape + d.shape[-1:])
    d, u, v = params
    flat = [np.diag(dd) - np.outer(uu, vv) for dd, uu, vv in zip(*(x.reshape(-1, x.shape[-1]) for x in (d, u, v)))]
    return np.array(flat).reshape(d.shape + d.shape[-1:])


def _operator(kind, rng, batch, K, dtype=np.float64):
    shape = batch + (K,)
    if kind == "dense":
        params = (rng.normal(size=shape + (K,)).astype(dtype),)
        return jac.DenseJacobian(*params), params
    if kind == "diagonal":
        params = (rng.normal(size=shape).astype(dtype),)
        return jac.DiagonalJacobian(*params), params
    params = tuple(rng.normal(size=shape).astype(dtype) for _ in range(3))  # u ≠ v: not symmetric
    return jac.DiagonalPlusRankOne(*params), params


KINDS = ["dense", "diagonal", "rank_one"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [(), (6,), (2, 3)])
def test_operator_matches_its_explicit_matrices(kind, batch, rng):
    K = 4
    op, params = _operator(kind, rng, batch, K)
    J = _explicit(kind, params)
    g, v = rng.normal(size=batch + (K,)), rng.normal(size=batch + (K,))
    assert op.shape == batch + (K, K) and op.dtype == np.float64
    assert op.n_rows == int(np.prod(batch)) and op.size == K
    assert op.dense_nbytes == J.nbytes
    testing.assert_jacobian_close(op.dense(), J, **TIGHT)
    testing.assert_jacobian_close(op, J, **TIGHT)  # the assertion makes operators dense
    testing.assert_grad_close(op.diagonal(), np.einsum("...ii->...i", J), **TIGHT)
    testing.assert_grad_close(op @ v, np.einsum("...ij,...j->...i", J, v), **TIGHT)
    testing.assert_grad_close(op.jvp(v), np.einsum("...ij,...j->...i", J, v), **TIGHT)
    testing.assert_grad_close(g @ op, np.einsum("...i,...ij->...j", g, J), **TIGHT)
    testing.assert_grad_close(op.vjp(g), np.einsum("...i,...ij->...j", g, J), **TIGHT)
    testing.assert_grad_close(jac.contract(g, op), np.einsum("...i,...ij->...j", g, J), **TIGHT)
    if batch:
        n = op.n_rows
        part = op[1:n]
        testing.assert_jacobian_close(part.dense(), J.reshape(-1, K, K)[1:n], **TIGHT)
    assert repr(op).startswith(f"{type(op).__name__}(shape={op.shape}")


def test_rank_one_layout_is_diag_minus_u_v_transposed(rng):
    d, u, v = rng.normal(size=(3, 1, 4))
    J = jac.DiagonalPlusRankOne(d, u, v).dense()[0]
    for i in range(4):
        for j in range(4):
            assert J[i, j] == pytest.approx((d[0, i] if i == j else 0.0) - u[0, i] * v[0, j], abs=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_structured_operators_hold_order_nk_memory(kind, rng):
    op, _ = _operator(kind, rng, (100,), 50)
    if kind == "dense":
        assert op.nbytes == op.dense_nbytes
    else:
        assert op.nbytes <= 3 * 100 * 50 * 8 < op.dense_nbytes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_out_buffer_and_threads_give_identical_numbers(kind, dtype, rng):
    K = 32
    N = PARALLEL_MIN_BYTES // (K * K * np.dtype(dtype).itemsize) + 50  # above the parallel threshold
    op, params = _operator(kind, rng, (N,), K, dtype)
    one = op.dense(workers=1)
    assert one.dtype == dtype and one.nbytes > PARALLEL_MIN_BYTES
    two = op.dense(workers=2)
    buf = np.empty((N, K, K), dtype=dtype)
    assert op.dense(out=buf, workers=4) is buf
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, buf)
    rows = slice(0, N, 211)
    testing.assert_jacobian_close(one[rows], _explicit(kind, tuple(p[rows] for p in params)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_bytes", [8, 200, 3 * 7 * 7 * 8, 2 << 20])
def test_dense_slabs_cover_every_entry_once(kind, block_bytes, rng, monkeypatch):
    # block_bytes from one J row (bands of rows within a Jacobian) up to many Jacobians a slab;
    # the output starts as NaN so an entry no slab writes would show
    monkeypatch.setattr(numpy_impl, "DENSE_BLOCK_BYTES", block_bytes)
    op, params = _operator(kind, rng, (5,), 7)
    out = np.full(op.shape, np.nan)
    op.dense(out=out, workers=1)
    np.testing.assert_array_equal(out, _explicit(kind, params))


def test_operator_errors(rng):
    op, _ = _operator("rank_one", rng, (2,), 3)
    with pytest.raises(ValueError, match=r"v must have shape \(2, 3\) \(\.\.\., K\); got shape \(2, 4\)"):
        op @ np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"g must have shape \(2, 3\)"):
        np.zeros((3, 3)) @ op
    with pytest.raises(TypeError, match="indexed by a slice"):
        op[0]
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3, 3\)"):
        op.dense(out=np.empty((2, 3, 4)))
    with pytest.raises(TypeError, match="out must have dtype float64; got dtype float32"):
        op.dense(out=np.empty((2, 3, 3), np.float32))
    ro = np.empty((2, 3, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be a writeable, C-contiguous array"):
        op.dense(out=ro)
    with pytest.raises(ValueError, match=r"u must have the same shape as d, \(2, 3\); got shape \(2, 4\)"):
        jac.DiagonalPlusRankOne(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"J must have shape \(\.\.\., K, K\)"):
        jac.DenseJacobian(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_simplex_block_is_built_from_d_alone_and_its_rows_keep_the_exact_diagonal(dtype, rng):
    """A SimplexBlock holds d (and its row sums) until a product asks for ``c d`` and
    ``w``; its dense blocks, products and row blocks are ``c (diag(d) − d dᵀ/Σd)`` built by
    hand in long double, the diagonal (confident rows: d near one-hot) to a few ulp."""
    N, K = 6, 9
    z = rng.normal(size=(N, K)) * 4
    z[:3, 2] += 40  # confident rows: 1 − p_2 far below eps
    d = readonly(jac.Softmax()(z).astype(dtype))
    c = readonly(rng.uniform(0.5, 2.0, size=N).astype(dtype))
    op = jac.SimplexBlock(d, c)
    assert op.nbytes < 2 * d.nbytes  # no full-size c d or w yet
    dl, cl = d.astype(np.longdouble), c.astype(np.longdouble)[:, None, None]
    total = dl.sum(-1)[:, None, None]
    ref = -cl * np.einsum("nj,nk->njk", dl, dl) / total
    others = np.array([[np.delete(row, k).sum() for k in range(K)] for row in dl])  # Σ_{i≠k} d_i, directly
    np.einsum("njj->nj", ref)[...] = cl[:, :, 0] * dl * others / total[:, :, 0]
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny  # below tiny: subnormal products
    scale = cl * dl[:, :, None] * dl[:, None, :] + cl * np.einsum("nj,jk->njk", dl, np.eye(K))
    for part, rows in ((op, slice(None)), (op[2:5], slice(2, 5))):
        assert isinstance(part, jac.SimplexBlock) and part.dtype == dtype
        dense = part.dense()
        assert np.all(np.abs(dense - ref[rows]) <= 8 * eps * scale[rows] + tiny)
        diag = np.einsum("njj->nj", ref[rows])  # relative to itself: no cancellation allowed
        assert np.all(np.abs(np.einsum("njj->nj", dense) - diag) <= 8 * eps * np.abs(diag))
        np.testing.assert_array_equal(dense, op.dense()[rows])
    v = rng.normal(size=(N, K)).astype(dtype)
    exact = np.einsum("njk,nk->nj", ref, v.astype(np.longdouble))
    bound = 16 * eps * np.einsum("njk,nk->nj", scale, np.abs(v.astype(np.longdouble))) + K * tiny
    assert np.all(np.abs(op @ v - exact) <= bound) and np.all(np.abs(v @ op - exact) <= bound)
    assert op.nbytes >= 3 * d.nbytes  # the products made c d and w, and keep them
