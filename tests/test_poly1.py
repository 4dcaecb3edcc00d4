"""PolyLoss [poly1]: CE + ε(1 − p_t) on softmax probabilities. Torch equivalence in float64
(values, gradients, Hessians through torch.func.hessian), logits of ±1e4 against mpmath, the
GGN against the library's cross-entropy Hessian, Fisher refusal, errors.

Every expected value comes from torch, mpmath (60 digits, closed-form derivatives of the
definition written with mpmath's own softmax) or the library's CrossEntropy head.
"""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac

torch = pytest.importorskip("torch")

REDUCTIONS = ("mean", "sum", "none")
N, K = 6, 4


def torch_poly(z, y, epsilon, smoothing, reduction):
    """optax's poly_loss_cross_entropy in torch: CE(z, t) + ε (1 − Σ t p), t smoothed."""
    y = torch.as_tensor(y)
    t = torch.nn.functional.one_hot(y, z.shape[-1]).to(z.dtype) if y.dim() == z.dim() - 1 else y.to(z.dtype)
    t = (1 - smoothing) * t + smoothing / z.shape[-1]
    ce = -(t * torch.log_softmax(z, -1)).sum(-1)
    values = ce + epsilon * (1 - (t * torch.softmax(z, -1)).sum(-1))
    return values.mean() if reduction == "mean" else values.sum() if reduction == "sum" else values


def _blocks(H):
    H = H.numpy()
    return np.stack([H[n, :, n, :] for n in range(H.shape[0])])


def _torch_all(fn, z):
    zt = torch.tensor(z, requires_grad=True)
    v = fn(zt)
    (g,) = torch.autograd.grad(v.sum(), zt)
    return v.detach().numpy(), g.numpy(), _blocks(torch.func.hessian(lambda x: fn(x).sum())(torch.tensor(z)))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, K)) * 2, rng.integers(0, K, N), rng.dirichlet(np.ones(K), N)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("epsilon", [1.0, 2.0, -0.5, 0.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("form", ["index", "probability"])
def test_matches_torch(reduction, epsilon, smoothing, form):
    z, yi, yp = _data(1)
    y = yi if form == "index" else yp
    head = jac.Head(jac.Softmax(), jac.PolyLoss(epsilon=epsilon, label_smoothing=smoothing, reduction=reduction))
    assert head.method == "fused" and not head.ggn_is_hessian
    v, g, H = _torch_all(lambda x: torch_poly(x, y, epsilon, smoothing, reduction), z)
    value, grad = head.value_and_grad(z, y)
    assert _rel(value, v) <= 1e-12 and _rel(grad, g) <= 1e-12
    for method in ("vjp", "jacobian"):
        assert _rel(head.grad(z, y, method=method), g) <= 1e-10  # through a = softmax(z)
    assert _rel(head.hessian(z, y), H) <= 1e-12
    assert _rel(head.hessian(z, y, method="chain"), H) <= 1e-9
    vec = np.random.default_rng(2).normal(size=z.shape)
    assert _rel(head.hvp(z, y, vec), np.einsum("nij,nj->ni", H, vec)) <= 1e-12
    # the closed form: CE's Hessian plus ε times the Hessian of −p_t, written out
    t = (np.eye(K)[y] if form == "index" else y) * (1 - smoothing) + smoothing / K
    p = jac.Softmax()(z)
    P = np.einsum("ni,ij->nij", p, np.eye(K)) - np.einsum("ni,nj->nij", p, p)
    E = np.eye(K)[None, :, :] - p[:, None, :]  # row k: e_k − p
    second = np.einsum("nk,nk,nki,nkj->nij", t, p, E, E) - np.einsum("nk,nk->n", t, p)[:, None, None] * P
    closed = t.sum(-1)[:, None, None] * P - epsilon * second
    c = 1.0 / N if reduction == "mean" else 1.0
    np.testing.assert_allclose(head.hessian(z, y), c * closed, rtol=1e-12, atol=1e-15)


def test_default_epsilon_is_one_and_registered():
    assert jac.PolyLoss().epsilon == 1.0  # optax's default is 2.0
    assert jac.LOSSES["poly1"] is jac.PolyLoss and ("softmax", "poly1", True) in jac.pairs()


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ggn_is_split_at_the_probabilities(smoothing):
    """ε(1 − p_t) is linear in p: the loss's Hessian in a is CE's ``diag(t/a²)``, so the GGN
    ``Jᵀ H_a J = Σ_k t_k (e_k − p)(e_k − p)ᵀ`` (times the factor) does not depend on ε."""
    z, yi, yp = _data(3)
    p = jac.Softmax()(z)
    E = np.eye(K)[None, :, :] - p[:, None, :]  # row k: e_k − p
    for y in (yi, yp):
        t = (np.eye(K)[y] if np.ndim(y) == 1 else y) * (1 - smoothing) + smoothing / K
        expected = np.einsum("nk,nki,nkj->nij", t, E, E) / N
        for epsilon in (0.0, 1.5):
            head = jac.Head(jac.Softmax(), jac.PolyLoss(epsilon=epsilon, label_smoothing=smoothing))
            np.testing.assert_allclose(head.ggn(z, y), expected, rtol=1e-12, atol=1e-16)
            S = head.sqrt_ggn(z, y)
            np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), expected, atol=1e-15)


