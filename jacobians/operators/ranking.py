"""A sum of simplex blocks, one per step of a ranking: the Plackett–Luce curvature.

Step i of a ranking chooses among the candidates still remaining; its curvature is the
softmax block ``diag(p⁽ⁱ⁾) − p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ`` of the probabilities over that set (zero outside
it). The Hessian of a ranking's negative log-likelihood is the sum of these R blocks:
``diag(Σ_i p⁽ⁱ⁾) − P Pᵀ`` with P the (K, R) matrix of the steps' probabilities — diagonal
plus rank R, held as the R probability vectors (O(N·K·R) memory, no K×K block unless the
dense form is asked for) with an exact square root: the R simplex factors side by side.
"""

from __future__ import annotations

import numpy as np

from ..numerics.validation import as_float_array
from .blocks import SimplexBlock, SumOperator
from .structured import DiagonalPlusLowRank

__all__ = ["SimplexBlockSum", "simplex_sum_product"]


def simplex_sum_product(P: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``Σ_i p⁽ⁱ⁾ ⊙ (x' − p⁽ⁱ⁾·x'/Σp⁽ⁱ⁾)`` for weights ``P`` (..., R, K) and ``x`` (..., K), with
    ``x'`` centred on each step's largest weight (no cancellation on a confident step): the
    blocks' product, O(R·K) a row, in one (..., R, K) buffer."""
    top = np.take_along_axis(x[..., None, :], P.argmax(axis=-1)[..., None], axis=-1)  # (..., R, 1)
    xc = x[..., None, :] - top
    tot = P.sum(axis=-1, keepdims=True)
    dot = np.einsum("...rk,...rk->...r", P, xc)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(tot > 0, dot / np.where(tot > 0, tot, 1), 0)
    xc -= mean
    xc *= P
    return xc.sum(axis=-2)


class SimplexBlockSum(SumOperator):
    """``c · Σ_i (diag(p⁽ⁱ⁾) − p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ/Σp⁽ⁱ⁾)`` per sample: R :class:`SimplexBlock` s.

    Parameters
    ----------
    P : array_like, shape (..., R, K)
        Step i's weights ``p⁽ⁱ⁾ >= 0`` (probabilities over the candidates remaining at step
        i, zeros elsewhere; a step left out is a row of zeros).
    c : array_like, shape (...) or scalar, >= 0
        The factor of every block of the sample (the reduction's).
    root_P : array_like, shape (..., R, K), optional
        ``√P`` computed more accurately than ``np.sqrt(P)`` (e.g. ``exp(½ log p)``).

    Each step is a :class:`SimplexBlock` on a view of ``P`` (its diagonal from complement
    sums, no cancellation on a confident step); products cost O(K·R) a sample. The exact
    factor (:meth:`sqrt`) is the steps' factors side by side, shape ``(..., K, R·K)``
    (column ``i·K + k`` is step i's column k), with ``S Sᵀ`` these blocks.
    """

    def __init__(self, P, c, root_P=None):
        P = as_float_array(P, "P", min_ndim=2)
        c = np.asarray(c, dtype=P.dtype)
        if c.ndim and c.shape != P.shape[:-2]:
            raise ValueError(f"c must be a scalar or have the batch shape {P.shape[:-2]}; got shape {c.shape}")
        if root_P is not None:
            root_P = as_float_array(root_P, "root_P", like=P)
            if root_P.shape != P.shape:
                raise ValueError(f"root_P must have the shape of P, {P.shape}; got shape {root_P.shape}")
        self.P, self.c_rows, self.root_P = P, c, root_P
        R = P.shape[-2]
        if R == 0:  # no step: zero blocks
            self.ops = (SimplexBlock(np.zeros(P.shape[:-2] + P.shape[-1:], P.dtype), c),)
        else:
            self.ops = tuple(
                SimplexBlock(P[..., i, :], c, None if root_P is None else root_P[..., i, :]) for i in range(R)
            )
        self.batch_shape = P.shape[:-2]
        self.size = P.shape[-1]
        self.dtype = P.dtype

    @property
    def steps(self) -> int:
        """R, the number of simplex blocks."""
        return self.P.shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held: P (and √P where given), the factors, and the blocks'
        row sums; the blocks' views of P are not counted twice."""
        small = sum(op.total.nbytes + op._w_factor.nbytes for op in self.ops)
        return self.P.nbytes + (0 if self.root_P is None else self.root_P.nbytes) + self.c_rows.nbytes + small

    def jvp(self, x):
        """``c Σ_i p⁽ⁱ⁾ ⊙ (x' − p⁽ⁱ⁾·x'/Σp⁽ⁱ⁾)``, one pass over (..., R, K), with ``x'`` centred
        on each step's largest weight (no cancellation on a confident step)."""
        out = simplex_sum_product(self.P, self._check_vector(x, "v"))
        return out * (self.c_rows[..., None] if self.c_rows.ndim else self.c_rows)

    def vjp(self, g):
        return self.jvp(g)  # symmetric

    def matmat(self, X):
        X = self._check_matrix(X)
        return np.moveaxis(np.stack([self.jvp(col) for col in np.moveaxis(X, -1, 0)]), 0, -1) if X.shape[-1] else (
            np.zeros(X.shape, self.dtype))

    def sqrt(self) -> np.ndarray:
        """The exact factor ``S`` (..., K, R·K): the steps' simplex factors side by side."""
        if not self.steps:
            return np.zeros(self.shape[:-1] + (0,), self.dtype)
        return np.concatenate([op.sqrt() for op in self.ops], axis=-1)

    def _take(self, rows):
        n, R, K = self.n_rows, self.steps, self.size
        c = self.c_rows.reshape(-1)[rows] if self.c_rows.ndim else self.c_rows
        root = None if self.root_P is None else self.root_P.reshape(n, R, K)[rows]
        return SimplexBlockSum(self.P.reshape(n, R, K)[rows], c, root)

    # -- algebra -----------------------------------------------------------------------
    @property
    def T(self):
        return self

    def _scaled(self, c, cv):
        if np.all(c >= 0):
            return SimplexBlockSum(self.P, self.c_rows * c, self.root_P)
        return self._low_rank()._scaled(c, cv)

    def _low_rank(self):
        """``diag(c Σ_i p⁽ⁱ⁾) − W Wᵀ`` with ``W = √(c/Σp⁽ⁱ⁾) p⁽ⁱ⁾`` (rank R)."""
        P = self.P
        c = self.c_rows[..., None, None] if self.c_rows.ndim else self.c_rows
        tot = P.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(tot > 0, np.sqrt(c / np.where(tot > 0, tot, 1)), 0)
        W = np.swapaxes(P * f, -1, -2)
        d = (P * c).sum(axis=-2)
        return DiagonalPlusLowRank(d, W, W, symmetric=True)
