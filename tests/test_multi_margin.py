"""MultiMargin against torch's MultiMarginLoss (float64, 1e-12 relative).

torch has no second derivative of ``multi_margin_loss`` (no double backward), so the Hessian
reference is ``torch.func.hessian`` of the loss written with torch ops (clamp and pow), itself
checked against ``F.multi_margin_loss`` in value and gradient first.
"""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ("mean", "sum", "none")
N, K = 6, 4
RTOL = 1e-12
OPTIONS = [
    pytest.param({}, id="p1"),
    pytest.param({"p": 2}, id="p2"),
    pytest.param({"p": 1, "margin": 0.5, "weight": np.array([0.5, 2.0, 1.0, 3.0])}, id="p1-margin-weight"),
    pytest.param({"p": 2, "margin": 2.0, "weight": np.array([0.5, 2.0, 1.0, 3.0])}, id="p2-margin-weight"),
]


def _data(seed=0, dtype=np.float64, shape=(N, K)):
    """Scores clear of the kinks (every margin at least 0.05 from 0)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    loss = jac.MultiMargin(margin=1.0)
    for _ in range(100):
        z = rng.normal(size=shape)
        if loss.kinks(z, y).min() > 0.05 and jac.MultiMargin(margin=0.5).kinks(z, y).min() > 0.05 and \
                jac.MultiMargin(margin=2.0).kinks(z, y).min() > 0.05:
            break
    return z.astype(dtype), y


def _torch_formula(z, y, p, margin, weight, reduction):
    """torch's definition with torch ops: Σ_{i≠y} w_y max(0, margin − z_y + z_i)^p / K."""
    zy = z.gather(-1, y[..., None])
    m = (margin - zy + z).clamp(min=0) ** p
    m = m * (1 - F.one_hot(y, z.shape[-1]).to(z.dtype))
    per = m.sum(-1) / z.shape[-1]
    if weight is not None:
        per = per * weight[y]
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


def _torch_args(opts):
    w = opts.get("weight")
    return opts.get("p", 1), opts.get("margin", 1.0), None if w is None else torch.tensor(w)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_value_and_gradient_match_torch_by_every_method(opts, reduction):
    z, y = _data(1)
    p, margin, weight = _torch_args(opts)
    zt, yt = torch.tensor(z, requires_grad=True), torch.tensor(y)
    ref = F.multi_margin_loss(zt, yt, p=p, margin=margin, weight=weight, reduction=reduction)
    (ref.sum() if reduction == "none" else ref).backward()
    # the torch-op formula is torch's loss (the Hessian reference below rests on it)
    zt2 = torch.tensor(z, requires_grad=True)
    mine = _torch_formula(zt2, yt, p, margin, weight, reduction)
    (mine.sum() if reduction == "none" else mine).backward()
    np.testing.assert_allclose(mine.detach().numpy(), ref.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(zt2.grad.numpy(), zt.grad.numpy(), rtol=RTOL, atol=1e-300)
    head = jac.Head(jac.Identity(), jac.MultiMargin(reduction=reduction, **opts))
    for method in ("vjp", "jacobian"):
        value, grad = head.value_and_grad(z, y, method=method)
        np.testing.assert_allclose(value, ref.detach().numpy(), rtol=RTOL, err_msg=method)
        np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=RTOL, atol=1e-300, err_msg=method)
    # one-hot rows are read as their indices
    np.testing.assert_allclose(head.loss(z, np.eye(K)[y]), ref.detach().numpy(), rtol=RTOL)


def test_torchs_documented_example():
    z = np.array([[0.1, 0.2, 0.4, 0.8]])
    assert np.isclose(float(jac.MultiMargin()(z, np.array([3]))), 0.325, rtol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_hessian_matches_torch_func_hessian(opts, reduction):
    z, y = _data(2)
    p, margin, weight = _torch_args(opts)
    yt = torch.tensor(y)
    Hfull = torch.func.hessian(lambda x: _torch_formula(x, yt, p, margin, weight, reduction).sum())(torch.tensor(z)).numpy()
    blocks = np.stack([Hfull[n, :, n, :] for n in range(N)])
    head = jac.Head(jac.Identity(), jac.MultiMargin(reduction=reduction, **opts))
    for method in ("auto", "chain"):
        np.testing.assert_allclose(head.hessian(z, y, method=method), blocks, rtol=RTOL, atol=1e-300)
    if p == 1:
        assert not head.hessian(z, y).any()
    else:  # 2 w_y / K Σ_active (e_i − e_y)(e_i − e_y)ᵀ, written out
        c = 1.0 / N if reduction == "mean" else 1.0
        w = np.ones(K) if opts.get("weight") is None else opts["weight"]
        ref = np.zeros((N, K, K))
        for n in range(N):
            for i in range(K):
                if i != y[n] and margin - z[n, y[n]] + z[n, i] > 0:
                    e = np.eye(K)[i] - np.eye(K)[y[n]]
                    ref[n] += c * 2 * w[y[n]] / K * np.outer(e, e)
        np.testing.assert_allclose(head.hessian(z, y), ref, rtol=RTOL, atol=1e-300)
    v = np.random.default_rng(3).normal(size=z.shape)
    np.testing.assert_allclose(head.hvp(z, y, v), np.einsum("nij,nj->ni", blocks, v), rtol=1e-11, atol=1e-300)
    G = head.ggn(z, y)
    S = head.sqrt_ggn(z, y)
    np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), G, rtol=1e-10, atol=1e-14)