def test_no_likelihood_no_exact_or_mc_fisher():
    z, y, _ = _data(4)
    head = jac.Head(jac.Softmax(), jac.PolyLoss())
    for kind in ("exact", "mc"):
        with pytest.raises(ValueError, match="PolyLoss is no negative log-likelihood"):
            head.fisher(z, y, kind=kind)
    rows = jac.Head(jac.Softmax(), jac.PolyLoss(reduction="none")).grad(z, y)
    np.testing.assert_allclose(head.fisher(z, y, kind="empirical"), np.einsum("ni,nj->nij", rows, rows) / N, rtol=1e-12)


def test_checks_pass():
    for head in (jac.Head(jac.Softmax(), jac.PolyLoss()), jac.Head(jac.Softmax(), jac.PolyLoss(-0.5, 0.1))):
        for check in (jac.check_head, jac.check_second_order, jac.checks.check_extreme,
                      jac.checks.check_second_order_extreme):
            report = check(head)
            assert report.passed, report
            assert report.missing == []


# -- extreme logits against mpmath --------------------------------------------------------------
mpmath = pytest.importorskip("mpmath")
mp = mpmath.mp


def _mp_reference(zrow, t, epsilon):
    """(value, gradient, Hessian) of one row in mpmath: p = softmax, and with u = −t(1 + εp),
    ∇ = u − pΣu and ∇² = Σ_k t_k(1 + εp_k) ∇²(log p_k)-free form: the definition's derivatives
    ∂p_k/∂z_j = p_k(δ_kj − p_j), ∂²p_k = p_k[(δ_ki − p_i)(δ_kj − p_j) − p_i(δ_ij − p_j)]."""
    z = [mp.mpf(float(v)) for v in zrow]
    Kr = len(z)
    lse = mp.log(mp.fsum(mp.exp(v) for v in z))
    p = [mp.exp(v - lse) for v in z]
    value = mp.fsum(-t[k] * (z[k] - lse) for k in range(Kr)) + epsilon * (1 - mp.fsum(t[k] * p[k] for k in range(Kr)))
    d = lambda i, j: mp.mpf(int(i == j))  # noqa: E731
    # ℓ = Σ_k −t_k log p_k − ε t_k p_k: ∂ log p_k/∂z_j = δ_kj − p_j; ∂²log p_k = −(p_i δ_ij − p_i p_j)
    grad = [mp.fsum(-t[k] * (d(k, j) - p[j]) - epsilon * t[k] * p[k] * (d(k, j) - p[j]) for k in range(Kr))
            for j in range(Kr)]
    H = [[mp.fsum(t[k] * (p[i] * d(i, j) - p[i] * p[j])
                  - epsilon * t[k] * p[k] * ((d(k, i) - p[i]) * (d(k, j) - p[j]) - p[i] * (d(i, j) - p[j]))
                  for k in range(Kr)) for j in range(Kr)] for i in range(Kr)]
    return value, grad, H


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("epsilon", [1.0, -0.5])
def test_extreme_logits_match_mpmath(dtype, epsilon):
    mp.dps = 60
    rows = [[1e4, 0.0, -1e4], [0.0, -1e4, -1e4], [1e4, 1e4, -1e4], [30.0, 0.0, -30.0], [80.0, 0.0, 5.0]]
    rtol = 1e-13 if dtype == np.float64 else 2e-6
    for row in rows:
        for y in range(3):
            t = [mp.mpf(int(k == y)) for k in range(3)]
            head = jac.Head(jac.Softmax(), jac.PolyLoss(epsilon=epsilon, reduction="sum"))
            z = np.array([row], dtype=dtype)
            value, grad = head.value_and_grad(z, np.array([y]))
            H = head.hessian(z, np.array([y]))
            assert value.dtype == dtype and grad.dtype == dtype and H.dtype == dtype
            rv, rg, rH = _mp_reference(row, t, mp.mpf(epsilon))
            for mine, ref in ((value, [rv]), (grad[0], rg), (H[0], rH)):
                mine = np.atleast_1d(np.asarray(mine, np.float64))
                ref = np.array([float(v) for v in np.ravel(np.array(ref, dtype=object))]).reshape(mine.shape)
                assert np.all(np.isfinite(mine))
                atol = float(np.finfo(dtype).tiny) + rtol * 1e-3 * np.abs(ref).max()
                np.testing.assert_allclose(mine, ref, rtol=rtol, atol=atol)
            assert np.all(np.isfinite(head.hessian(z, np.array([y]), method="chain")))


