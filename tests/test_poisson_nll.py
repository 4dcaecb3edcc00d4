"""Exp, PoissonNLL and the log-link pair rule against torch (float64, 1e-12 relative).

References: ``torch.nn.functional.poisson_nll_loss`` and ``torch.exp`` for values, autograd
for gradients, ``torch.func.hessian`` for the Hessian blocks, closed forms written out here
for the Fisher and the GGN, scipy's Poisson quantiles for the Monte-Carlo draws. Nothing is
copied from the package's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import jacobians as jac
from jacobians.losses.poisson_nll import RATE_MAX, poisson_from_uniforms

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ("mean", "sum", "none")
N, K = 5, 3
RTOL = 1e-12
#: (activation, loss options): the two canonical log links and torch's default eps
HEADS = [
    pytest.param(jac.Identity, {"log_input": True}, id="identity-log"),
    pytest.param(jac.Identity, {"log_input": True, "full": True}, id="identity-log-full"),
    pytest.param(jac.Exp, {"log_input": False}, id="exp-rate-eps1e-8"),
    pytest.param(jac.Exp, {"log_input": False, "eps": 0.0}, id="exp-rate-eps0"),
    pytest.param(jac.Exp, {"log_input": False, "eps": 0.3, "full": True}, id="exp-rate-eps0.3-full"),
]


def _data(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, K)) * 1.5
    y = rng.poisson(rng.uniform(0.2, 6.0, size=(N, K))).astype(np.float64)
    y[0, :2] = [0.0, 1.0]  # the Stirling term's mask: y <= 1
    return z.astype(dtype), y.astype(dtype)


def _torch_loss(act_cls, opts, reduction):
    """E(z) by torch: poisson_nll_loss of z (the log-rate) or of exp(z) (the rate)."""
    o = {"log_input": True, "full": False, "eps": 1e-8, **opts}

    def f(z, y):
        x = z if act_cls is jac.Identity else torch.exp(z)
        return F.poisson_nll_loss(x, y, log_input=o["log_input"], full=o["full"], eps=o["eps"], reduction=reduction)

    return f


def _head(act_cls, opts, reduction="mean"):
    return jac.Head(act_cls(), jac.PoissonNLL(reduction=reduction, **opts))


def _factor(reduction, n=N * K):
    return 1.0 / n if reduction == "mean" else 1.0


# -- the activation ----------------------------------------------------------------------


def test_exp_matches_torch_and_its_closed_forms():
    z = np.linspace(-30, 30, 12).reshape(3, 4)
    act = jac.Exp()
    zt = torch.tensor(z)
    np.testing.assert_allclose(act(z), torch.exp(zt).numpy(), rtol=RTOL)
    np.testing.assert_allclose(act.derivative(z), np.exp(z), rtol=RTOL)
    np.testing.assert_allclose(act.second_derivative(z), np.exp(z), rtol=RTOL)
    g = np.random.default_rng(1).normal(size=z.shape)
    np.testing.assert_allclose(act.vjp(z, g), g * np.exp(z), rtol=RTOL)
    # hessian_vjp: the Hessian of g·exp(z) summed, by torch
    H = torch.func.hessian(lambda x: (torch.tensor(g) * torch.exp(x)).sum())(zt).numpy()
    np.testing.assert_allclose(act.hessian_vjp(z, g), np.stack([H[n, :, n, :] for n in range(3)]), rtol=RTOL, atol=1e-300)
    assert jac.check_activation(act).passed
    assert "exp" in jac.ACTIVATIONS and jac.ACTIVATIONS["exp"] is jac.Exp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_overflows_exactly_where_torch_does(dtype):
    top = math.log(float(np.finfo(dtype).max))
    z = np.array([[top - 1e-3, float(np.nextafter(dtype(top), dtype(0))), top + 1e-3, 1e4, -1e4]], dtype=dtype)
    ours = jac.Exp()(z)
    ref = torch.exp(torch.tensor(z)).numpy()
    assert ours.dtype == dtype
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    assert np.isfinite(ours[0, :2]).all() and np.isinf(ours[0, 2:4]).all() and ours[0, 4] == 0
    np.testing.assert_allclose(ours[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=4 * np.finfo(dtype).eps)


# -- the loss: every option and reduction against torch ---------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("eps", [1e-8, 0.25, 0.0])
def test_loss_value_and_gradient_match_torch(log_input, full, eps, reduction):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 2, K)) if log_input else rng.uniform(0.05, 4.0, size=(4, 2, K))
    y = rng.poisson(3.0, size=a.shape).astype(np.float64)
    y[0, 0] = [0.0, 1.0, 2.5]  # zeros, a one and a float count
    loss = jac.PoissonNLL(log_input=log_input, full=full, eps=eps, reduction=reduction)
    at = torch.tensor(a, requires_grad=True)
    ref = F.poisson_nll_loss(at, torch.tensor(y), log_input=log_input, full=full, eps=eps, reduction=reduction)
    (ref.sum() if reduction == "none" else ref).backward()
    value, grad = loss.value_and_grad(a, y)
    np.testing.assert_allclose(value, ref.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(grad, at.grad.numpy(), rtol=RTOL, atol=1e-300)
    # the second derivative, per entry, by torch
    H = torch.func.hessian(lambda x: F.poisson_nll_loss(x, torch.tensor(y), log_input=log_input, full=full, eps=eps,
                                                        reduction="sum"))(torch.tensor(a)).numpy().reshape(a.size, a.size)
    c = 1.0 / a.size if reduction == "mean" else 1.0
    np.testing.assert_allclose(np.einsum("...ii->...i", loss.hessian(a, y)).ravel(), c * np.diag(H), rtol=RTOL)


def test_the_stirling_term_is_torchs_mask():
    """``full`` adds y log y − y + ½ log(2πy) for y > 1 only (0 for y <= 1, not the formula)."""
    a = np.zeros((1, 4))
    y = np.array([[0.0, 1.0, 1.5, 7.0]])
    plain = jac.PoissonNLL(reduction="none")(a, y)
    full = jac.PoissonNLL(full=True, reduction="none")(a, y)
    stirling = np.array([0.0, 0.0] + [t * math.log(t) - t + 0.5 * math.log(2 * math.pi * t) for t in (1.5, 7.0)])
    np.testing.assert_allclose((full - plain)[0], stirling, rtol=1e-14, atol=0)


# -- the heads: every method against torch --------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("act_cls, opts", HEADS)
def test_head_value_gradient_and_hessian_match_torch(act_cls, opts, reduction):
    z, y = _data(1)
    head = _head(act_cls, opts, reduction)
    assert head.method == "fused"
    f = _torch_loss(act_cls, opts, reduction)
    zt, yt = torch.tensor(z, requires_grad=True), torch.tensor(y)
    ref = f(zt, yt)
    (ref.sum() if reduction == "none" else ref).backward()
    for method in ("fused", "vjp", "jacobian"):
        value, grad = head.value_and_grad(z, y, method=method)
        np.testing.assert_allclose(value, ref.detach().numpy(), rtol=RTOL, err_msg=method)
        np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=RTOL, atol=1e-300, err_msg=method)
    # Hessian blocks: torch.func.hessian of the summed loss (for 'none': each row's own)
    Hfull = torch.func.hessian(lambda x: f(x, yt).sum())(torch.tensor(z)).numpy()  # ('none': each row's own)
    blocks = np.stack([Hfull[n, :, n, :] for n in range(N)])
    v = np.random.default_rng(2).normal(size=z.shape)
    for method in ("fused", "chain"):
        np.testing.assert_allclose(head.hessian(z, y, method=method), blocks, rtol=RTOL, atol=1e-300, err_msg=method)
        np.testing.assert_allclose(head.hvp(z, y, v, method=method), np.einsum("nij,nj->ni", blocks, v), rtol=1e-11)


@pytest.mark.parametrize("act_cls, opts", HEADS)
def test_fused_rule_equals_the_chain_rule(act_cls, opts):
    z, y = _data(4)
    z[0] = [-25.0, 12.0, 0.0]  # a rate far below eps's scale and a large one
    for reduction in REDUCTIONS:
        head = _head(act_cls, opts, reduction)
        vf, gf = head.value_and_grad(z, y, method="fused")
        vc, gc = head.value_and_grad(z, y, method="vjp")
        np.testing.assert_allclose(vf, vc, rtol=1e-13)
        np.testing.assert_allclose(gf, gc, rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(head.hessian(z, y, method="fused"), head.hessian(z, y, method="chain"),
                                   rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("act_cls, opts", HEADS)
def test_ggn_factor_and_fisher_closed_forms(act_cls, opts, reduction):
    z, y = _data(5)
    head = _head(act_cls, opts, reduction)
    c = _factor(reduction)
    w = np.exp(z)
    eps = opts.get("eps", 1e-8)
    canonical = act_cls is jac.Identity or eps == 0
    assert head.ggn_is_hessian == canonical
    if act_cls is jac.Identity or eps == 0:
        ggn = fisher = c * w  # diag(e^z)·c: Hessian = GGN = exact Fisher
        np.testing.assert_allclose(head.hessian(z, y), ggn[..., None] * np.eye(K), rtol=RTOL)
        S = head.sqrt_ggn(z, y)
        np.testing.assert_allclose(S, (np.exp(z / 2) * math.sqrt(c))[..., None] * np.eye(K), rtol=RTOL)
    else:
        ggn = c * y * (w / (w + eps)) ** 2  # Jᵀ H_a J = e^z · y/(e^z + eps)² · e^z
        fisher = c * w * w / (w + eps)  # y ~ Poisson(e^z + eps): Jᵀ (1/(e^z + eps)) J
        S = head.sqrt_ggn(z, y)
    np.testing.assert_allclose(head.ggn(z, y), ggn[..., None] * np.eye(K), rtol=1e-12)
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), head.ggn(z, y), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(head.fisher(z, y, kind="exact"), fisher[..., None] * np.eye(K), rtol=1e-12)
    g = _head(act_cls, opts, "none").grad(z, y)  # each row's own gradient
    np.testing.assert_allclose(head.fisher(z, y, kind="empirical"), c * np.einsum("ni,nj->nij", g, g), rtol=1e-12)


def test_monte_carlo_fisher_draws_from_the_model():
    z, y = _data(6)
    for act_cls, opts in [(jac.Identity, {}), (jac.Exp, {"log_input": False, "eps": 0.0})]:
        head = _head(act_cls, opts)
        exact = head.fisher(z, y, kind="exact")
        mc = head.fisher(z, y, kind="mc", mc_samples=20000, seed=3)
        diag = np.einsum("...ii->...i", exact)
        np.testing.assert_allclose(np.einsum("...ii->...i", mc), diag, rtol=0.08)
        off = mc - np.einsum("...i,ij->...ij", np.einsum("...ii->...i", mc), np.eye(K))
        assert np.abs(off).max() <= 0.08 * diag.max()
        # the same seed, any chunking: the same draws
        again = head.fisher(z, y, kind="mc", mc_samples=20000, seed=3)
        np.testing.assert_array_equal(mc, again)


def test_poisson_draws_are_the_inverse_cdf():
    """Each draw is the smallest k with F(k; λ) >= 1 − u: scipy's quantile, for small, medium
    and large rates (one window per rate, a block of mixed rates)."""
    stats = pytest.importorskip("scipy.stats")
    rates = np.array([1e-3, 0.3, 1.0, 4.2, 37.0, 150.5, 1e4, 2.5e5])
    u = (np.arange(400) + 0.5) / 400
    lam = np.repeat(rates, u.size)
    uu = np.tile(u, rates.size)
    got = poisson_from_uniforms(lam, uu)
    ref = stats.poisson.ppf(1 - uu, lam)
    assert np.mean(got == ref) >= 0.999, np.flatnonzero(got != ref)[:5]
    assert np.abs(got - ref).max() <= 1
    assert (poisson_from_uniforms(np.zeros(3), np.full(3, 0.5)) == 0).all()
    with pytest.raises(ValueError, match=r"rates must be in \[0, 16777216\].*kind='exact'"):
        poisson_from_uniforms(np.array([RATE_MAX * 2]), np.array([0.5]))
    with pytest.raises(ValueError, match="rates must be"):
        poisson_from_uniforms(np.array([np.nan]), np.array([0.5]))


# -- overflow: finite up to the exp limit, inf where torch's exp is --------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act_cls, opts", [(jac.Identity, {}), (jac.Exp, {"log_input": False}),
                                           (jac.Exp, {"log_input": False, "eps": 0.0})])
def test_overflow_boundary_matches_torch(act_cls, opts, dtype):
    top = math.log(float(np.finfo(dtype).max))
    below = float(np.nextafter(dtype(top), dtype(0)))
    z = np.array([[top - 0.5, below, top + 1e-3], [top / 2 + 1, below, 1e4]], dtype=dtype)
    y = np.array([[0.0, 3.0, 2.0], [5.0, 0.0, 1.0]], dtype=dtype)
    head = _head(act_cls, opts, "none")
    f = _torch_loss(act_cls, opts, "none")
    zt = torch.tensor(z, requires_grad=True)
    ref = f(zt, torch.tensor(y))
    ref.sum().backward()
    value, grad = head.value_and_grad(z, y)
    assert value.dtype == dtype and grad.dtype == dtype
    rv, rg = ref.detach().numpy(), zt.grad.numpy()
    # the same entries finite, inf and NaN as torch (the rate's value is inf − inf = NaN past the limit)
    np.testing.assert_array_equal(np.isnan(value), np.isnan(rv))
    np.testing.assert_array_equal(np.isinf(value), np.isinf(rv))
    np.testing.assert_array_equal(np.isinf(grad), np.isinf(rg))
    finite = np.isfinite(rv)
    tol = 8 * np.finfo(dtype).eps
    np.testing.assert_allclose(value[finite], rv[finite], rtol=tol)
    np.testing.assert_allclose(grad[np.isfinite(rg)], rg[np.isfinite(rg)], rtol=tol)
    # below the limit every second-order quantity is finite (no e^z·e^z, no exp(2z))
    H = np.einsum("...ii->...i", head.hessian(z, y))
    assert H.dtype == dtype
    assert np.isfinite(H[:, :2]).all() and np.isinf(H[:, 2]).all()
    np.testing.assert_allclose(H[0, :2], np.exp(z[0, :2].astype(np.float64)), rtol=tol)
    F_ = np.einsum("...ii->...i", head.fisher(z, y, kind="exact"))
    assert np.isfinite(F_[:, :2]).all()
    if head.ggn_is_hessian:
        S = head.sqrt_ggn(z[:, :2], y[:, :2])
        assert np.isfinite(S).all()


def test_float32_stays_float32():
    z, y = _data(7, np.float32)
    for act_cls, opts in [(jac.Identity, {}), (jac.Exp, {"log_input": False})]:
        head = _head(act_cls, opts)
        assert head.loss(z, y).dtype == np.float32
        for out in (head.grad(z, y), head.hessian(z, y), head.ggn(z, y), head.sqrt_ggn(z, y),
                    head.fisher(z, y, kind="exact"), head.hvp(z, y, z)):
            assert out.dtype == np.float32
        z64, y64 = z.astype(np.float64), y.astype(np.float64)
        np.testing.assert_allclose(head.grad(z, y), head.grad(z64, y64), rtol=1e-5, atol=1e-7)


# -- the package's own machinery: checks, pairs, last layer, Dask ----------------------------------


@pytest.mark.parametrize("act_cls, opts", HEADS)
def test_checks_pass(act_cls, opts):
    head = _head(act_cls, opts)
    for report in (jac.check_head(head), jac.check_second_order(head), jac.checks.check_extreme(head),
                   jac.checks.check_second_order_extreme(head)):
        assert report.passed, report
    assert ("identity", "poisson_nll", True) in jac.pairs()


def test_last_layer_and_dask():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(N, 2))
    W = rng.normal(size=(K, 2))
    z = X @ W.T
    y = rng.poisson(2.0, size=(N, K)).astype(float)
    head = _head(jac.Identity, {})
    H = jac.linear_curvature(X, head, z, y, kind="hessian", bias=False)
    blocks = np.exp(z) / (N * K)
    ref = sum(np.kron(np.diag(blocks[n]), np.outer(X[n], X[n])) for n in range(N))
    np.testing.assert_allclose(H, ref, rtol=1e-12)
    da = pytest.importorskip("dask.array", reason="the dask extra is not installed: python -m pip install -e '.[dask]'")
    zd, yd = da.from_array(z, chunks=(2, K)), da.from_array(y, chunks=(2, K))
    np.testing.assert_allclose(head.grad(zd, yd).compute(), head.grad(z, y), rtol=1e-13)
    np.testing.assert_allclose(head.hessian(zd, yd).compute(), head.hessian(z, y), rtol=1e-13)


def test_torch_arrays_take_the_generic_path():
    z, y = _data(9)
    for act_cls, opts in [(jac.Identity, {"full": True}), (jac.Exp, {"log_input": False})]:
        head = _head(act_cls, opts)
        zt, yt = torch.tensor(z), torch.tensor(y)
        np.testing.assert_allclose(head.grad(zt, yt).numpy(), head.grad(z, y), rtol=1e-14)
        np.testing.assert_allclose(head.hessian(zt, yt).numpy(), head.hessian(z, y), rtol=1e-14)
        np.testing.assert_allclose(head.fisher(zt, yt, kind="exact").numpy(), head.fisher(z, y, kind="exact"), rtol=1e-14)
        # the Monte-Carlo Fisher draws its counts through the host: numpy's counts from the
        # same uniforms, so the same estimate; and it estimates the exact Fisher
        mc = head.fisher(zt, yt, kind="mc", mc_samples=3, seed=5)
        np.testing.assert_allclose(mc.numpy(), head.fisher(z, y, kind="mc", mc_samples=3, seed=5), rtol=1e-13, atol=1e-15)
        S = head.sqrt_ggn_sampled(zt[:2], mc_samples=4000, seed=1).numpy()
        exact = head.fisher(z[:2], y[:2], kind="exact")
        np.testing.assert_allclose(S @ S.transpose(0, 2, 1), exact, rtol=0.1, atol=0.1 * np.abs(exact).max())
        f32 = head.sqrt_ggn_sampled(zt.float(), mc_samples=2, seed=1)
        assert f32.dtype == torch.float32


def test_jax_draws_need_concrete_rates():
    jax = pytest.importorskip("jax", reason="jax (the test extra) is not installed")
    z, _ = _data(11)
    head = _head(jac.Identity, {})
    with pytest.raises(NotImplementedError, match="need concrete rates; under jax.jit"):
        jax.jit(lambda zz: head.sqrt_ggn_sampled(zz, mc_samples=2, seed=0))(jax.numpy.asarray(z, dtype="float32"))


# -- clear errors ----------------------------------------------------------------------------------


def test_clear_errors():
    z, y = _data(10)
    head = _head(jac.Identity, {})
    bad = y.copy()
    bad[1, 2] = -1.0
    with pytest.raises(ValueError, match=r"y must be counts >= 0.*got -1.0 at \[1, 2\]"):
        head.loss(z, bad)
    with pytest.raises(ValueError, match="y must be counts >= 0"):
        head.grad(z, np.where(y > 2, np.nan, y))
    with pytest.raises(ValueError, match=r"y must have the shape of a, \(5, 3\); got shape \(5,\)"):
        head.loss(z, y[:, 0])
    with pytest.raises(TypeError, match="log_input must be True or False"):
        jac.PoissonNLL(log_input=1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        jac.PoissonNLL(eps=-1e-3)
    with pytest.raises(ValueError, match="reduction must be one of"):
        jac.PoissonNLL(reduction="batchmean")
    with pytest.raises(ValueError, match=r"Exp \+ PoissonNLL\(log_input=True\).*log_input=False"):
        jac.Head(jac.Exp(), jac.PoissonNLL())
    with pytest.raises(ValueError, match="Identity outputs real.*PoissonNLL needs nonnegative"):
        jac.Head(jac.Identity(), jac.PoissonNLL(log_input=False))
    with pytest.raises(ValueError, match="a must be >= 0|nonnegative"):
        jac.PoissonNLL(log_input=False)(np.array([[-1.0]]), np.array([[1.0]]))


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher", "empirical_fisher"])
@pytest.mark.parametrize("opts", [{"log_input": False, "eps": 0.0}, {"log_input": False}])
def test_last_layer_of_the_rate_pair(kind, opts):
    """Exp + the rate through a linear layer: Σ_n kron(B_n, x_n x_nᵀ) with the blocks B_n
    written out (the Fisher's unreduced blocks carry c like the Hessian's)."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(N, 2))
    z = X @ rng.normal(size=(K, 2)).T
    y = rng.poisson(2.0, size=(N, K)).astype(float)
    head = _head(jac.Exp, opts)
    c, w, eps = 1.0 / (N * K), np.exp(z), opts.get("eps", 1e-8)
    s, r = w / (w + eps), eps / (w + eps)
    d = {"hessian": c * (w - y * s * r), "fisher": c * w * s,
         "ggn": c * w if eps == 0 else c * y * s * s}.get(kind)
    if kind == "empirical_fisher":
        g = c * (w - y * s)  # each row's gradient of E (c its factor), outer products / c
        blocks = np.einsum("ni,nj->nij", g, g) / c
    else:
        blocks = d[..., None] * np.eye(K)
    ref = sum(np.kron(blocks[n], np.outer(X[n], X[n])) for n in range(N))
    got = jac.linear_curvature(X, head, z, y, kind=kind, bias=False)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-15)
    diag = jac.linear_curvature(X, head, z, y, kind=kind, bias=False, structure="diag")
    np.testing.assert_allclose(diag.ravel(), np.diag(ref), rtol=1e-11, atol=1e-15)
