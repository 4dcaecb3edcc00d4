"""Influence functions of a linear last layer, exact: a Cholesky solve of the θ-curvature.

θ = vec([W | b]) in C order (see :mod:`jacobians.last_layer`); with ``φ̃ = [φ, 1]`` the
gradient of row i's own loss is ``∇ℓ_i = g_i ⊗ φ̃_i`` with ``g_i`` the row's dℓ_i/dz, so
nothing of size (N, P) is ever built:

* ``influence``: ``V = (H + λI)⁻¹ [∇ℓ_j]ᵀ`` for a block of test rows (two triangular solves
  with the Cholesky factor), then for each block of training rows
  ``∇ℓ_iᵀ v_j = g_iᵀ V_j φ̃_i``: one product ``V (m·K, D+1) @ Φ̃_blockᵀ`` and a sum over k;
* ``self_influence``: ``‖L⁻¹ ∇ℓ_i‖²`` for blocks of rows.

The approximations ``'diag'`` (``diag(H) + λ``) and ``'kron'`` (EK-FAC: the eigenbasis of the
Kronecker factors with the eigenvalues refitted to H's exact diagonal in that basis) replace
the solve; the rest is the same.
"""

from __future__ import annotations

import numpy as np

from .. import fisher
from ..head import Head
from ..last_layer import check_max_bytes, linear_curvature
from ..numerics.validation import as_float_array
from ..rules.vocabulary import check_kind
from .layer import check_weights

__all__ = ["influence", "self_influence", "KINDS", "STRUCTURES"]

#: the curvatures ``H`` may be (``linear_curvature``'s kinds without the sampled Fisher)
KINDS = ("hessian", "ggn", "fisher", "empirical_fisher")
STRUCTURES = ("full", "kron", "diag")

#: triangular blocks of at most this order are solved directly; larger ones split in two
_BASE = 128
#: the most bytes of the product ``V Φ̃_blockᵀ`` computed at once (within max_bytes)
_GEMM_BYTES = 64 << 20


# -- inputs ------------------------------------------------------------------------------------


def _check_damping(damping) -> float:
    if isinstance(damping, bool) or not isinstance(damping, (int, float, np.integer, np.floating)):
        raise TypeError(f"damping must be a real number >= 0; got {type(damping).__name__} {damping!r}")
    value = float(damping)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"damping must be a finite number >= 0; got {value}")
    return value