def test_generic_path_on_torch_tensors():
    z, yi, yp = _data(5)
    for y in (yi, yp):
        head = jac.Head(jac.Softmax(), jac.PolyLoss(epsilon=2.0, label_smoothing=0.1))
        zt, yt = torch.tensor(z), torch.tensor(y)
        value, grad = head.value_and_grad(zt, yt)
        v0, g0 = head.value_and_grad(z, y)
        assert _rel(value.numpy(), v0) <= 1e-13 and _rel(grad.numpy(), g0) <= 1e-13
        for name in ("hessian", "ggn", "sqrt_ggn"):
            assert _rel(getattr(head, name)(zt, yt).numpy(), getattr(head, name)(z, y)) <= 1e-12, name
        assert _rel(head.hvp(zt, yt, zt).numpy(), head.hvp(z, y, z)) <= 1e-12


def test_clear_errors():
    with pytest.raises(ValueError, match="epsilon must be >= -1"):
        jac.PolyLoss(epsilon=-2.0)
    with pytest.raises(TypeError, match="epsilon must be a real number"):
        jac.PolyLoss(epsilon="1")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1.0\]"):
        jac.PolyLoss(label_smoothing=1.5)
    z, y, _ = _data(6)
    head = jac.Head(jac.Softmax(), jac.PolyLoss())
    with pytest.raises(ValueError, match=rf"y: class indices must be in \[0, {K}\)"):
        head.loss(z, np.full(N, -1))
    with pytest.raises(ValueError, match=r"y: target probabilities must be in \[0, 1\]"):
        head.loss(z, np.full((N, K), 2.0))
    z32 = z.astype(np.float32)
    for out in (head.grad(z32, y), head.hessian(z32, y), head.ggn(z32, y), head.sqrt_ggn(z32, y)):
        assert out.dtype == np.float32


# -- the long-double reference for tests/test_edges.py (every fused rule has one) ----------------
def poly_longdouble(act, loss, z, y):
    """(values, value scale, grads, grad scale, denominator) of Softmax + PolyLoss in long
    double; the scales bound what rounding the inputs (z − max, and z/T) moves."""
    from test_focal import _ld_softmax_parts, _ld_targets

    K = np.shape(z)[-1]
    lam = np.longdouble(loss.label_smoothing)
    c = _ld_targets(y, K) * (1 - lam) + lam / K
    _, d, p, q, logp, G, T = _ld_softmax_parts(act, z)
    eps = np.longdouble(loss.epsilon)
    rest = (1 - c.sum(axis=-1)) + (c * q).sum(axis=-1)
    values = -(c * logp).sum(axis=-1) + eps * rest
    u = -c * (1 + eps * p)
    off = (~np.eye(K, dtype=bool)).astype(np.longdouble)
    grads = (q * u - p * np.einsum("...j,kj->...k", u, off)) / T
    gscale = (q * np.abs(u) + p * np.einsum("...j,kj->...k", np.abs(u), off)) * (2 + G) / T
    # ``1 − Σc`` from coefficients rounded to the input's dtype moves by ulps of Σc, not of
    # ``|1 − Σc|`` (K = 1 with soft targets and smoothing: the value is ε(1 − Σc) ≈ 1e-17)
    scale = ((c * np.abs(logp)).sum(axis=-1) + abs(eps) * (np.abs(1 - c.sum(axis=-1)) + c.sum(axis=-1) + (c * q).sum(axis=-1))) * (2 + G[..., 0])
    return values, scale, grads, gscale, np.longdouble(np.prod(np.shape(z)[:-1]))
