"""FocalLoss [focal] and BinaryFocalLoss [binary_focal]: torch equivalence in float64 (values,
gradients, Hessians through torch.func.hessian), logits of ±1e4 against mpmath, γ = 0 against
the library's own cross-entropy heads and torch, second order, Fisher refusal, errors.

Every expected value comes from torch (autograd, ``torch.func.hessian``), mpmath at 150 digits
(its numerical derivatives), long double, or the library's own CE / BCE heads for γ = 0.
"""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac

torch = pytest.importorskip("torch")

REDUCTIONS = ("mean", "sum", "none")
GAMMAS = (0.0, 0.5, 1.0, 2.0)
N, K = 6, 4
LD = np.longdouble


def _reduce_t(values, reduction):
    return values.mean() if reduction == "mean" else values.sum() if reduction == "sum" else values


# -- torch references (the formulas written out; torchvision's lines copied for the binary one) --
def torch_focal(z, y, gamma, alpha, reduction):
    """``−Σ_k t_k α_k (1 − p_k)^γ log p_k`` with p = softmax(z); 'mean' over the rows."""
    logp = torch.log_softmax(z, -1)
    p = torch.softmax(z, -1)
    y = torch.as_tensor(y)
    t = torch.nn.functional.one_hot(y, z.shape[-1]).to(z.dtype) if y.dim() == z.dim() - 1 else y.to(z.dtype)
    a = torch.ones(z.shape[-1], dtype=z.dtype) if alpha is None else torch.as_tensor(alpha, dtype=z.dtype)
    return _reduce_t(-(t * a * (1 - p) ** gamma * logp).sum(-1), reduction)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss (torchvision 0.19), verbatim but for the docstring."""
    p = torch.sigmoid(inputs)
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def _blocks(H):
    """Per-row blocks ``(N, K, K)`` of torch.func.hessian's ``(N, K, N, K)``."""
    H = H.numpy()
    return np.stack([H[n, :, n, :] for n in range(H.shape[0])])


def _torch_all(fn, z):
    """(value, grad, Hessian blocks) of fn at z, the 'none' value summed for the derivatives."""
    zt = torch.tensor(z, requires_grad=True)
    v = fn(zt)
    (g,) = torch.autograd.grad(v.sum(), zt)
    H = torch.func.hessian(lambda x: fn(x).sum())(torch.tensor(z))
    return v.detach().numpy(), g.numpy(), _blocks(H)


def _data(seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, K)) * scale
    return z, rng.integers(0, K, N), rng.dirichlet(np.ones(K), N)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# -- torch equivalence, float64 ------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", [None, "vector"])
@pytest.mark.parametrize("form", ["index", "probability"])
def test_focal_matches_torch(reduction, gamma, alpha, form):
    z, yi, yp = _data(1)
    y = yi if form == "index" else yp
    al = None if alpha is None else np.linspace(0.25, 2.0, K)
    head = jac.Head(jac.Softmax(), jac.FocalLoss(gamma=gamma, alpha=al, reduction=reduction))
    assert head.method == "fused" and not head.ggn_is_hessian
    v, g, H = _torch_all(lambda x: torch_focal(x, y, gamma, al, reduction), z)
    value, grad = head.value_and_grad(z, y)
    assert _rel(value, v) <= 1e-12 and _rel(grad, g) <= 1e-12
    for method in ("vjp", "jacobian"):  # through a = softmax(z)
        assert _rel(head.grad(z, y, method=method), g) <= 1e-10
    assert _rel(head.hessian(z, y), H) <= 1e-12
    assert _rel(head.hessian(z, y, method="chain"), H) <= 1e-9  # Jᵀ H_a J + Σ g_a ∇²a cancels
    vec = np.random.default_rng(2).normal(size=z.shape)
    assert _rel(head.hvp(z, y, vec), np.einsum("nij,nj->ni", H, vec)) <= 1e-12


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", [None, -1.0, 0.25, 0.8])
@pytest.mark.parametrize("form", ["binary", "soft"])
def test_binary_focal_matches_torchvision(reduction, gamma, alpha, form):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(N, K)) * 3
    t = (rng.random((N, K)) < 0.5).astype(float) if form == "binary" else rng.random((N, K))
    head = jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss(gamma=gamma, alpha=alpha, reduction=reduction))
    tv_alpha = -1.0 if alpha is None else alpha
    v, g, H = _torch_all(lambda x: sigmoid_focal_loss(x, torch.tensor(t), tv_alpha, gamma, reduction), z)
    value, grad = head.value_and_grad(z, t)
    assert _rel(value, v) <= 1e-12 and _rel(grad, g) <= 1e-12
    for method in ("vjp", "jacobian"):  # through a = σ(z): a − t loses some digits
        assert _rel(head.grad(z, t, method=method), g) <= 1e-10
    assert _rel(head.hessian(z, t), H) <= 1e-12
    assert _rel(head.hessian(z, t, method="chain"), H) <= 1e-9  # Jᵀ H_a J + Σ g_a ∇²a cancels
    vec = rng.normal(size=z.shape)
    assert _rel(head.hvp(z, t, vec), np.einsum("nij,nj->ni", H, vec)) <= 1e-12