class _Layer:
    """The checked layer ``z = φ Wᵀ + b``, its head and the options shared by both functions."""

    def __init__(self, head, W, b, *, damping, kind, structure, bias, max_bytes):
        if not isinstance(head, Head):
            raise TypeError(f"head must be a jacobians.Head; got {type(head).__name__}")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False; got {bias!r}")
        self.kind = check_kind(kind, KINDS)
        if not isinstance(structure, str) or structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}; got {structure!r}")
        self.head, self.structure, self.bias = head, structure, bool(bias)
        self.damping, self.budget = _check_damping(damping), check_max_bytes(max_bytes)
        W, b = check_weights(W, b, self.bias)
        K, D = W.shape
        self.W, self.b, self.K, self.D = W, b, K, D
        self.D1 = D + self.bias
        self.P = K * self.D1

    def rows(self, features, y, x_name: str, y_name: str):
        """``(X (N, D), y, z (N, K))`` in the common dtype of the features and the weights."""
        X = as_float_array(features, x_name, min_ndim=2)
        if X.ndim != 2 or X.shape[1] != self.D:
            raise ValueError(
                f"{x_name} must have shape (N, D) with D = {self.D} (W has shape {self.W.shape}); got shape {X.shape}"
            )
        if not np.all(np.isfinite(X)):
            raise ValueError(f"{x_name} must be finite")
        y = np.asarray(y)
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"{y_name} must have shape ({X.shape[0]},) or ({X.shape[0]}, K) to match {x_name} of shape "
                f"{X.shape}; got shape {y.shape}"
            )
        dtype = np.result_type(X.dtype, self.W.dtype)
        X = X.astype(dtype, copy=False)
        z = X @ self.W.T.astype(dtype, copy=False)
        if self.bias:
            z += self.b.astype(dtype, copy=False)
        return X, y, z

    def augment(self, X: np.ndarray) -> np.ndarray:
        """``Φ̃ = [X, 1]`` (or X without a bias)."""
        return np.concatenate([X, np.ones((X.shape[0], 1), X.dtype)], axis=1) if self.bias else X

    def row_gradients(self, z, y) -> np.ndarray:
        """``g_i = dℓ_i/dz_i`` (N, K), each row's own loss (the head with reduction 'none')."""
        return fisher.row_gradients(self.head, z, y).reshape(z.shape[0], self.K)

    def inverse(self, X, y, z):
        """``(H + λI)⁻¹`` of the training rows, in the chosen structure."""
        opts = dict(kind=self.kind, bias=self.bias, max_bytes=self.budget)
        if self.structure == "full":
            H = linear_curvature(X, self.head, z, y, structure="full", **opts)
            return _FullInverse(H, self.damping)
        if self.structure == "diag":
            d = linear_curvature(X, self.head, z, y, structure="diag", **opts)
            return _DiagInverse(d + self.damping, self.damping)
        A, B = linear_curvature(X, self.head, z, y, structure="kron", **opts)
        _, QA = np.linalg.eigh(A)
        _, QB = np.linalg.eigh(B)
        lam = self._refit(X, y, z, QA, QB)
        return _KronInverse(QA, QB, lam + self.damping, self.damping)

    def _refit(self, X, y, z, QA, QB) -> np.ndarray:
        """EK-FAC's eigenvalues: the exact diagonal of H in the basis ``q_a ⊗ r_b``,
        ``Λ_ab = c Σ_n (q_aᵀ B_n q_a)(r_bᵀ φ̃_n)²`` (B_n the 'sum' head's blocks, c the
        reduction's factor), shape (K, D1), in row blocks."""
        per_row = Head(self.head.activation, self.head.loss_fn.with_reduction("sum"))
        c = fisher.reduction_factor(self.head, z, y)
        lam = np.zeros((self.K, self.D1), z.dtype)
        step = max(1, self.budget // (z.dtype.itemsize * (3 * self.K * self.K + 2 * self.D1)))
        for rows in _blocks(z.shape[0], step):
            blocks = fisher.blocks_for_rows(per_row, self.kind, z[rows], y[rows])
            if isinstance(blocks, np.ndarray):  # a factor S (n, K, C): B_n = S Sᵀ
                quad = ((QA.T @ blocks) ** 2).sum(axis=-1)
            else:
                dense = blocks.dense().reshape(-1, self.K, self.K)
                quad = np.einsum("ka,nkl,la->na", QA, dense, QA)
            lam += quad.T @ (self.augment(X[rows]) @ QB) ** 2
        return lam * z.dtype.type(c)


def _blocks(n: int, step: int):
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _not_pd(what: str, damping: float, detail: str) -> ValueError:
    return ValueError(
        f"{what} is not positive definite ({detail}; damping={damping}): the exact influence needs an "
        "invertible curvature; pass a larger damping (above minus H's smallest eigenvalue), or "
        "remove the directions with no curvature (duplicated or constant feature columns)"
    )


def _check_spectrum(values: np.ndarray, damping: float, what: str) -> None:
    """``ValueError`` naming damping unless every (eigen)value is clearly positive."""
    if values.size == 0:
        return
    top = float(np.max(np.abs(values)))
    low = float(np.min(values))
    if not low > values.size * np.finfo(values.dtype).eps * top:
        raise _not_pd(what, damping, f"smallest value {low:.3e} against the largest {top:.3e}")


# -- (H + λI)⁻¹ in each structure ------------------------------------------------------------------


class _FullInverse:
    """``L Lᵀ = H + λI``; solves by blocked forward and back substitution (numpy has no
    triangular solver: the recursion splits the factor in halves, GEMMs off the diagonal)."""

    def __init__(self, H: np.ndarray, damping: float):
        P = H.shape[0]
        H[np.diag_indices(P)] += H.dtype.type(damping)  # H is this call's own array
        top = float(np.max(np.abs(np.diagonal(H)))) if P else 0.0
        try:
            L = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            raise _not_pd("H + damping·I", damping, _smallest_eigenvalue(H, damping, "the Cholesky factorisation failed")) from None
        pivots = np.diagonal(L) ** 2
        if P and not pivots.min() > P * np.finfo(H.dtype).eps * top:
            detail = f"smallest Cholesky pivot {pivots.min():.3e} against the largest diagonal entry {top:.3e}"
            raise _not_pd("H + damping·I", damping, _smallest_eigenvalue(H, damping, detail))
        self.L = L

    def solve(self, G: np.ndarray) -> np.ndarray:
        """``(H + λI)⁻¹ G`` for G (m, K, D1) → (m, K, D1)."""
        m = G.shape[0]
        Y = _solve_lower(self.L, G.reshape(m, -1).T)
        return _solve_upper_t(self.L, Y).T.reshape(G.shape)

    def quad(self, g: np.ndarray, X1: np.ndarray) -> np.ndarray:
        """``(g_i ⊗ φ̃_i)ᵀ (H + λI)⁻¹ (g_i ⊗ φ̃_i) = ‖L⁻¹ (g_i ⊗ φ̃_i)‖²`` for rows i."""
        G = (g[:, :, None] * X1[:, None, :]).reshape(g.shape[0], -1)
        Y = _solve_lower(self.L, G.T)
        return np.einsum("pn,pn->n", Y, Y)


def _smallest_eigenvalue(H: np.ndarray, damping: float, detail: str) -> str:
    """``detail``, with H's smallest eigenvalue (H + λI given) up to a few thousand parameters."""
    if H.shape[0] > 4000:  # an O(P³) eigendecomposition only to word the error: not at any size
        return detail
    low = float(np.linalg.eigvalsh(H)[0]) - damping
    return f"{detail}; smallest eigenvalue of H {low:.3e}, so damping must exceed {max(-low, 0.0):.3e}"


def _solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """X with ``L X = B`` for a lower-triangular L (p, p) and B (p, m)."""
    p = L.shape[0]
    if p <= _BASE:
        return np.linalg.solve(L, B) if p else B.copy()
    h = p // 2
    X1 = _solve_lower(L[:h, :h], B[:h])
    X2 = _solve_lower(L[h:, h:], B[h:] - L[h:, :h] @ X1)
    return np.concatenate([X1, X2])


def _solve_upper_t(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """X with ``Lᵀ X = B`` for a lower-triangular L (p, p) and B (p, m)."""
    p = L.shape[0]
    if p <= _BASE:
        return np.linalg.solve(L.T, B) if p else B.copy()
    h = p // 2
    X2 = _solve_upper_t(L[h:, h:], B[h:])
    X1 = _solve_upper_t(L[:h, :h], B[:h] - L[h:, :h].T @ X2)
    return np.concatenate([X1, X2])


class _DiagInverse:
    """``(diag(H) + λ)⁻¹``, d of shape (K, D1)."""

    def __init__(self, d: np.ndarray, damping: float):
        _check_spectrum(d, damping, "diag(H) + damping")
        self.inv = 1 / d

    def solve(self, G):
        return G * self.inv

    def quad(self, g, X1):
        return np.einsum("nk,nk->n", g * g, (X1 * X1) @ self.inv.T)


class _KronInverse:
    """``(Q Λ Qᵀ + λI)⁻¹ = Q (Λ + λ)⁻¹ Qᵀ`` with ``Q = Q_A ⊗ Q_B`` (EK-FAC)."""

    def __init__(self, QA, QB, lam_damped, damping: float):
        _check_spectrum(lam_damped, damping, "the EK-FAC curvature + damping·I")
        self.QA, self.QB, self.inv = QA, QB, 1 / lam_damped

    def solve(self, G):
        T = (self.QA.T @ G @ self.QB) * self.inv
        return self.QA @ T @ self.QB.T

    def quad(self, g, X1):
        ga, xb = g @ self.QA, X1 @ self.QB
        return np.einsum("na,na->n", ga * ga, (xb * xb) @ self.inv.T)


# -- the public functions ----------------------------------------------------------------------------


def influence(head, features_train, y_train, features_test, y_test, W, b, *, damping=0.0, kind="hessian",
              structure="full", bias=True, max_bytes=None) -> np.ndarray:
    """Influence of each training row on each test row's loss, exact for a linear last layer.

    ``I[j, i] = −∇ℓ_jᵀ (H + λI)⁻¹ ∇ℓ_i`` in θ = vec([W | b]) (C order, see
    :mod:`jacobians.last_layer`): ``dℓ_j/dε`` at ε = 0 when ``ε·ℓ_i`` is added to the
    training loss and θ re-minimised (Koh & Liang, 2017; negative: row i helps row j). ``H`` is the
    θ-curvature of the training loss **as the head reduces it** (1/N for ``'mean'``,
    :func:`~jacobians.linear_curvature` as is), λ is ``damping``, and ``∇ℓ_i = g_i ⊗ φ̃_i``
    is the gradient of row i's own loss (the head with reduction ``'none'``; ``φ̃ = [φ, 1]``).

    Parameters
    ----------
    head : Head
    features_train : array_like, shape (N, D)
    y_train : array_like, shape (N,) or (N, K)
        Targets in the loss's form.
    features_test : array_like, shape (M, D)
    y_test : array_like, shape (M,) or (M, K)
    W : array_like, shape (K, D)
    b : array_like, shape (K,), or None with ``bias=False``
    damping : float, default 0.0
        λ ≥ 0 added to H's diagonal.
    kind : {'hessian', 'ggn', 'fisher', 'empirical_fisher'}
        The curvature H (:func:`~jacobians.linear_curvature`'s kinds).
    structure : {'full', 'kron', 'diag'}
        ``'full'``: the exact (P, P) curvature, Cholesky-factored, P = K·(D+1).
        ``'diag'``: ``diag(H) + λ``. ``'kron'``: EK-FAC — the eigenvectors ``q_a ⊗ r_b`` of
        the Kronecker factors ``A ⊗ B`` (:class:`~jacobians.Kron`) with the eigenvalues
        refitted to H's exact diagonal in that basis, ``Λ_ab = Σ_n (q_aᵀ B_n q_a)(r_bᵀ φ̃_n)²``
        (``B_n`` the head's per-sample blocks), then ``(Q Λ Qᵀ + λI)⁻¹``. Both are
        approximations of ``'full'`` (exact for ``'kron'`` when every B_n is the same,
        identity + MSE).
    bias : bool, default True
        Whether the layer has a bias (P = K·D without).
    max_bytes : int, optional
        Budget of the row blocks' intermediates (default 256 MiB); the (P, P) curvature and
        its factor, and the (M, N) result, come on top.

    Returns
    -------
    ndarray, shape (N_test, N_train)

    Raises
    ------
    ValueError
        ``H + λI`` not positive definite, or numerically singular (a Cholesky pivot below
        P·eps of the largest diagonal entry): the message names ``damping``. Shapes that do
        not match W, a negative or non-finite damping, an unknown kind or structure.

    Notes
    -----
    Cost: the curvature (``linear_curvature``, O(N·P²)), its Cholesky factor (P³/3), two
    triangular solves for the test gradients (O(M·P²)) and one product of
    (M·K, D+1) by (D+1, N) for the result. Nothing of shape (N, P) is built.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(40, 3)), rng.integers(0, 4, size=40)
    >>> W, b = rng.normal(size=(4, 3)), np.zeros(4)
    >>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    >>> I = jac.influence(head, X, y, X[:5], y[:5], W, b, damping=1e-3)
    >>> I.shape
    (5, 40)
    >>> s = jac.self_influence(head, X, y, W, b, damping=1e-3)
    >>> bool(np.allclose(-np.diagonal(I), s[:5]))
    True
    """
    layer = _Layer(head, W, b, damping=damping, kind=kind, structure=structure, bias=bias, max_bytes=max_bytes)
    Xtr, ytr, ztr = layer.rows(features_train, y_train, "features_train", "y_train")
    Xte, yte, zte = layer.rows(features_test, y_test, "features_test", "y_test")
    dtype = np.result_type(ztr, zte)
    inv = layer.inverse(Xtr, ytr, ztr)
    g_train, g_test = layer.row_gradients(ztr, ytr), layer.row_gradients(zte, yte)
    M, N, K, D1 = Xte.shape[0], Xtr.shape[0], layer.K, layer.D1
    out = np.empty((M, N), dtype)
    item = dtype.itemsize
    m_step = max(1, layer.budget // (4 * layer.P * item))
    for te in _blocks(M, m_step):
        m = te.stop - te.start
        G = g_test[te][:, :, None] * layer.augment(Xte[te]).astype(dtype, copy=False)[:, None, :]
        V = inv.solve(G).reshape(m * K, D1).astype(dtype, copy=False)
        del G
        # V_j φ̃_i for a block of training rows, (m·K, n), in one buffer reused block after block
        # (at most _GEMM_BYTES: fresh arrays of the whole budget cost more in page faults than
        # the product's efficiency gains from their size)
        n_step = max(1, min(layer.budget, _GEMM_BYTES) // ((m * K + D1) * item))
        buf = np.empty(m * K * min(n_step, N), dtype)
        for tr in _blocks(N, n_step):
            n = tr.stop - tr.start
            T = np.matmul(V, layer.augment(Xtr[tr]).T, out=buf[: m * K * n].reshape(m * K, n))
            np.einsum("mkn,kn->mn", T.reshape(m, K, n), -g_train[tr].T, out=out[te, tr])
    return out


def self_influence(head, features, y, W, b, *, damping=0.0, kind="hessian", structure="full", bias=True,
                   max_bytes=None) -> np.ndarray:
    """Self-influence ``∇ℓ_iᵀ (H + λI)⁻¹ ∇ℓ_i`` of each row, shape (N,) (≥ 0: no minus sign).

    The diagonal of ``−influence(head, features, y, features, y, W, b, ...)``, without the
    (N, N) matrix: for ``'full'``, ``‖L⁻¹ ∇ℓ_i‖²`` with ``L Lᵀ = H + λI``, in row blocks of
    at most ``max_bytes``. Large values flag rows the model bends to fit (mislabelled or
    atypical points). Parameters, conventions and errors as :func:`influence`.

    Parameters
    ----------
    head : Head
    features : array_like, shape (N, D)
    y : array_like, shape (N,) or (N, K)
    W : array_like, shape (K, D)
    b : array_like, shape (K,), or None with ``bias=False``
    damping, kind, structure, bias, max_bytes
        See :func:`influence`.

    Returns
    -------
    ndarray, shape (N,)

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(30, 2))
    >>> Y = X @ np.array([[1.0, -2.0]]).T + 0.1 * rng.normal(size=(30, 1))
    >>> Y[0] += 5.0                                     # an outlier
    >>> head = jac.Head(jac.Identity(), jac.MeanSquaredError())
    >>> s = jac.self_influence(head, X, Y, np.array([[1.0, -2.0]]), np.zeros(1))
    >>> int(np.argmax(s))
    0
    """
    layer = _Layer(head, W, b, damping=damping, kind=kind, structure=structure, bias=bias, max_bytes=max_bytes)
    X, y, z = layer.rows(features, y, "features", "y")
    inv = layer.inverse(X, y, z)
    g = layer.row_gradients(z, y)
    out = np.empty(X.shape[0], z.dtype)
    step = max(1, layer.budget // (3 * layer.P * z.dtype.itemsize))
    for rows in _blocks(X.shape[0], step):
        out[rows] = inv.quad(g[rows], layer.augment(X[rows]))
    return out
