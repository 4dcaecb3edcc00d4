"""The curvature of a linear last layer, ``z = φ Wᵀ + b``, pushed back from a head's blocks.

Parameters ``θ = (W, b)`` with ``W`` of shape (K, D) and ``b`` (K,), ordered as the C-order
vector of the (K, D+1) matrix ``[W | b]``: row k holds class k's D weights, then its bias::

    theta = np.concatenate([W, b[:, None]], axis=1).ravel()      # P = K·(D+1) entries
    W, b = theta.reshape(K, D + 1)[:, :D], theta.reshape(K, D + 1)[:, D]

(without a bias, ``theta = W.ravel()``, P = K·D). With ``φ̃ = [φ, 1]`` every sample's logits
are linear in θ, so the curvature of E with respect to θ is exact from the per-sample
blocks ``B_n`` of the head (Hessian, GGN or a Fisher kind)::

    ∂²E/∂θ∂θ = Σ_n B_n ⊗ φ̃_n φ̃_nᵀ          (entry (k·(D+1) + d, l·(D+1) + e) = Σ_n B_n[k, l] φ̃_n[d] φ̃_n[e])

:func:`~jacobians.linear_curvature` returns it dense (``'full'``), as its Kronecker (K-FAC)
approximation (``'kron'``) or as its diagonal (``'diag'``); :func:`~jacobians.linear_gradient` is the
first-order companion ``Σ_n ∇_z E_n ⊗ φ̃_n``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import fisher
from .backend import backend_of
from .head import DEFAULT_MAX_BYTES, Head
from .numerics.sampling import check_mc_samples, seed_key
from .numerics.validation import as_float_array
from .operators import (
    DenseJacobian,
    DiagonalJacobian,
    DiagonalPlusLowRank,
    DiagonalPlusRankOne,
    JacobianOperator,
    as_low_rank,
)
from .rules.vocabulary import BLOCK_KINDS, check_kind
from .xp.detect import is_generic_type

__all__ = ["linear_curvature", "linear_gradient", "Kron", "KINDS", "STRUCTURES"]

#: the documented kinds (every name and its synonyms: jacobians.rules.vocabulary.KINDS)
KINDS = BLOCK_KINDS
STRUCTURES = ("full", "kron", "diag")


class Kron(NamedTuple):
    """The Kronecker-factored (K-FAC) curvature ``np.kron(A, B)``.

    ``A`` (K, K) is ``Σ_n B_n``, the batch's curvature with respect to the logits (the
    loss's reduction included); ``B`` (D+1, D+1) — (D, D) without a bias — is
    ``(1/N) Σ_n φ̃_n φ̃_nᵀ``, the mean outer product of the features. Exact when every
    ``B_n`` is the same (identity + MSE): ``Σ_n B̄ ⊗ φ̃φ̃ᵀ = (N B̄) ⊗ (Σ φ̃φ̃ᵀ/N)``.
    """

    A: np.ndarray
    B: np.ndarray

    def dense(self) -> np.ndarray:
        """``np.kron(A, B)``, shape (P, P) in θ's order (in A's namespace for torch, JAX,
        CuPy and array-api-strict arrays)."""
        if isinstance(self.A, np.ndarray) or not is_generic_type(type(self.A)):
            return np.kron(self.A, self.B)
        from .xp.namespace import namespace_of  # the arrays extra: only for generic arrays

        xp = namespace_of(self.A, self.B)
        (K, _), (D1, _) = self.A.shape, self.B.shape
        return xp.reshape(self.A[:, None, :, None] * self.B[None, :, None, :], (K * D1, K * D1))


# -- inputs ------------------------------------------------------------------------------------


def check_max_bytes(max_bytes) -> int:
    """``max_bytes`` as the budget in bytes: a positive int, or None for the default (256 MiB)."""
    if max_bytes is None:
        return DEFAULT_MAX_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int or None; got {max_bytes!r}")
    return int(max_bytes)


def _rows(features, head, z, y):
    """``(X, z, y)`` with the batch flattened: X (N, D), z (N, K), y (N,) or (N, K) or None."""
    if not isinstance(head, Head):
        raise TypeError(f"head must be a jacobians.Head; got {type(head).__name__}")
    z = as_float_array(z, "z")
    X = as_float_array(features, "features", like=z)
    if X.shape[:-1] != z.shape[:-1]:
        raise ValueError(
            f"features must have the batch shape of z, {z.shape[:-1]} (features (..., D), z (..., K)); "
            f"got features of shape {X.shape}"
        )
    K = z.shape[-1]
    X2, z2 = X.reshape(-1, X.shape[-1]), z.reshape(-1, K)
    if y is None:
        return X2, z2, None
    y = np.asarray(y)
    if y.shape == z.shape:
        y2 = y.reshape(-1, K)
    elif y.shape == z.shape[:-1]:
        y2 = y.reshape(-1)
    elif y.ndim == z.ndim and y.shape[:-1] == z.shape[:-1]:  # a trailing axis of the loss's own (rankings; GaussianNLL: K/2)
        y2 = y.reshape(-1, y.shape[-1])
    else:
        raise ValueError(f"y must have shape {z.shape[:-1]} or {z.shape} to match z of shape {z.shape}; got shape {y.shape}")
    return X2, z2, y2


def _with_bias(X: np.ndarray, bias: bool) -> np.ndarray:
    return np.concatenate([X, np.ones((X.shape[0], 1), X.dtype)], axis=1) if bias else X


def linear_gradient(features, head: Head, z, y, bias: bool = True) -> np.ndarray:
    """``dE/dθ`` of a linear last layer, shape (K, D+1) (``[dE/dW | dE/db]``; (K, D) without a bias).

    ``Σ_n (dE/dz_n) ⊗ φ̃_n`` with ``dE/dz`` from ``head.grad(z, y)``: reshape with
    ``.ravel()`` to θ's order (see :mod:`jacobians.last_layer`).

    Parameters
    ----------
    features : array_like, shape (..., D)
        The layer's inputs φ.
    head : Head
    z : array_like, shape (..., K)
        The logits the layer produced, ``φ Wᵀ + b`` (W itself is never needed).
    y : array_like
        Targets in the loss's form.
    bias : bool
        Whether the layer has a bias.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> rng = np.random.default_rng(0)
    >>> X, W, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), rng.normal(size=4)
    >>> y = np.array([0, 1, 2, 3, 0])
    >>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    >>> G = jac.linear_gradient(X, head, X @ W.T + b, y)
    >>> G.shape
    (4, 4)
    >>> def loss(theta):
    ...     Wb = theta.reshape(4, 4)
    ...     return head.loss(X @ Wb[:, :3].T + Wb[:, 3], y)
    >>> theta = np.concatenate([W, b[:, None]], axis=1).ravel()
    >>> bool(np.allclose(G.ravel(), jac.numerical_grad(loss, theta), atol=1e-8))
    True
    """
    if (backend := backend_of(features, z, y)) is not None:
        return backend.linear_gradient(features, head, z, y, bias)
    X, z2, y2 = _rows(features, head, z, y)
    g = head.grad(z2, y2)
    return g.T @ _with_bias(X, bias)


# -- curvature -----------------------------------------------------------------------------------


def linear_curvature(features, head: Head, z, y, *, kind: str = "ggn", structure: str = "full", bias: bool = True,
                     max_bytes: int | None = None, mc_samples: int = 1, seed=None):
    """Curvature of the reduced loss E with respect to a linear last layer's θ = (W, b).

    ``Σ_n B_n ⊗ φ̃_n φ̃_nᵀ`` with ``B_n`` the head's per-sample blocks of ``kind`` (1/N of
    ``'mean'`` included), so ``full @ dθ`` is the exact second-order term of E along dθ
    for ``kind='hessian'``. θ is ordered as the C-order vector of ``[W | b]`` (see
    :mod:`jacobians.last_layer`).

    Parameters
    ----------
    features : array_like, shape (N, D) or (..., D)
        The layer's inputs φ.
    head : Head
    z : array_like, shape (N, K) or (..., K)
        The logits the layer produced (W itself is never needed).
    y : array_like
        Targets in the loss's form (may be None for ``'fisher'`` and ``'fisher_mc'``).
    kind : {'hessian', 'ggn', 'fisher', 'fisher_mc', 'empirical_fisher'}
        (or the names :meth:`Head.fisher <jacobians.Head.fisher>` takes: ``'exact'``, ``'mc'``,
        ``'empirical'``; one vocabulary, ``jacobians.rules.vocabulary.KINDS``)
        The blocks pushed through the layer: :meth:`~jacobians.Head.hessian`,
        :meth:`~jacobians.Head.ggn`, the exact Fisher, its Monte-Carlo estimate from
        ``mc_samples`` draws (``seed``), or the empirical Fisher at y.
    structure : {'full', 'kron', 'diag'}
        ``'full'``: the dense (P, P) matrix, P = K·(D+1), accumulated over row blocks of
        at most ``max_bytes`` of intermediates (never an N×P×P array); ``'kron'``: a
        :class:`Kron` ``(A, B)`` with ``np.kron(A, B)`` the K-FAC approximation; ``'diag'``:
        the diagonal of ``'full'`` as a (K, D+1) array, without building ``'full'``.
    bias : bool
        Whether the layer has a bias (P = K·D without).
    max_bytes : int, optional
        Budget of the row blocks' intermediates (default 256 MiB); the result's own P²
        entries come on top.
    mc_samples, seed
        For ``kind='fisher_mc'`` (see :meth:`~jacobians.Head.sqrt_ggn_sampled`).

    Returns
    -------
    ndarray (P, P), Kron, or ndarray (K, D+1)

    Notes
    -----
    When a head's blocks are diagonal minus a rank-one term (softmax + CE: ``c(diag p −
    p pᵀ)``), the rank-one parts of all rows sum to ``Uᵀ U`` for the (N, P) matrix U with
    rows ``w_n ⊗ φ̃_n``: one BLAS product; the diagonal parts add K products of size
    (D+1)² a row. The (k, k) blocks take each block's exact diagonal, so a confident
    prediction keeps its small curvature. Monte-Carlo and empirical Fisher blocks are
    factors ``S_n`` (K, C), summed as ``Uᵀ U`` with rows ``S_n[:, c] ⊗ φ̃_n``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(50, 2)), rng.integers(0, 3, size=50)
    >>> W, b = rng.normal(size=(3, 2)), np.zeros(3)
    >>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    >>> H = jac.linear_curvature(X, head, X @ W.T + b, y, kind="hessian")
    >>> H.shape                                             # P = K·(D+1) = 9
    (9, 9)
    >>> step = np.linalg.solve(H + 1e-6 * np.eye(9), jac.linear_gradient(X, head, X @ W.T + b, y).ravel())
    >>> A, B = jac.linear_curvature(X, head, X @ W.T + b, y, structure="kron")
    >>> A.shape, B.shape
    ((3, 3), (3, 3))
    """
    if (backend := backend_of(features, z, y)) is not None:
        return backend.linear_curvature(features, head, z, y, kind=kind, structure=structure, bias=bias,
                                        max_bytes=max_bytes, mc_samples=mc_samples, seed=seed)
    budget, key = check_options(head, y, kind, structure, max_bytes, mc_samples, seed)
    X, z2, y2 = _rows(features, head, z, y)
    scale = fisher.reduction_factor(head, z2, y2)
    part = partial_curvature(X, head, z2, y2, kind=kind, structure=structure, bias=bias, budget=budget,
                             key=key, mc_samples=mc_samples, row_ids=np.arange(z2.shape[0]))
    return finish_curvature(structure, part, scale, z2.shape[0])


def check_options(head, y, kind, structure, max_bytes, mc_samples, seed) -> tuple[int, int]:
    """Validate the options; ``(budget, key)`` with key the sampling seed's integer key."""
    meaning = check_kind(kind, KINDS)
    if not isinstance(structure, str) or structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}; got {structure!r}")
    if not isinstance(head, Head):
        raise TypeError(f"head must be a jacobians.Head; got {type(head).__name__}")
    budget = check_max_bytes(max_bytes)
    if y is None and meaning not in ("fisher", "fisher_mc"):
        raise ValueError(f"kind={kind!r} needs the targets y")
    fisher.check_kind_applies(head, kind)
    key = 0
    if meaning == "fisher_mc":
        check_mc_samples(mc_samples)
        key = seed_key(seed)
    return budget, key