@pytest.mark.parametrize("gamma", GAMMAS)
def test_the_losses_on_probabilities_match_torch(gamma):
    """The separate path: the loss of ``a`` itself, its gradient and Hessian in ``a``."""
    z, yi, yp = _data(4)
    a = jac.Softmax()(z)
    al = np.linspace(0.5, 1.5, K)
    for y in (yi, yp):
        loss = jac.FocalLoss(gamma=gamma, alpha=al, reduction="sum")

        def fn(x, y=y):
            t = torch.nn.functional.one_hot(torch.as_tensor(y), K).double() if np.ndim(y) == 1 else torch.tensor(y)
            return -(t * torch.tensor(al) * (1 - x) ** gamma * torch.log(x)).sum(-1)

        v, g, H = _torch_all(fn, a)
        assert _rel(loss(a, y), v.sum()) <= 1e-12 and _rel(loss.grad(a, y), g) <= 1e-12
        assert _rel(loss.hessian(a, y), H) <= 1e-12
    p = jac.Sigmoid()(z)
    t = np.random.default_rng(5).random((N, K))
    loss = jac.BinaryFocalLoss(gamma=gamma, alpha=0.3, reduction="sum")

    def bfn(x):
        tt = torch.tensor(t)
        ce = -(tt * torch.log(x) + (1 - tt) * torch.log1p(-x))
        return (0.3 * tt + 0.7 * (1 - tt)) * ce * (x * (1 - tt) + (1 - x) * tt) ** gamma

    v, g, H = _torch_all(bfn, p)
    assert _rel(loss(p, t), v.sum()) <= 1e-12 and _rel(loss.grad(p, t), g) <= 1e-12
    assert _rel(loss.hessian(p, t), H) <= 1e-12


# -- γ = 0: the library's own cross-entropy heads, bit for bit; torch within 2 ulp -------------------
def _ulps(a, b):
    a, b = np.asarray(a), np.asarray(b)
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(a.dtype))
    return float((np.abs(a.astype(np.float64) - b.astype(np.float64)) / spacing).max(initial=0.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_gamma_zero_is_cross_entropy(dtype, reduction, scale):
    rng = np.random.default_rng(6)
    z = (rng.normal(size=(32, 5)) * scale).astype(dtype)
    for y in (rng.integers(0, 5, 32), rng.dirichlet(np.ones(5), 32).astype(dtype)):
        focal = jac.Head(jac.Softmax(), jac.FocalLoss(gamma=0.0, reduction=reduction))
        ce = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction=reduction))
        (vf, gf), (vc, gc) = focal.value_and_grad(z, y), ce.value_and_grad(z, y)
        assert _ulps(vf, vc) <= 2 and _ulps(gf, gc) <= 2
        assert _ulps(focal.hessian(z, y), ce.hessian(z, y)) <= 2
        if reduction != "none":  # torch's per-row values lose digits where they are tiny
            tv = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y), reduction=reduction)
            assert _ulps(vf, tv.numpy()) <= 2
    t = (rng.random((32, 5)) < 0.5).astype(dtype)
    focal = jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss(gamma=0.0, alpha=None, reduction=reduction))
    bce = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(reduction=reduction))
    (vf, gf), (vc, gc) = focal.value_and_grad(z, t), bce.value_and_grad(z, t)
    assert _ulps(vf, vc) <= 2 and _ulps(gf, gc) <= 2
    assert _ulps(focal.hessian(z, t), bce.hessian(z, t)) <= 2
    if reduction != "none":
        tv = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(t), reduction=reduction)
        assert _ulps(vf, tv.numpy()) <= 2


