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

import numpy as np

from ._math import diag_minus_rank_one
from ._parallel import run_in_row_blocks
from ._validation import as_float_array, check_same_shape
from .contract import contract
from .contract import diagonal as _diagonal_view

__all__ = ["JacobianOperator", "DenseJacobian", "DiagonalJacobian", "DiagonalPlusRankOne", "SimplexJacobian"]

#: dense Jacobians are written in slabs of about this many bytes: one core's L2 cache on
#: the development machine (1, 2, 4 and 8 MiB measured within noise of each other on two
#: threads; on one thread, bands of rows at K = 1000 beat whole 8 MB Jacobians by ~25%)
DENSE_BLOCK_BYTES = 2 << 20


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
        return int(np.prod(self.batch_shape, dtype=np.int64))

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
            The build is compute-bound in numpy's einsum loop at every K, so a second core
            helps at K = 10 as at K = 1000 (1.3-1.9x on the 2-core development machine).
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
        return self.jvp(v)

    def __rmatmul__(self, g):
        return self.vjp(g)

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


def _slabs(out: np.ndarray):
    """Cover ``out`` (shape (n, K, K)) with ``(samples, js)`` slices of ~DENSE_BLOCK_BYTES.

    A slab is ``out[samples, js]``: whole Jacobians when one is smaller than the block,
    otherwise bands of rows ``js`` of one Jacobian. Its diagonal entries are the diagonal
    of the square ``out[samples, js, js]``.
    """
    n, K = out.shape[0], out.shape[-1]
    rows = max(1, DENSE_BLOCK_BYTES // (K * out.itemsize))
    if rows >= K:
        step = rows // K
        for a in range(0, n, step):
            yield slice(a, a + step), slice(None)
    else:
        for i in range(n):
            for j in range(0, K, rows):
                yield slice(i, i + 1), slice(j, j + rows)


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
        d = _rows2d(self.d)[rows]
        for samples, js in _slabs(out):
            out[samples, js].fill(0)
            _diagonal_view(out[samples, js, js])[...] = d[samples, js]

    def jvp(self, v):
        return self.d * self._check_vector(v, "v")

    def vjp(self, g):
        return self._check_vector(g, "g") * self.d

    def diagonal(self):
        return self.d.copy()

    def _take(self, rows):
        return DiagonalJacobian(_rows2d(self.d)[rows])


class DiagonalPlusRankOne(JacobianOperator):
    """``J = diag(d) − u vᵀ`` per sample; ``d``, ``u``, ``v`` have shape ``(..., K)``.

    The dense form is built the vectorized way: ``einsum('ij,ik->ijk', u, -v)`` writes the
    rank-one part, then ``d`` is added onto the writable diagonal view
    ``einsum('ijj->ij', J)``.
    """

    def __init__(self, d, u, v):
        self.d = as_float_array(d, "d")
        self.u = as_float_array(u, "u", like=self.d)
        self.v = as_float_array(v, "v", like=self.d)
        check_same_shape(self.u, "u", self.d, "d")
        check_same_shape(self.v, "v", self.d, "d")
        self.batch_shape = self.d.shape[:-1]
        self.size = self.d.shape[-1]
        self.dtype = self.d.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct arrays held (softmax's ``d`` and ``u`` are one array)."""
        unique = {id(x): x for x in (self.d, self.u, self.v)}
        return sum(x.nbytes for x in unique.values())

    def _dense_rows(self, rows, out):
        u, v, d = _rows2d(self.u)[rows], _rows2d(self.v)[rows], _rows2d(self.d)[rows]
        nv = np.negative(v)
        # einsum writes a slab in two passes (zeros, then products) and the diagonal is a
        # third: slabs of about DENSE_BLOCK_BYTES keep all three in the core's cache, so
        # memory sees one write of each entry
        for samples, js in _slabs(out):
            np.einsum("ij,ik->ijk", u[samples, js], nv[samples], out=out[samples, js])
            _diagonal_view(out[samples, js, js])[...] += d[samples, js]

    def jvp(self, x):
        # d ⊙ x − u (v·x), one allocation
        return diag_minus_rank_one(self.d, self.u, self.v, self._check_vector(x, "v"))

    def vjp(self, g):
        # g ⊙ d − v (u·g), one allocation
        return diag_minus_rank_one(self.d, self.v, self.u, self._check_vector(g, "g"))

    def diagonal(self):
        return self.d - self.u * self.v

    def _take(self, rows):
        return DiagonalPlusRankOne(_rows2d(self.d)[rows], _rows2d(self.u)[rows], _rows2d(self.v)[rows])


def center_on_largest(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``x − x_c`` per row, ``c`` the entry of the largest weight: a new array.

    A Jacobian that maps constants to zero (``J 1 = 0``, ``Jᵀ 1 = 0``) gives the same product
    with ``x`` or ``x − x_c``; taken of ``x − x_c``, its round-off scales with x's spread
    over the rows' heavy entries instead of x's size (``diag(g) − g gᵀ/Σg`` with one
    dominant ``g_c`` and x constant over the support is exactly 0 then, not eps·|x|).
    """
    top = weights.argmax(axis=-1)[..., None]
    return x - np.take_along_axis(x, top, axis=-1)


class SimplexJacobian(DiagonalPlusRankOne):
    """``J = diag(g) − g gᵀ/Σg`` per sample (the entmax family, softmax to sparsemax):
    :class:`DiagonalPlusRankOne` with ``d = u = g`` and ``v = g/Σg``, symmetric, with
    ``J 1 = 0``; its products are taken of centred vectors (:func:`center_on_largest`)."""

    def jvp(self, x):
        return super().jvp(center_on_largest(self._check_vector(x, "v"), self.d))

    def vjp(self, g):
        return super().vjp(center_on_largest(self._check_vector(g, "g"), self.d))

    def _take(self, rows):
        return SimplexJacobian(_rows2d(self.d)[rows], _rows2d(self.u)[rows], _rows2d(self.v)[rows])
