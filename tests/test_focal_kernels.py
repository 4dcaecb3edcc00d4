"""The focal kernels (``focal_index``, ``focal_coefficients``, ``binary_focal`` of
:mod:`jacobians._kernels`): numba's and numpy's sets against long double, over the kernels'
branches (unshifted and shifted exps, ties, far targets, logits of ±1e4, γ of 0, 1, 2, 3 and
non-integer, weights); the fused heads that call them on batches and temperatures against
torch in float64, float32 against float64.

Every expected value comes from the formulas written in long double (softmax's log from
the shifted logits, ``1 − p`` as ``−expm1(log p)``) or from torch autograd.
"""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac
from jacobians._kernels import numpy_impl
from jacobians.numerics import softmax as nsoftmax

LD = np.longdouble
DTYPES = (np.float64, np.float32)
GAMMAS = (0.0, 0.5, 1.0, 2.0, 2.5, 3.0)
#: the most a kernel's entry may be off the long-double one, in eps of the entry's scale:
#: numba works in float64 (float32 too: about half an ulp plus the final rounding); numpy's
#: float32 exp is off by up to 2.4 ulp and z − max is rounded to float32 (shifted rows)
BOUND = {("numba", np.float64): 16, ("numba", np.float32): 4, ("numpy", np.float64): 16, ("numpy", np.float32): 64}


def _sets():
    out = [("numpy", numpy_impl)]
    try:
        from jacobians._kernels import numba_impl
    except ImportError:  # the fast extra (numba) is not installed: the numpy set alone
        return out
    return [*out, ("numba", numba_impl)]


SETS = _sets()


def _logits(rng, dtype, n=120, K=7, in_bounds=False):
    """Rows across the branches: normal, ×10, ties at the top, the unshifted bound and past
    it, ±1e4 (shifted), one entry far above the others. ``in_bounds``: only rows within the
    unshifted bound (no ±1e4, nothing past it), so that the kernels may take exps unshifted."""
    B = nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)]
    ties = rng.normal(size=(n, K))
    ties[:, 1] = ties[:, 3] = ties.max(axis=-1) + 0.5
    far = rng.normal(size=(n, K))
    far[:, 2] = 60.0
    rows = [rng.normal(size=(n, K)), rng.normal(size=(n, K)) * 10, ties, far, B - rng.random((n, K)) * 2 * B,
            rng.normal(size=(n, K)) * 3 + rng.choice([1e4, -1e4], size=(n, 1)), np.zeros((2, K))]
    if in_bounds:
        del rows[5]
    x = np.concatenate(rows).astype(dtype)
    if not in_bounds:
        x[::9, 0] = np.nextafter(dtype(B), dtype(np.inf))
    return x


def _softmax_ld(x):
    """``(log p, q = 1 − p, cond)`` in long double from the shifted logits, without
    cancellation: ``log p = (x − m) − log1p(Σ_{k≠top} e)`` and ``q_k = Σ_{j≠k} e_j / Σ e``
    summed directly. ``cond = 1 + |x − m| + Σ p |x − m|``: what a kernel's relative error in
    an entry scales with, the shifted logits ``x − m`` being rounded (a relative error δ in
    them moves ``exp(x − m)`` by ``|x − m| δ``)."""
    xl = np.asarray(x, LD)
    top = xl.argmax(axis=-1)[..., None]
    d = xl - np.take_along_axis(xl, top, axis=-1)
    e = np.exp(d)
    off = ~np.eye(x.shape[-1], dtype=bool)
    others = (e[..., None, :] * off).sum(axis=-1)  # Σ_{j≠k} e_j
    rest = np.take_along_axis(others, top, axis=-1)
    ls = d - np.log1p(rest)
    ad = np.abs(d)
    with np.errstate(invalid="ignore"):  # (rows of one nonzero exp: no others)
        spread = np.nan_to_num((e * ad)[..., None, :] * off).sum(axis=-1) / others
    cond = 1 + ad + np.nan_to_num(spread) + (np.exp(ls) * ad).sum(axis=-1, keepdims=True)
    return ls, others / (1 + rest), cond


