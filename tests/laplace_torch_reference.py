"""Independent references for tests/test_laplace_torch.py: laplace-torch 0.3 and plain torch.

Nothing here imports jacobians. Every function takes and returns numpy arrays in float64 (the
caller sets torch's default dtype; see the ``f64`` fixture of the test module).

θ orders. Ours is vec([W | b]) in C order: row k holds class k's D weights, then its bias
(P = K·(D+1)). laplace-torch's last layer is ``parameters_to_vector(nn.Linear)``, i.e.
[W.ravel(), b]. ``to_ours(K, D)`` is the index array with ``ours = theirs[to_ours]``.

laplace-torch's backend: ``Laplace(...)`` with ``backend=None`` picks ``CurvlinopsGGN``
(laplace/baselaplace.py) with ``stochastic=False``: for ``'full'`` a curvlinops
``GGNLinearOperator`` applied to the identity (the exact GGN of the summed torch loss,
CrossEntropyLoss(sum) or MSELoss(sum) · ½), for ``'diag'`` ``GGNInterface.diag`` (the
exact diagonal Σ_n Jᵀ H_n J from the last-layer Jacobians). Neither is stochastic; we
still pass ``backend=CurvlinopsGGN`` explicitly so a change of default cannot slip in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

# skip, not fail, where the test extra is missing (pytest imports this module for its doctests)
torch = pytest.importorskip("torch", reason="torch (the test extra) is not installed")
nn = torch.nn
DataLoader, TensorDataset = torch.utils.data.DataLoader, torch.utils.data.TensorDataset


def T(a, dtype=None):
    """A torch copy of ``a`` (never a view of a caller's, possibly read-only, array)."""
    return a.clone() if isinstance(a, torch.Tensor) else torch.tensor(np.array(a), dtype=dtype)


def to_ours(K: int, D: int, bias: bool = True) -> np.ndarray:
    """Indices ``idx`` with ``theta_ours = theta_laplace_torch[idx]``."""
    if not bias:
        return np.arange(K * D)
    w = np.arange(K * D).reshape(K, D)
    return np.concatenate([w, K * D + np.arange(K)[:, None]], axis=1).ravel()


def permute_matrix(M, idx):
    M = np.asarray(M)
    return M[np.ix_(idx, idx)] if M.ndim == 2 else M[idx]


def to_theirs(v_ours, idx):
    """A (P,) vector in our order, in laplace-torch's."""
    out = np.empty_like(np.asarray(v_ours, dtype=float))
    out[idx] = v_ours
    return out


def theta(W, b):
    """Our θ = vec([W | b])."""
    return np.concatenate([W, np.asarray(b)[:, None]], axis=1).ravel() if b is not None else W.ravel()


def model_of(W, b):
    """nn.Sequential(Identity, Linear(D, K)) holding W, b: the last layer's input is X itself."""
    K, D = W.shape
    lin = nn.Linear(D, K, bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(T(W))
        if b is not None:
            lin.bias.copy_(T(b))
    return nn.Sequential(nn.Identity(), lin)


def laplace_torch(X, W, b, y, likelihood, structure, prior_precision=1.0, sigma_noise=1.0):
    """A fitted laplace-torch LLLaplace on (X, y) with last layer (W, b), exact GGN backend."""
    from laplace import Laplace
    from laplace.curvature import CurvlinopsGGN

    yt = T(y) if likelihood == "regression" else T(y, dtype=torch.long)
    loader = DataLoader(TensorDataset(T(X), yt), batch_size=len(X))
    la = Laplace(
        model_of(W, b),
        likelihood,
        subset_of_weights="last_layer",
        hessian_structure=structure,
        prior_precision=prior_precision,
        sigma_noise=sigma_noise,
        backend=CurvlinopsGGN,
        last_layer_name="1",
    )
    la.fit(loader)
    return la


def lt_log_marginal_likelihood(la, prior_precision, sigma_noise=None):
    """laplace-torch's evidence at the given values; it SETS them on ``la`` (its convention),
    so the old values are put back afterwards."""
    old_p, old_s = la.prior_precision.clone(), la.sigma_noise.clone()
    try:
        p = T(prior_precision)
        s = None if sigma_noise is None else T(sigma_noise)
        return float(la.log_marginal_likelihood(p, s))
    finally:
        la.prior_precision, la.sigma_noise = old_p, old_s


def lt_glm(la, X):
    """laplace-torch's GLM predictive ``(f_mu (M, K), f_var (M, K, K))``."""
    f_mu, f_var = la._glm_predictive_distribution(T(X))
    return f_mu.numpy(), f_var.numpy()


# -- plain torch: the summed loss's θ-Hessian and the evidence by formula ------------------------


def sparsemax(z):
    """Sparsemax along the last axis (sort-based, autograd gives its Jacobian)."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    css = zs.cumsum(-1)
    support = (1 + k * zs > css).to(z.dtype)
    ks = support.sum(-1, keepdim=True)
    tau = (torch.gather(css, -1, ks.long() - 1) - 1) / ks
    return torch.clamp(z - tau, min=0)


def summed_losses():
    """name → callable(z (N, K), y) → the summed loss, plain torch (the rows laplace-torch
    lacks, and its two own likelihoods)."""
    F = torch.nn.functional

    def sparsemax_loss(z, y):  # Fenchel–Young: <p, z> − ½‖p‖² + ½ − z_y, zero when sure and right
        p = sparsemax(z)
        zy = z.gather(-1, y[:, None]).squeeze(-1)
        return ((p * z).sum(-1) - 0.5 * (p * p).sum(-1) + 0.5 - zy).sum()

    w = T([0.5, 2.0, 1.0, 3.0])
    return {
        "ce": lambda z, y: F.cross_entropy(z, y, reduction="sum"),
        "ce_weight": lambda z, y: F.cross_entropy(z, y, weight=w, reduction="sum"),
        "ce_smooth": lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1, reduction="sum"),
        "bce": lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="sum"),
        "bce_pos_weight": lambda z, y: F.binary_cross_entropy_with_logits(z, y, pos_weight=w, reduction="sum"),
        "bce_smooth": lambda z, y: F.binary_cross_entropy_with_logits(z, y * 0.9 + 0.05, reduction="sum"),
        "sparsemax": sparsemax_loss,
    }


def logits_of(th, X, K, bias=True):
    """z = X Wᵀ + b with [W | b] = θ reshaped (our order)."""
    Wb = th.reshape(K, -1)
    return X @ Wb[:, : X.shape[1]].T + (Wb[:, -1] if bias else 0)


def theta_hessian(loss, X, W, b, y):
    """torch.func.hessian of ``loss(z(θ), y)`` w.r.t. our θ, and the loss at θ."""
    K = W.shape[0]
    Xt, yt, th = T(X), T(y), T(theta(W, b))
    f = lambda t: loss(logits_of(t, Xt, K, b is not None), yt)  # noqa: E731
    return torch.func.hessian(f)(th).numpy(), float(f(th))


def evidence(loglik, H, th, prior):
    """log p(D|θ) − ½(logdet(H + P0) − logdet P0) − ½ θᵀ P0 θ, P0 = diag(prior) (dense H) or
    H + P0 elementwise for a diagonal H ((P,))."""
    H, th = T(H), T(th)
    p0 = T(prior) * torch.ones_like(th)
    post = H + torch.diag(p0) if H.ndim == 2 else H + p0
    logdet = torch.linalg.slogdet(post)[1] if H.ndim == 2 else post.log().sum()
    return float(loglik - 0.5 * (logdet - p0.log().sum()) - 0.5 * (th * p0 * th).sum())


def glm(X, cov, K, bias=True):
    """f_var = J Σ Jᵀ with J = I_K ⊗ φ̃ᵀ in our order, for a dense (P, P) Σ or a diagonal (P,)."""
    phi = torch.cat([T(X), torch.ones(len(X), 1)], 1) if bias else T(X)
    J = torch.einsum("kl,nd->nkld", torch.eye(K), phi).reshape(len(X), K, -1)
    cov = T(cov)
    C = cov if cov.ndim == 2 else torch.diag(cov)
    return torch.einsum("nkp,pq,nlq->nkl", J, C, J).numpy()


def mc_expectation(f_mu, f_var, link, n, seed=0):
    """E[link(f)], f ~ N(f_mu, f_var), by n torch draws; with the standard error of each entry."""
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(T(f_var) + 1e-12 * torch.eye(f_var.shape[-1]))
    eps = torch.randn(n, *f_mu.shape, generator=g)
    f = T(f_mu) + torch.einsum("mkl,sml->smk", L, eps)
    a = link(f)
    return a.mean(0).numpy(), (a.std(0) / math.sqrt(n)).numpy()


def kron_factors(loss, X, W, b, y):
    """Our Kron's factors by definition: A = Σ_n ∂²E/∂z_n∂z_n (torch.func.hessian w.r.t. the
    logits, the diagonal blocks summed), B = mean_n φ̃_n φ̃_nᵀ with φ̃ = [φ, 1]."""
    z = T(X @ W.T + (0 if b is None else b))
    Hz = torch.func.hessian(lambda t: loss(t, T(y)))(z)  # (N, K, N, K)
    A = torch.einsum("nknl->kl", Hz).numpy()
    phi = np.concatenate([X, np.ones((len(X), 1))], 1) if b is not None else X
    return A, phi.T @ phi / len(X)


def influence(loss_none, scale, X, W, b, y, Xt, yt, damping):
    """−∇ℓ_test (H + λI)⁻¹ ∇ℓ_trainᵀ with H the θ-Hessian of ``scale · Σ loss_none`` (the
    reduced training loss) and ∇ℓ each row's own loss's θ-gradient (torch.func)."""
    K, th = W.shape[0], T(theta(W, b))
    Xtr, Xte = T(X), T(Xt)
    E = lambda t: scale * loss_none(logits_of(t, Xtr, K), T(y)).sum()  # noqa: E731
    H = torch.func.hessian(E)(th) + damping * torch.eye(len(th))
    Gtr = torch.func.jacrev(lambda t: loss_none(logits_of(t, Xtr, K), T(y)))(th)
    Gte = torch.func.jacrev(lambda t: loss_none(logits_of(t, Xte, K), T(yt)))(th)
    Hinv_Gtr = torch.linalg.solve(H, Gtr.T)  # (P, N)
    return (-Gte @ Hinv_Gtr).numpy(), torch.einsum("np,pn->n", Gtr, Hinv_Gtr).numpy()
