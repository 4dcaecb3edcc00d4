"""The last layer: ``linear_curvature`` and ``linear_gradient`` against the definition —
central differences of E through ``z = φ Wᵀ + b`` with respect to θ = vec([W | b]) —, the
three structures against each other, every pair and option of the registries, both
dtypes, with and without a bias, batch axes, the memory budget, and errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import describe, head_targets, peak_rss, variant_options

import jacobians as jac
from jacobians import checks, numerical_grad, numerical_jacobian

N, D, K = 12, 3, 4


def _theta(W, b, bias):
    return np.concatenate([W, b[:, None]], axis=1).ravel() if bias else W.ravel()


def _unpack(theta, bias):
    M = theta.reshape(K, D + 1) if bias else theta.reshape(K, D)
    return M[:, :D], (M[:, D] if bias else np.zeros(K))


def _problem(head, rng, y=None, dtype=np.float64, bias=True):
    X = rng.normal(size=(N, D))
    own = getattr(head.loss_fn, "example_input", None) if isinstance(head.activation, jac.Identity) else None
    if own is not None:  # z is the loss's input: one feature positive, so that z can stay inside its domain
        X[:, 0] = rng.uniform(0.5, 1.5, size=N)
    if y is None:
        y = head_targets(head, rng, (N, K))
    # logits clear of the head's kinks (ReLU at 0, MAE at a = y, ...): draw again until they are
    for _ in range(500):
        W, b = rng.normal(size=(K, D)) * 0.7, (rng.normal(size=K) * 0.3 if bias else np.zeros(K))
        if own is not None:  # the layer fitted to the loss's own draw (σ² > 0 for GaussianNLL)
            X1 = np.concatenate([X, np.ones((N, 1))], 1) if bias else X
            M = np.linalg.lstsq(X1, own((N, K), rng), rcond=None)[0].T
            W, b = M[:, :D], (M[:, D] if bias else np.zeros(K))
            try:
                head.loss(X @ W.T + b, y)
            except ValueError:  # outside the loss's domain: draw again
                continue
        dist, _ = checks.inputs._head_distance(head, X @ W.T + b, np.asarray(y))
        if np.all(dist >= 5e-3):
            break
    return X.astype(dtype), W, b, y


def _curvature_by_differences(X, head, W, b, y, bias):
    """∂²E/∂θ∂θ by central differences of linear_gradient (itself checked below)."""
    def grad(theta):
        Wt, bt = _unpack(theta, bias)
        return jac.linear_gradient(X, head, X @ Wt.T + bt, y, bias=bias).ravel()

    return numerical_jacobian(lambda t: grad(t[0])[None], _theta(W, b, bias)[None])[0]


CASES = []
for p in jac.pairs():
    acls, lcls = jac.get_activation(p.activation), jac.get_loss(p.loss)
    for lopt in variant_options(lcls, K):
        for aopt in ([{}] + acls.variants(K)) if not lopt(K) else [{}]:
            try:
                jac.Head(acls(**aopt), lcls(**lopt(K)))
            except ValueError:
                continue
            CASES.append(pytest.param(acls, aopt, lcls, lopt, id=f"{describe(acls, aopt)}+{describe(lcls, lopt(K))}"))


@pytest.mark.parametrize(("acls", "aopt", "lcls", "lopt"), CASES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_hessian_through_the_layer_matches_the_definition(acls, aopt, lcls, lopt, bias, rng):
    head = jac.Head(acls(**aopt), lcls(**lopt(K)))
    X, W, b, y = _problem(head, rng, bias=bias)
    z = X @ W.T + b
    ref = _curvature_by_differences(X, head, W, b, y, bias)
    H = jac.linear_curvature(X, head, z, y, kind="hessian", bias=bias)
    P = K * (D + 1) if bias else K * D
    assert H.shape == (P, P)
    np.testing.assert_allclose(H, ref, rtol=0, atol=2e-7 * max(1.0, np.abs(ref).max()))
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-13 * max(1.0, np.abs(H).max()))
    floor = _curvature_terms(head, z, y)
    for kind in ("hessian", "ggn", "empirical_fisher") + (("fisher", "fisher_mc") if _is_likelihood(head) else ()):
        # fisher_mc with several columns a row: a one-column factor (the empirical Fisher) hides
        # a diagonal taken as (Σ_c S[:, c])² instead of Σ_c S[:, c]²
        mc = {"mc_samples": 3, "seed": 5}
        full = jac.linear_curvature(X, head, z, y, kind=kind, bias=bias, **mc)
        tol = 1e-11 * max(np.abs(full).max(), floor, 1e-300)  # round-off of the terms summed, in any order
        diag = jac.linear_curvature(X, head, z, y, kind=kind, structure="diag", bias=bias, **mc)
        assert diag.shape == (K, P // K)
        np.testing.assert_allclose(diag.ravel(), np.diag(full), rtol=0, atol=tol)
        small = jac.linear_curvature(X, head, z, y, kind=kind, bias=bias, max_bytes=1, **mc)  # one row a block
        np.testing.assert_allclose(small, full, rtol=0, atol=tol)
        A, B = jac.linear_curvature(X, head, z, y, kind=kind, structure="kron", bias=bias, **mc)
        blocks = _blocks(head, kind, z, y)
        np.testing.assert_allclose(A, blocks.sum(axis=0), rtol=0, atol=1e-11 * max(np.abs(blocks).max(), floor, 1e-300))
        Xt = np.concatenate([X, np.ones((N, 1))], 1) if bias else X
        np.testing.assert_allclose(B, Xt.T @ Xt / N, rtol=1e-13)
    if head.ggn_is_hessian:
        np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind="ggn", bias=bias), H, rtol=1e-12, atol=1e-15)


def _curvature_terms(head, z, y) -> float:
    """Size of the terms of ``Σ_i (dE/da_i) ∇²a_i`` (its operator ``diag(d) − U Vᵀ``): where
    they cancel (3-entmax is linear on a support of two entries, so with MAE's gradient these
    blocks are exactly 0), a block is round-off of these terms, not of its own size."""
    if head.logits_loss:
        return 0.0
    op = jac.operators.as_low_rank(head.activation.hessian_vjp_operator(z, head.loss_fn.grad(head.activation(z), y)))
    if isinstance(op, jac.operators.DenseJacobian):
        return float(np.abs(op.dense()).max())
    terms = np.abs(op.d).max(initial=0.0) + np.einsum("...kr,...jr->...", np.abs(op.U), np.abs(op.V)).max(initial=0.0)
    return float(terms)


def _is_likelihood(head):
    return getattr(head.loss_fn, "predictive", None) is not None and not head.logits_loss


def _blocks(head, kind, z, y):
    if kind == "hessian":
        return head.hessian(z, y)
    if kind == "ggn":
        return head.ggn(z, y)
    if kind == "fisher_mc":  # the same draws as linear_curvature's (seed 5, rows 0..N-1)
        S = head.sqrt_ggn_sampled(z, 3, seed=5, y=y)
        return S @ np.swapaxes(S, -1, -2)
    return head.fisher(z, y, {"fisher": "exact", "empirical_fisher": "empirical"}[kind])


def test_curvature_through_the_loss_itself(rng):
    """Second differences of head.loss through z = φ Wᵀ + b, not through the gradient."""
    head = jac.Head(jac.Softmax(temperature=0.8), jac.CrossEntropy(label_smoothing=0.1, weight=np.linspace(0.5, 2, K)))
    X, W, b, y = _problem(head, rng)

    def loss(theta):
        Wt, bt = _unpack(theta, True)
        return head.loss(X @ Wt.T + bt, y)

    ref = numerical_jacobian(lambda t: numerical_grad(loss, t[0], eps=1e-4)[None], _theta(W, b, True)[None], eps=1e-4)[0]
    H = jac.linear_curvature(X, head, X @ W.T + b, y, kind="hessian")
    np.testing.assert_allclose(H, ref, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradient_is_the_gradient_in_theta(bias, rng):
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(pos_weight=np.linspace(0.5, 2, K)))
    X, W, b, y = _problem(head, rng, bias=bias)

    def loss(theta):
        Wt, bt = _unpack(theta, bias)
        return head.loss(X @ Wt.T + bt, y)

    G = jac.linear_gradient(X, head, X @ W.T + b, y, bias=bias)
    assert G.shape == (K, D + 1 if bias else D)
    np.testing.assert_allclose(G.ravel(), numerical_grad(loss, _theta(W, b, bias)), atol=1e-9)


def test_kron_is_exact_when_every_block_is_the_same(rng):
    head = jac.Head(jac.Identity(), jac.MeanSquaredError())
    X, W, b, y = _problem(head, rng)
    z = X @ W.T + b
    full = jac.linear_curvature(X, head, z, y, kind="hessian")
    kron = jac.linear_curvature(X, head, z, y, kind="hessian", structure="kron")
    assert isinstance(kron, jac.Kron)
    np.testing.assert_allclose(kron.dense(), full, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(kron.dense(), np.kron(kron.A, kron.B))
    # elsewhere an approximation, symmetric and positive semi-definite
    ce = jac.Head(jac.Softmax(), jac.CrossEntropy())
    yc = rng.integers(0, K, size=N)
    approx = jac.linear_curvature(X, ce, z, yc, structure="kron").dense()
    np.testing.assert_allclose(approx, approx.T, atol=1e-15)
    assert np.linalg.eigvalsh(approx).min() >= -1e-14
    assert not np.allclose(approx, jac.linear_curvature(X, ce, z, yc))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_axes_and_dtypes(dtype, rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    X = rng.normal(size=(2, 3, D)).astype(dtype)
    z = rng.normal(size=(2, 3, K)).astype(dtype)
    y = rng.integers(0, K, size=(2, 3))
    for structure in ("full", "diag"):
        flat = jac.linear_curvature(X.reshape(6, D), head, z.reshape(6, K), y.reshape(6), structure=structure)
        batched = jac.linear_curvature(X, head, z, y, structure=structure)
        assert batched.dtype == dtype
        np.testing.assert_allclose(batched, flat, rtol=1e-6 if dtype == np.float32 else 1e-14)
    kron = jac.linear_curvature(X, head, z, y, structure="kron")
    assert kron.A.dtype == dtype and kron.B.dtype == dtype
    assert jac.linear_gradient(X, head, z, y).dtype == dtype


def test_monte_carlo_fisher_averages_to_the_exact_one(rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1))
    X, W, b, y = _problem(head, rng)
    z = X @ W.T + b
    exact = jac.linear_curvature(X, head, z, y, kind="fisher")
    mc = jac.linear_curvature(X, head, z, y, kind="fisher_mc", mc_samples=20000, seed=1)
    assert np.abs(mc - exact).max() <= 0.05 * np.abs(exact).max()
    # the same draws as the head's own columns, pushed through the layer
    S = head.sqrt_ggn_sampled(z, 3, seed=2, y=y)
    Xt = np.concatenate([X, np.ones((N, 1))], 1)
    U = (np.swapaxes(S, 1, 2)[:, :, :, None] * Xt[:, None, None, :]).reshape(-1, K * (D + 1))
    np.testing.assert_allclose(jac.linear_curvature(X, head, z, y, kind="fisher_mc", mc_samples=3, seed=2,
                                                    max_bytes=4096), U.T @ U, rtol=1e-12, atol=1e-16)
    # y is optional for the Fisher of the model's own distribution
    assert jac.linear_curvature(X, head, z, None, kind="fisher").shape == exact.shape


def test_the_diagonal_blocks_keep_confident_predictions(rng):
    """A row with p near one-hot has tiny curvature; diag − low rank would lose it."""
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    X = rng.normal(size=(5, 2))
    z = np.zeros((5, 3))
    z[:, 0] = 30.0  # p_0 = 1 − 2e-13
    y = np.zeros(5, int)
    H = jac.linear_curvature(X, head, z, y, kind="hessian")
    p = jac.Softmax()(z)
    h00 = (p[:, 0] * (p[:, 1] + p[:, 2])) / 5  # the exact (0, 0) entries of the blocks
    Xt = np.concatenate([X, np.ones((5, 1))], 1)
    np.testing.assert_allclose(H[:3, :3], Xt.T @ (h00[:, None] * Xt), rtol=1e-12)


def test_errors(rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    X, z, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 4)), rng.integers(0, 4, size=5)
    with pytest.raises(ValueError, match=r"features must have the batch shape of z, \(5,\).*got features of shape \(6, 3\)"):
        jac.linear_curvature(rng.normal(size=(6, 3)), head, z, y)
    with pytest.raises(ValueError, match="kind must be one of"):
        jac.linear_curvature(X, head, z, y, kind="kfac")
    with pytest.raises(ValueError, match="structure must be one of"):
        jac.linear_curvature(X, head, z, y, structure="block")
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        jac.linear_curvature(X, head, z, y, max_bytes=0)
    with pytest.raises(ValueError, match="kind='hessian' needs the targets y"):
        jac.linear_curvature(X, head, z, None, kind="hessian")
    with pytest.raises(ValueError, match="MeanAbsoluteError is no negative log-likelihood"):
        jac.linear_curvature(X, jac.Head(jac.Identity(), jac.MeanAbsoluteError()), z, z, kind="fisher_mc")
    with pytest.raises(ValueError, match="mc_samples must be an int >= 1"):
        jac.linear_curvature(X, head, z, y, kind="fisher_mc", mc_samples=0)
    with pytest.raises(TypeError, match="head must be a jacobians.Head"):
        jac.linear_curvature(X, jac.Softmax(), z, y)
    with pytest.raises(ValueError, match="y must have shape"):
        jac.linear_gradient(X, head, z, np.zeros(4, int))


_PEAK = """
N, D, K, max_bytes = (int(a) for a in sys.argv[1:5])
rng = np.random.default_rng(0)
X = rng.normal(size=(N, D)).astype(np.float32)
z = (X @ rng.normal(size=(D, K)).astype(np.float32) * 0.1).astype(np.float32)
y = rng.integers(0, K, size=N)
head = jac.Head(jac.Softmax(), jac.CrossEntropy())
# warm up the code paths on a tiny layer (one of this size would put its P² result into the base)
jac.linear_curvature(X[:64, :4], head, z[:64, :3], y[:64] % 3)
base = vmhwm()
G = jac.linear_curvature(X, head, z, y, kind="ggn", max_bytes=max_bytes)
print(json.dumps({"base": base, "peak": vmhwm(), "P": G.shape[0], "finite": bool(np.isfinite(G).all())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc/self/status (Linux)")
def test_full_ggn_stays_within_the_budget_plus_the_result():
    """20,000 × 64 features, K = 100: P = 6,500, so the (N·P) matrix of rank-one rows would
    take 520 MB in float32 and an N×P×P array far more; the call stays within max_bytes
    (64 MiB) plus a few copies of the P² result."""
    N_, D_, K_, budget = 20_000, 64, 100, 64 << 20
    out = peak_rss(_PEAK, N_, D_, K_, budget)
    P = out["P"]
    assert P == K_ * (D_ + 1) and out["finite"]
    result = P * P * 4
    assert out["peak"] - out["base"] <= budget + 3 * result + 20 * N_ * K_ * 4, out


LAYER_KINDS = ("hessian", "ggn", "fisher", "fisher_mc", "empirical_fisher")


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_a_loss_with_its_own_denominator_keeps_it(kind, structure, rng):
    """``with_denominator(d)``: E = Σ ℓ_n / d whatever the batch, so the curvature in θ is the
    'sum' head's over d, and pieces of a batch, each with the whole batch's N, add up to the
    whole batch's 'mean' curvature (what with_denominator is for). N = 6, d = 100: a factor
    1/N in place of 1/d is off by 100/6."""
    head = jac.Head(jac.Softmax(), jac.CrossEntropy().with_denominator(100))
    X, y = rng.normal(size=(6, D)), rng.integers(0, K, size=6)
    z = X @ rng.normal(size=(K, D)).T
    kw = {"kind": kind, "structure": structure, "mc_samples": 3, "seed": 4}
    got = jac.linear_curvature(X, head, z, y, **kw)
    total = jac.linear_curvature(X, jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum")), z, y, **kw)
    if structure == "kron":
        np.testing.assert_allclose(got.A, total.A / 100, rtol=1e-13)
        np.testing.assert_allclose(got.B, total.B, rtol=1e-13)  # the features' mean: no loss factor
    else:
        np.testing.assert_allclose(got, total / 100, rtol=1e-13, atol=1e-18)
    if kind == "hessian" and structure == "full":  # the definition: differences of E = Σ ℓ_n / 100 in θ
        def loss(theta):
            M = theta.reshape(K, D + 1)
            return head.loss(X @ M[:, :D].T + M[:, D], y)

        theta = np.concatenate([rng.normal(size=(K, D)), np.zeros((K, 1))], axis=1).ravel()
        M = theta.reshape(K, D + 1)
        z0 = X @ M[:, :D].T + M[:, D]
        ref = numerical_jacobian(lambda t: numerical_grad(loss, t[0], eps=1e-4)[None], theta[None], eps=1e-4)[0]
        np.testing.assert_allclose(jac.linear_curvature(X, head, z0, y, kind="hessian"), ref, atol=1e-6 * np.abs(ref).max())
    if kind in ("fisher", "fisher_mc"):
        return  # the pieces below would draw their own samples (fisher_mc) — the identity above suffices
    whole = jac.linear_curvature(X, jac.Head(jac.Softmax(), jac.CrossEntropy()), z, y, **kw)
    piece = jac.Head(jac.Softmax(), jac.CrossEntropy().with_denominator(6))
    a = jac.linear_curvature(X[:2], piece, z[:2], y[:2], **kw)
    b = jac.linear_curvature(X[2:], piece, z[2:], y[2:], **kw)
    if structure == "kron":
        np.testing.assert_allclose(a.A + b.A, whole.A, rtol=1e-12)
    else:
        np.testing.assert_allclose(a + b, whole, rtol=1e-12, atol=1e-17)