# -- extreme logits: mpmath at 150 digits --------------------------------------------------------------
mpmath = pytest.importorskip("mpmath")
mp = mpmath.mp


def _mp_focal_row(zrow, t, alpha, gamma):
    """The loss of one row in mpmath; 1 − p_k as the others' exp over the total (exact)."""
    e = [mp.exp(v) for v in zrow]
    S = mp.fsum(e)
    out = mp.mpf(0)
    for k in range(len(zrow)):
        if t[k]:
            q = mp.fsum(e[j] for j in range(len(e)) if j != k) / S
            out -= t[k] * alpha[k] * (q**gamma if gamma else 1) * (zrow[k] - mp.log(S))
    return out


def _mp_binary(z, t, alpha, gamma):
    p, q = 1 / (1 + mp.exp(-z)), 1 / (1 + mp.exp(z))
    ce = -(t * mp.log(p) + (1 - t) * mp.log(q))
    m = p * (1 - t) + q * t
    w = 1 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return w * ce * (m**gamma if gamma else 1)


def _mp_derivatives(f, zrow):
    """(value, gradient, Hessian) of f at zrow by mpmath's numerical differentiation (run
    at ``mp.dps = 150``)."""
    K_ = len(zrow)
    x = [mp.mpf(float(v)) for v in zrow]
    value = f(x)
    grad = [mp.diff(lambda *a: f(list(a)), x, tuple(int(i == k) for i in range(K_))) for k in range(K_)]
    H = [[mp.diff(lambda *a: f(list(a)), x, tuple(int(i == j) + int(i == k) for i in range(K_))) for k in range(K_)]
         for j in range(K_)]
    return value, grad, H


EXTREME_ROWS = [
    [1e4, 0.0, -1e4], [0.0, -1e4, -1e4], [1e4, 1e4, -1e4], [30.0, 0.0, -30.0],
    [80.0, 0.0, 5.0], [-1e4, 0.0, 1e4],
]


