"""GaussianNLL with a learned variance, the MeanVariance link and Head.sqrt_fisher.

Every expected value comes from torch (``gaussian_nll_loss``, autograd, ``torch.func.hessian``)
in float64, from finite differences, from closed forms written out here, or from Monte-Carlo
draws; none is copied from the package's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import REDUCTIONS

import jacobians as jac
from jacobians import checks

torch = pytest.importorskip("torch")
F = torch.nn.functional

N, K = 5, 3
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def _data(seed=0, n=N, k=K, clamp=False):
    """``(a, y)``: a = [μ | σ²] with σ² in [0.2, 2] (a few below eps when ``clamp``)."""
    rng = np.random.default_rng(seed)
    mu, var = rng.normal(size=(n, k)), rng.uniform(0.2, 2.0, size=(n, k))
    if clamp:
        var[0, 0], var[1, -1], var[2, 1] = 1e-9, 0.0, 3e-7
    return np.concatenate([mu, var], axis=-1), rng.normal(size=(n, k))


def _torch_loss(a, y, full=False, eps=1e-6, reduction="mean"):
    k = a.shape[-1] // 2
    return F.gaussian_nll_loss(a[..., :k], y, a[..., k:], full=full, eps=eps, reduction=reduction)


def _torch_link(z, variance="softplus", min_variance=0.0):
    k = z.shape[-1] // 2
    v = F.softplus(z[..., k:]) if variance == "softplus" else torch.exp(z[..., k:])
    return torch.cat([z[..., :k], v + min_variance], dim=-1)


def _torch_value_grad(fn, x, reduction):
    xt = torch.tensor(x, requires_grad=True)
    out = fn(xt)
    (g,) = torch.autograd.grad(out.sum(), xt)  # 'none': the gradient of each entry's own loss
    return out.detach().numpy(), g.numpy()


def _torch_blocks(fn, x, reduction):
    """The (N, W, W) diagonal blocks of torch.func.hessian of the (summed) loss."""
    n, w = x.shape
    H = torch.func.hessian(lambda t: fn(t).sum())(torch.tensor(x)).numpy().reshape(n, w, n, w)
    return np.stack([H[i, :, i, :] for i in range(n)])


# -- the loss against torch ---------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("eps", [1e-6, 0.5])
@pytest.mark.parametrize("clamp", [False, True])
def test_values_and_gradients_equal_torch(reduction, full, eps, clamp):
    a, y = _data(1, clamp=clamp)
    loss = jac.GaussianNLL(full=full, eps=eps, reduction=reduction)
    ref_v, ref_g = _torch_value_grad(lambda t: _torch_loss(t, torch.tensor(y), full, eps, reduction), a, reduction)
    value, grad = loss.value_and_grad(a, y)
    assert np.shape(value) == ((N, K) if reduction == "none" else ())
    np.testing.assert_allclose(value, ref_v, **TIGHT)
    np.testing.assert_allclose(grad, ref_g, **TIGHT)
    head = jac.Head(jac.Identity(), loss)
    for method in ("auto", "vjp", "jacobian"):
        v2, g2 = head.value_and_grad(a, y, method=method)
        np.testing.assert_allclose(v2, ref_v, **TIGHT)
        np.testing.assert_allclose(g2, ref_g, **TIGHT)
    np.testing.assert_allclose(head.loss(a, y), ref_v, **TIGHT)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("full", [False, True])
def test_hessian_equals_torch_func_hessian(reduction, full):
    a, y = _data(2)
    ref = _torch_blocks(lambda t: _torch_loss(t, torch.tensor(y), full, 1e-6, reduction), a, reduction)
    head = jac.Head(jac.Identity(), jac.GaussianNLL(full=full, reduction=reduction))
    H = head.hessian(a, y)
    np.testing.assert_allclose(H, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())
    np.testing.assert_allclose(jac.GaussianNLL(full=full, reduction=reduction).hessian(a, y), ref,
                               rtol=1e-12, atol=1e-14 * np.abs(ref).max())
    v = np.random.default_rng(3).normal(size=a.shape)
    np.testing.assert_allclose(head.hvp(a, y, v), np.einsum("nij,nj->ni", ref, v), rtol=1e-11, atol=1e-13)


def test_clamped_variance_is_straight_through_in_the_hessian_too():
    """Below eps torch's double backward differentiates the gradient as if v̄ = max(σ², eps)
    were the variable (symmetric blocks); ``torch.func.hessian`` (forward over reverse) also
    differentiates the in-place clamp, whose tangent is 0, so its columns of the clamped
    variances are zero. The blocks here are the straight-through ones; they agree with
    torch.func.hessian everywhere but in those columns."""
    a, y = _data(4, clamp=True)
    fn = lambda t: _torch_loss(t, torch.tensor(y), False, 1e-6, "sum")  # noqa: E731
    H = jac.GaussianNLL(reduction="sum").hessian(a, y)
    full = torch.autograd.functional.hessian(lambda t: fn(t).sum(), torch.tensor(a)).numpy()
    full = full.reshape(N, 2 * K, N, 2 * K)
    straight = np.stack([full[i, :, i, :] for i in range(N)])
    np.testing.assert_allclose(H, straight, rtol=1e-12, atol=0)
    forward = _torch_blocks(fn, a, "sum")
    clamped = a[:, K:] < 1e-6
    keep = np.concatenate([np.ones_like(clamped), ~clamped], axis=-1)[:, None, :]  # columns not clamped
    np.testing.assert_allclose(np.where(keep, H, 0), np.where(keep, forward, 0), rtol=1e-12, atol=0)
    assert clamped.sum() == 3 and not np.allclose(H, forward)


@pytest.mark.parametrize("variance", ["softplus", "exp"])
@pytest.mark.parametrize("min_variance", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mean_variance_head_equals_torch(variance, min_variance, reduction):
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(N, 2 * K)) * 1.5, rng.normal(size=(N, K))
    head = jac.Head(jac.MeanVariance(variance, min_variance), jac.GaussianNLL(reduction=reduction))
    fn = lambda t: _torch_loss(_torch_link(t, variance, min_variance), torch.tensor(y), reduction=reduction)  # noqa: E731
    ref_v, ref_g = _torch_value_grad(fn, z, reduction)
    np.testing.assert_allclose(head.loss(z, y), ref_v, **TIGHT)
    for method in ("auto", "vjp", "jacobian"):
        np.testing.assert_allclose(head.grad(z, y, method=method), ref_g, **TIGHT)
    ref_H = _torch_blocks(fn, z, reduction)
    for method in ("auto", "chain"):
        np.testing.assert_allclose(head.hessian(z, y, method=method), ref_H, rtol=1e-11, atol=1e-14 * np.abs(ref_H).max())
    v = rng.normal(size=z.shape)
    np.testing.assert_allclose(head.hvp(z, y, v), np.einsum("nij,nj->ni", ref_H, v), rtol=1e-10, atol=1e-13)


def test_float32_stays_float32_and_agrees_with_torch():
    a, y = _data(6)
    a32, y32 = a.astype(np.float32), y.astype(np.float32)
    loss = jac.GaussianNLL()
    value, grad = loss.value_and_grad(a32, y32)
    assert np.asarray(value).dtype == np.float32 and grad.dtype == np.float32
    ref_v, ref_g = _torch_value_grad(lambda t: _torch_loss(t, torch.tensor(y32)), a32, "mean")
    np.testing.assert_allclose(value, ref_v, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-5, atol=1e-7)
    head = jac.Head(jac.MeanVariance(), jac.GaussianNLL())
    z32 = a32.copy()
    for out in (head.grad(z32, y32), head.hessian(z32, y32), head.fisher(z32, y32), head.sqrt_fisher(z32, y32)):
        assert out.dtype == np.float32 and np.all(np.isfinite(out))


# -- MeanVariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["softplus", "exp"])
def test_mean_variance_link_and_its_derivatives(variance):
    z = np.random.default_rng(7).normal(size=(4, 6)) * 3
    act = jac.MeanVariance(variance, min_variance=0.1)
    ref = _torch_link(torch.tensor(z), variance, 0.1).numpy()
    np.testing.assert_allclose(act(z), ref, **TIGHT)
    J = act.jacobian(z)
    np.testing.assert_allclose(J, jac.numerical_jacobian(act, z), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.diagonal(J, axis1=-2, axis2=-1), act.derivative(z), **TIGHT)
    # second derivative: of the variance half only, against central differences of f'
    h = 1e-5
    d2 = (act.derivative(z + h) - act.derivative(z - h)) / (2 * h)
    np.testing.assert_allclose(act.second_derivative(z), d2, rtol=1e-6, atol=1e-9)
    assert np.all(act.second_derivative(z)[:, :3] == 0)


def test_softplus_link_is_finite_at_extreme_logits():
    z = np.array([[1e4, -1e4, 1e4, -1e4]], dtype=np.float32)
    act = jac.MeanVariance()
    np.testing.assert_array_equal(act(z), np.array([[1e4, -1e4, 1e4, 0.0]], np.float32))
    np.testing.assert_array_equal(act.derivative(z), np.array([[1, 1, 1, 0]], np.float32))
    head = jac.Head(act, jac.GaussianNLL(reduction="sum"))
    y = np.zeros((1, 2), np.float32)
    g = head.grad(z, y)
    assert np.all(np.isfinite(g)) and g.dtype == np.float32


# -- errors ---------------------------------------------------------------------------------------


def test_clear_errors():
    a, y = _data(8)
    loss = jac.GaussianNLL()
    bad = a.copy()
    bad[1, K + 1] = -0.5
    with pytest.raises(ValueError, match=r"variances σ² and must be >= 0.*var has negative entry"):
        loss(bad, y)
    with pytest.raises(ValueError, match="var has negative entry"):
        jac.Head(jac.Identity(), loss).grad(bad, y)
    with pytest.raises(ValueError, match="var has negative entry"):
        jac.Head(jac.Identity(), loss).loss(torch.tensor(bad), torch.tensor(y))
    with pytest.raises(ValueError, match=r"y must have shape \(5, 3\).*got shape \(5, 6\)"):
        loss(a, np.zeros_like(a))
    with pytest.raises(ValueError, match=r"y must have shape \(5, 3\).*got shape \(5, 6\)"):
        jac.Head(jac.Identity(), loss).loss(torch.tensor(a), torch.zeros(5, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"a must have an even last axis 2K.*got shape \(5, 5\)"):
        loss(a[:, :5], y)
    with pytest.raises(ValueError, match=r"z must have an even last axis 2K.*got shape \(2, 3\)"):
        jac.MeanVariance()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="eps must be > 0"):
        jac.GaussianNLL(eps=0.0)
    with pytest.raises(TypeError, match="full must be a bool"):
        jac.GaussianNLL(full="yes")
    with pytest.raises(ValueError, match=r"variance must be one of \('softplus', 'exp'\); got 'relu'"):
        jac.MeanVariance("relu")
    with pytest.raises(ValueError, match="min_variance must be >= 0"):
        jac.MeanVariance(min_variance=-1.0)
    with pytest.raises(ValueError, match="GaussianNLL pairs only with identity, mean_variance"):
        jac.Head(jac.Tanh(), loss)


# -- second order: GGN, Fisher, sqrt_fisher ----------------------------------------------------------


def test_ggn_is_indefinite_and_the_fisher_is_not():
    """Per element the Hessian in (μ, σ²) has determinant −1/(2v̄³): the GGN split at a is
    indefinite for every residual, so sqrt_ggn refuses; the Fisher diag(1/v̄, 1/(2v̄²)) pulled
    back through the link is PSD and has an exact factor."""
    rng = np.random.default_rng(9)
    z, y = rng.normal(size=(N, 2 * K)), rng.normal(size=(N, K))
    head = jac.Head(jac.MeanVariance(), jac.GaussianNLL(reduction="sum"))
    G = head.ggn(z, y)
    v = np.log1p(np.exp(z[:, K:]))
    d = 1 / (1 + np.exp(-z[:, K:]))  # softplus' derivative
    det = G[:, :K, :K].diagonal(axis1=1, axis2=2) * G[:, K:, K:].diagonal(axis1=1, axis2=2) - G[:, :K, K:].diagonal(axis1=1, axis2=2) ** 2
    np.testing.assert_allclose(det, -(d**2) / (2 * v**3), rtol=1e-10)
    assert np.linalg.eigvalsh(G).min(axis=-1).max() < 0  # every block has a negative eigenvalue
    with pytest.raises(ValueError, match="indefinite"):
        head.sqrt_ggn(z, y)
    Fz = head.fisher(z, y)
    closed = np.concatenate([1 / v * 0 + 1 / v, d**2 / (2 * v**2)], axis=-1)  # Jᵀ diag(1/v, 1/(2v²)) J
    np.testing.assert_allclose(Fz, np.stack([np.diag(c) for c in closed]), rtol=1e-12)
    S = head.sqrt_fisher(z, y)
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), Fz, rtol=1e-12, atol=1e-15)


def _pair_inputs(head, rng, shape=(3, 4)):
    if getattr(head.loss_fn, "example_input", None) is not None and isinstance(head.activation, jac.Identity):
        z = head.loss_fn.example_input(shape, rng)
        return z, head.loss_fn.example_targets(shape, rng)
    return checks.example_inputs(head, shape=shape, seed=rng)


def _likelihood_heads():
    out = []
    for p in jac.pairs():
        acls, lcls = jac.get_activation(p.activation), jac.get_loss(p.loss)
        for kw in [{}] + lcls.variants(4):
            try:
                head = jac.Head(acls(), lcls(**kw))
            except ValueError:
                continue
            if head.loss_fn.predictive is not None and not head.logits_loss:
                out.append(pytest.param(head, id=f"{p.activation}+{p.loss}{kw if kw else ''}"))
    return out


@pytest.mark.parametrize("head", _likelihood_heads())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sqrt_fisher_is_an_exact_factor_of_the_exact_fisher_for_every_head(head, reduction, rng):
    head = jac.Head(head.activation, head.loss_fn.with_reduction(reduction))
    z, y = _pair_inputs(head, rng)
    Fx = head.fisher(z, y, kind="exact")
    S = head.sqrt_fisher(z, y)
    assert S.shape[:-1] == z.shape and S.dtype == z.dtype
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), Fx, rtol=1e-10, atol=1e-13 * max(1.0, np.abs(Fx).max()))
    if head.ggn_is_hessian and not vars(head.loss_fn).get("label_smoothing") and reduction != "none":
        G = head.ggn(z, y)
        if np.allclose(Fx, G, rtol=1e-10, atol=1e-14):  # the plain canonical pairs: the GGN's factor
            Sg = head.sqrt_ggn(z, y)
            np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), Sg @ np.swapaxes(Sg, -1, -2), rtol=1e-10, atol=1e-14)


def test_sqrt_fisher_refuses_a_loss_that_is_no_likelihood():
    z = np.zeros((2, 4))
    with pytest.raises(ValueError, match="no negative log-likelihood"):
        jac.Head(jac.Identity(), jac.MeanAbsoluteError()).sqrt_fisher(z, z)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fisher_is_the_expected_outer_product_of_sampled_gradients(reduction):
    """Exact Fisher = E_y[g gᵀ] with y ~ N(μ, v̄): against the moments of the normal written out
    (E r² = v̄, E r⁴ = 3v̄²) and against 40 000 Monte-Carlo draws; empirical = c g gᵀ."""
    rng = np.random.default_rng(10)
    z, y = rng.normal(size=(4, 2 * K)), rng.normal(size=(4, K))
    head = jac.Head(jac.MeanVariance(variance="exp"), jac.GaussianNLL(reduction=reduction))
    c = 1 / (4 * K) if reduction == "mean" else 1.0
    v = np.exp(z[:, K:])
    # g_μ = r/v, g_v = (1/v − r²/v²)/2: E g_μ² = 1/v, E g_v² = (1 − 2 + 3)/(4v²), E g_μ g_v = 0
    diag_a = np.concatenate([1 / v, 1 / (2 * v**2)], axis=-1)
    d = np.concatenate([np.ones_like(v), v], axis=-1)  # the exp link's derivative
    exact = c * np.stack([np.diag(x) for x in diag_a * d * d])
    np.testing.assert_allclose(head.fisher(z, y), exact, rtol=1e-12)
    mc = head.fisher(z, y, kind="mc", mc_samples=40000, seed=11)
    np.testing.assert_allclose(mc, exact, atol=0.04 * np.abs(exact).max())
    zt = torch.tensor(z, requires_grad=True)
    per = _torch_loss(_torch_link(zt, "exp"), torch.tensor(y), reduction="none").sum(-1)
    g = np.stack([torch.autograd.grad(per[i], zt, retain_graph=True)[0][i].numpy() for i in range(4)])
    np.testing.assert_allclose(head.fisher(z, y, kind="empirical"), c * np.einsum("ni,nj->nij", g, g), rtol=1e-12)


def test_predictive_draws_have_the_model_mean_and_clamped_variance():
    a = np.array([[0.5, -2.0, 4.0, 1e-9]])
    loss = jac.GaussianNLL(eps=0.01)
    M = 200000
    u = np.random.default_rng(12).uniform(size=(M, 4))
    draws = loss.sample_targets(np.repeat(a, M, axis=0), u)
    assert draws.shape == (M, 2)
    np.testing.assert_allclose(draws.mean(axis=0), [0.5, -2.0], atol=0.02)
    np.testing.assert_allclose(draws.var(axis=0), [4.0, 0.01], rtol=0.02)


# -- the rest of the house -----------------------------------------------------------------------


def test_registered_exported_and_listed():
    assert jac.LOSSES["gaussian_nll"] is jac.GaussianNLL and jac.ACTIVATIONS["mean_variance"] is jac.MeanVariance
    listed = {(p.activation, p.loss) for p in jac.pairs()}
    assert {("mean_variance", "gaussian_nll"), ("identity", "gaussian_nll")} <= listed
    assert not any(p.loss == "gaussian_nll" and p.activation not in ("identity", "mean_variance") for p in jac.pairs())


@pytest.mark.parametrize("act", [jac.MeanVariance(), jac.MeanVariance("exp", 0.1), jac.Identity()])
def test_checks_pass_on_even_widths(act):
    head = jac.Head(act, jac.GaussianNLL())
    rng = np.random.default_rng(13)
    z, y = _pair_inputs(head, rng, (6, 4))
    for report in (jac.check_head(head, z, y), jac.check_second_order(head, z, y),
                   jac.check_head(head, shape=(6, 4)), jac.check_second_order(head, shape=(6, 4))):
        assert report.passed, report
    rows = {r.compared: r for r in report.rows}
    assert "indefinite" in rows["SSᵀ: sqrt_ggn vs ggn"].note  # the GGN has no real factor, and says so
    assert rows["SSᵀ: sqrt_fisher vs fisher"].passed and rows["F: mc vs exact"].passed


def test_dask_and_last_layer():
    da = pytest.importorskip("dask.array", reason="needs dask")
    rng = np.random.default_rng(14)
    z, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    head = jac.Head(jac.MeanVariance(), jac.GaussianNLL())
    zd, yd = da.from_array(z, chunks=(2, 4)), da.from_array(y, chunks=(2, 2))
    np.testing.assert_allclose(float(head.loss(zd, yd).compute()), float(head.loss(z, y)), rtol=1e-13)
    np.testing.assert_allclose(head.grad(zd, yd).compute(), head.grad(z, y), rtol=1e-13)
    np.testing.assert_allclose(head.hessian(zd, yd).compute(), head.hessian(z, y), rtol=1e-13)
    X = rng.normal(size=(6, 3))
    blocks = head.fisher(z, y)
    Xt = np.concatenate([X, np.ones((6, 1))], axis=1)
    full = sum(np.kron(blocks[n], np.outer(Xt[n], Xt[n])) for n in range(6))
    np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind="fisher"), full, rtol=1e-10, atol=1e-14)


def test_full_adds_half_log_two_pi_per_element():
    a, y = _data(15)
    gap = jac.GaussianNLL(full=True, reduction="sum")(a, y) - jac.GaussianNLL(reduction="sum")(a, y)
    assert gap == pytest.approx(N * K * 0.5 * math.log(2 * math.pi), rel=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_arrays_take_the_generic_path(dtype):
    rng = np.random.default_rng(16)
    z, y = rng.normal(size=(5, 6)), rng.normal(size=(5, 3))
    zt, yt = torch.tensor(z, dtype=dtype), torch.tensor(y, dtype=dtype)
    tight = {"rtol": 1e-12 if dtype == torch.float64 else 2e-5, "atol": 1e-14 if dtype == torch.float64 else 1e-6}
    for act in (jac.MeanVariance(), jac.MeanVariance("exp", 0.2)):
        head = jac.Head(act, jac.GaussianNLL(full=True))
        zn, yn = zt.numpy(), yt.numpy()
        for name, fn in [("loss", lambda h, a, b: h.loss(a, b)), ("grad", lambda h, a, b: h.grad(a, b)),
                         ("hessian", lambda h, a, b: h.hessian(a, b)), ("ggn", lambda h, a, b: h.ggn(a, b)),
                         ("fisher", lambda h, a, b: h.fisher(a, b)),
                         ("mc", lambda h, a, b: h.fisher(a, b, "mc", mc_samples=4, seed=2))]:
            out = fn(head, zt, yt)
            assert isinstance(out, torch.Tensor) and out.dtype == dtype, name
            np.testing.assert_allclose(out.numpy(), fn(head, zn, yn), err_msg=name, **tight)
        S = head.sqrt_fisher(zt, yt)
        assert isinstance(S, torch.Tensor) and S.dtype == dtype
        np.testing.assert_allclose((S @ S.mT).numpy(), head.fisher(zn, yn), **tight)


def test_sqrt_fisher_on_dask_arrays():
    da = pytest.importorskip("dask.array", reason="needs dask")
    rng = np.random.default_rng(17)
    z, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    head = jac.Head(jac.MeanVariance(), jac.GaussianNLL())
    S = head.sqrt_fisher(da.from_array(z, chunks=(2, 4)), da.from_array(y, chunks=(2, 2))).compute()
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), head.fisher(z, y), rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher", "empirical_fisher", "fisher_mc"])
def test_linear_curvature_of_every_kind_and_structure(kind):
    rng = np.random.default_rng(18)
    X, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    W, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    z = X @ W.T + b
    head = jac.Head(jac.MeanVariance(), jac.GaussianNLL())
    if kind == "fisher_mc":
        S = head.sqrt_ggn_sampled(z, mc_samples=3, seed=5)
        blocks = S @ np.swapaxes(S, -1, -2)
    else:
        blocks = {"hessian": head.hessian, "ggn": head.ggn, "fisher": head.fisher,
                  "empirical_fisher": lambda a, t: head.fisher(a, t, kind="empirical")}[kind](z, y)
    Xt = np.concatenate([X, np.ones((7, 1))], axis=1)
    full = sum(np.kron(blocks[n], np.outer(Xt[n], Xt[n])) for n in range(7))  # the definition, row by row
    kw = {"mc_samples": 3, "seed": 5} if kind == "fisher_mc" else {}
    np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind=kind, **kw), full, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind=kind, structure="diag", **kw),
                               np.diag(full).reshape(4, 4), rtol=1e-10, atol=1e-14)
    A, B = jac.linear_curvature(X, head, z, y, kind=kind, structure="kron", **kw)
    assert A.shape == (4, 4) and B.shape == (4, 4)
