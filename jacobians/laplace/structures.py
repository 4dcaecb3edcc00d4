"""The posterior precision ``P_post = H + P_prior`` in each structure, and what it gives.

θ = vec([W | b]) in C order (row k: class k's D weights, then its bias; P = K·D1 with D1 =
D + 1, or D without a bias). Each structure gives ``logdet`` (log det P_post),
``covariance_diagonal`` (diag P_post⁻¹, (P,)), ``covariance`` (dense P_post⁻¹, (P, P)),
``f_var(Phi)`` (the logits' covariance ``J Σ Jᵀ`` (M, K, K) for rows ``Phi`` = φ̃ (M, D1), with
``J = I_K ⊗ φ̃ᵀ``, without forming J; its diagonal (M, K) alone with ``diagonal=True``) and ``sample(eps)`` (θ − θ_MAP for standard normal
draws ``eps`` (n, P): covariance P_post⁻¹).

* ``'full'``: ``H`` (P, P) dense; P_post = H + diag(δ) by Cholesky ``L Lᵀ``; a sample is
  ``L⁻ᵀ ε``.
* ``'diag'``: ``H`` (P,); everything elementwise.
* ``'kron'``: ``H = A ⊗ B`` (:class:`jacobians.Kron`) with eigendecompositions ``A = Q_A
  diag(a) Q_Aᵀ``, ``B = Q_B diag(b) Q_Bᵀ``; the prior δ (a scalar only) is added exactly in
  the eigenbasis: ``P_post = (Q_A ⊗ Q_B) diag(a_i b_j + δ) (Q_A ⊗ Q_B)ᵀ``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..last_layer import Kron

__all__ = ["KronPrecision", "build", "spectrum", "row_blocks"]


def row_blocks(n: int, bytes_per_row: int, budget: int):
    """Slices of at most ``budget // bytes_per_row`` rows (at least one) covering ``range(n)``."""
    step = max(1, budget // max(bytes_per_row, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _not_pd(err) -> ValueError:
    return ValueError(
        "the posterior precision H + prior_precision is not positive definite: the curvature has a "
        "negative direction the prior does not outweigh (a GGN split where the loss is not convex, e.g. "
        "GaussianNLL in σ²); use kind='fisher' (positive semi-definite) or raise prior_precision "
        f"({err})"
    )


class KronPrecision(NamedTuple):
    """The 'kron' posterior precision in its eigen form: ``(Q_A ⊗ Q_B) diag(a_i b_j + delta)
    (Q_A ⊗ Q_B)ᵀ``; :meth:`dense` gives it as a (P, P) matrix."""

    QA: np.ndarray
    a: np.ndarray
    QB: np.ndarray
    b: np.ndarray
    delta: float

    def dense(self) -> np.ndarray:
        """The precision as a dense (P, P) array (P² numbers)."""
        Q = np.kron(self.QA, self.QB)
        lam = (np.outer(self.a, self.b) + self.delta).ravel()
        return (Q * lam) @ Q.T


class _Full:
    def __init__(self, H, prior, K, D1):
        self.K, self.D1 = K, D1
        self.precision = H + np.diag(np.broadcast_to(prior, H.shape[:1]).astype(H.dtype))
        try:
            self.L = np.linalg.cholesky(self.precision)
        except np.linalg.LinAlgError as err:
            raise _not_pd(err) from None
        self._cov = self._linv = None

    def logdet(self) -> float:
        return float(2 * np.log(np.diagonal(self.L)).sum())

    def covariance(self) -> np.ndarray:
        if self._cov is None:
            self._cov = self._Linv().T @ self._Linv()
        return self._cov

    def _Linv(self) -> np.ndarray:
        if self._linv is None:
            self._linv = np.linalg.inv(self.L)  # L⁻¹: Σ = L⁻ᵀ L⁻¹
        return self._linv

    def covariance_diagonal(self) -> np.ndarray:
        return np.diagonal(self.covariance()).copy()

    def f_var(self, Phi, budget: int, diagonal: bool = False) -> np.ndarray:
        K, D1 = self.K, self.D1
        M = Phi.shape[0]
        C4 = self.covariance().reshape(K, D1, K, D1)
        if diagonal:  # Σ_kk blocks only: (M, K), M·K·D1² work
            S = C4[np.arange(K), :, np.arange(K), :].transpose(1, 0, 2).reshape(D1, K * D1)
            out = np.empty((M, K), np.result_type(Phi, S))
            for rows in row_blocks(M, S.itemsize * K * D1, budget):
                out[rows] = np.einsum("mkd,md->mk", (Phi[rows] @ S).reshape(-1, K, D1), Phi[rows])
            return out
        S = C4.transpose(1, 0, 2, 3).reshape(D1, K * K * D1)
        out = np.empty((M, K, K), np.result_type(Phi, S))
        for rows in row_blocks(M, S.itemsize * K * K * D1, budget):
            T = (Phi[rows] @ S).reshape(-1, K, K, D1)  # Σ_d φ̃_d Σ[k d, l e]
            out[rows] = np.einsum("mkle,me->mkl", T, Phi[rows])
        return 0.5 * (out + np.swapaxes(out, 1, 2))

    def sample(self, eps) -> np.ndarray:
        return eps @ self._Linv()  # rows L⁻ᵀ ε: covariance L⁻ᵀ L⁻¹ = P_post⁻¹


class _Diag:
    def __init__(self, H, prior, K, D1):
        self.K, self.D1 = K, D1
        self.precision = H + np.asarray(prior, dtype=H.dtype)
        if not np.all(self.precision > 0):
            raise _not_pd(f"smallest diagonal entry {self.precision.min()!r}")
        self.variance = 1.0 / self.precision

    def logdet(self) -> float:
        return float(np.log(self.precision).sum())

    def covariance(self) -> np.ndarray:
        return np.diag(self.variance)

    def covariance_diagonal(self) -> np.ndarray:
        return self.variance.copy()

    def f_var(self, Phi, budget: int, diagonal: bool = False) -> np.ndarray:
        v = self.variance.reshape(self.K, self.D1)
        d = (Phi * Phi) @ v.T  # (M, K): Σ_d φ̃_d² v[k, d]
        if diagonal:
            return d
        out = np.zeros((Phi.shape[0], self.K, self.K), d.dtype)
        out[:, np.arange(self.K), np.arange(self.K)] = d
        return out

    def sample(self, eps) -> np.ndarray:
        return eps * np.sqrt(self.variance)


class _Kron:
    def __init__(self, H: Kron, prior, K, D1):
        if np.ndim(prior) != 0:
            raise ValueError(
                "structure='kron' takes a scalar prior_precision only (the prior is added exactly in the "
                f"Kronecker eigenbasis); got a vector of length {np.shape(prior)[0]}"
            )
        self.K, self.D1 = K, D1
        a, QA = np.linalg.eigh(H.A)
        b, QB = np.linalg.eigh(H.B)
        self.precision = KronPrecision(QA, a, QB, b, float(prior))
        self.lam = np.outer(a, b) + float(prior)  # (K, D1): eigenvalue of Q_A[:, i] ⊗ Q_B[:, j]
        if not np.all(self.lam > 0):
            raise _not_pd(f"smallest eigenvalue {self.lam.min()!r}")

    def logdet(self) -> float:
        return float(np.log(self.lam).sum())

    def covariance(self) -> np.ndarray:
        p = self.precision
        Q = np.kron(p.QA, p.QB)
        return (Q / self.lam.ravel()) @ Q.T

    def covariance_diagonal(self) -> np.ndarray:
        p = self.precision
        return ((p.QA**2) @ (1.0 / self.lam) @ (p.QB**2).T).ravel()

    def f_var(self, Phi, budget: int, diagonal: bool = False) -> np.ndarray:
        p = self.precision
        psi2 = (Phi @ p.QB) ** 2  # (M, D1)
        C = psi2 @ (1.0 / self.lam).T  # (M, K): Σ_j ψ_j² / (a_i b_j + δ)
        if diagonal:
            return C @ (p.QA**2).T
        return np.einsum("ki,mi,li->mkl", p.QA, C, p.QA)

    def sample(self, eps) -> np.ndarray:
        p = self.precision
        E = eps.reshape(-1, self.K, self.D1) / np.sqrt(self.lam)
        return (p.QA @ E @ p.QB.T).reshape(eps.shape)


_STRUCTURES = {"full": _Full, "diag": _Diag, "kron": _Kron}


def build(structure: str, H, prior, K: int, D1: int):
    """The posterior in ``structure`` for curvature ``H`` and prior precision ``prior`` (a float or
    a (P,) vector); ``ValueError`` when it is not positive definite."""
    return _STRUCTURES[structure](H, prior, K, D1)


def spectrum(structure: str, H) -> np.ndarray:
    """The eigenvalues of ``H`` (P,) in ``structure``: with a scalar prior δ, log det P_post =
    Σ log(λ + δ) and tr P_post⁻¹ = Σ 1/(λ + δ) (exact for 'diag' and 'kron'; 'full' by
    ``eigvalsh``)."""
    if structure == "diag":
        return np.asarray(H, dtype=np.float64).ravel()
    if structure == "kron":
        return np.outer(np.linalg.eigvalsh(H.A), np.linalg.eigvalsh(H.B)).ravel().astype(np.float64)
    return np.linalg.eigvalsh(H).astype(np.float64)
