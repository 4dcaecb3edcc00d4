"""Curvature blocks: the simplex maps' curvature and Gauss–Newton term in forms that
keep their small entries on confident rows, and a sum that keeps each part's form."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from ..contract import diagonal as _diagonal_view
from ..numerics.algebra import complement_sums, project_columns, project_rows
from ..numerics.validation import as_float_array, check_same_shape
from .algebra import total
from .base import JacobianOperator, _check_compatible, _rows2d
from .structured import DiagonalJacobian, DiagonalPlusLowRank, DiagonalPlusRankOne


class SimplexBlock(DiagonalPlusRankOne):
    """``c · (diag(d) − d dᵀ/Σd)`` per sample, ``d >= 0``: the curvature of the entmax
    family.

    softmax + cross-entropy is ``d = p`` (with ``c`` the summed target weights over T²),
    sparsemax ``d`` = the support indicator, 1.5-entmax ``d = √p``. Stored as
    ``diag(c d) − w wᵀ`` with ``w = d √(c/Σd)``, so its dense form is symmetric to the
    bit, and with an exact square root (:meth:`sqrt`)::

        S = √c · (diag(√d) − d √dᵀ / Σd),      S Sᵀ = c (diag(d) − d dᵀ/Σd)

    for any ``Σd`` (float32 round-off, label smoothing). ``root_d`` may pass ``√d``
    computed more accurately than ``np.sqrt(d)`` (e.g. ``exp(½ log p)``, which stays
    normal where ``p`` underflows).

    Parameters
    ----------
    d : array_like, shape (..., K)
    c : array_like, shape (...) or scalar
    root_d : array_like, shape (..., K), optional
    """

    def __init__(self, d, c, root_d=None):
        d = as_float_array(d, "d")
        c = np.asarray(c, dtype=d.dtype)[..., None]
        # no (..., K) mask: NaN passes as before
        if (d.size and d.min() < 0) or (c.size and c.min() < 0):
            raise ValueError("a SimplexBlock needs d >= 0 and c >= 0")
        total_d = d.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            # √(c/Σd) per row (zero where Σd = 0): w = d ⊙ this
            self._w_factor = np.where(
                total_d > 0, np.sqrt(c / np.where(total_d > 0, total_d, 1)), 0
            )
        self.c, self.weights, self.total = np.broadcast_to(c, total_d.shape), d, total_d
        self.batch_shape, self.size, self.dtype = d.shape[:-1], d.shape[-1], d.dtype
        self.projector, self._diagonal = False, None
        self._root_d = (
            None if root_d is None else as_float_array(root_d, "root_d", like=d)
        )
        # c d and w (each the size of d) are made when first asked for: building the
        # block costs one pass over d (its sum), not three full-size arrays
        self._cd = self._w = None

    @property
    def d(self) -> np.ndarray:
        """``c d``, the diagonal part (computed when first asked for)."""
        if self._cd is None:
            self._cd = self.c * self.weights
        return self._cd

    @property
    def u(self) -> np.ndarray:
        """``w = d √(c/Σd)`` (computed when first asked for); ``v`` is the same
        array."""
        if self._w is None:
            self._w = self.weights * self._w_factor
        return self._w

    v = u

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held: d (and ``c d``, ``w`` once a product has made
        them)."""
        held = [self.weights, self.total, self._w_factor]
        held += [self._cd, self._w, self._root_d]
        return sum(x.nbytes for x in held if x is not None)

    def _dense_rows(self, rows, out):
        # w and c d of these rows only (the full arrays' products, row by row)
        d = _rows2d(self.weights)[rows]
        w = d * self._w_factor.reshape(-1, 1)[rows]
        c = self.c.reshape(-1, 1)[rows] if self.c.ndim > 1 else self.c
        _kernels.dense_diag_minus_rank_one(c * d, w, w, out, self._exact_diagonal(rows))

    def _take(self, rows):
        c = self.c.reshape(-1)[rows] if self.c.ndim > 1 else self.c.reshape(())
        root = None if self._root_d is None else _rows2d(self._root_d)[rows]
        return SimplexBlock(_rows2d(self.weights)[rows], c, root)

    def _exact_diagonal(self, rows=slice(None)):
        """``c d_k Σ_{i≠k} d_i / Σd``: no cancellation (a one-hot d gives exact
        zeros)."""
        d = _rows2d(self.weights)[rows]
        c = self.c.reshape(-1, 1)[rows] if self.c.ndim > 1 else self.c
        D = _rows2d(self.total)[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            # (n, 1): zero rows stay 0
            factor = np.where(D > 0, c / np.where(D > 0, D, 1), 0)
        out = complement_sums(d)
        out *= d
        out *= factor
        return out

    @property
    def root_d(self) -> np.ndarray:
        """``√d`` (as given, else ``np.sqrt(d)``, computed when first asked for)."""
        if self._root_d is None:
            self._root_d = np.sqrt(self.weights)
        return self._root_d

    def sqrt(self) -> np.ndarray:
        """The exact square-root factor ``S``, shape ``(..., K, K)``, with ``S Sᵀ``
        these blocks::

            S = √c · (diag(√d) − d √dᵀ / Σd)

        built as a :class:`DiagonalPlusRankOne` whose diagonal ``√c √d_k (1 − d_k/Σd)``
        takes the complement ``Σ_{i≠k} d_i`` summed directly (no cancellation on a
        confident row); ``√d`` is :attr:`root_d`, and a row with ``Σd = 0`` gives zeros.
        For softmax + cross-entropy (``d = p``, ``root_d = exp(½ log p)``) this is the
        exact factor of the Hessian, normal where ``p`` underflows.
        """
        d, D = self.weights, self.total
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(D > 0, d / np.where(D > 0, D, 1), 0)
            # 1 − d/Σd, the complement summed directly
            comp = np.where(D > 0, complement_sums(d) / np.where(D > 0, D, 1), 0)
        rc = np.sqrt(self.c)
        root = self.root_d
        exact = rc * root * comp
        return DiagonalPlusRankOne(rc * root, rc * ratio, root, diagonal=exact).dense()

    # -- algebra -----------------------------------------------------------------------
    @property
    def T(self):
        return self

    def _scaled(self, c, cv):
        if np.all(c >= 0):
            return SimplexBlock(self.weights, self.c[..., 0] * c, self._root_d)
        return super()._scaled(c, cv)


class ScaledSimplexBlock(DiagonalPlusRankOne):
    """``diag(j) H diag(j)`` per sample for a :class:`SimplexBlock` ``H``: the Gauss–Newton
    term (or Fisher) of an elementwise activation (``J = diag(j)``) under a simplex-block
    curvature (softmax cross-entropy on scores, Plackett–Luce's one step).

    Dense as ``diag(j² c d) − (j ⊙ w)(j ⊙ w)ᵀ`` with the diagonal ``j²`` times ``H``'s exact
    one, and it keeps ``H`` itself: its square root is ``diag(j) · H.sqrt()``, exact, where
    the congruence's own entries would cancel on a confident row (``p_top`` rounding to 1,
    the diagonal a difference of numbers far larger than it). Scaling by ``c >= 0`` and
    taking rows keep the form.
    """

    def __init__(self, j, H: SimplexBlock):
        j = as_float_array(j, "j", like=H.weights)
        check_same_shape(j, "j", H.weights, "d")
        jw = j * H.u
        super().__init__(j * j * H.d, jw, jw, diagonal=j * j * H.diagonal())
        self.j, self.block = j, H

    def sqrt(self) -> np.ndarray:
        """``diag(j) · S_H`` with ``S_H`` the block's exact factor (:meth:`SimplexBlock.sqrt`)."""
        return self.j[..., None] * self.block.sqrt()

    @property
    def T(self):
        return self

    def _take(self, rows):
        return ScaledSimplexBlock(_rows2d(self.j)[rows], self.block._take(rows))

    def _scaled(self, c, cv):
        H = self.block._scaled(c, cv)
        if isinstance(H, SimplexBlock):
            return ScaledSimplexBlock(self.j, H)
        return super()._scaled(c, cv)


class ProjectedDiagonal(JacobianOperator):
    """``Pᵀ diag(m) P`` per sample with ``P = I − 1 vᵀ`` (``m >= 0``, ``v >= 0``,
    ``Σv = 1``).

    The Gauss–Newton term ``Jᵀ diag(h) J`` of every simplex map, whose Jacobian is
    ``J = diag(g) − g vᵀ = diag(g) P``, with ``m = g² h``. Its entries::

        M_jk = v_j v_k Σm − m_j v_k − m_k v_j        (j ≠ k)
        M_jj = m_j (1 − v_j)² + v_j² Σ_{i≠j} m_i

    are computed that way: the diagonal as a sum of non-negative terms with both
    complements summed directly (:func:`~jacobians.numerics.algebra.complement_sums`), so a
    confident prediction (``v`` near one-hot, where ``diag(m) − m vᵀ − v mᵀ + Σm v vᵀ``
    subtracts numbers far larger than the result) keeps its small curvature, and a
    one-hot ``v`` gives exact zeros.
    """

    def __init__(self, m, v):
        self.m = as_float_array(m, "m")
        self.v = as_float_array(v, "v", like=self.m)
        check_same_shape(self.v, "v", self.m, "m")
        self.batch_shape = self.m.shape[:-1]
        self.size = self.m.shape[-1]
        self.dtype = self.m.dtype

    @property
    def nbytes(self) -> int:
        return self.m.nbytes + self.v.nbytes

    def _parts(self, rows=slice(None)):
        m, v = _rows2d(self.m)[rows], _rows2d(self.v)[rows]
        total = m.sum(axis=-1, keepdims=True)
        return m, v, total

    def diagonal(self):
        m, v, _ = self._parts()
        comp = complement_sums(v)
        return (m * comp * comp + v * v * complement_sums(m)).reshape(self.m.shape)

    def _dense_rows(self, rows, out):
        m, v, total = self._parts(rows)
        # m vᵀ + v mᵀ − (√Σm v)(√Σm v)ᵀ: each entry's terms are the transposed entry's,
        # swapped, so the blocks come out symmetric to the bit
        sv = np.sqrt(total) * v
        low = DiagonalPlusLowRank(
            m, np.stack([m, v, sv], axis=-1), np.stack([v, m, -sv], axis=-1)
        )
        low._dense_rows(slice(None), out)
        comp, rest = complement_sums(v), complement_sums(m)
        _diagonal_view(out)[...] = m * comp * comp + v * v * rest
        # the row and column of v's largest entry t:
        #   M_tk = v_k (v_t R_t − m_t c_t) − m_k v_t
        # with R_t = Σ_{i≠t} m_i and c_t = 1 − v_t summed directly (the plain form
        # subtracts v_t Σm v_k and m_t v_k, both near m_t v_k when v_t is near 1)
        n = np.arange(m.shape[0])
        t = v.argmax(axis=-1)
        lead = v[n, t] * rest[n, t] - m[n, t] * comp[n, t]
        edge = v * lead[:, None] - m * v[n, t][:, None]
        edge[n, t] = out[n, t, t]
        out[n, t, :] = edge
        out[n, :, t] = edge

    def jvp(self, x):
        x = self._check_vector(x, "v")
        y = self.m * project_rows(x, self.v)
        return project_columns(y[..., None], self.v)[..., 0]

    def vjp(self, g):
        return self.jvp(g)  # symmetric

    def matmat(self, X):
        X = self._check_matrix(X)
        PX = project_rows(np.moveaxis(X, -1, -2), self.v[..., None, :])
        Y = self.m[..., None] * np.moveaxis(PX, -1, -2)
        return project_columns(Y, self.v)

    def sqrt(self):
        """``Pᵀ diag(√m)``: ``(Pᵀ diag(√m))(diag(√m) P) = Pᵀ diag(m) P``, its rows
        projected with the complement summed directly where ``v`` is largest."""
        if np.any(self.m < 0):
            raise ValueError("a ProjectedDiagonal needs m >= 0 for a real square root")
        return project_columns(DiagonalJacobian(np.sqrt(self.m)).dense(), self.v)

    def _take(self, rows):
        return ProjectedDiagonal(_rows2d(self.m)[rows], _rows2d(self.v)[rows])

    # -- algebra -----------------------------------------------------------------------
    @property
    def T(self):
        return self

    def _scaled(self, c, cv):
        if np.all(c >= 0):
            return ProjectedDiagonal(self.m * cv, self.v)
        return super()._scaled(c, cv)

    def _low_rank(self):
        m, v = self.m, self.v
        msum = m.sum(axis=-1, keepdims=True)
        return DiagonalPlusLowRank(
            m, np.stack([m, v], axis=-1), np.stack([v, m - msum * v], axis=-1)
        )


class SumOperator(JacobianOperator):
    """``Σ ops`` block by block, each part kept in its own (accurate) structure:
    products, the diagonal and the dense form are sums of the parts' own."""

    def __init__(self, *ops: JacobianOperator):
        if not ops:
            raise ValueError("a SumOperator needs at least one operator")
        for op in ops[1:]:
            _check_compatible(ops[0], op)
        self.ops = tuple(ops)
        self.batch_shape = ops[0].batch_shape
        self.size = ops[0].size
        self.dtype = np.result_type(*(op.dtype for op in ops))

    @property
    def nbytes(self) -> int:
        return sum(op.nbytes for op in self.ops)

    def _dense_rows(self, rows, out):
        self.ops[0]._dense_rows(rows, out)
        if len(self.ops) > 1:
            part = np.empty_like(out)
            for op in self.ops[1:]:
                op._dense_rows(rows, part)
                out += part

    def jvp(self, x):
        return sum(op.jvp(x) for op in self.ops)

    def vjp(self, g):
        return sum(op.vjp(g) for op in self.ops)

    def matmat(self, X):
        return sum(op.matmat(X) for op in self.ops)

    def diagonal(self):
        return sum(op.diagonal() for op in self.ops)

    def _take(self, rows):
        return SumOperator(*(op._take(rows) for op in self.ops))

    # -- algebra: part by part ---------------------------------------------------------
    @property
    def T(self):
        return SumOperator(*(part.T for part in self.ops))

    def _scaled(self, c, cv):
        return SumOperator(*(part.scaled(c) for part in self.ops))

    def _low_rank(self):
        return total(*self.ops)._low_rank()
