"""Structured Jacobians: O(N·K) memory, dense only when asked for.

Every built-in activation's Jacobian is one of two shapes:

* :class:`DiagonalJacobian` — ``J = diag(d)`` (elementwise activations);
* :class:`DiagonalPlusRankOne` — ``J = diag(d) − u vᵀ`` (softmax, sparsemax, 1.5-entmax
  with ``u = g``, ``v = g / Σg``; log-softmax with ``d = 1``, ``u = 1``, ``v = softmax``).

A user's activation that only writes ``jacobian(z)`` gets a :class:`DenseJacobian`.
All three support ``op @ v`` (JVP), ``g @ op`` (VJP), ``op.dense(out=None)``,
``op.diagonal()`` and ``op.nbytes``; ``op[rows]`` selects rows of the flattened batch.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> z = np.array([[1.0, 2.0, 3.0]])
>>> op = jac.Softmax().jacobian_operator(z)
>>> op.shape
(1, 3, 3)
>>> np.allclose(op.dense(), jac.Softmax().jacobian(z))
True
>>> np.allclose(np.ones((1, 3)) @ op, 0.0)     # columns of the softmax Jacobian sum to 0
True
"""

from __future__ import annotations

import math

import numpy as np

from . import _kernels
from ._kernels.numpy_impl import _slabs
from ._math import complement_sums, diag_minus_rank_one, project_columns, project_rows, simplex_vjp
from ._parallel import run_in_row_blocks
from ._validation import as_float_array, check_same_shape
from .contract import contract
from .contract import diagonal as _diagonal_view

__all__ = [
    "JacobianOperator",
    "DenseJacobian",
    "DiagonalJacobian",
    "DiagonalPlusRankOne",
    "SimplexJacobian",
    "DiagonalPlusLowRank",
    "SimplexBlock",
    "ProjectedDiagonal",
    "SumOperator",
    "as_low_rank",
    "product",
    "total",
    "transpose",
]