def _focal_u_ld(c, ls, q, gamma):
    """``(c q^γ log p, u = −c q^γ (1 − γ p L), p)`` in long double, ``L = log p / q``."""
    p = np.exp(ls)
    qg = q**gamma if gamma else np.ones_like(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.where(q > 0, ls / np.where(q > 0, q, 1), -1)
    return c * qg * ls, -c * qg * (1 - gamma * p * L), p


def _within(got, exact, scale, dtype, k, what):
    err = np.abs(np.asarray(got, LD) - exact)
    allowed = k * np.finfo(dtype).eps * np.asarray(scale, LD) + np.finfo(dtype).tiny
    worst = float((err / allowed).max())
    assert np.all(np.isfinite(got)) and worst <= 1, f"{what}: {worst:.2f} of {k} eps of the scale"


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_index_kernel_matches_long_double(name, impl, dtype, gamma, weighted, rng):
    x = _logits(rng, dtype)
    n, K = x.shape
    idx = rng.integers(0, K, n)
    idx[::4] = x[::4].argmin(axis=-1)  # far below the max
    idx[1::4] = x[1::4].argmax(axis=-1)  # at the top
    w = rng.uniform(0.2, 2.0, n).astype(dtype) if weighted else None
    scale = dtype(1 / 3)
    keep = x.copy()
    v, g = impl.focal_index(x, idx, w, gamma, scale)
    assert np.array_equal(x, keep) and v.dtype == dtype and g.dtype == dtype and g.shape == x.shape
    ls, qs, cond = _softmax_ld(x)
    rows = np.arange(n)
    wl = np.ones(n, LD) if w is None else w.astype(LD)
    q = qs[rows, idx]
    val, u, _ = _focal_u_ld(wl, ls[rows, idx], q, gamma)
    exact_g = -np.exp(ls) * (u * LD(scale))[:, None]
    exact_g[rows, idx] = q * u * LD(scale)
    k = BOUND[name, dtype]
    cy = cond[rows, idx]
    _within(v, -val, np.abs(val) * cy, dtype, k, f"{name} values")
    _within(g, exact_g, np.abs(exact_g) * (cond + cy[:, None]), dtype, k, f"{name} gradient")


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("K, in_bounds", [(7, False), (7, True), (11, False), (11, True), (200, False), (200, True)])
def test_focal_coefficient_kernel_matches_long_double(name, impl, dtype, gamma, K, in_bounds, rng):
    """Short rows (numba: a chunk of rows at a time, exps unshifted when every logit is in
    bounds; below 12 entries the terms two rows at a time, K = 11 in bounds ending a chunk on
    an odd row) and long ones (a row at a time, shifted)."""
    x = _logits(rng, dtype, n={7: 120, 11: 121}.get(K, 12), K=K, in_bounds=in_bounds)
    n, K = x.shape
    c = (rng.dirichlet(np.ones(K), n) * rng.choice([1.0, 2.5], size=(n, 1))).astype(dtype)
    c[::7] = np.eye(K, dtype=dtype)[rng.integers(0, K)]
    c[3::7, :2] = 0
    keep = x.copy(), c.copy()
    v, g = impl.focal_coefficients(x, c, gamma, 0.5)
    assert np.array_equal(x, keep[0]) and np.array_equal(c, keep[1]) and v.dtype == dtype and g.dtype == dtype
    ls, q, cond = _softmax_ld(x)
    terms, u, p = _focal_u_ld(c.astype(LD), ls, q, gamma)
    W = -u  # >= 0
    comp = W.sum(axis=-1, keepdims=True) - W
    exact_g = (q * u + p * comp) / 2
    Wc = W * cond
    k = BOUND[name, dtype]
    _within(v, -terms.sum(axis=-1), (np.abs(terms) * cond).sum(axis=-1), dtype, k, f"{name} values")
    _within(g, exact_g, (Wc * q + p * cond * (Wc.sum(axis=-1, keepdims=True) - Wc)) / 2, dtype, k, f"{name} gradient")


def _softplus_ld(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", [None, 0.25, 1.0])
def test_binary_focal_kernel_matches_long_double(name, impl, dtype, gamma, alpha, rng):
    z = np.concatenate([rng.normal(size=300) * 3, rng.normal(size=100) * 40, [0.0, -0.0, 1e-30, 80, -80, 1e4, -1e4],
                        rng.uniform(-100, 100, 193)]).astype(dtype).reshape(20, 30)
    t = np.where(rng.random(z.shape) < 0.7, rng.random(z.shape) < 0.5, rng.random(z.shape)).astype(dtype)
    keep = z.copy(), t.copy()
    v, g = impl.binary_focal(z, t, gamma, alpha, 0.25)
    assert np.array_equal(z, keep[0]) and np.array_equal(t, keep[1]) and v.dtype == dtype and v.shape == z.shape
    zl, tl = z.astype(LD), t.astype(LD)
    s, sb = np.exp(-_softplus_ld(-zl)), np.exp(-_softplus_ld(zl))
    ce = (1 - tl) * _softplus_ld(zl) + tl * _softplus_ld(-zl)
    m = s * (1 - tl) + sb * tl
    mg = m**gamma if gamma else np.ones_like(m)
    at = np.ones_like(zl) if alpha is None else alpha * tl + (1 - alpha) * (1 - tl)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(m > 0, s * sb / np.where(m > 0, m, 1), 1)
    extra = gamma * ce * rho * (1 - 2 * tl)
    exact_g = at * mg * ((s * (1 - tl) - tl * sb) + extra) / 4
    gscale = at * mg * ((s * (1 - tl) + tl * sb) + np.abs(extra)) / 4
    k = BOUND[name, dtype]
    _within(v, at * ce * mg, at * ce * mg, dtype, k, f"{name} values")
    _within(g, exact_g, gscale, dtype, k, f"{name} gradient")


# -- the heads that call them: batches, temperatures, float32 ---------------------------------------
torch = pytest.importorskip("torch", reason="torch (the test extra) is not installed")


def _torch_focal(z, t, gamma, alpha, T):
    logp = torch.log_softmax(z / T, -1)
    a = torch.ones(z.shape[-1], dtype=z.dtype) if alpha is None else torch.as_tensor(alpha, dtype=z.dtype)
    return -(t * a * (1 - logp.exp()) ** gamma * logp).sum(-1)


@pytest.mark.parametrize("form", ["index", "probability"])
@pytest.mark.parametrize("T", [1.0, 0.7])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_focal_on_batches_and_temperatures_matches_torch(form, T, reduction, rng):
    K = 5
    z = rng.normal(size=(3, 4, K)) * 3
    y = rng.integers(0, K, (3, 4)) if form == "index" else rng.dirichlet(np.ones(K), (3, 4))
    t = np.eye(K)[y] if form == "index" else y
    alpha = np.linspace(0.5, 2.0, K)
    head = jac.Head(jac.Softmax(temperature=T), jac.FocalLoss(gamma=2.0, alpha=alpha, reduction=reduction))
    zt = torch.tensor(z, requires_grad=True)
    rows = _torch_focal(zt, torch.tensor(t), 2.0, alpha, T)
    ref = rows.mean() if reduction == "mean" else rows.sum() if reduction == "sum" else rows
    (gref,) = torch.autograd.grad(ref.sum(), zt)
    value, grad = head.value_and_grad(z, y)
    assert np.shape(value) == tuple(ref.shape) and grad.shape == z.shape
    np.testing.assert_allclose(value, ref.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(grad, gref.numpy(), rtol=1e-12, atol=1e-15)
    v32, g32 = head.value_and_grad(z.astype(np.float32), y if form == "index" else y.astype(np.float32))
    assert np.asarray(v32).dtype == np.float32 and g32.dtype == np.float32
    np.testing.assert_allclose(v32, value, rtol=2e-6)
    np.testing.assert_allclose(g32, grad, rtol=2e-5, atol=2e-6 * np.abs(grad).max())


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_binary_focal_on_a_batch_matches_torch(gamma, rng):
    z = rng.normal(size=(2, 3, 6)) * 4
    t = (rng.random(z.shape) < 0.5).astype(np.float64)
    head = jac.Head(jac.Sigmoid(), jac.BinaryFocalLoss(gamma=gamma, alpha=0.25))
    zt = torch.tensor(z, requires_grad=True)
    p = torch.sigmoid(zt)
    tt = torch.tensor(t)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(zt, tt, reduction="none")
    ref = ((0.25 * tt + 0.75 * (1 - tt)) * ce * (1 - (p * tt + (1 - p) * (1 - tt))) ** gamma).mean()
    (gref,) = torch.autograd.grad(ref, zt)
    value, grad = head.value_and_grad(z, t)
    np.testing.assert_allclose(value, ref.item(), rtol=1e-13)
    np.testing.assert_allclose(grad, gref.numpy(), rtol=1e-12, atol=1e-18)
    v32, g32 = head.value_and_grad(z.astype(np.float32), t.astype(np.float32))
    np.testing.assert_allclose(v32, value, rtol=2e-6)
    np.testing.assert_allclose(g32, grad, rtol=2e-5, atol=1e-6 * np.abs(grad).max())


@pytest.mark.parametrize("name,impl", SETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 1.0])  # (γ = 2: q³ underflows float32)
@pytest.mark.parametrize("K", [5, 200])
@pytest.mark.parametrize("in_bounds", [True, False])
def test_focal_coefficient_gradient_at_a_confident_top_keeps_1_minus_p(name, impl, dtype, gamma, K, in_bounds):
    """A one-hot target on a top that holds all but e^−40 of the mass: the top's gradient is
    ``q_t u_t`` with ``q_t = 1 − p_t ≈ K e^−40`` (no ``1 − p`` formed: it would round to 0)."""
    rng = np.random.default_rng(K)
    x = rng.normal(size=(6, K))
    x[:, 1] = 40.0
    x = (x + (0.0 if in_bounds else 1e4)).astype(dtype)  # 1e4: past the unshifted bound
    c = np.zeros_like(x)
    c[:, 1] = 1
    _, g = impl.focal_coefficients(x, c, gamma, 1.0)
    xl = x.astype(LD)
    e = np.exp(xl - xl[:, 1:2])
    rest = np.delete(e, 1, axis=-1).sum(axis=-1)  # e_top = 1 exactly
    q_t, p_t = rest / (1 + rest), 1 / (1 + rest)
    L = -np.log1p(rest) / q_t  # log p_t without forming p_t
    u_t = -q_t**gamma * (1 - gamma * p_t * L)
    np.testing.assert_allclose(g[:, 1].astype(LD), q_t * u_t, rtol=64 * np.finfo(dtype).eps)
