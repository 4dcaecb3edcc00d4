"""The operator interface, its dense fallbacks, and the dense operator itself.

:class:`JacobianOperator` is a batch of K×K blocks in some structured form. A subclass
implements ``_dense_rows``, ``jvp``, ``vjp``, ``diagonal`` and ``_take``, and may give
closed forms for the algebra; every algebra method defaults to the dense form
(:class:`DenseJacobian`, the form a block without structure takes):

* ``T`` — the transposed blocks;
* ``_scaled(c, cv)`` — ``c · M`` (default: scale the low-rank form);
* ``_low_rank()`` — ``diag(d) − U Vᵀ`` as a
  :class:`~jacobians.operators.DiagonalPlusLowRank`, or a :class:`DenseJacobian`;
* ``_times(other)`` and ``_total(ops)`` — ``M @ other`` and ``Σ ops`` (``ops[0]`` is the
  operator itself): closed forms on the low-rank forms, dense when either is dense.

The public functions of :mod:`jacobians.operators.algebra` call these methods.
"""

from __future__ import annotations

import math

import numpy as np

from ..contract import contract
from ..contract import diagonal as _diagonal_view
from ..numerics.parallel import run_in_row_blocks
from ..numerics.validation import as_float_array


def _rows2d(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _check_compatible(a: JacobianOperator, b: JacobianOperator) -> None:
    if a.batch_shape != b.batch_shape or a.size != b.size:
        raise ValueError(f"operators of shapes {a.shape} and {b.shape} do not match")


def _eigen_sqrt(M: np.ndarray) -> np.ndarray:
    """``V diag(√λ)`` per block of symmetric ``M`` (..., K, K); ValueError when
    indefinite."""
    lam, vecs = np.linalg.eigh(M)
    scale = np.abs(lam).max(axis=-1, keepdims=True)
    floor = -1e3 * np.finfo(M.dtype).eps * scale
    if np.any(lam < floor):
        worst = float((lam / np.where(scale > 0, scale, 1)).min())
        raise ValueError(
            f"a block is indefinite (smallest eigenvalue {worst:.3g} × the largest in "
            "size): it has no real square root; a GGN of a loss that is convex in its "
            "input is positive semi-definite"
        )
    return vecs * np.sqrt(np.maximum(lam, 0))[..., None, :]


class BlockShape:
    """``shape`` and ``n_rows`` of a batch of K×K blocks from ``batch_shape`` and ``size``:
    numpy's operators and the generic path's (``jacobians._arrays.operators``)."""

    #: batch shape (...) of the operator
    batch_shape: tuple[int, ...]
    #: number of outputs/inputs K
    size: int

    @property
    def shape(self) -> tuple[int, ...]:
        """``(..., K, K)``: the shape of the dense blocks."""
        return (*self.batch_shape, self.size, self.size)

    @property
    def n_rows(self) -> int:
        """N, the product of the batch axes."""
        return math.prod(self.batch_shape)


class JacobianOperator(BlockShape):
    """A batch of K×K Jacobians, ``J[..., i, j] = ∂a_i/∂z_j``, in structured form.

    Subclasses implement ``_dense_rows``, ``jvp``, ``vjp``, ``diagonal`` and ``_take``;
    the algebra (``T``, ``scaled``, ``@`` and ``+`` of two operators) falls back to the
    dense form where a subclass gives no closed form.
    """

    dtype: np.dtype

    @property
    def dense_nbytes(self) -> int:
        """Bytes the dense Jacobian would take."""
        return self.n_rows * self.size * self.size * self.dtype.itemsize

    @property
    def nbytes(self) -> int:  # pragma: no cover - every subclass overrides
        """Bytes held by this operator."""
        raise NotImplementedError

    # -- dense -------------------------------------------------------------------------
    def dense(
        self, out: np.ndarray | None = None, *, workers: int | None = None
    ) -> np.ndarray:
        """The dense Jacobian, shape ``(..., K, K)``.

        Parameters
        ----------
        out : ndarray, shape (..., K, K), optional
            C-contiguous buffer of the operator's dtype to write into (no allocation).
        workers : int, optional
            Threads building row blocks; default every available core. Outputs under
            :data:`~jacobians.numerics.parallel.PARALLEL_MIN_BYTES` are built on the calling
            thread. With numpy's kernels the build is compute-bound in numpy's einsum
            loop at every K, so a second core helps at K = 10 as at K = 1000 (1.3-1.9x
            on the 2-core development machine); the compiled kernels (``fast`` extra)
            write each entry once and run near the speed of ``buf.fill``.
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
                raise TypeError(
                    f"out must have dtype {self.dtype}; got dtype {out.dtype}"
                )
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError("out must be a writeable, C-contiguous array")
        flat = out.reshape(self.n_rows, self.size, self.size)
        def build(rows):
            self._dense_rows(rows, flat[rows])

        run_in_row_blocks(build, self.n_rows, out.nbytes, workers)
        return out

    def _dense_rows(self, rows: slice, out: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError  # abstract

    # -- products ----------------------------------------------------------------------
    def _check_vector(self, x, name: str) -> np.ndarray:
        x = as_float_array(x, name)
        expected = (*self.batch_shape, self.size)
        if x.shape != expected:
            raise ValueError(
                f"{name} must have shape {expected} (..., K); got shape {x.shape}"
            )
        return x

    def _check_matrix(self, X) -> np.ndarray:
        """``X`` as a float array of shape ``(..., K, C)``: the operand of ``matmat``."""
        X = as_float_array(X, "X", min_ndim=2)
        expected = (*self.batch_shape, self.size)
        if X.shape[:-1] != expected:
            raise ValueError(
                f"X must have shape {expected + ('C',)} (..., K, C); "
                f"got shape {X.shape}"
            )
        return X

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
        if isinstance(v, JacobianOperator):  # jacobians.operators.product
            _check_compatible(self, v)
            return self._times(v)
        return self.jvp(v)

    def __rmatmul__(self, g):
        return self.vjp(g)

    def __add__(self, other):
        if not isinstance(other, JacobianOperator):
            return NotImplemented
        _check_compatible(self, other)  # jacobians.operators.total
        return self._total((self, other))

    def matmat(self, X) -> np.ndarray:
        """``M @ X`` per sample for ``X`` of shape ``(..., K, C)``: shape
        ``(..., K, C)``."""
        X = self._check_matrix(X)
        cols = np.moveaxis(X, -1, 0)
        if not cols.shape[0]:
            return np.zeros(X.shape, self.dtype)
        return np.moveaxis(np.stack([self.jvp(c) for c in cols]), 0, -1)

    def sqrt(self) -> np.ndarray:
        """A factor ``S`` of shape ``(..., K, C)`` with ``S @ Sᵀ`` equal to these
        (symmetric, positive semi-definite) blocks.

        The structured blocks have closed forms (a diagonal: ``diag(√d)``; a
        :class:`SimplexBlock`: its own); any other is factored from its dense form by a
        symmetric eigendecomposition, ``V diag(√λ)``, which raises ``ValueError`` when a
        block has an eigenvalue below −1e3·eps·max|λ| (it is indefinite: no real
        factor).
        """
        return _eigen_sqrt(self.dense())

    # numpy must defer to __rmatmul__ for ``ndarray @ op``
    __array_ufunc__ = None

    # -- algebra: closed forms in the subclasses, dense here --------------------------
    @property
    def T(self) -> JacobianOperator:
        """The transposed blocks, ``M[..., j, i]``, in the same structure."""
        return DenseJacobian(np.swapaxes(self.dense(), -1, -2))

    def scaled(self, c) -> JacobianOperator:
        """``c · M`` for a scalar ``c`` or one factor per batch row, shape ``(...)``."""
        c = np.asarray(c, dtype=self.dtype)
        if c.ndim and c.shape != self.batch_shape:
            raise ValueError(
                f"c must be a scalar or have the batch shape {self.batch_shape}; "
                f"got shape {c.shape}"
            )
        return self._scaled(c, c[..., None])

    def _scaled(self, c: np.ndarray, cv: np.ndarray) -> JacobianOperator:
        """``c · M`` for ``c`` of the operator's dtype (``cv = c[..., None]``)."""
        return self._low_rank()._scaled(c, cv)

    def _low_rank(self) -> JacobianOperator:
        """A :class:`~jacobians.operators.DiagonalPlusLowRank`, or a dense operator."""
        return DenseJacobian(self.dense())

    def _times(self, other: JacobianOperator) -> JacobianOperator:
        """``M @ other`` block by block (shapes checked): the low-rank forms' product
        (``DiagonalPlusLowRank._compose``), dense when either is dense."""
        la, lb = self._low_rank(), other._low_rank()
        if isinstance(la, DenseJacobian) or isinstance(lb, DenseJacobian):
            return DenseJacobian(np.matmul(self.dense(), other.dense()))
        return la._compose(lb)

    def _total(self, ops: tuple[JacobianOperator, ...]) -> JacobianOperator:
        """``Σ ops`` block by block (``ops[0]`` is this operator; shapes checked): the
        low-rank forms stacked (``DiagonalPlusLowRank._stack``), dense when one is
        dense."""
        lows = [op._low_rank() for op in ops]
        if any(isinstance(op, DenseJacobian) for op in lows):
            return DenseJacobian(sum(op.dense() for op in ops))
        return lows[0]._stack(lows)

    # -- row blocks --------------------------------------------------------------------
    def __getitem__(self, rows: slice) -> JacobianOperator:
        """The operator restricted to rows ``rows`` of the flattened batch (shape
        (n, K, K))."""
        if not isinstance(rows, slice):
            raise TypeError(
                "operators are indexed by a slice of the flattened batch rows"
            )
        return self._take(rows)

    def _take(self, rows: slice) -> JacobianOperator:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, "
            f"nbytes={self.nbytes})"
        )


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
        X = self._check_matrix(X)
        return np.matmul(self.J, X)

    def _take(self, rows):
        return DenseJacobian(self.J.reshape(-1, self.size, self.size)[rows])

    def _low_rank(self):
        return self

    def _scaled(self, c, cv):
        return DenseJacobian(self.J * cv[..., None])