class JacobianOperator:
    """A batch of K×K Jacobians, ``J[..., i, j] = ∂a_i/∂z_j``, stored in structured form.

    Subclasses implement ``_dense_rows``, ``jvp``, ``vjp``, ``diagonal`` and ``_take``.
    """

    #: batch shape (...) of the operator
    batch_shape: tuple[int, ...]
    #: number of outputs/inputs K
    size: int
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """``(..., K, K)``: the shape of the dense Jacobian."""
        return (*self.batch_shape, self.size, self.size)

    @property
    def n_rows(self) -> int:
        """N, the product of the batch axes."""
        return math.prod(self.batch_shape)

    @property
    def dense_nbytes(self) -> int:
        """Bytes the dense Jacobian would take."""
        return self.n_rows * self.size * self.size * self.dtype.itemsize

    @property
    def nbytes(self) -> int:  # pragma: no cover - every subclass overrides
        """Bytes held by this operator."""
        raise NotImplementedError

    # -- dense -------------------------------------------------------------------------
    def dense(self, out: np.ndarray | None = None, *, workers: int | None = None) -> np.ndarray:
        """The dense Jacobian, shape ``(..., K, K)``.

        Parameters
        ----------
        out : ndarray, shape (..., K, K), optional
            C-contiguous buffer of the operator's dtype to write into (no allocation).
        workers : int, optional
            Threads building row blocks; default every available core. Outputs under
            :data:`~jacobians._parallel.PARALLEL_MIN_BYTES` are built on the calling thread.
            With numpy's kernels the build is compute-bound in numpy's einsum loop at every K,
            so a second core helps at K = 10 as at K = 1000 (1.3-1.9x on the 2-core
            development machine); the compiled kernels (``fast`` extra) write each entry once
            and run near the speed of ``buf.fill``.
        """
        shape = self.shape
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy array; got {type(out).__name__}")
            if out.shape != shape:
                raise ValueError(f"out must have shape {shape}; got shape {out.shape}")
            if out.dtype != self.dtype:
                raise TypeError(f"out must have dtype {self.dtype}; got dtype {out.dtype}")
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError("out must be a writeable, C-contiguous array")
        flat = out.reshape(self.n_rows, self.size, self.size)
        run_in_row_blocks(lambda rows: self._dense_rows(rows, flat[rows]), self.n_rows, out.nbytes, workers)
        return out

    def _dense_rows(self, rows: slice, out: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- products ----------------------------------------------------------------------
    def _check_vector(self, x, name: str) -> np.ndarray:
        x = as_float_array(x, name)
        expected = (*self.batch_shape, self.size)
        if x.shape != expected:
            raise ValueError(f"{name} must have shape {expected} (..., K); got shape {x.shape}")
        return x

    def jvp(self, v) -> np.ndarray:  # pragma: no cover - abstract
        """``J @ v`` per sample: ``(..., K) -> (..., K)``."""
        raise NotImplementedError

    def vjp(self, g) -> np.ndarray:  # pragma: no cover - abstract
        """``g @ J`` per sample (``Jᵀ g``): ``(..., K) -> (..., K)``."""
        raise NotImplementedError

    def diagonal(self) -> np.ndarray:  # pragma: no cover - abstract
        """A new array of shape ``(..., K)``: each Jacobian's diagonal."""
        raise NotImplementedError

    def __matmul__(self, v):
        if isinstance(v, JacobianOperator):
            return product(self, v)
        return self.jvp(v)

    def __rmatmul__(self, g):
        return self.vjp(g)

    def __add__(self, other):
        if not isinstance(other, JacobianOperator):
            return NotImplemented
        return total(self, other)

    @property
    def T(self) -> JacobianOperator:
        """The transposed blocks, ``M[..., j, i]``, in the same structure."""
        return transpose(self)

    def scaled(self, c) -> JacobianOperator:
        """``c · M`` for a scalar ``c`` or one factor per batch row, shape ``(...)``."""
        return _scale(self, c)

    def matmat(self, X) -> np.ndarray:
        """``M @ X`` per sample for ``X`` of shape ``(..., K, C)``: shape ``(..., K, C)``."""
        X = as_float_array(X, "X", min_ndim=2)
        expected = (*self.batch_shape, self.size)
        if X.shape[:-1] != expected:
            raise ValueError(f"X must have shape {expected + ('C',)} (..., K, C); got shape {X.shape}")
        cols = np.moveaxis(X, -1, 0)
        return np.moveaxis(np.stack([self.jvp(c) for c in cols]), 0, -1) if cols.shape[0] else np.zeros(X.shape, self.dtype)

    def sqrt(self) -> np.ndarray:
        """A factor ``S`` of shape ``(..., K, C)`` with ``S @ Sᵀ`` equal to these (symmetric,
        positive semi-definite) blocks.

        The structured blocks have closed forms (a diagonal: ``diag(√d)``; a
        :class:`SimplexBlock`: its own); any other is factored from its dense form by a
        symmetric eigendecomposition, ``V diag(√λ)``, which raises ``ValueError`` when a
        block has an eigenvalue below −1e3·eps·max|λ| (it is indefinite: no real factor).
        """
        return _eigen_sqrt(self.dense())

    # numpy must defer to __rmatmul__ for ``ndarray @ op``
    __array_ufunc__ = None

    # -- row blocks --------------------------------------------------------------------
    def __getitem__(self, rows: slice) -> JacobianOperator:
        """The operator restricted to rows ``rows`` of the flattened batch (shape (n, K, K))."""
        if not isinstance(rows, slice):
            raise TypeError("operators are indexed by a slice of the flattened batch rows")
        return self._take(rows)

    def _take(self, rows: slice) -> JacobianOperator:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, nbytes={self.nbytes})"