def partial_curvature(X, head, z2, y2, *, kind, structure, bias, budget, key, mc_samples, row_ids):
    """The unscaled sum over some rows (X (n, D), z2 (n, K), y2, their global indices
    ``row_ids``) of what :func:`linear_curvature` returns — (P, P), (K, D+1), or the pair
    ``(Σ B_n, Σ φ̃_n φ̃_nᵀ)`` — for the head with reduction ``'sum'``: partial sums over
    disjoint rows add up, and :func:`finish_curvature` applies the whole batch's factor."""
    per_row = Head(head.activation, head.loss_fn.with_reduction("sum"))
    n, K = z2.shape
    D1 = X.shape[1] + bool(bias)
    itemsize = z2.dtype.itemsize
    # rows whose structured blocks (a few arrays of K entries each, or an M-column factor)
    # and augmented features φ̃ (D+1 entries) fit the budget; the product below splits them
    # again by its own intermediates
    width = K * (max(int(mc_samples), 8) if check_kind(kind, KINDS) == "fisher_mc" else 8) + D1
    step = max(1, budget // (itemsize * width))
    acc = _ACCUMULATORS[structure](K, D1, z2.dtype)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        blocks = fisher.blocks_for_rows(per_row, kind, z2[rows], None if y2 is None else y2[rows],
                                           key=key, mc_samples=mc_samples, row_ids=row_ids[rows])
        acc.add(blocks, _with_bias(X[rows], bias), budget)
    return acc.partial()


def finish_curvature(structure: str, part, scale, n_rows: int):
    """The result of :func:`linear_curvature` from the sum of :func:`partial_curvature` over
    all rows: times the reduction's factor (and the mean features' outer product for 'kron')."""
    if structure == "kron":
        A, XtX = part
        return Kron(A * scale, XtX / max(n_rows, 1))  # no rows: B = 0, as A (jacobians.numerics.empty)
    return part * scale


# -- accumulators ------------------------------------------------------------------------------


#: the most bytes of an intermediate that is rebuilt block after block (a cache-sized buffer)
_BLOCK_BYTES = 16 << 20


def _split(n_rows: int, bytes_per_row: int, budget: int):
    step = max(1, budget // max(bytes_per_row, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _kron_rows(S: np.ndarray, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``S_n[:, c] ⊗ X_n`` of U: shape (n·C, K·D1), for a factor S (n, K, C) (written into
    ``out`` of shape (n, C, K, D1) if given)."""
    n, K, C = S.shape
    U = np.multiply(np.swapaxes(S, 1, 2)[:, :, :, None], X[:, None, None, :], out=out)
    return U.reshape(n * C, K * X.shape[1])


class _Full:
    """Accumulates ``Σ_n B_n ⊗ X_n X_nᵀ`` as (K, D1, K, D1); the (k, k) blocks apart."""

    def __init__(self, K, D1, dtype):
        self.K, self.D1 = K, D1
        self.out = np.zeros((K * D1, K * D1), dtype)
        self.diag_blocks = np.zeros((K, D1, D1), dtype)
        self.exact_diagonal = True

    def _add_diagonal(self, h: np.ndarray, X: np.ndarray, budget: int) -> None:
        """(k, k) blocks ``Σ_n h[n, k] X_n X_nᵀ``: products (K·D1 × n)(n × D1), row (k, d) of
        ``Yᵀ X`` being row d of block k.

        Y (rows ``h_n ⊗ X_n``) is written into one buffer of at most ``_BLOCK_BYTES``, reused
        from block to block. (At N = 50,000, D1 = 129, K = 10 in float64, fresh Y blocks of
        the whole budget took 3-4× as long, and the product the other way round, ``Xᵀ Y``,
        3-5× as long in OpenBLAS.)"""
        K, D1 = self.K, self.D1
        row_bytes = h.itemsize * K * D1
        limit = min(budget, _BLOCK_BYTES)
        buf = np.empty((min(X.shape[0], max(1, limit // row_bytes)), K, D1), np.result_type(h, X))
        for rows in _split(X.shape[0], row_bytes, limit):
            n = rows.stop - rows.start
            Y = np.multiply(h[rows][:, :, None], X[rows][:, None, :], out=buf[:n]).reshape(n, K * D1)
            self.diag_blocks += (Y.T @ X[rows]).reshape(K, D1, D1)

    def _add_factor(self, S, X, budget, sign=1.0):
        """``± Σ_n (S_n S_nᵀ) ⊗ X_n X_nᵀ`` as ``Uᵀ U`` (one symmetric BLAS product a row block).

        U's row blocks (at most half the budget, and no more than ``max(_BLOCK_BYTES, 4 P²)``
        bytes: enough rows that each product outweighs adding its P² result) are written into
        one reused buffer, and each ``Uᵀ U`` into one reused (P, P) buffer: fresh arrays of
        that size cost a first touch of every page, call after call."""
        n_rows, K, C = S.shape
        D1, P = self.D1, self.K * self.D1
        dtype = np.result_type(S, X)
        row_bytes = dtype.itemsize * C * P
        limit = min(budget // 2, max(_BLOCK_BYTES, 4 * P * P * dtype.itemsize))
        buf = np.empty((min(n_rows, max(1, limit // row_bytes)), C, K, D1), dtype)
        gram = np.empty((P, P), dtype)
        for rows in _split(n_rows, row_bytes, limit):
            U = _kron_rows(S[rows], X[rows], out=buf[: rows.stop - rows.start])
            np.matmul(U.T, U, out=gram)
            if sign > 0:
                self.out += gram
            else:
                self.out -= gram

    def add(self, blocks, X, budget):
        if isinstance(blocks, np.ndarray):  # a factor (n, K, C): blocks S Sᵀ
            self._add_factor(blocks, X, budget)
            self._add_diagonal((blocks * blocks).sum(axis=-1), X, budget)
            return
        if isinstance(blocks, DiagonalJacobian):
            self._add_diagonal(blocks.d, X, budget)
            return
        if isinstance(blocks, DiagonalPlusRankOne) and blocks.u is blocks.v:  # diag(d) − w wᵀ
            self._add_factor(blocks.u[..., None], X, budget, sign=-1.0)
            self._add_diagonal(blocks.diagonal(), X, budget)
            return
        if isinstance(blocks, DiagonalPlusLowRank):
            P = self.K * self.D1
            for rows in _split(X.shape[0], blocks.dtype.itemsize * P * 2 * blocks.rank, budget):
                for r in range(blocks.rank):
                    Ur = _kron_rows(blocks.U[rows, :, r, None], X[rows])
                    Vr = _kron_rows(blocks.V[rows, :, r, None], X[rows])
                    self.out -= Ur.T @ Vr
            self._add_diagonal(blocks.diagonal(), X, budget)
            return
        self._add_dense(blocks, X, budget)

    def _add_dense(self, blocks: JacobianOperator, X, budget):
        """Any other blocks, dense in row blocks: ``Σ_n B_n[k, l] X_n X_nᵀ`` for every (k, l)."""
        K, D1 = self.K, self.D1
        out4 = self.out.reshape(K, D1, K, D1)
        for rows in _split(X.shape[0], blocks.dtype.itemsize * (K * K * (D1 + 1)), budget):
            B = blocks[rows].dense() if isinstance(blocks, JacobianOperator) else blocks[rows]
            Y = B.reshape(-1, K * K).T[:, :, None] * X[rows][None]  # (K², n, D1)
            part = np.matmul(X[rows].T[None], Y).reshape(K, K, D1, D1)
            out4 += part.transpose(0, 2, 1, 3)
        idx = np.arange(K)
        # the (k, k) blocks came out of the dense blocks' own (accurate) diagonals
        self.diag_blocks += out4[idx, :, idx, :]
        out4[idx, :, idx, :] = 0

    def partial(self):
        K, D1 = self.K, self.D1
        out4 = self.out.reshape(K, D1, K, D1)
        idx = np.arange(K)
        out4[idx, :, idx, :] = self.diag_blocks  # exact (k, k) blocks, not diag − low rank
        return self.out


class _Diag:
    """Accumulates the diagonal ``Σ_n B_n[k, k] X_n[d]²`` as (K, D1)."""

    def __init__(self, K, D1, dtype):
        self.out = np.zeros((K, D1), dtype)

    def add(self, blocks, X, budget):
        h = (blocks * blocks).sum(axis=-1) if isinstance(blocks, np.ndarray) else blocks.diagonal()
        self.out += h.T @ (X * X)

    def partial(self):
        return self.out


class _Kron:
    """Accumulates ``A = Σ_n B_n`` and ``Σ_n X_n X_nᵀ``."""

    def __init__(self, K, D1, dtype):
        self.A = np.zeros((K, K), dtype)
        self.B = np.zeros((D1, D1), dtype)

    def add(self, blocks, X, budget):
        if isinstance(blocks, np.ndarray):
            S = blocks.reshape(-1, *blocks.shape[-2:])
            self.A += np.einsum("nkc,nlc->kl", S, S)
        elif isinstance(blocks, DiagonalJacobian):
            self.A[np.diag_indices_from(self.A)] += blocks.d.sum(axis=0)
        else:
            self.A += _block_sum(blocks)
        self.B += X.T @ X

    def partial(self):
        return self.A, self.B


def _block_sum(blocks: JacobianOperator) -> np.ndarray:
    """``Σ_n B_n`` (K, K): diagonals and low-rank terms summed without the dense blocks, with
    the exact diagonal."""
    K = blocks.size
    low = as_low_rank(blocks)
    if isinstance(low, DenseJacobian):
        total = low.J.reshape(-1, K, K).sum(axis=0)
    else:
        r = low.rank
        n = int(np.prod(low.batch_shape))
        U, V = low.U.reshape(n, K, r), low.V.reshape(n, K, r)
        total = -np.einsum("nkr,nlr->kl", U, V) if r else np.zeros((K, K), low.dtype)
    total[np.diag_indices_from(total)] = blocks.diagonal().reshape(-1, K).sum(axis=0)
    return total


_ACCUMULATORS = {"full": _Full, "diag": _Diag, "kron": _Kron}