def _close(mine, ref, rtol, dtype):
    mine = np.asarray(mine, np.float64)
    ref = np.asarray([float(v) for v in np.ravel(ref)]).reshape(mine.shape)
    scale = np.abs(ref).max(initial=0.0)
    # entries far below the row's own scale; mpmath's numerical derivatives at 150 digits are
    # exact to ~1e-160 absolute (true values of e^{-1e4} come out as such noise); float32's
    # subnormals keep few bits
    atol = max(1e-140, float(np.finfo(dtype).tiny)) + rtol * 1e-3 * scale
    assert np.all(np.isfinite(mine))
    np.testing.assert_allclose(mine, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_at_extreme_logits_matches_mpmath(dtype, gamma):
    mp.dps = 150
    alpha = [0.5, 1.0, 2.0]
    rtol = 1e-13 if dtype == np.float64 else 2e-6
    for row in EXTREME_ROWS:
        for y in range(3):
            t = [int(k == y) for k in range(3)]
            head = jac.Head(jac.Softmax(), jac.FocalLoss(gamma=gamma, alpha=np.array(alpha), reduction="sum"))
            z = np.array([row], dtype=dtype)
            value, grad = head.value_and_grad(z, np.array([y]))
            H = head.hessian(z, np.array([y]))
            assert value.dtype == dtype and grad.dtype == dtype and H.dtype == dtype
            rv, rg, rH = _mp_derivatives(lambda x, t=t: _mp_focal_row(x, t, alpha, gamma), z[0].astype(np.float64))
            _close(value, rv, rtol, dtype)
            _close(grad[0], rg, rtol, dtype)
            _close(H[0], rH, rtol, dtype)
            Hc = head.hessian(z, np.array([y]), method="chain")  # finite, whatever γ
            assert np.all(np.isfinite(Hc)) and np.all(np.isfinite(head.ggn(z, np.array([y]))))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_binary_focal_at_extreme_logits_matches_mpmath(dtype, gamma):
    mp.dps = 150
    rtol = 1e-13 if dtype == np.float64 else 2e-6
    zs = np.array([[1e4, -1e4, 30.0, -30.0, 0.0, 100.0]], dtype=dtype)
    for tv in (0.0, 1.0, 0.3):
        t = np.full(zs.shape, tv, dtype=dtype)
        for alpha in (None, 0.25):
            head = jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss(gamma=gamma, alpha=alpha, reduction="none"))
            value, grad = head.value_and_grad(zs, t)
            H = np.diagonal(head.hessian(zs, t), axis1=-2, axis2=-1)
            for k, zk in enumerate(zs[0].astype(np.float64)):
                tk, ak = mp.mpf(float(t[0, k])), None if alpha is None else mp.mpf(alpha)
                rv, rg, rH = _mp_derivatives(lambda x, tk=tk, ak=ak: _mp_binary(x[0], tk, ak, gamma), [zk])
                for mine, ref in ((value[0, k], rv), (grad[0, k], rg[0]), (H[0, k], rH[0][0])):
                    _close(np.array([mine]), [ref], rtol, dtype)
            assert np.all(np.isfinite(head.hessian(zs, t, method="chain")))
            assert np.all(np.isfinite(head.ggn(zs, t)))


# -- second order, Fisher, checks ----------------------------------------------------------------------
HEADS = [
    lambda: jac.Head(jac.Softmax(), jac.FocalLoss(gamma=2.0)),
    lambda: jac.Head(jac.Softmax(), jac.FocalLoss(gamma=1.0, alpha=np.linspace(0.5, 2, K))),
    lambda: jac.Head(jac.Softmax(), jac.FocalLoss(gamma=0.5)),
    lambda: jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss()),
    lambda: jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss(gamma=0.5, alpha=None)),
]


@pytest.mark.parametrize("make", HEADS)
def test_ggn_and_its_factor(make):
    head = make()
    z, y, _ = _data(7)
    if isinstance(head.loss_fn, jac.BinaryFocalLoss):
        y = np.random.default_rng(8).random(z.shape)
    G = head.ggn(z, y)
    S = head.sqrt_ggn(z, y)
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), G, atol=1e-15)
    assert np.linalg.eigvalsh(G).min() >= -1e-15
    # the GGN is Jᵀ H_a J: the Jacobian and the loss's Hessian in a, written out
    a = head.activation(z)
    J, Ha = head.activation.jacobian(z), head.loss_fn.hessian(a, y)
    np.testing.assert_allclose(G, np.swapaxes(J, -1, -2) @ Ha @ J, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("make", HEADS)
def test_no_likelihood_no_exact_or_mc_fisher(make):
    head = make()
    z, y, _ = _data(9)
    if isinstance(head.loss_fn, jac.BinaryFocalLoss):
        y = np.random.default_rng(8).random(z.shape)
    for kind in ("exact", "mc"):
        with pytest.raises(ValueError, match="no negative log-likelihood"):
            head.fisher(z, y, kind=kind)
    with pytest.raises(ValueError, match="no negative log-likelihood"):
        jac.linear_curvature(np.ones((N, 2)), head, z, y, kind="fisher")
    g = head.loss_fn.with_reduction("none")
    rows = jac.Head(head.activation, g).grad(z, y)
    c = 1.0 / (N if isinstance(head.loss_fn, jac.FocalLoss) else N * K)
    np.testing.assert_allclose(head.fisher(z, y, kind="empirical"), c * np.einsum("ni,nj->nij", rows, rows), rtol=1e-12)


@pytest.mark.parametrize("make", [HEADS[0], *HEADS[2:]])
def test_checks_pass(make):
    head = make()  # (α of the walks' K: the registry walks run FocalLoss.variants)
    for check in (jac.check_head, jac.check_second_order, jac.checks.check_extreme, jac.checks.check_second_order_extreme):
        report = check(head)
        assert report.passed, report
        assert report.missing == [], report.missing


def test_generic_path_on_torch_tensors():
    z, yi, yp = _data(10)
    for head, y in ((jac.Head(jac.Softmax(), jac.FocalLoss(gamma=1.5, alpha=np.linspace(0.5, 2, K))), yi),
                    (jac.Head(jac.Softmax(), jac.FocalLoss(gamma=0.5)), yp),
                    (jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss(gamma=2.0)), np.random.default_rng(1).random(z.shape))):
        zt, yt = torch.tensor(z), torch.tensor(y)
        value, grad = head.value_and_grad(zt, yt)
        assert isinstance(grad, torch.Tensor)
        v0, g0 = head.value_and_grad(z, y)
        assert _rel(value.numpy(), v0) <= 1e-13 and _rel(grad.numpy(), g0) <= 1e-13
        for name in ("hessian", "ggn", "sqrt_ggn"):
            assert _rel(getattr(head, name)(zt, yt).numpy(), getattr(head, name)(z, y)) <= 1e-12, name


