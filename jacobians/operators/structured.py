"""The structured Jacobians: a diagonal, a diagonal minus rank one (the simplex maps'
form among them), and a diagonal minus low rank, the form the algebra composes into."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from .._kernels.numpy_impl import slabs
from ..contract import diagonal as _diagonal_view
from ..numerics.algebra import complement_sums, diag_minus_rank_one, simplex_vjp
from ..numerics.validation import as_float_array, check_same_shape
from .base import JacobianOperator, _rows2d


class DiagonalJacobian(JacobianOperator):
    """``J = diag(d)`` per sample; ``d`` has shape ``(..., K)``."""

    def __init__(self, d):
        self.d = as_float_array(d, "d")
        self.batch_shape = self.d.shape[:-1]
        self.size = self.d.shape[-1]
        self.dtype = self.d.dtype

    @property
    def nbytes(self) -> int:
        return self.d.nbytes

    def _dense_rows(self, rows, out):
        _kernels.dense_diagonal(_rows2d(self.d)[rows], out)

    def jvp(self, v):
        return self.d * self._check_vector(v, "v")

    def vjp(self, g):
        return self._check_vector(g, "g") * self.d

    def diagonal(self):
        return self.d.copy()

    def matmat(self, X):
        X = self._check_matrix(X)
        return self.d[..., None] * X

    def _take(self, rows):
        return DiagonalJacobian(_rows2d(self.d)[rows])

    def sqrt(self) -> np.ndarray:
        """``diag(√d)``, shape ``(..., K, K)``; ValueError where ``d`` has a negative
        entry."""
        d = self.d
        if np.any(d < 0):
            raise ValueError(
                "the blocks have negative diagonal entries (down to "
                f"{float(d.min()):.3g}): they are not positive semi-definite, so they "
                "have no real square root"
            )
        return DiagonalJacobian(np.sqrt(d)).dense()

    # -- algebra -----------------------------------------------------------------------
    @property
    def T(self):
        return self

    def _scaled(self, c, cv):
        return DiagonalJacobian(self.d * cv)

    def _low_rank(self):
        empty = np.zeros(self.d.shape + (0,), dtype=self.dtype)
        return DiagonalPlusLowRank(self.d, empty, empty)

    def _times(self, other):
        if isinstance(other, DiagonalJacobian):
            return DiagonalJacobian(self.d * other.d)
        return super()._times(other)

    def _total(self, ops):
        if all(isinstance(op, DiagonalJacobian) for op in ops):
            return DiagonalJacobian(sum(op.d for op in ops))
        return super()._total(ops)


class DiagonalPlusRankOne(JacobianOperator):
    """``J = diag(d) − u vᵀ`` per sample; ``d``, ``u``, ``v`` have shape ``(..., K)``.

    The dense form is built the vectorized way: ``einsum('ij,ik->ijk', u, -v)`` writes
    the rank-one part, then ``d`` is added onto the writable diagonal view
    ``einsum('ijj->ij', J)`` (numpy's kernels); the compiled kernels write ``−u_j v_k``
    and ``d_j − u_j v_j`` in one pass, with the same roundings (bitwise equal).

    ``projector=True`` declares ``u = d`` and ``v`` a distribution (``v >= 0``,
    ``Σv = 1``): ``J = diag(d)(I − 1 vᵀ)``, the form of every simplex map's Jacobian.
    Its diagonal ``d_k (1 − v_k)`` is then computed as ``d_k Σ_{i≠k} v_i``
    (:func:`~jacobians.numerics.algebra.complement_sums`): where a prediction is confident
    (``v_k`` near 1) ``d_k − d_k v_k`` would keep only the rounding of the difference.
    ``diagonal`` passes that accurate diagonal ``d − u ⊙ v`` directly instead. The dense
    form then holds that exact diagonal (both kernel sets write it over the diagonal
    entries, after the off-diagonal ones; the compiled kernels take a projector's
    complement sums row by row in the pass that writes the row, bitwise equal to
    numpy's).
    """

    def __init__(self, d, u, v, *, projector: bool = False, diagonal=None):
        self.d = as_float_array(d, "d")
        self.u = as_float_array(u, "u", like=self.d)
        self.v = as_float_array(v, "v", like=self.d)
        check_same_shape(self.u, "u", self.d, "d")
        check_same_shape(self.v, "v", self.d, "d")
        self.batch_shape = self.d.shape[:-1]
        self.size = self.d.shape[-1]
        self.dtype = self.d.dtype
        self.projector = bool(projector)
        self._diagonal = None
        if diagonal is not None:
            self._diagonal = as_float_array(diagonal, "diagonal", like=self.d)

    def _exact_diagonal(self, rows=slice(None)) -> np.ndarray | None:
        """The diagonal without cancellation (rows of the flattened batch), or None."""
        if self._diagonal is not None:
            return _rows2d(self._diagonal)[rows]
        if not self.projector:
            return None
        return _rows2d(self.d)[rows] * complement_sums(_rows2d(self.v)[rows])

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct arrays held (softmax's ``d`` and ``u`` are one
        array)."""
        unique = {id(x): x for x in (self.d, self.u, self.v)}
        return sum(x.nbytes for x in unique.values())

    def _dense_rows(self, rows, out):
        # numpy: einsum slab by slab; numba: one pass (see
        # _kernels.dense_diag_minus_rank_one); a given exact diagonal, or a projector's
        # d ⊙ complement_sums(v) (the kernels take it row by row, in the pass that
        # writes the row), replaces d_j − u_j v_j
        u, v, d = _rows2d(self.u)[rows], _rows2d(self.v)[rows], _rows2d(self.d)[rows]
        exact = None if self._diagonal is None else _rows2d(self._diagonal)[rows]
        _kernels.dense_diag_minus_rank_one(
            d, u, v, out, exact, projector=self.projector
        )

    def jvp(self, x):
        # d ⊙ x − u (v·x), one allocation
        return diag_minus_rank_one(self.d, self.u, self.v, self._check_vector(x, "v"))

    def vjp(self, g):
        # g ⊙ d − v (u·g), one allocation
        return diag_minus_rank_one(self.d, self.v, self.u, self._check_vector(g, "g"))

    def diagonal(self):
        exact = self._exact_diagonal()
        if exact is None:
            return self.d - self.u * self.v
        return exact.reshape(self.d.shape)

    def matmat(self, X):
        X = self._check_matrix(X)
        vX = np.einsum("...k,...kc->...c", self.v, X)
        return self.d[..., None] * X - self.u[..., None] * vX[..., None, :]

    def _take(self, rows):
        diagonal = None if self._diagonal is None else _rows2d(self._diagonal)[rows]
        return DiagonalPlusRankOne(
            _rows2d(self.d)[rows], _rows2d(self.u)[rows], _rows2d(self.v)[rows],
            projector=self.projector, diagonal=diagonal,
        )

    # -- algebra -----------------------------------------------------------------------
    @property
    def T(self):
        return DiagonalPlusRankOne(self.d, self.v, self.u)

    def _low_rank(self):
        return DiagonalPlusLowRank(self.d, self.u[..., None], self.v[..., None])


def simplex_product(w: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w ⊙ (x' − v·x')``, ``x'`` centred on the entry of the largest ``w``: the
    product of a simplex map's Jacobian ``diag(w) − w vᵀ`` (``v = w/Σw``, symmetric)
    with ``x``, without cancellation on a confident row. One kernel pass
    (:func:`jacobians._kernels.simplex_vjp`) when the three share a dtype; numpy's,
    promoting, otherwise.

    A Jacobian that maps constants to zero (``J 1 = 0``) gives the same product with
    ``x`` or ``x − x_c``; taken of ``x − x_c``, its round-off scales with x's spread
    over the row's heavy entries instead of x's size."""
    if w.dtype == v.dtype == x.dtype:
        return _kernels.simplex_vjp(w, v, x)
    return simplex_vjp(w, v, x)


class SimplexJacobian(DiagonalPlusRankOne):
    """``J = diag(g) − g gᵀ/Σg`` per sample (the entmax family, softmax to sparsemax):
    :class:`DiagonalPlusRankOne` with ``d = u = g`` and ``v = g/Σg`` in projector form
    (exact diagonal ``g ⊙ (1 − v)`` from complement sums), symmetric, with ``J 1 = 0``;
    its products are taken of centred vectors (:func:`simplex_product`)."""

    def __init__(self, d, u, v, *, diagonal=None):
        super().__init__(d, u, v, projector=True, diagonal=diagonal)

    def _product(self, x):
        # symmetric: J x = Jᵀ x = d ⊙ (x' − v·x'), x' centred on the largest d
        return simplex_product(self.d, self.v, x)

    def jvp(self, x):
        return self._product(self._check_vector(x, "v"))

    def vjp(self, g):
        return self._product(self._check_vector(g, "g"))

    def _take(self, rows):
        diagonal = None if self._diagonal is None else _rows2d(self._diagonal)[rows]
        return SimplexJacobian(
            _rows2d(self.d)[rows], _rows2d(self.u)[rows], _rows2d(self.v)[rows],
            diagonal=diagonal,
        )


class DiagonalPlusLowRank(JacobianOperator):
    """``M = diag(d) − U Vᵀ`` per sample; ``d`` has shape ``(..., K)``, ``U`` and ``V``
    ``(..., K, r)``.

    The form every product and sum of the structured operators takes: a diagonal and
    rank-one Jacobian, a diagonal loss Hessian and a curvature term compose into it with
    the ranks adding up (:func:`~jacobians.operators.product`,
    :func:`~jacobians.operators.total`), so a head's Hessian or GGN blocks keep O(N·K·r)
    memory and O(K·r) products per sample.

    ``symmetric=True`` declares ``U Vᵀ`` symmetric: the dense blocks are then averaged
    with their transposes, so they are symmetric to the bit (einsum's fused
    multiply-adds would otherwise leave round-off differences between ``M_jk`` and
    ``M_kj``).
    """

    def __init__(self, d, U, V, *, symmetric: bool = False):
        self.symmetric = bool(symmetric)
        self.d = as_float_array(d, "d")
        # r = 0 columns is allowed
        self.U = as_float_array(U, "U", min_ndim=0, like=self.d)
        self.V = as_float_array(V, "V", min_ndim=0, like=self.d)
        if self.U.shape[:-1] != self.d.shape or self.V.shape != self.U.shape:
            raise ValueError(
                f"U and V must have shape {self.d.shape + ('r',)} (..., K, r) like d "
                f"{self.d.shape}; got shapes {self.U.shape} and {self.V.shape}"
            )
        self.batch_shape = self.d.shape[:-1]
        self.size = self.d.shape[-1]
        self.dtype = self.d.dtype

    @property
    def rank(self) -> int:
        """r, the number of columns of ``U`` and ``V``."""
        return self.U.shape[-1]

    @property
    def nbytes(self) -> int:
        unique = {id(x): x for x in (self.d, self.U, self.V)}
        return sum(x.nbytes for x in unique.values())

    def _dense_rows(self, rows, out):
        n, K, r = self.n_rows, self.size, self.rank  # n, not -1: r may be 0
        d = _rows2d(self.d)[rows]
        U = self.U.reshape(n, K, r)[rows]
        nV = np.negative(self.V.reshape(n, K, r)[rows])
        for samples, js in slabs(out):
            np.einsum("ijr,ikr->ijk", U[samples, js], nV[samples], out=out[samples, js])
            _diagonal_view(out[samples, js, js])[...] += d[samples, js]
        if self.symmetric:  # (M + Mᵀ)/2: symmetric to the bit, whatever einsum's order
            np.add(out, np.swapaxes(out, -1, -2), out=out)
            out *= out.dtype.type(0.5)

    def jvp(self, x):
        x = self._check_vector(x, "v")
        Vx = np.einsum("...kr,...k->...r", self.V, x)
        return self.d * x - np.einsum("...kr,...r->...k", self.U, Vx)

    def vjp(self, g):
        g = self._check_vector(g, "g")
        Ug = np.einsum("...kr,...k->...r", self.U, g)
        return g * self.d - np.einsum("...kr,...r->...k", self.V, Ug)

    def matmat(self, X):
        X = self._check_matrix(X)
        return self.d[..., None] * X - self.U @ (np.swapaxes(self.V, -1, -2) @ X)

    def diagonal(self):
        return self.d - np.einsum("...kr,...kr->...k", self.U, self.V)

    def _take(self, rows):
        n, K, r = self.n_rows, self.size, self.rank
        return DiagonalPlusLowRank(
            _rows2d(self.d)[rows], self.U.reshape(n, K, r)[rows],
            self.V.reshape(n, K, r)[rows], symmetric=self.symmetric,
        )

    # -- algebra: the structured operators compose into diag(d) − U Vᵀ ----------------
    @property
    def T(self):
        return DiagonalPlusLowRank(self.d, self.V, self.U)

    def _scaled(self, c, cv):
        return DiagonalPlusLowRank(self.d * cv, self.U * cv[..., None], self.V)

    def _low_rank(self):
        return self

    def _compose(self, other: DiagonalPlusLowRank) -> DiagonalPlusLowRank:
        """This @ ``other`` (rank r₁ + r₂)::

            (D₁ − U₁V₁ᵀ)(D₂ − U₂V₂ᵀ) = D₁D₂ − [D₁U₂ − U₁(V₁ᵀU₂)] V₂ᵀ − U₁ (D₂V₁)ᵀ
        """
        # (einsum, not matmul: on stacks of tiny float32 blocks OpenBLAS's sgemm has been seen
        # to raise a spurious "invalid value" flag, depending on what memory held before)
        M = np.einsum("...kr,...ks->...rs", self.V, other.U)  # (..., r1, r2)
        left = self.d[..., None] * other.U - np.einsum("...kr,...rs->...ks", self.U, M)
        U = np.concatenate([left, self.U], axis=-1)
        V = np.concatenate([other.V, other.d[..., None] * self.V], axis=-1)
        return DiagonalPlusLowRank(self.d * other.d, U, V)

    def _stack(self, lows: list[DiagonalPlusLowRank]) -> DiagonalPlusLowRank:
        """``Σ lows`` (``lows[0]`` is this one): diagonals add, columns stack."""
        return DiagonalPlusLowRank(
            sum(op.d for op in lows),
            np.concatenate([op.U for op in lows], axis=-1),
            np.concatenate([op.V for op in lows], axis=-1),
        )
