"""``LastLayerLaplace`` against independent references.

* the curvature: torch autograd in float64 (the θ-Hessian of the summed loss for the canonical
  pairs, ``(∂a/∂θ)ᵀ ∇²_a ℓ (∂a/∂θ)`` for the others), a plain numpy loop for softmax + CE and
  sparsemax (its Jacobian by central differences of a sort-based sparsemax);
* the posterior, evidence and predictive: a plain numpy construction from the definitions —
  per-row Jacobians ``J_m = I_K ⊗ φ̃_mᵀ`` built in a loop, ``np.linalg.slogdet`` / ``inv``;
* the marglik gradient: central differences; its maximiser: a fine grid;
* samples and Monte-Carlo predictives: statistical tolerances with fixed seeds.

laplace-torch itself is the reference of tests/test_laplace_torch.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac

N, D, K = 24, 5, 4  # D + 1 != K: a transposed (K, D+1) block cannot hide
STRUCTURES = ("full", "kron", "diag")


# -- references -------------------------------------------------------------------------------


def augment(X, bias):
    return np.concatenate([X, np.ones((len(X), 1))], axis=1) if bias else X


def theta_of(W, b, bias):
    return np.concatenate([W, b[:, None]], axis=1).ravel() if bias else W.ravel()


def jac_rows(Phi, K):
    """J_m = I_K ⊗ φ̃_mᵀ, (M, K, P), row by row."""
    out = []
    for phi in Phi:
        J = np.zeros((K, K * len(phi)))
        for k in range(K):
            J[k, k * len(phi):(k + 1) * len(phi)] = phi
        out.append(J)
    return np.array(out)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_ce_curvature(X, W, b, y, bias):
    """Σ_n J_nᵀ (diag p − p pᵀ) J_n and the summed CE, by a loop."""
    Phi = augment(X, bias)
    z = X @ W.T + (b if bias else 0)
    P = K * Phi.shape[1]
    H, loss = np.zeros((P, P)), 0.0
    for phi, zn, yn in zip(Phi, z, y):
        p = softmax(zn)
        J = jac_rows(phi[None], K)[0]
        H += J.T @ (np.diag(p) - np.outer(p, p)) @ J
        loss -= np.log(p[yn])
    return H, -loss


def sparsemax_np(z):
    s = np.sort(z)[::-1]
    c = np.cumsum(s)
    k = np.arange(1, len(z) + 1)
    kz = k[1 + k * s > c].max()
    return np.maximum(z - (c[kz - 1] - 1) / kz, 0)


def sparsemax_curvature(X, W, b, bias):
    """Σ_n J_nᵀ ∂sparsemax/∂z J_n (the Hessian of the sparsemax loss in z), the Jacobian by central
    differences of ``sparsemax_np``."""
    Phi = augment(X, bias)
    z = X @ W.T + (b if bias else 0)
    H = 0
    for phi, zn in zip(Phi, z):
        Js = np.array([(sparsemax_np(zn + 1e-6 * e) - sparsemax_np(zn - 1e-6 * e)) / 2e-6 for e in np.eye(K)]).T
        J = jac_rows(phi[None], K)[0]
        H = H + J.T @ (0.5 * (Js + Js.T)) @ J
    return H


def torch_reference(case, X, W, b, y, bias, kind="ggn"):
    """(H, log p(D | θ)) with torch autograd for a case of :data:`CASES`, σ = 1 (``kind='fisher'``:
    the Gaussian's Fisher ``diag(1/σ², 1/(2σ⁴))`` in place of the loss's Hessian in (μ, σ²))."""
    torch = pytest.importorskip("torch", reason="torch (the test extra) is not installed")
    F = torch.nn.functional
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    Xt, yt = t(X), torch.as_tensor(y)
    if np.asarray(y).dtype.kind == "f":
        yt = t(y)
    theta = t(theta_of(W, b, bias))
    Dl = X.shape[1] + bias

    def logits(th):
        M = th.reshape(-1, Dl)
        return Xt @ M[:, : X.shape[1]].T + (M[:, -1] if bias else 0)

    name = case["name"]
    if name == "ce_weights_smoothing":
        w = t(case["weight"])
        act, loss = (lambda z: z), (lambda a: F.cross_entropy(a, yt, weight=w, label_smoothing=0.1, reduction="sum"))
    elif name == "bce":
        act, loss = (lambda z: z), (lambda a: F.binary_cross_entropy_with_logits(a, yt, reduction="sum"))
    elif name == "mse":
        act, loss = (lambda z: z), (lambda a: 0.5 * F.mse_loss(a, yt, reduction="sum"))
    elif name == "mean_variance":
        k = W.shape[0] // 2

        def act(z):
            return torch.cat([z[:, :k], F.softplus(z[:, k:])], dim=1)

        def loss(a):
            return F.gaussian_nll_loss(a[:, :k], yt, a[:, k:], reduction="sum")
    elif name == "poisson":
        act = torch.exp

        def loss(a):
            return F.poisson_nll_loss(a, yt, log_input=False, eps=1e-8, reduction="sum")
    else:
        raise AssertionError(name)
    if kind == "blocks":  # the logits-level blocks B_n (N, K, K): (∂a/∂z)ᵀ ∇²_a ℓ (∂a/∂z), per row
        z0 = logits(theta).detach()
        Jz = torch.autograd.functional.jacobian(lambda z: act(z.reshape(z0.shape)).reshape(-1), z0.reshape(-1))
        a0 = act(z0)
        Ha = torch.autograd.functional.hessian(lambda a: loss(a.reshape(a0.shape)), a0.reshape(-1))
        G = (Jz.T @ Ha @ Jz).numpy()
        n, k = z0.shape
        return np.array([G[i * k:(i + 1) * k, i * k:(i + 1) * k] for i in range(n)])
    a0 = act(logits(theta))
    Ja = torch.autograd.functional.jacobian(lambda th: act(logits(th)).reshape(-1), theta)
    Ha = torch.autograd.functional.hessian(lambda a: loss(a.reshape(a0.shape)), a0.detach().reshape(-1))
    if kind == "fisher":
        assert name == "mean_variance"
        v = a0.detach()[:, W.shape[0] // 2:]
        Ha = torch.diag(torch.cat([1 / v, 1 / (2 * v**2)], dim=1).reshape(-1))
    G = (Ja.T @ Ha @ Ja).numpy()
    value = float(loss(a0))
    if name == "mse":
        return G, -value  # the Gaussian's normaliser is added by the caller
    return G, -value


class Reference:
    """The Laplace posterior from its definitions, for a dense precision ``Pp`` (P, P)."""

    def __init__(self, Pp, theta, log_lik, prior):
        self.Pp, self.theta, self.log_lik = Pp, theta, log_lik
        self.prior = np.broadcast_to(prior, theta.shape).astype(float)
        self.Sigma = np.linalg.inv(Pp)

    def lml(self):
        sign, logdet = np.linalg.slogdet(self.Pp)
        assert sign > 0
        return (self.log_lik - 0.5 * (logdet - np.log(self.prior).sum())
                - 0.5 * self.theta @ (self.prior * self.theta))

    def f_var(self, Phi):
        return np.array([J @ self.Sigma @ J.T for J in jac_rows(Phi, len(self.theta) // Phi.shape[1])])


def kron_reference(H_blocks_sum, Phi):
    """np.kron(Σ_n B_n, mean φ̃φ̃ᵀ)."""
    return np.kron(H_blocks_sum, Phi.T @ Phi / len(Phi))


def dense_precision(structure, H_full, prior, kron_H=None):
    P = H_full.shape[0]
    pr = np.broadcast_to(prior, (P,))
    if structure == "full":
        return H_full + np.diag(pr)
    if structure == "diag":
        return np.diag(np.diag(H_full) + pr)
    return kron_H + np.diag(pr)


def data(rng, bias=True, K_=K):
    X = rng.normal(size=(N, D))
    W = rng.normal(size=(K_, D)) * 0.7
    b = rng.normal(size=K_) * 0.3 if bias else None
    return X, W, b


def fit_ce(structure="full", bias=True, prior=1.0, seed=0, **kw):
    rng = np.random.default_rng(seed)
    X, W, b = data(rng, bias)
    y = rng.integers(0, K, size=N)
    la = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy()), structure=structure,
                              prior_precision=prior, bias=bias, **kw).fit(X, W, b, y)
    return la, X, W, b, y


# -- softmax + CE against the numpy loop (no torch) ---------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_softmax_ce_against_numpy_definitions(structure, bias):
    la, X, W, b, y = fit_ce(structure, bias, prior=0.7)
    H, log_lik = numpy_ce_curvature(X, W, b, y, bias)
    Phi = augment(X, bias)
    theta = theta_of(W, b if bias else None, bias) if bias else W.ravel()
    np.testing.assert_allclose(la.mean, theta, rtol=0, atol=0)
    assert la.log_likelihood == pytest.approx(log_lik, rel=1e-12)
    A = sum(np.diag(p) - np.outer(p, p) for p in softmax(X @ W.T + (b if bias else 0)))
    Hk = kron_reference(A, Phi)
    if structure == "full":
        np.testing.assert_allclose(la.H, H, rtol=1e-12, atol=1e-12)
    elif structure == "diag":
        np.testing.assert_allclose(la.H, np.diag(H), rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(la.H.dense(), Hk, rtol=1e-12, atol=1e-12)
    ref = Reference(dense_precision(structure, H, 0.7, Hk), theta, log_lik, 0.7)
    assert la.log_marginal_likelihood() == pytest.approx(ref.lml(), rel=1e-10)
    Xt = np.random.default_rng(5).normal(size=(7, D))
    f_mu, f_var = la.logits(Xt)
    np.testing.assert_allclose(f_mu, Xt @ W.T + (b if bias else 0), rtol=1e-13)
    np.testing.assert_allclose(f_var, ref.f_var(augment(Xt, bias)), rtol=1e-9, atol=1e-12)
    kappa = 1 / np.sqrt(1 + np.pi / 8 * np.einsum("mkk->mk", ref.f_var(augment(Xt, bias))))
    np.testing.assert_allclose(la.predictive(Xt), softmax(kappa * f_mu), rtol=1e-10)
    cov = la.posterior_covariance
    np.testing.assert_allclose(cov if structure != "diag" else np.diag(cov), ref.Sigma, rtol=1e-9, atol=1e-12)


def test_vector_prior_lml_and_prior_on_the_bias():
    rng = np.random.default_rng(3)
    la, X, W, b, y = fit_ce("full", prior=1.0, seed=3)
    H, log_lik = numpy_ce_curvature(X, W, b, y, True)
    delta = rng.uniform(0.2, 3.0, size=la.n_params)
    ref = Reference(H + np.diag(delta), la.mean, log_lik, delta)
    assert la.log_marginal_likelihood(prior_precision=delta) == pytest.approx(ref.lml(), rel=1e-11)
    # a prior only on the weights (bias prior ~ 0) gives another evidence: the bias is in the prior
    w_only = np.where(np.arange(la.n_params) % (D + 1) == D, 1e-9, 1.0)
    assert abs(la.log_marginal_likelihood() - la.log_marginal_likelihood(prior_precision=w_only)) > 1.0


def test_theta_order_is_rows_of_w_then_bias():
    la, X, W, b, y = fit_ce("full")
    assert la.mean.reshape(K, D + 1)[:, :D].tolist() == W.tolist()
    assert la.mean.reshape(K, D + 1)[:, D].tolist() == b.tolist()
    # a prior that differs on one bias entry moves that entry's posterior variance only
    delta = np.ones(la.n_params)
    delta[2 * (D + 1) + D] = 50.0  # class 2's bias
    la2 = jac.LastLayerLaplace(la.head, structure="diag", prior_precision=delta).fit(X, W, b, y)
    la1 = jac.LastLayerLaplace(la.head, structure="diag", prior_precision=1.0).fit(X, W, b, y)
    changed = np.flatnonzero(~np.isclose(la2.posterior_covariance, la1.posterior_covariance))
    assert changed.tolist() == [2 * (D + 1) + D]


# -- every head: torch autograd references ----------------------------------------------------------

CASES = [
    {"name": "ce_weights_smoothing", "weight": [0.5, 1.0, 2.0, 1.5]},
    {"name": "bce"},
    {"name": "mse"},
    {"name": "mean_variance"},
    {"name": "poisson"},
]


def head_and_targets(case, rng, X, W, b):
    z = X @ W.T + (0 if b is None else b)
    name = case["name"]
    if name == "ce_weights_smoothing":
        return jac.Head(jac.Softmax(), jac.CrossEntropy(weight=np.array(case["weight"]), label_smoothing=0.1)), \
            rng.integers(0, K, size=N)
    if name == "bce":
        return jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()), (rng.uniform(size=(N, K)) < 0.4).astype(float)
    if name == "mse":
        return jac.Head(jac.Identity(), jac.MeanSquaredError()), z + rng.normal(size=z.shape)
    if name == "mean_variance":
        return jac.Head(jac.MeanVariance(), jac.GaussianNLL()), z[:, : K // 2] + rng.normal(size=(N, K // 2))
    return jac.Head(jac.Exp(), jac.PoissonNLL(log_input=False)), rng.poisson(np.exp(z)).astype(float)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("structure", ["full", "diag"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_every_head_against_torch(case, structure, bias):
    rng = np.random.default_rng(11)
    X, W, b = data(rng, bias)
    head, y = head_and_targets(case, rng, X, W, b)
    # the Gaussian NLL is not convex in σ² (its GGN split there is indefinite): its Fisher
    kind = "fisher" if case["name"] == "mean_variance" else "ggn"
    H, log_lik = torch_reference(case, X, W, b, y, bias, kind)
    sigma = 1.0
    if case["name"] == "mse":
        sigma = 0.8
        H = H / sigma**2
        r = X @ W.T + (b if bias else 0) - y
        log_lik = -(r**2).sum() / (2 * sigma**2) - N * K * np.log(sigma * np.sqrt(2 * np.pi))
    la = jac.LastLayerLaplace(head, structure=structure, kind=kind, prior_precision=0.9, sigma_noise=sigma, bias=bias)
    la.fit(X, W, b, y)
    np.testing.assert_allclose(la.H, H if structure == "full" else np.diag(H), rtol=1e-10, atol=1e-10)
    assert la.log_likelihood == pytest.approx(log_lik, rel=1e-12)
    ref = Reference(dense_precision(structure, H, 0.9), la.mean, log_lik, 0.9)
    assert la.log_marginal_likelihood() == pytest.approx(ref.lml(), rel=1e-10)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", [c for c in CASES if c["name"] != "mean_variance"], ids=lambda c: c["name"])
def test_every_head_kron_against_torch_blocks(case, bias):
    rng = np.random.default_rng(11)
    X, W, b = data(rng, bias)
    head, y = head_and_targets(case, rng, X, W, b)
    blocks = torch_reference(case, X, W, b, y, bias, kind="blocks")
    la = jac.LastLayerLaplace(head, structure="kron", prior_precision=0.9, bias=bias).fit(X, W, b, y)
    Phi = augment(X, bias)
    Hk = kron_reference(blocks.sum(axis=0), Phi)
    np.testing.assert_allclose(la.H.dense(), Hk, rtol=1e-10, atol=1e-10)
    ref = Reference(Hk + 0.9 * np.eye(la.n_params), la.mean, la.log_likelihood, 0.9)
    assert la.log_marginal_likelihood() == pytest.approx(ref.lml(), rel=1e-10)
    Xt = rng.normal(size=(4, D))
    np.testing.assert_allclose(la.logits(Xt)[1], ref.f_var(augment(Xt, bias)), rtol=1e-9, atol=1e-12)


def test_mse_vector_sigma_noise():
    rng = np.random.default_rng(4)
    X, W, b = data(rng)
    z = X @ W.T + b
    sigma = np.array([0.5, 1.0, 2.0, 0.7])
    y = z + sigma * rng.normal(size=z.shape)
    head = jac.Head(jac.Identity(), jac.MeanSquaredError())
    Phi = augment(X, True)
    # Σ_n J_nᵀ diag(1/σ²) J_n by the loop, and the Gaussian log-likelihood per output
    H = sum(J.T @ np.diag(1 / sigma**2) @ J for J in jac_rows(Phi, K))
    log_lik = sum(-((z[:, k] - y[:, k]) ** 2).sum() / (2 * sigma[k] ** 2) - N * np.log(sigma[k] * np.sqrt(2 * np.pi))
                  for k in range(K))
    for structure in STRUCTURES:
        la = jac.LastLayerLaplace(head, structure=structure, sigma_noise=sigma).fit(X, W, b, y)
        assert la.log_likelihood == pytest.approx(log_lik, rel=1e-12)
        if structure == "full":
            np.testing.assert_allclose(la.H, H, rtol=1e-12)
        elif structure == "diag":
            np.testing.assert_allclose(la.H, np.diag(H), rtol=1e-12)
        else:  # identity + MSE: K-FAC is exact
            np.testing.assert_allclose(la.H.dense(), H, rtol=1e-12, atol=1e-12)
        ref = Reference(dense_precision(structure, H, 1.0, H), la.mean, log_lik, 1.0)
        assert la.log_marginal_likelihood() == pytest.approx(ref.lml(), rel=1e-11)
        Xt = rng.normal(size=(5, D))
        mean, var = la.predictive(Xt)
        np.testing.assert_allclose(mean, Xt @ W.T + b, rtol=1e-13)
        np.testing.assert_allclose(var, np.einsum("mkk->mk", ref.f_var(augment(Xt, True))) + sigma**2, rtol=1e-10)
    # sigma_noise given to the evidence: evaluated there, the object unchanged
    la = jac.LastLayerLaplace(head, sigma_noise=1.0).fit(X, W, b, y)
    other = jac.LastLayerLaplace(head, sigma_noise=sigma).fit(X, W, b, y)
    assert la.log_marginal_likelihood(sigma_noise=sigma) == pytest.approx(other.log_marginal_likelihood(), rel=1e-13)
    assert la.sigma_noise == 1.0


def test_sparsemax_curvature_and_mc_predictive():
    rng = np.random.default_rng(6)
    X, W, b = data(rng)
    W *= 2
    y = rng.integers(0, K, size=N)
    head = jac.Head(jac.Sparsemax(), jac.SparsemaxLoss())
    la = jac.LastLayerLaplace(head, prior_precision=2.0).fit(X, W, b, y)
    np.testing.assert_allclose(la.H, sparsemax_curvature(X, W, b, True), rtol=1e-6, atol=1e-6)
    Xt = rng.normal(size=(3, D))
    for link in ("probit", "bridge"):
        with pytest.raises(ValueError, match="link"):
            la.predictive(Xt, link=link)
    p = la.predictive(Xt, link="mc", mc_samples=4000, seed=0)
    thetas = la.sample(4000, seed=1)  # the reference: sparsemax of the sampled weights' logits
    ref = np.mean([[sparsemax_np(Th[:, :D] @ x + Th[:, D]) for x in Xt] for Th in thetas], axis=0)
    np.testing.assert_allclose(p, ref, atol=0.03)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)


def test_gaussian_nll_ggn_matches_torch_and_an_indefinite_posterior_names_the_remedy():
    rng = np.random.default_rng(11)
    X, W, b = data(rng)
    case = {"name": "mean_variance"}
    head, y = head_and_targets(case, rng, X, W, b)
    H, _ = torch_reference(case, X, W, b, y, True)
    la = jac.LastLayerLaplace(head, prior_precision=1e-3).fit(X, W, b, y)
    np.testing.assert_allclose(la.H, H, rtol=1e-10, atol=1e-10)
    assert np.linalg.eigvalsh(H).min() < -1e-3  # the GGN split at (μ, σ²) is indefinite here
    with pytest.raises(ValueError, match="kind='fisher'"):
        la.log_marginal_likelihood()


def test_bernoulli_probit_is_per_output():
    rng = np.random.default_rng(7)
    X, W, b = data(rng)
    y = (rng.uniform(size=(N, K)) < 0.5).astype(float)
    la = jac.LastLayerLaplace(jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()), structure="full").fit(X, W, b, y)
    Xt = rng.normal(size=(4, D))
    f_mu, f_var = la.logits(Xt)
    kappa = 1 / np.sqrt(1 + np.pi / 8 * np.einsum("mkk->mk", f_var))
    np.testing.assert_allclose(la.predictive(Xt), 1 / (1 + np.exp(-kappa * f_mu)), rtol=1e-12)
    draws = rng.multivariate_normal(np.zeros(K), np.eye(K), size=20000)
    ref = np.array([np.mean(1 / (1 + np.exp(-(m + draws @ np.linalg.cholesky(v).T))), axis=0) for m, v in zip(f_mu, f_var)])
    np.testing.assert_allclose(la.predictive(Xt, link="mc", mc_samples=20000, seed=0), ref, atol=0.01)
    with pytest.raises(ValueError, match="bridge"):
        la.predictive(Xt, link="bridge")


def test_gaussian_nll_and_poisson_predictives():
    rng = np.random.default_rng(8)
    X, W, b = data(rng)
    head = jac.Head(jac.MeanVariance(), jac.GaussianNLL())
    y = (X @ W.T + b)[:, :2] + rng.normal(size=(N, 2))
    la = jac.LastLayerLaplace(head, kind="fisher").fit(X, W, b, y)
    Xt = rng.normal(size=(3, D))
    f_mu, f_var = la.logits(Xt)
    mean, var = la.predictive(Xt)
    np.testing.assert_allclose(mean, f_mu[:, :2])
    np.testing.assert_allclose(var, np.einsum("mkk->mk", f_var)[:, :2] + np.log1p(np.exp(f_mu[:, 2:])), rtol=1e-12)
    head = jac.Head(jac.Exp(), jac.PoissonNLL(log_input=False))
    y = rng.poisson(np.exp(X @ W.T + b)).astype(float)
    la = jac.LastLayerLaplace(head).fit(X, W, b, y)
    f_mu, f_var = la.logits(Xt)
    # E[exp(f)] for f ~ N(μ, v) is exp(μ + v/2), in closed form
    np.testing.assert_allclose(la.predictive(Xt, link="mc", mc_samples=40000, seed=0),
                               np.exp(f_mu + np.einsum("mkk->mk", f_var) / 2), rtol=0.03)


def test_entmax_mc_predictive_against_weight_samples():
    rng = np.random.default_rng(12)
    X, W, b = data(rng)
    y = rng.integers(0, K, size=N)
    act = jac.Entmax15()
    la = jac.LastLayerLaplace(jac.Head(act, jac.Entmax15Loss()), prior_precision=2.0).fit(X, W, b, y)
    Xt = rng.normal(size=(3, D))
    with pytest.raises(ValueError, match="mc"):
        la.predictive(Xt)
    p = la.predictive(Xt, link="mc", mc_samples=4000, seed=0)
    thetas = la.sample(4000, seed=1)
    ref = act(np.einsum("skd,md->smk", thetas, augment(Xt, True))).mean(axis=0)
    np.testing.assert_allclose(p, ref, atol=0.03)


def test_regression_gridsearch_gaussian_nll():
    rng = np.random.default_rng(13)
    X, W, b = data(rng)
    y = X @ W.T + b + 0.5 * rng.normal(size=(N, K))
    head = jac.Head(jac.Identity(), jac.MeanSquaredError())
    la = jac.LastLayerLaplace(head, sigma_noise=0.5).fit(X, W, b, y)
    Xv = rng.normal(size=(20, D))
    yv = Xv @ W.T + b + 0.5 * rng.normal(size=(20, K))
    grid = np.logspace(-3, 3, 13)
    scores = []
    for d in grid:  # the Gaussian predictive N(f_mu, diag(J Σ Jᵀ) + σ²) of a fresh fit, its mean NLL
        ref = Reference(la.H + d * np.eye(la.n_params), la.mean, 0.0, d)
        var = np.einsum("mkk->mk", ref.f_var(augment(Xv, True))) + 0.25
        scores.append(np.mean(0.5 * np.log(2 * np.pi * var) + (yv - (Xv @ W.T + b)) ** 2 / (2 * var)))
    assert la.optimize_prior_precision("gridsearch", features_val=Xv, y_val=yv, grid=grid) == grid[int(np.argmin(scores))]


def test_bridge_against_a_row_loop():
    la, X, W, b, y = fit_ce("full", prior=0.3)
    Xt = np.random.default_rng(1).normal(size=(5, D))
    f_mu, f_var = la.logits(Xt)
    out = []
    for m, V in zip(f_mu, f_var):  # laplace-torch's zero-mean correction, then the bridge, one row
        s = V.sum()
        m = m - V.sum(1) * m.sum() / s
        V = V - np.outer(V.sum(1), V.sum(0)) / s
        alpha = (1 - 2 / K + np.exp(m) / K**2 * np.exp(-m).sum()) / np.diag(V)
        out.append(alpha / alpha.sum())
    np.testing.assert_allclose(la.predictive(Xt, link="bridge"), out, rtol=1e-12)


def test_softmax_mc_against_weight_samples_and_seed():
    la, X, W, b, y = fit_ce("full", prior=0.5)
    Xt = np.random.default_rng(2).normal(size=(4, D))
    p = la.predictive(Xt, link="mc", mc_samples=20000, seed=3)
    thetas = la.sample(20000, seed=4)
    ref = softmax(np.einsum("skd,md->smk", thetas, augment(Xt, True))).mean(axis=0)
    np.testing.assert_allclose(p, ref, atol=0.01)
    np.testing.assert_array_equal(la.predictive(Xt, link="mc", seed=9), la.predictive(Xt, link="mc", seed=9))
    assert not np.array_equal(la.predictive(Xt, link="mc", seed=9), la.predictive(Xt, link="mc", seed=10))


def test_temperature_softmax():
    rng = np.random.default_rng(9)
    X, W, b = data(rng)
    y = rng.integers(0, K, size=N)
    T = 2.5
    la = jac.LastLayerLaplace(jac.Head(jac.Softmax(temperature=T), jac.CrossEntropy())).fit(X, W, b, y)
    Xt = rng.normal(size=(3, D))
    f_mu, f_var = la.logits(Xt)
    kappa = 1 / np.sqrt(1 + np.pi / 8 * np.einsum("mkk->mk", f_var) / T**2)
    np.testing.assert_allclose(la.predictive(Xt), softmax(kappa * f_mu / T), rtol=1e-12)


# -- evidence: gradient, maximiser -------------------------------------------------------------------


@pytest.mark.parametrize("structure", STRUCTURES)
def test_marglik_gradient_central_differences(structure):
    la, X, W, b, y = fit_ce(structure, prior=0.8)
    value, g = la.log_marginal_likelihood(return_grad=True)
    assert isinstance(g, float)
    h = 1e-5
    fd = (la.log_marginal_likelihood(0.8 + h) - la.log_marginal_likelihood(0.8 - h)) / (2 * h)
    assert g == pytest.approx(fd, rel=1e-6, abs=1e-8)
    if structure == "kron":
        with pytest.raises(ValueError, match="prior_precision"):
            la.log_marginal_likelihood(np.ones(la.n_params))
        return
    delta = np.random.default_rng(1).uniform(0.3, 2.0, size=la.n_params)
    value, g = la.log_marginal_likelihood(delta, return_grad=True)
    assert g.shape == (la.n_params,)
    fd = np.empty(la.n_params)
    for i in range(la.n_params):
        e = np.zeros(la.n_params)
        e[i] = h
        fd[i] = (la.log_marginal_likelihood(delta + e) - la.log_marginal_likelihood(delta - e)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_optimize_marglik_scalar_is_the_argmax(structure):
    la, *_ = fit_ce(structure, prior=1.0, seed=2)
    delta = la.optimize_prior_precision("marglik")
    assert la.prior_precision == delta
    _, g = la.log_marginal_likelihood(return_grad=True)
    assert abs(g * delta) < 1e-8
    grid = delta * np.exp(np.linspace(-1, 1, 401))
    values = [la.log_marginal_likelihood(d) for d in grid]
    assert grid[int(np.argmax(values))] == pytest.approx(delta, rel=0.01)
    assert max(values) <= la.log_marginal_likelihood() + 1e-12


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_optimize_marglik_vector_is_stationary(structure):
    la, *_ = fit_ce(structure, prior=1.0, seed=4)
    delta = la.optimize_prior_precision("marglik", vector=True)
    assert delta.shape == (la.n_params,)
    _, g = la.log_marginal_likelihood(return_grad=True)
    inside = (delta > 1e-9) & (delta < 1e9)
    np.testing.assert_allclose((g * delta)[inside], 0, atol=1e-6)
    assert la.log_marginal_likelihood() >= la.log_marginal_likelihood(float(np.median(delta)))


def test_optimize_keeps_the_prior_shape_by_default():
    la, *_ = fit_ce("diag", prior=np.ones(K * (D + 1)), seed=4)
    assert la.optimize_prior_precision().shape == (la.n_params,)
    assert np.ndim(la.optimize_prior_precision(vector=False)) == 0
    assert np.ndim(la.optimize_prior_precision()) == 0


def test_optimize_kron_vector_refused():
    la, *_ = fit_ce("kron")
    with pytest.raises(ValueError, match="scalar"):
        la.optimize_prior_precision("marglik", vector=True)


def test_gridsearch_picks_the_smallest_validation_nll():
    la, X, W, b, y = fit_ce("full", prior=1.0, seed=5)
    rng = np.random.default_rng(6)
    Xv, yv = rng.normal(size=(30, D)), rng.integers(0, K, size=30)
    grid = np.logspace(-2, 2, 9)
    chosen = la.optimize_prior_precision("gridsearch", features_val=Xv, y_val=yv, grid=grid)
    scores = []
    for d in grid:  # the reference: the probit predictive of a fresh fit at each δ, its NLL
        ref = jac.LastLayerLaplace(la.head, prior_precision=float(d)).fit(X, W, b, y)
        p = ref.predictive(Xv)
        scores.append(-np.mean(np.log(p[np.arange(30), yv])))
    assert chosen == grid[int(np.argmin(scores))] == la.prior_precision
    # a callable loss: accuracy's complement
    def err(p, yy):
        return float(np.mean(p.argmax(1) != yy))
    assert la.optimize_prior_precision("gridsearch", features_val=Xv, y_val=yv, grid=grid, loss=err) in grid
    with pytest.raises(ValueError, match="features_val"):
        la.optimize_prior_precision("gridsearch")
    with pytest.raises(ValueError, match="method"):
        la.optimize_prior_precision("adam")


# -- samples ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_samples_mean_and_covariance(structure, bias):
    la, *_ = fit_ce(structure, bias=bias, prior=2.0)
    n = 40000
    S = la.sample(n, seed=0)
    assert S.shape == (n, K, D + bias)
    flat = S.reshape(n, -1)
    cov = la.posterior_covariance
    cov = np.diag(cov) if structure == "diag" else cov
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(flat.mean(0), la.mean, atol=5 * sd.max() / np.sqrt(n))
    emp = np.cov(flat.T)
    np.testing.assert_allclose(emp, cov, atol=6 * sd.max() ** 2 / np.sqrt(n) * np.sqrt(2))
    np.testing.assert_array_equal(la.sample(3, seed=5), la.sample(3, seed=5))
    assert not np.array_equal(la.sample(3, seed=5), la.sample(3, seed=6))


# -- dask, state, errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("structure", STRUCTURES)
def test_dask_features_equal_numpy(structure):
    da = pytest.importorskip("dask.array", reason="dask (the dask extra) is not installed")
    la, X, W, b, y = fit_ce(structure, prior=0.6)
    lad = jac.LastLayerLaplace(la.head, structure=structure, prior_precision=0.6).fit(da.from_array(X, chunks=(7, D)), W, b, y)
    H, Hd = (la.H.dense(), lad.H.dense()) if structure == "kron" else (la.H, lad.H)
    np.testing.assert_allclose(Hd, H, rtol=1e-12, atol=1e-14)
    assert lad.log_marginal_likelihood() == pytest.approx(la.log_marginal_likelihood(), rel=1e-12)
    Xt = X[:4]
    np.testing.assert_allclose(lad.predictive(Xt), la.predictive(Xt), rtol=1e-12)


def test_no_mutation_and_no_hidden_state():
    la, X, W, b, y = fit_ce("full", prior=1.5)
    copies = [a.copy() for a in (X, W, b, y)]
    for a in (X, W, b, y):
        a.flags.writeable = False
    la2 = jac.LastLayerLaplace(la.head, prior_precision=1.5).fit(X, W, b, y)
    la2.predictive(X[:3], link="mc", seed=0)
    la2.sample(2, seed=0)
    for a, c in zip((X, W, b, y), copies):
        np.testing.assert_array_equal(a, c)
    before = la2.log_marginal_likelihood()
    la2.log_marginal_likelihood(prior_precision=7.0, return_grad=True)
    la2.log_marginal_likelihood(prior_precision=np.full(la2.n_params, 3.0))
    assert la2.prior_precision == 1.5 and la2.log_marginal_likelihood() == before
    delta = np.full(la2.n_params, 2.0)
    la2.prior_precision = delta
    delta[0] = -1.0  # the caller's array is copied
    assert la2.prior_precision[0] == 2.0
    got = la2.prior_precision
    got[1] = -5.0
    assert la2.prior_precision[1] == 2.0


def test_clear_errors():
    la, X, W, b, y = fit_ce("full")
    head = la.head
    fresh = jac.LastLayerLaplace(head)
    for call in (lambda: fresh.predictive(X), lambda: fresh.logits(X), lambda: fresh.sample(2),
                 lambda: fresh.log_marginal_likelihood(), lambda: fresh.optimize_prior_precision()):
        with pytest.raises(RuntimeError, match="fit"):
            call()
    with pytest.raises(ValueError, match="W must have shape"):
        jac.LastLayerLaplace(head).fit(X, W[:, :2], b, y)
    with pytest.raises(ValueError, match=r"b must have shape"):
        jac.LastLayerLaplace(head).fit(X, W, b[:2], y)
    with pytest.raises(ValueError, match="bias=True"):
        jac.LastLayerLaplace(head).fit(X, W, None, y)
    with pytest.raises(ValueError, match="bias=False"):
        jac.LastLayerLaplace(head, bias=False).fit(X, W, b, y)
    assert jac.LastLayerLaplace(head, prior_precision=np.array([2.0])).prior_precision == 2.0
    for bad in (-1.0, 0.0, np.nan, np.inf, [1.0, -2.0], np.ones((2, 2)), "1", True):
        with pytest.raises(ValueError, match="prior_precision"):
            jac.LastLayerLaplace(head, prior_precision=bad)
    with pytest.raises(ValueError, match="prior_precision.*length"):
        jac.LastLayerLaplace(head, prior_precision=np.ones(5)).fit(X, W, b, y)
    with pytest.raises(ValueError, match="prior_precision"):
        la.prior_precision = np.ones(la.n_params + 1)
    with pytest.raises(ValueError, match="prior_precision"):
        la.log_marginal_likelihood(prior_precision=-2.0)
    with pytest.raises(ValueError, match="sigma_noise"):
        jac.LastLayerLaplace(head, sigma_noise=2.0)
    mse = jac.Head(jac.Identity(), jac.MeanSquaredError())
    with pytest.raises(ValueError, match="sigma_noise"):
        jac.LastLayerLaplace(mse, sigma_noise=-1.0)
    with pytest.raises(ValueError, match="sigma_noise.*length"):
        jac.LastLayerLaplace(mse, sigma_noise=np.ones(3)).fit(X, W, b, X @ W.T)
    with pytest.raises(ValueError, match="link"):
        la.predictive(X, link="laplace")
    with pytest.raises(ValueError, match="structure"):
        jac.LastLayerLaplace(head, structure="lowrank")
    with pytest.raises(ValueError, match="kind"):
        jac.LastLayerLaplace(head, kind="hessian")
    with pytest.raises(ValueError, match="kind"):
        jac.LastLayerLaplace(jac.Head(jac.Identity(), jac.MeanAbsoluteError()), kind="fisher").fit(X, W, b, X @ W.T)
    with pytest.raises(ValueError, match="features"):
        la.logits(X[:, :2])
    with pytest.raises(ValueError, match="prior_precision"):
        jac.LastLayerLaplace(head, structure="kron", prior_precision=np.ones(16))
    with pytest.raises(ValueError, match="positive definite"):
        jac.LastLayerLaplace(head, prior_precision=1e-300).fit(X, W, b, y).logits(X)


def test_fisher_equals_ggn_for_canonical_heads():
    la, X, W, b, y = fit_ce("full")
    lf = jac.LastLayerLaplace(la.head, kind="fisher").fit(X, W, b, y)
    np.testing.assert_allclose(lf.H, la.H, rtol=1e-12, atol=1e-13)
    rng = np.random.default_rng(0)
    for head, t in ((jac.Head(jac.Identity(), jac.MeanSquaredError()), rng.normal(size=(N, K))),
                    (jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()), (rng.uniform(size=(N, K)) < 0.5) * 1.0)):
        g = jac.LastLayerLaplace(head, structure="diag").fit(X, W, b, t).H
        np.testing.assert_allclose(jac.LastLayerLaplace(head, structure="diag", kind="fisher").fit(X, W, b, t).H, g,
                                   rtol=1e-12, atol=1e-13)


def test_reduction_of_the_head_does_not_matter():
    la, X, W, b, y = fit_ce("full")
    for red in ("sum", "none"):
        other = jac.LastLayerLaplace(jac.Head(jac.Softmax(), jac.CrossEntropy(reduction=red))).fit(X, W, b, y)
        np.testing.assert_allclose(other.H, la.H, rtol=1e-13)
        assert other.log_marginal_likelihood() == pytest.approx(la.log_marginal_likelihood(), rel=1e-13)


def test_max_bytes_row_blocks_agree():
    la, X, W, b, y = fit_ce("full", prior=0.4)
    small = jac.LastLayerLaplace(la.head, prior_precision=0.4, max_bytes=2048).fit(X, W, b, y)
    Xt = np.random.default_rng(0).normal(size=(9, D))
    np.testing.assert_allclose(small.logits(Xt)[1], la.logits(Xt)[1], rtol=1e-12)
    np.testing.assert_allclose(small.H, la.H, rtol=1e-12)