# -- errors ------------------------------------------------------------------------------------------
def test_clear_errors():
    with pytest.raises(ValueError, match="gamma must be >= 0; got -1"):
        jac.FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        jac.BinaryFocalLoss(gamma=-0.5)
    with pytest.raises((TypeError, ValueError), match="gamma"):
        jac.FocalLoss(gamma="2")
    with pytest.raises(ValueError, match=r"alpha must be a 1-d array of shape \(K,\); got shape \(2, 2\)"):
        jac.FocalLoss(alpha=np.ones((2, 2)))
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        jac.FocalLoss(alpha=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], or None / -1 to disable it; got 1.5"):
        jac.BinaryFocalLoss(alpha=1.5)
    z, y, _ = _data(11)
    head = jac.Head(jac.Softmax(), jac.FocalLoss(alpha=np.ones(K + 1)))
    with pytest.raises(ValueError, match=rf"alpha must have shape \(K,\) = \({K},\) to match a; got shape \({K + 1},\)"):
        head.loss(z, y)
    focal = jac.Head(jac.Softmax(), jac.FocalLoss())
    with pytest.raises(ValueError, match=rf"y: class indices must be in \[0, {K}\)"):
        focal.loss(z, np.full(N, K))
    with pytest.raises(ValueError, match="y must be class indices of shape"):
        focal.loss(z, np.zeros((N, K + 1)))
    with pytest.raises(TypeError, match="must have an integer dtype"):
        focal.loss(z, np.zeros(N))
    binary = jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss())
    with pytest.raises(ValueError, match=r"y: binary targets must be in \[0, 1\]"):
        binary.loss(z, np.full(z.shape, 2.0))
    with pytest.raises(ValueError, match="y must have the shape of a"):
        binary.loss(z, y)


def test_float32_stays_float32_and_registered():
    assert jac.LOSSES["focal"] is jac.FocalLoss and jac.LOSSES["binary_focal"] is jac.BinaryFocalLoss
    assert ("softmax", "focal", True) in jac.pairs() and ("sigmoid", "binary_focal", True) in jac.pairs()
    z, y, _ = _data(12)
    z = z.astype(np.float32)
    for head, yy in ((jac.Head(jac.Softmax(), jac.FocalLoss()), y),
                     (jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss()), (z > 0).astype(np.float32))):
        for out in (head.grad(z, yy), head.hessian(z, yy), head.hvp(z, yy, z), head.ggn(z, yy), head.sqrt_ggn(z, yy)):
            assert out.dtype == np.float32 and np.all(np.isfinite(out))


# -- long-double references for tests/test_edges.py (every fused rule has one) -------------------
def _ld_targets(y, K, weights=None):
    y = np.asarray(y)
    c = np.eye(K, dtype=LD)[y] if y.dtype.kind in "iu" else y.astype(LD)
    return c if weights is None else c * np.asarray(weights, dtype=LD)


