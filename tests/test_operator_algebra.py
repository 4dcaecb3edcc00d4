"""The operators' algebra (``T``, ``scaled``, ``as_low_rank``, ``total``, ``product``,
``+`` and ``@`` of two operators) against the same operations on explicit dense blocks
built with ``np.diag`` / ``np.outer``, and the structure each result keeps; a user's
operator with no closed forms falls back to dense blocks."""

from __future__ import annotations

import numpy as np
import pytest

from jacobians import operators as O

B, K = (2, 3), 4
TOL = {"rtol": 1e-12, "atol": 1e-12}


class Plain(O.JacobianOperator):
    """A user's operator: only the abstract methods, no closed forms."""

    def __init__(self, M):
        self.M, self.batch_shape, self.size, self.dtype = M, M.shape[:-2], M.shape[-1], M.dtype

    nbytes = property(lambda self: self.M.nbytes)

    def _dense_rows(self, rows, out):
        out[...] = self.M.reshape(-1, self.size, self.size)[rows]

    def jvp(self, v):
        return np.einsum("...jk,...k->...j", self.M, v)

    def vjp(self, g):
        return np.einsum("...j,...jk->...k", g, self.M)

    def diagonal(self):
        return np.einsum("...jj->...j", self.M).copy()

    def _take(self, rows):
        return Plain(self.M.reshape(-1, self.size, self.size)[rows])


def _outer(u, v):
    return u[..., :, None] * v[..., None, :]


def _operators(rng):
    """name -> (operator, its dense blocks built independently, float64)."""
    d, u, v = (rng.normal(size=B + (K,)) for _ in range(3))
    U, V = rng.normal(size=B + (K, 2)), rng.normal(size=B + (K, 2))
    M = rng.normal(size=B + (K, K))
    p = rng.dirichlet(np.ones(K), size=B)
    w, c = rng.uniform(0.5, 2, size=B + (K,)), rng.uniform(0.5, 2, size=B)
    eye = np.eye(K)
    P = eye - _outer(np.ones(B + (K,)), p)  # I − 1 pᵀ
    pd = np.swapaxes(P, -1, -2) @ (w[..., None] * P)
    sb = c[..., None, None] * (eye * p[..., None, :] - _outer(p, p))
    ops = {
        "dense": (O.DenseJacobian(M), M),
        "plain": (Plain(M), M),
        "diag": (O.DiagonalJacobian(d), eye * d[..., None, :]),
        "rank_one": (O.DiagonalPlusRankOne(d, u, v), eye * d[..., None, :] - _outer(u, v)),
        "simplex_jacobian": (O.SimplexJacobian(w, w, w / w.sum(-1, keepdims=True)),
                             eye * w[..., None, :] - _outer(w, w / w.sum(-1, keepdims=True))),
        "low_rank": (O.DiagonalPlusLowRank(d, U, V),
                     eye * d[..., None, :] - U @ np.swapaxes(V, -1, -2)),
        "simplex_block": (O.SimplexBlock(p, c), sb),
        "projected": (O.ProjectedDiagonal(w, p), pd),
    }
    ops["sum"] = (O.SumOperator(ops["simplex_block"][0], ops["projected"][0]), sb + pd)
    return ops


KINDS = ["dense", "plain", "diag", "rank_one", "simplex_jacobian", "low_rank",
         "simplex_block", "projected", "sum"]
SAME = {"diag", "simplex_block", "projected"}  # symmetric structures: T is the operator
# the transposed structure where it is not the operator's own class
T_TYPE = {"plain": O.DenseJacobian, "simplex_jacobian": O.DiagonalPlusRankOne}
LOW = {"dense": O.DenseJacobian, "plain": O.DenseJacobian, "low_rank": O.DiagonalPlusLowRank}


@pytest.mark.parametrize("kind", KINDS)
def test_transpose_and_low_rank_form(kind, rng):
    op, M = _operators(rng)[kind]
    for t in (op.T, O.transpose(op)):
        np.testing.assert_allclose(t.dense(), np.swapaxes(M, -1, -2), **TOL)
        assert (t is op) if kind in SAME else type(t) is T_TYPE.get(kind, type(op))
    low = O.as_low_rank(op)
    np.testing.assert_allclose(low.dense(), M, **TOL)
    assert type(low) is LOW.get(kind, O.DiagonalPlusLowRank)
    assert kind not in ("dense", "low_rank") or low is op


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("c", [0.5, -1.5, "rows", "rows_signed"])
def test_scaled(kind, c, rng):
    op, M = _operators(rng)[kind]
    if isinstance(c, str):
        c = rng.uniform(0.5, 2, size=B) * (rng.choice([-1, 1], size=B) if c == "rows_signed" else 1)
    out = op.scaled(c)
    np.testing.assert_allclose(out.dense(), np.asarray(c)[..., None, None] * M, **TOL)
    keeps = kind in ("diag", "sum", "dense") or (kind in SAME and np.all(np.asarray(c) >= 0))
    if keeps:
        assert type(out) is type(op)
    else:
        assert type(out) is (O.DenseJacobian if kind == "plain" else O.DiagonalPlusLowRank)
    with pytest.raises(ValueError, match="batch shape"):
        op.scaled(np.ones(3))


@pytest.mark.parametrize("a", KINDS)
@pytest.mark.parametrize("b", KINDS)
def test_product_and_total_of_two(a, b, rng):
    ops = _operators(rng)
    (A, MA), (Bo, MB) = ops[a], ops[b]
    dense = {"dense", "plain"} & {a, b}
    for out, ref in ((A @ Bo, MA @ MB), (O.product(A, Bo), MA @ MB),
                     (A + Bo, MA + MB), (O.total(A, Bo, ops["diag"][0]), MA + MB + ops["diag"][1])):
        np.testing.assert_allclose(out.dense(), ref, **TOL)
        if dense:
            assert type(out) is O.DenseJacobian
        elif a == b == "diag":
            assert type(out) is O.DiagonalJacobian
        else:
            assert type(out) is O.DiagonalPlusLowRank


def test_mismatched_shapes_are_refused(rng):
    A = O.DiagonalJacobian(rng.normal(size=(2, 3)))
    Bo = O.DiagonalJacobian(rng.normal(size=(2, 4)))
    for f in (lambda: A @ Bo, lambda: A + Bo, lambda: O.product(A, Bo), lambda: O.total(A, Bo)):
        with pytest.raises(ValueError, match="do not match"):
            f()


@pytest.mark.parametrize("batch", [(2, 3), (5,), (0,)])
def test_rank_zero_low_rank_builds_and_takes_rows(batch, rng):
    """``diag(d) − U Vᵀ`` with r = 0 columns (a diagonal's low-rank form) is ``diag(d)``:
    its dense blocks and its row blocks (``reshape(-1, K, 0)`` cannot infer -1)."""
    K = 4
    d = rng.normal(size=batch + (K,))
    empty = np.zeros(batch + (K, 0))
    for op in (O.DiagonalPlusLowRank(d, empty, empty), O.as_low_rank(O.DiagonalJacobian(d))):
        assert op.rank == 0
        expected = np.eye(K) * d[..., None, :]
        np.testing.assert_array_equal(op.dense(), expected)
        np.testing.assert_array_equal(op[0:1].dense(), expected.reshape(-1, K, K)[0:1])