def test_not_a_likelihood_refuses_exact_and_mc_fisher():
    z, y = _data(4)
    head = jac.Head(jac.Identity(), jac.MultiMargin(p=2))
    for kind in ("exact", "mc"):
        with pytest.raises(ValueError, match="MultiMargin is no negative log-likelihood"):
            head.fisher(z, y, kind=kind)
    g = jac.Head(jac.Identity(), jac.MultiMargin(p=2, reduction="none")).grad(z, y)
    np.testing.assert_allclose(head.fisher(z, y, kind="empirical"), np.einsum("ni,nj->nij", g, g) / N, rtol=1e-12)


def test_kinks_are_declared_and_the_checks_keep_clear_of_them():
    loss = jac.MultiMargin()
    z = np.array([[0.0, 1.0, -0.3]])
    y = np.array([0])
    # margins 1 − 0 + z_i: 2.0 (i = 1), 0.7 (i = 2): the row's nearest kink is 0.7 away
    np.testing.assert_allclose(loss.kinks(z, y), np.full((1, 3), 0.7))
    head = jac.Head(jac.Identity(), jac.MultiMargin(p=2))
    z, y = jac.checks.example_inputs(head, shape=(50, K))
    assert loss.kinks(z, y).min() >= jac.checks.KINK_MARGIN
    for report in (jac.check_head(head), jac.check_second_order(head), jac.checks.check_extreme(head)):
        assert report.passed, report
        assert report.missing == []


def test_float32_and_nan_and_batch_axes():
    z, y = _data(5, np.float32, shape=(2, 3, K))
    head = jac.Head(jac.Identity(), jac.MultiMargin(p=2, weight=np.linspace(0.5, 2, K)))
    assert head.loss(z, y).dtype == np.float32
    for out in (head.grad(z, y), head.hessian(z, y), head.ggn(z, y)):
        assert out.dtype == np.float32
    ref = jac.Head(jac.Identity(), jac.MultiMargin(p=2, weight=np.linspace(0.5, 2, K))).grad(z.astype(np.float64), y)
    np.testing.assert_allclose(head.grad(z, y), ref, rtol=1e-5, atol=1e-7)
    zn = z.astype(np.float64).reshape(-1, K)
    zn[0, 1] = np.nan
    vals = jac.MultiMargin(reduction="none")(zn, y.reshape(-1))
    assert np.isnan(vals[0]) and np.isfinite(vals[1:]).all()


def test_torch_arrays_take_the_generic_path():
    z, y = _data(6)
    head = jac.Head(jac.Identity(), jac.MultiMargin(p=2, margin=0.5, weight=np.linspace(0.5, 2, K)))
    zt, yt = torch.tensor(z), torch.tensor(y)
    np.testing.assert_allclose(head.grad(zt, yt).numpy(), head.grad(z, y), rtol=1e-14)
    np.testing.assert_allclose(head.hessian(zt, yt).numpy(), head.hessian(z, y), rtol=1e-14)


def test_clear_errors():
    z, y = _data(7)
    head = jac.Head(jac.Identity(), jac.MultiMargin())
    with pytest.raises(ValueError, match=r"class index 4 is out of range for K = 4"):
        head.loss(z, np.full(N, 4))
    with pytest.raises(ValueError, match="y must be integer class indices.*got dtype float64"):
        head.loss(z, y.astype(float))
    with pytest.raises(ValueError, match=r"y must be class indices of shape \(6,\)"):
        head.loss(z, y[:3])
    with pytest.raises(ValueError, match="one-hot rows"):
        head.loss(z, np.full((N, K), 0.25))
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        jac.MultiMargin(p=3)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        jac.MultiMargin(margin=-1.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        jac.MultiMargin(weight=np.ones(3))(z, y)
    with pytest.raises(ValueError, match="weight must be a finite 1-d array"):
        jac.MultiMargin(weight=np.ones((2, 2)))
    for act in (jac.Softmax(), jac.LogSoftmax(), jac.Sparsemax()):
        with pytest.raises(ValueError, match="MultiMargin is torch's hinge on raw scores"):
            jac.Head(act, jac.MultiMargin())