def _ld_softmax_parts(act, z):
    """``(x, d, p, q, log p, G)`` in long double: ``q = 1 − p`` as the others' exp over the
    total, ``G`` each row's rounding reach (the largest gap, plus |x| when z/T was rounded)."""
    T = LD(getattr(act, "temperature", 1.0))
    x = np.asarray(z, dtype=LD) / T
    d = x - x.max(axis=-1, keepdims=True)
    e = np.exp(d)
    top = d == 0
    first = (np.cumsum(top, axis=-1) == 1) & top  # one top entry; the others (ties too) summed
    t = np.where(first, 0, e).sum(axis=-1, keepdims=True)
    S = 1 + t
    q = np.where(first, t, S - e) / S
    G = -d.min(axis=-1, keepdims=True) + (np.abs(x).max(axis=-1, keepdims=True) if T != 1 else 0)
    return x, d, e / S, q, d - np.log1p(t), G, T


def focal_longdouble(act, loss, z, y):
    """(values, value scale, grads, grad scale, denominator) of Softmax + FocalLoss in long
    double; the scales bound what rounding the inputs (z − max, and z/T) moves."""
    K = np.shape(z)[-1]
    c = _ld_targets(y, K, loss.alpha)
    _, d, p, q, logp, G, T = _ld_softmax_parts(act, z)
    g = LD(loss.gamma)
    qg = q**g if g else np.ones_like(q)
    terms = -c * qg * logp
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.where(q > 0, logp / np.where(q > 0, q, 1), -1)
    u = -c * qg * (1 - g * p * L)
    off = ~np.eye(K, dtype=bool)
    others = np.einsum("...j,kj->...k", u, off.astype(LD))
    grads = (q * u - p * others) / T
    reach = 1 + (1 + g) * (1 + G)
    gscale = (q * np.abs(u) + p * np.einsum("...j,kj->...k", np.abs(u), off.astype(LD))) * reach / T
    return terms.sum(axis=-1), (np.abs(terms) * reach).sum(axis=-1), grads, gscale, LD(np.prod(np.shape(z)[:-1]))


def _ld_softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def binary_focal_longdouble(act, loss, z, y):
    """(values, scale, grads, grad scale, denominator) of Sigmoid + BinaryFocalLoss in long double."""
    x, t = np.asarray(z, dtype=LD), np.asarray(y, dtype=LD)
    g = LD(loss.gamma)
    s, sb = np.exp(-_ld_softplus(-x)), np.exp(-_ld_softplus(x))
    ce = (1 - t) * _ld_softplus(x) + t * _ld_softplus(-x)
    m = s * (1 - t) + sb * t
    mg = m**g if g else np.ones_like(m)
    w = mg if loss.alpha is None else (loss.alpha * t + (1 - loss.alpha) * (1 - t)) * mg
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(m > 0, s * sb / np.where(m > 0, m, 1), 1)
    grads = w * ((1 - t) * s - t * sb + g * ce * rho * (1 - 2 * t))
    gscale = w * ((1 - t) * s + t * sb + g * ce * rho * np.abs(1 - 2 * t)) * (2 + 2 * g)
    values = w * ce
    return values, values * (2 + 2 * g), grads, gscale, LD(np.size(z))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_hessian_where_the_others_mass_is_subnormal(gamma):
    """float32 logits 89 apart: the others' mass e^−89 is subnormal in float32 and 1/it
    overflows. The Hessian stays finite, raises no warning (the suite turns warnings into
    errors), and equals the float64 one rounded (a hypothesis draw found the overflow)."""
    head = jac.Head(jac.Softmax(), jac.FocalLoss(gamma=gamma))
    z = np.array([[0.0, 89.0], [89.0, 0.0], [0.0, 40.0]])
    y = np.array([1, 1, 1])
    h32 = head.hessian(z.astype(np.float32), y)
    h64 = head.hessian(z, y)
    assert h32.dtype == np.float32 and np.all(np.isfinite(h32))
    np.testing.assert_allclose(h32, h64, rtol=1e-5, atol=1e-6 * np.abs(h64).max())