def _rows2d(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


class DenseJacobian(JacobianOperator):
    """A Jacobian held as its dense array ``J`` of shape ``(..., K, K)``."""

    def __init__(self, J):
        J = as_float_array(J, "J", min_ndim=2)
        if J.shape[-1] != J.shape[-2]:
            raise ValueError(f"J must have shape (..., K, K); got shape {J.shape}")
        self.J = J
        self.batch_shape = J.shape[:-2]
        self.size = J.shape[-1]
        self.dtype = J.dtype

    @property
    def nbytes(self) -> int:
        return self.J.nbytes

    def _dense_rows(self, rows, out):
        out[...] = self.J.reshape(-1, self.size, self.size)[rows]

    def jvp(self, v):
        v = self._check_vector(v, "v")
        return np.matmul(self.J, v[..., None])[..., 0]

    def vjp(self, g):
        return contract(self._check_vector(g, "g"), self.J)

    def diagonal(self):
        return _diagonal_view(self.J).copy()

    def matmat(self, X):
        X = as_float_array(X, "X", min_ndim=2)
        if X.shape[:-1] != self.batch_shape + (self.size,):
            raise ValueError(f"X must have shape {self.batch_shape + (self.size, 'C')} (..., K, C); got shape {X.shape}")
        return np.matmul(self.J, X)

    def _take(self, rows):
        return DenseJacobian(self.J.reshape(-1, self.size, self.size)[rows])


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
        X = as_float_array(X, "X", min_ndim=2)
        if X.shape[:-1] != self.d.shape:
            raise ValueError(f"X must have shape {self.d.shape + ('C',)} (..., K, C); got shape {X.shape}")
        return self.d[..., None] * X

    def _take(self, rows):
        return DiagonalJacobian(_rows2d(self.d)[rows])


class DiagonalPlusRankOne(JacobianOperator):
    """``J = diag(d) − u vᵀ`` per sample; ``d``, ``u``, ``v`` have shape ``(..., K)``.

    The dense form is built the vectorized way: ``einsum('ij,ik->ijk', u, -v)`` writes the
    rank-one part, then ``d`` is added onto the writable diagonal view
    ``einsum('ijj->ij', J)`` (numpy's kernels); the compiled kernels write ``−u_j v_k`` and
    ``d_j − u_j v_j`` in one pass, with the same roundings (bitwise equal).

    ``projector=True`` declares ``u = d`` and ``v`` a distribution (``v >= 0``, ``Σv = 1``):
    ``J = diag(d)(I − 1 vᵀ)``, the form of every simplex map's Jacobian. Its diagonal
    ``d_k (1 − v_k)`` is then computed as ``d_k Σ_{i≠k} v_i``
    (:func:`~jacobians._math.complement_sums`): where a prediction is confident
    (``v_k`` near 1) ``d_k − d_k v_k`` would keep only the rounding of the difference.
    ``diagonal`` passes that accurate diagonal ``d − u ⊙ v`` directly instead. The dense
    form then holds that exact diagonal (both kernel sets write it over the diagonal
    entries, after the off-diagonal ones; the compiled kernels take a projector's complement
    sums row by row in the pass that writes the row, bitwise equal to numpy's).
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
        self._diagonal = None if diagonal is None else as_float_array(diagonal, "diagonal", like=self.d)

    def _exact_diagonal(self, rows=slice(None)) -> np.ndarray | None:
        """The diagonal without cancellation (rows of the flattened batch), or None."""
        if self._diagonal is not None:
            return _rows2d(self._diagonal)[rows]
        if not self.projector:
            return None
        return _rows2d(self.d)[rows] * complement_sums(_rows2d(self.v)[rows])

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct arrays held (softmax's ``d`` and ``u`` are one array)."""
        unique = {id(x): x for x in (self.d, self.u, self.v)}
        return sum(x.nbytes for x in unique.values())

    def _dense_rows(self, rows, out):
        # numpy: einsum slab by slab; numba: one pass (see _kernels.dense_diag_minus_rank_one);
        # a given exact diagonal, or a projector's d ⊙ complement_sums(v) (the kernels take it
        # row by row, in the pass that writes the row), replaces d_j − u_j v_j
        u, v, d = _rows2d(self.u)[rows], _rows2d(self.v)[rows], _rows2d(self.d)[rows]
        exact = None if self._diagonal is None else _rows2d(self._diagonal)[rows]
        _kernels.dense_diag_minus_rank_one(d, u, v, out, exact, projector=self.projector)

    def jvp(self, x):
        # d ⊙ x − u (v·x), one allocation
        return diag_minus_rank_one(self.d, self.u, self.v, self._check_vector(x, "v"))

    def vjp(self, g):
        # g ⊙ d − v (u·g), one allocation
        return diag_minus_rank_one(self.d, self.v, self.u, self._check_vector(g, "g"))

    def diagonal(self):
        exact = self._exact_diagonal()
        return self.d - self.u * self.v if exact is None else exact.reshape(self.d.shape)

    def matmat(self, X):
        X = as_float_array(X, "X", min_ndim=2)
        if X.shape[:-1] != self.d.shape:
            raise ValueError(f"X must have shape {self.d.shape + ('C',)} (..., K, C); got shape {X.shape}")
        return self.d[..., None] * X - self.u[..., None] * np.einsum("...k,...kc->...c", self.v, X)[..., None, :]

    def _take(self, rows):
        diagonal = None if self._diagonal is None else _rows2d(self._diagonal)[rows]
        return DiagonalPlusRankOne(_rows2d(self.d)[rows], _rows2d(self.u)[rows], _rows2d(self.v)[rows],
                                   projector=self.projector, diagonal=diagonal)


def simplex_product(w: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w ⊙ (x' − v·x')``, ``x'`` centred on the entry of the largest ``w``: the product of a
    simplex map's Jacobian ``diag(w) − w vᵀ`` (``v = w/Σw``, symmetric) with ``x``, without
    cancellation on a confident row. One kernel pass (:func:`jacobians._kernels.simplex_vjp`)
    when the three share a dtype; numpy's, promoting, otherwise.

    A Jacobian that maps constants to zero (``J 1 = 0``) gives the same product with ``x`` or
    ``x − x_c``; taken of ``x − x_c``, its round-off scales with x's spread over the row's
    heavy entries instead of x's size."""
    if w.dtype == v.dtype == x.dtype:
        return _kernels.simplex_vjp(w, v, x)
    return simplex_vjp(w, v, x)


class SimplexJacobian(DiagonalPlusRankOne):
    """``J = diag(g) − g gᵀ/Σg`` per sample (the entmax family, softmax to sparsemax):
    :class:`DiagonalPlusRankOne` with ``d = u = g`` and ``v = g/Σg`` in projector form (exact
    diagonal ``g ⊙ (1 − v)`` from complement sums), symmetric, with ``J 1 = 0``; its
    products are taken of centred vectors (:func:`simplex_product`)."""

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
        return SimplexJacobian(_rows2d(self.d)[rows], _rows2d(self.u)[rows], _rows2d(self.v)[rows], diagonal=diagonal)


class DiagonalPlusLowRank(JacobianOperator):
    """``M = diag(d) − U Vᵀ`` per sample; ``d`` has shape ``(..., K)``, ``U`` and ``V``
    ``(..., K, r)``.

    The form every product and sum of the structured operators takes: a diagonal and
    rank-one Jacobian, a diagonal loss Hessian and a curvature term compose into it with
    the ranks adding up (:func:`product`, :func:`total`), so a head's Hessian or GGN
    blocks keep O(N·K·r) memory and O(K·r) products per sample.

    ``symmetric=True`` declares ``U Vᵀ`` symmetric: the dense blocks are then averaged with
    their transposes, so they are symmetric to the bit (einsum's fused multiply-adds would
    otherwise leave round-off differences between ``M_jk`` and ``M_kj``).
    """

    def __init__(self, d, U, V, *, symmetric: bool = False):
        self.symmetric = bool(symmetric)
        self.d = as_float_array(d, "d")
        self.U = as_float_array(U, "U", min_ndim=0, like=self.d)  # r = 0 columns is allowed
        self.V = as_float_array(V, "V", min_ndim=0, like=self.d)
        if self.U.shape[:-1] != self.d.shape or self.V.shape != self.U.shape:
            raise ValueError(
                f"U and V must have shape {self.d.shape + ('r',)} (..., K, r) like d {self.d.shape}; "
                f"got shapes {self.U.shape} and {self.V.shape}"
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
        K, r = self.size, self.rank
        d = _rows2d(self.d)[rows]
        U = self.U.reshape(-1, K, r)[rows]
        nV = np.negative(self.V.reshape(-1, K, r)[rows])
        for samples, js in _slabs(out):
            np.einsum("ijr,ikr->ijk", U[samples, js], nV[samples], out=out[samples, js])
            _diagonal_view(out[samples, js, js])[...] += d[samples, js]
        if self.symmetric:  # (M + Mᵀ)/2: symmetric to the bit whatever order einsum sums in
            np.add(out, np.swapaxes(out, -1, -2), out=out)
            out *= out.dtype.type(0.5)

    def jvp(self, x):
        x = self._check_vector(x, "v")
        return self.d * x - np.einsum("...kr,...r->...k", self.U, np.einsum("...kr,...k->...r", self.V, x))

    def vjp(self, g):
        g = self._check_vector(g, "g")
        return g * self.d - np.einsum("...kr,...r->...k", self.V, np.einsum("...kr,...k->...r", self.U, g))

    def matmat(self, X):
        X = as_float_array(X, "X", min_ndim=2)
        if X.shape[:-1] != (*self.batch_shape, self.size):
            raise ValueError(f"X must have shape {(*self.batch_shape, self.size, 'C')} (..., K, C); got shape {X.shape}")
        return self.d[..., None] * X - self.U @ (np.swapaxes(self.V, -1, -2) @ X)

    def diagonal(self):
        return self.d - np.einsum("...kr,...kr->...k", self.U, self.V)

    def _take(self, rows):
        K, r = self.size, self.rank
        return DiagonalPlusLowRank(_rows2d(self.d)[rows], self.U.reshape(-1, K, r)[rows], self.V.reshape(-1, K, r)[rows],
                                   symmetric=self.symmetric)


class SimplexBlock(DiagonalPlusRankOne):
    """``c · (diag(d) − d dᵀ/Σd)`` per sample, ``d >= 0``: the curvature of the entmax family.

    softmax + cross-entropy is ``d = p`` (with ``c`` the summed target weights over T²),
    sparsemax ``d`` = the support indicator, 1.5-entmax ``d = √p``. Stored as
    ``diag(c d) − w wᵀ`` with ``w = d √(c/Σd)``, so its dense form is symmetric to the bit,
    and with an exact square root (:meth:`sqrt`)::

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
        if (d.size and d.min() < 0) or (c.size and c.min() < 0):  # no (..., K) mask: NaN passes as before
            raise ValueError("a SimplexBlock needs d >= 0 and c >= 0")
        total_d = d.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            # √(c/Σd) per row (zero where Σd = 0): w = d ⊙ this
            self._w_factor = np.where(total_d > 0, np.sqrt(c / np.where(total_d > 0, total_d, 1)), 0)
        self.c, self.weights, self.total = np.broadcast_to(c, total_d.shape), d, total_d
        self.batch_shape, self.size, self.dtype = d.shape[:-1], d.shape[-1], d.dtype
        self.projector, self._diagonal = False, None
        self._root_d = None if root_d is None else as_float_array(root_d, "root_d", like=d)
        # c d and w (each the size of d) are made when first asked for: building the block
        # costs one pass over d (its sum), not three full-size arrays
        self._cd = self._w = None

    @property
    def d(self) -> np.ndarray:
        """``c d``, the diagonal part (computed when first asked for)."""
        if self._cd is None:
            self._cd = self.c * self.weights
        return self._cd

    @property
    def u(self) -> np.ndarray:
        """``w = d √(c/Σd)`` (computed when first asked for); ``v`` is the same array."""
        if self._w is None:
            self._w = self.weights * self._w_factor
        return self._w

    v = u

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held: d (and ``c d``, ``w`` once a product has made them)."""
        held = [self.weights, self.total, self._w_factor, self._cd, self._w, self._root_d]
        return sum(x.nbytes for x in held if x is not None)

    def _dense_rows(self, rows, out):
        # w and c d of these rows only (the same products as the full arrays', row by row)
        d = _rows2d(self.weights)[rows]
        w = d * self._w_factor.reshape(-1, 1)[rows]
        c = self.c.reshape(-1, 1)[rows] if self.c.ndim > 1 else self.c
        _kernels.dense_diag_minus_rank_one(c * d, w, w, out, self._exact_diagonal(rows))

    def _take(self, rows):
        c = self.c.reshape(-1)[rows] if self.c.ndim > 1 else self.c.reshape(())
        root = None if self._root_d is None else _rows2d(self._root_d)[rows]
        return SimplexBlock(_rows2d(self.weights)[rows], c, root)

    def _exact_diagonal(self, rows=slice(None)):
        """``c d_k Σ_{i≠k} d_i / Σd``: no cancellation (a one-hot d gives exact zeros)."""
        d = _rows2d(self.weights)[rows]
        c = self.c.reshape(-1, 1)[rows] if self.c.ndim > 1 else self.c
        D = _rows2d(self.total)[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(D > 0, c / np.where(D > 0, D, 1), 0)  # (n, 1): zero rows stay 0
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

    def sqrt(self):
        d, D = self.weights, self.total
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(D > 0, d / np.where(D > 0, D, 1), 0)
            comp = np.where(D > 0, complement_sums(d) / np.where(D > 0, D, 1), 0)  # 1 − d/Σd
        rc = np.sqrt(self.c)
        return DiagonalPlusRankOne(rc * self.root_d, rc * ratio, self.root_d, diagonal=rc * self.root_d * comp).dense()


class ProjectedDiagonal(JacobianOperator):
    """``Pᵀ diag(m) P`` per sample with ``P = I − 1 vᵀ`` (``m >= 0``, ``v >= 0``, ``Σv = 1``).

    The Gauss–Newton term ``Jᵀ diag(h) J`` of every simplex map, whose Jacobian is
    ``J = diag(g) − g vᵀ = diag(g) P``, with ``m = g² h``. Its entries::

        M_jk = v_j v_k Σm − m_j v_k − m_k v_j        (j ≠ k)
        M_jj = m_j (1 − v_j)² + v_j² Σ_{i≠j} m_i

    are computed that way: the diagonal as a sum of non-negative terms with both
    complements summed directly (:func:`~jacobians._math.complement_sums`), so a
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
        low = DiagonalPlusLowRank(m, np.stack([m, v, sv], axis=-1), np.stack([v, m, -sv], axis=-1))
        low._dense_rows(slice(None), out)
        comp, rest = complement_sums(v), complement_sums(m)
        _diagonal_view(out)[...] = m * comp * comp + v * v * rest
        # the row and column of v's largest entry t: M_tk = v_k (v_t R_t − m_t c_t) − m_k v_t
        # with R_t = Σ_{i≠t} m_i and c_t = 1 − v_t summed directly (the plain form subtracts
        # v_t Σm v_k and m_t v_k, both near m_t v_k when v_t is near 1)
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
        X = as_float_array(X, "X", min_ndim=2)
        if X.shape[:-1] != self.m.shape:
            raise ValueError(f"X must have shape {self.m.shape + ('C',)} (..., K, C); got shape {X.shape}")
        Y = self.m[..., None] * np.moveaxis(project_rows(np.moveaxis(X, -1, -2), self.v[..., None, :]), -1, -2)
        return project_columns(Y, self.v)

    def sqrt(self):
        """``Pᵀ diag(√m)``: ``(Pᵀ diag(√m))(diag(√m) P) = Pᵀ diag(m) P``, its rows projected
        with the complement summed directly where ``v`` is largest."""
        if np.any(self.m < 0):
            raise ValueError("a ProjectedDiagonal needs m >= 0 for a real square root")
        return project_columns(DiagonalJacobian(np.sqrt(self.m)).dense(), self.v)

    def _take(self, rows):
        return ProjectedDiagonal(_rows2d(self.m)[rows], _rows2d(self.v)[rows])


class SumOperator(JacobianOperator):
    """``Σ ops`` block by block, each part kept in its own (accurate) structure: products,
    the diagonal and the dense form are sums of the parts' own."""

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


def _diagonal_sqrt(d: np.ndarray) -> np.ndarray:
    if np.any(d < 0):
        raise ValueError(
            f"the blocks have negative diagonal entries (down to {float(d.min()):.3g}): they are not positive "
            "semi-definite, so they have no real square root"
        )
    return DiagonalJacobian(np.sqrt(d)).dense()


DiagonalJacobian.sqrt = lambda self: _diagonal_sqrt(self.d)  # noqa: E731


def _eigen_sqrt(M: np.ndarray) -> np.ndarray:
    """``V diag(√λ)`` per block of symmetric ``M`` (..., K, K); ValueError when indefinite."""
    lam, vecs = np.linalg.eigh(M)
    scale = np.abs(lam).max(axis=-1, keepdims=True)
    floor = -1e3 * np.finfo(M.dtype).eps * scale
    if np.any(lam < floor):
        worst = float((lam / np.where(scale > 0, scale, 1)).min())
        raise ValueError(
            f"a block is indefinite (smallest eigenvalue {worst:.3g} × the largest in size): "
            "it has no real square root; a GGN of a loss that is convex in its input is positive semi-definite"
        )
    return vecs * np.sqrt(np.maximum(lam, 0))[..., None, :]


# -- algebra: the structured operators compose into diag(d) − U Vᵀ --------------------------


def as_low_rank(op: JacobianOperator) -> DiagonalPlusLowRank | DenseJacobian:
    """``op`` as :class:`DiagonalPlusLowRank` (a diagonal has rank 0), or a dense one as it is."""
    if isinstance(op, DiagonalPlusLowRank):
        return op
    if isinstance(op, ProjectedDiagonal):
        m, v = op.m, op.v
        msum = m.sum(axis=-1, keepdims=True)
        return DiagonalPlusLowRank(m, np.stack([m, v], axis=-1), np.stack([v, m - msum * v], axis=-1))
    if isinstance(op, SumOperator):
        return as_low_rank(total(*op.ops))
    if isinstance(op, DiagonalPlusRankOne):
        return DiagonalPlusLowRank(op.d, op.u[..., None], op.v[..., None])
    if isinstance(op, DiagonalJacobian):
        empty = np.zeros(op.d.shape + (0,), dtype=op.dtype)
        return DiagonalPlusLowRank(op.d, empty, empty)
    if isinstance(op, DenseJacobian):
        return op
    return DenseJacobian(op.dense())


def _check_compatible(a: JacobianOperator, b: JacobianOperator) -> None:
    if a.batch_shape != b.batch_shape or a.size != b.size:
        raise ValueError(f"operators of shapes {a.shape} and {b.shape} do not match")


def transpose(op: JacobianOperator) -> JacobianOperator:
    """``op`` with each block transposed, ``M[..., j, i]``, keeping its structure."""
    if isinstance(op, (DiagonalJacobian, SimplexBlock, ProjectedDiagonal)):
        return op
    if isinstance(op, SumOperator):
        return SumOperator(*(transpose(part) for part in op.ops))
    if isinstance(op, DiagonalPlusRankOne):
        return DiagonalPlusRankOne(op.d, op.v, op.u)
    if isinstance(op, DiagonalPlusLowRank):
        return DiagonalPlusLowRank(op.d, op.V, op.U)
    return DenseJacobian(np.swapaxes(op.dense(), -1, -2))


def _scale(op: JacobianOperator, c) -> JacobianOperator:
    c = np.asarray(c, dtype=op.dtype)
    if c.ndim and c.shape != op.batch_shape:
        raise ValueError(f"c must be a scalar or have the batch shape {op.batch_shape}; got shape {c.shape}")
    cv = c[..., None]
    if isinstance(op, SimplexBlock) and np.all(c >= 0):
        return SimplexBlock(op.weights, op.c[..., 0] * c, op._root_d)
    if isinstance(op, ProjectedDiagonal) and np.all(c >= 0):
        return ProjectedDiagonal(op.m * cv, op.v)
    if isinstance(op, SumOperator):
        return SumOperator(*(_scale(part, c) for part in op.ops))
    if isinstance(op, DiagonalJacobian):
        return DiagonalJacobian(op.d * cv)
    low = as_low_rank(op)
    if isinstance(low, DenseJacobian):
        return DenseJacobian(low.J * cv[..., None])
    return DiagonalPlusLowRank(low.d * cv, low.U * cv[..., None], low.V)


def total(*ops: JacobianOperator) -> JacobianOperator:
    """``Σ ops``, block by block: diagonals add, low-rank parts stack their columns."""
    first = ops[0]
    for op in ops[1:]:
        _check_compatible(first, op)
    if all(isinstance(op, DiagonalJacobian) for op in ops):
        return DiagonalJacobian(sum(op.d for op in ops))
    lows = [as_low_rank(op) for op in ops]
    if any(isinstance(op, DenseJacobian) for op in lows):
        return DenseJacobian(sum(op.dense() for op in ops))
    return DiagonalPlusLowRank(
        sum(op.d for op in lows), np.concatenate([op.U for op in lows], axis=-1), np.concatenate([op.V for op in lows], axis=-1)
    )


def product(a: JacobianOperator, b: JacobianOperator) -> JacobianOperator:
    """``A @ B`` block by block, in closed form for the structured operators::

        (D₁ − U₁V₁ᵀ)(D₂ − U₂V₂ᵀ) = D₁D₂ − [D₁U₂ − U₁(V₁ᵀU₂)] V₂ᵀ − U₁ (D₂V₁)ᵀ

    (rank r₁ + r₂); a dense operand gives a dense product.
    """
    _check_compatible(a, b)
    if isinstance(a, DiagonalJacobian) and isinstance(b, DiagonalJacobian):
        return DiagonalJacobian(a.d * b.d)
    la, lb = as_low_rank(a), as_low_rank(b)
    if isinstance(la, DenseJacobian) or isinstance(lb, DenseJacobian):
        return DenseJacobian(np.matmul(a.dense(), b.dense()))
    M = np.swapaxes(la.V, -1, -2) @ lb.U  # (..., r1, r2)
    left = la.d[..., None] * lb.U - la.U @ M
    U = np.concatenate([left, la.U], axis=-1)
    V = np.concatenate([lb.V, lb.d[..., None] * la.V], axis=-1)
    return DiagonalPlusLowRank(la.d * lb.d, U, V)
