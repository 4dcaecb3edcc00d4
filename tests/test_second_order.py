"""Second order, walking the registries: every Hessian method against central differences
of the exact gradient, the pieces (loss Hessians, activation second derivatives) against
differences of theirs, the Fisher kinds against brute-force enumeration of the outcomes
and Monte-Carlo averages, GGN/sqrt identities, ±1e4 logits, float32, errors, custom
classes, and the second-order checks catching deliberate bugs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import (
    REDUCTIONS,
    BrierWithHessian,
    ScaledTanh,
    describe,
    head_input_like,
    head_targets,
    loss_hessian_indefinite,
    make_head_logits,
    make_loss,
    make_loss_input,
    make_targets,
    readonly,
    target_forms,
    variant_options,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import jacobians as jac
from jacobians import checks, curvature, numerical_jacobian
from jacobians.checks.second_order import _curvature_term_scale, _gauss_newton_scale

K = 4
SHAPE = (3, K)


def _fd_hessian(head, z, y):
    """Central differences of the exact gradient: rows do not interact, so the Jacobian of
    dE/dz is the stack of Hessian blocks (for 'none': of each row's own loss)."""
    return numerical_jacobian(lambda x: head.grad(x, y), z)


def _second_methods(head):
    if head.logits_loss:
        return ["fused"]
    return (["fused"] if head.hessian_rule is not None else []) + ["chain"]


def _cases():
    out = []
    for p in jac.pairs():
        acls, lcls = jac.get_activation(p.activation), jac.get_loss(p.loss)
        combos = [(a, {}) for a in [{}] + acls.variants(K)] + [({}, lo) for lo in variant_options(lcls, K)[1:]]
        for aopt, lopt in combos:
            lkw = lopt(K) if callable(lopt) else lopt
            try:
                jac.Head(acls(**aopt), lcls(**lkw))
            except ValueError:
                continue
            out.append(pytest.param(acls, aopt, lcls, lkw, id=f"{describe(acls, aopt)}+{describe(lcls, lkw)}"))
    return out


CASES = _cases()


# -- heads: every method against finite differences ----------------------------------------------


@pytest.mark.parametrize(("acls", "aopt", "lcls", "lopt"), CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_hessian_method_matches_central_differences(acls, aopt, lcls, lopt, reduction, rng):
    loss = lcls(reduction=reduction, **lopt)
    head = jac.Head(acls(**aopt), loss)
    for form in target_forms(loss):
        y = make_targets(loss, rng, SHAPE, form)
        z, y = checks.example_inputs(head, shape=SHAPE, seed=rng, y=y)  # clear of kinks
        ref = _fd_hessian(head, z, y)
        scale = max(1.0, float(np.abs(ref).max()))
        blocks = {}
        for m in _second_methods(head):
            H = head.hessian(z, y, method=m)
            assert H.shape == SHAPE + (K,) and H.dtype == z.dtype
            np.testing.assert_allclose(H, ref, rtol=0, atol=2e-7 * scale, err_msg=f"{m} {form}")
            np.testing.assert_allclose(H, np.swapaxes(H, -1, -2), rtol=0, atol=1e-13 * scale)
            blocks[m] = H
        H = next(iter(blocks.values()))
        v = rng.normal(size=SHAPE)
        np.testing.assert_allclose(head.hvp(z, y, v), np.einsum("nij,nj->ni", H, v), rtol=1e-10, atol=1e-13 * scale)
        np.testing.assert_allclose(head.hessian_operator(z, y).dense(), H, rtol=1e-12, atol=1e-14 * scale)
        G = head.ggn(z, y)
        if head.ggn_is_hessian:
            np.testing.assert_array_equal(G, head.hessian(z, y))
        if loss_hessian_indefinite(head, z, y):  # not convex in its input (Gaussian NLL in (μ, σ²))
            with pytest.raises(ValueError, match="indefinite"):
                head.sqrt_ggn(z, y)
            continue
        S = head.sqrt_ggn(z, y)
        np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), G, rtol=1e-10, atol=1e-13 * max(1, np.abs(G).max()))
        if not loss_hessian_indefinite(head, z, y, scaled=True):  # the loss is convex in its input: so is the GGN
            assert np.linalg.eigvalsh(G).min() >= -1e-12 * max(1, np.abs(G).max())


def test_canonical_pairs_are_the_likelihood_ones():
    canonical = {(p.activation, p.loss) for p in jac.pairs()
                 if jac.Head(jac.get_activation(p.activation)(), jac.get_loss(p.loss)()).ggn_is_hessian}
    assert canonical == {
        ("softmax", "cross_entropy"), ("softmax", "kl_divergence"), ("log_softmax", "nll"),
        ("sigmoid", "binary_cross_entropy"), ("identity", "mse"),
        ("sparsemax", "sparsemax_loss"), ("entmax15", "entmax15_loss"), ("entmax", "entmax_loss"),
        ("identity", "plackett_luce"),
        ("identity", "poisson_nll"),
    }


def test_softmax_mse_hessian_is_indefinite_and_its_ggn_is_not(rng):
    head = jac.Head(jac.Softmax(), jac.MeanSquaredError())
    z = rng.normal(size=(200, 5)) * 2
    y = rng.normal(size=z.shape)
    assert np.linalg.eigvalsh(head.hessian(z, y)).min() < -1e-4
    assert np.linalg.eigvalsh(head.ggn(z, y)).min() >= -1e-15
    # the difference is the curvature term Σ_i (∂E/∂a_i) ∇²a_i
    a = head.activation(z)
    curv = head.activation.hessian_vjp(z, head.loss_fn.grad(a, y))
    np.testing.assert_allclose(head.hessian(z, y) - head.ggn(z, y), curv, atol=1e-15)


def test_splitting_softmax_ce_at_the_probabilities_would_be_the_empirical_fisher(rng):
    """(e_y − p)(e_y − p)ᵀ/N: what the GGN is *not* for softmax + CE."""
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    z = rng.normal(size=(6, 4))
    y = rng.integers(0, 4, size=6)
    p = jac.Softmax()(z)
    r = np.eye(4)[y] - p
    np.testing.assert_allclose(head.fisher(z, y, "empirical"), np.einsum("ni,nj->nij", r, r) / 6, atol=1e-16)
    assert not np.allclose(head.ggn(z, y), head.fisher(z, y, "empirical"))


def test_hessian_is_the_second_order_term_of_the_loss(rng):
    """E(z + t v) = E + t ∇E·v + t²/2 Σ_n v_nᵀ H_n v_n + O(t³)."""
    head = jac.Head(jac.Softmax(temperature=0.7), jac.CrossEntropy(label_smoothing=0.1, weight=np.linspace(0.5, 2, 5)))
    z = rng.normal(size=(8, 5))
    y = rng.integers(0, 5, size=8)
    v = rng.normal(size=z.shape)
    t = 1e-3
    second = (head.loss(z + t * v, y) - 2 * head.loss(z, y) + head.loss(z - t * v, y)) / t**2
    np.testing.assert_allclose(second, np.einsum("ni,nij,nj->", v, head.hessian(z, y), v), rtol=1e-6)


# -- the pieces -----------------------------------------------------------------------------------


LOSS_CASES = [pytest.param(cls, options, id=describe(cls, options(K)))
              for cls in jac.LOSSES.values() for options in variant_options(cls, K)]


@pytest.mark.parametrize(("cls", "options"), LOSS_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_hessian_matches_central_differences_of_its_gradient(cls, options, reduction, rng):
    loss = make_loss(cls, options, K, reduction)
    a = make_loss_input(loss, rng, SHAPE)
    for form in target_forms(loss):
        y = make_targets(loss, rng, SHAPE, form)
        total = loss if reduction != "none" else loss.with_reduction("sum")
        ref = numerical_jacobian(lambda x: total.grad(x, y), a)  # noqa: B023
        H = loss.hessian(a, y)
        np.testing.assert_allclose(H, ref, rtol=0, atol=1e-7 * max(1, np.abs(ref).max()), err_msg=form)
        v = rng.normal(size=SHAPE)
        np.testing.assert_allclose(loss.hvp(a, y, v), np.einsum("nij,nj->ni", H, v), rtol=1e-12, atol=1e-14)
        if reduction == "none":
            np.testing.assert_allclose(loss.per_sample_hessian(a, y) if not isinstance(loss, jac.ElementwiseLoss)
                                       else loss.per_sample_hessian(a, y), H, rtol=1e-14)


@pytest.mark.parametrize("act", [pytest.param(cls(**kw), id=describe(cls, kw))
                                 for cls in jac.ACTIVATIONS.values() for kw in [{}] + cls.variants(K)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activation_second_derivatives_match_differences_of_the_jacobian(act, dtype, rng):
    z = checks.example_inputs(act, shape=(3, 2, K), dtype=dtype, seed=rng)
    g = rng.normal(size=z.shape).astype(dtype)
    z64 = z.astype(np.float64)
    T_ref = numerical_jacobian(lambda x: act.jacobian(x).reshape(x.shape[:-1] + (K * K,)), z64).reshape(z.shape + (K, K))
    T = act.hessian(z)
    assert T.shape == z.shape + (K, K) and T.dtype == dtype
    tol = 1e-7 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(T, T_ref, rtol=0, atol=tol * max(1, np.abs(T_ref).max()))
    np.testing.assert_allclose(T, np.swapaxes(T, -1, -2), atol=1e-6 * max(1, np.abs(T).max()))  # ∂²/∂z_j∂z_k
    Hg = act.hessian_vjp(z, g)
    assert Hg.dtype == dtype
    np.testing.assert_allclose(Hg, np.einsum("...i,...ijk->...jk", g.astype(np.float64), T_ref), rtol=0,
                               atol=tol * max(1, np.abs(Hg).max()) * K)
    np.testing.assert_allclose(act.hessian_vjp_operator(z, g).dense(), Hg, rtol=1e-5, atol=1e-7)


# -- Fisher ------------------------------------------------------------------------------------------


def _enumerated_fisher(head, z, y=None):
    """``c Σ_outcomes P(ŷ) ∇ℓ(ŷ) ∇ℓ(ŷ)ᵀ`` by brute force, with each row's own gradient
    (reduction 'none') at every outcome and c read off the losses (E / Σℓ)."""
    loss = head.loss_fn
    per_row = jac.Head(head.activation, loss.with_reduction("none"))
    a = head.activation(z)
    F = np.zeros(z.shape + z.shape[-1:])
    if loss.predictive in ("categorical", "categorical_log"):
        p = np.exp(a) if loss.predictive == "categorical_log" else a
        for k in range(z.shape[-1]):
            g = per_row.grad(z, np.full(z.shape[:-1], k))
            F += p[..., k, None, None] * np.einsum("...i,...j->...ij", g, g)
    else:  # independent Bernoulli entries
        for bits in itertools.product([0.0, 1.0], repeat=z.shape[-1]):
            yb = np.broadcast_to(np.array(bits), z.shape)
            prob = np.prod(np.where(yb == 1, a, 1 - a), axis=-1)
            g = per_row.grad(z, yb)
            F += prob[..., None, None] * np.einsum("...i,...j->...ij", g, g)
    if loss.reduction == "mean":
        if y is None:
            n = z.size if isinstance(loss, jac.ElementwiseLoss) else np.prod(z.shape[:-1])
            F /= n
        else:
            F *= float(head.loss(z, y)) / float(np.sum(per_row.loss(z, y)))
    return F


LIKELIHOOD_CASES = [c for c in CASES if getattr(c.values[2], "predictive", None) in ("categorical", "categorical_log", "bernoulli")
                    and not jac.Head(c.values[0](**c.values[1]), c.values[2](**c.values[3])).logits_loss]


@pytest.mark.parametrize(("acls", "aopt", "lcls", "lopt"), LIKELIHOOD_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_exact_fisher_is_the_expectation_over_the_outcomes(acls, aopt, lcls, lopt, reduction, rng):
    head = jac.Head(acls(**aopt), lcls(reduction=reduction, **lopt))
    z = rng.normal(size=SHAPE)
    np.testing.assert_allclose(head.fisher(z), _enumerated_fisher(head, z), rtol=1e-10, atol=1e-14)
    y = head_targets(head, rng, SHAPE)
    if getattr(head.loss_fn, "ignore_index", None) is None:
        np.testing.assert_allclose(head.fisher(z, y), _enumerated_fisher(head, z, y), rtol=1e-10, atol=1e-14)
    F = head.fisher(z)
    np.testing.assert_allclose(F, np.swapaxes(F, -1, -2), atol=1e-15)
    assert np.linalg.eigvalsh(F).min() >= -1e-14 * max(1.0, np.abs(F).max())  # PSD to round-off of its entries


def test_fisher_of_plain_canonical_pairs_is_the_hessian(rng):
    z = rng.normal(size=(5, 4))
    for head, y in [
        (jac.Head(jac.Softmax(), jac.CrossEntropy()), rng.integers(0, 4, size=5)),
        (jac.Head(jac.LogSoftmax(), jac.NLLLoss()), rng.integers(0, 4, size=5)),
        (jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()), rng.random((5, 4))),
        (jac.Head(jac.Identity(), jac.MeanSquaredError()), rng.normal(size=(5, 4))),
    ]:
        np.testing.assert_allclose(head.fisher(z, y), head.hessian(z, y), rtol=1e-13, atol=1e-16)


def test_fisher_with_label_smoothing_is_not_the_hessian(rng):
    """CE with smoothing ε: (1 − ε)²(diag p − p pᵀ) + ε²(p − 1/K)(p − 1/K)ᵀ, over N."""
    eps, z = 0.2, rng.normal(size=(3, 4))
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=eps))
    p = jac.Softmax()(z)
    q = p - 1 / 4
    expected = ((1 - eps) ** 2 * (np.einsum("ni,ij->nij", p, np.eye(4)) - np.einsum("ni,nj->nij", p, p))
                + eps**2 * np.einsum("ni,nj->nij", q, q)) / 3
    np.testing.assert_allclose(head.fisher(z), expected, atol=1e-16)


def test_empirical_fisher_blocks_sum_to_the_mean_of_outer_products(rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    z, y = rng.normal(size=(7, 3)), rng.integers(0, 3, size=7)
    g = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none")).grad(z, y)
    np.testing.assert_allclose(head.fisher(z, y, "empirical").sum(axis=0), g.T @ g / 7, atol=1e-15)
    # ignored rows contribute nothing; weights enter through the per-sample gradient and 1/Σw
    w = np.array([1.0, 2.0, 3.0])
    weighted = jac.Head(jac.Softmax(), jac.CrossEntropy(weight=w, ignore_index=-1))
    yi = y.copy()
    yi[0] = -1
    F = weighted.fisher(z, yi, "empirical")
    assert not F[0].any()
    gw = jac.Head(jac.Softmax(), jac.CrossEntropy(weight=w, ignore_index=-1, reduction="none")).grad(z, yi)
    np.testing.assert_allclose(F.sum(axis=0), gw.T @ gw / w[yi[1:]].sum(), atol=1e-15)


@pytest.mark.parametrize("head", [
    jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.2, weight=np.linspace(0.5, 2, 4))),
    jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(pos_weight=np.linspace(0.5, 3, 4), label_smoothing=0.1)),
    jac.Head(jac.Tanh(), jac.MeanSquaredError()),
    jac.Head(jac.LogSoftmax(), jac.NLLLoss(weight=np.linspace(0.5, 2, 4))),
    jac.Head(jac.Softmax(), jac.BinaryCrossEntropy()),
], ids=["ce_smooth_weight", "bce_pos_weight", "tanh_mse", "nll_weight", "softmax_bce"])
def test_monte_carlo_columns_average_to_the_exact_fisher(head, rng):
    """Over M draws the error of the mean shrinks like 1/√M: within 6 standard errors."""
    z = rng.normal(size=(3, 4))
    M = 20000
    S = head.sqrt_ggn_sampled(z, mc_samples=M, seed=7)
    assert S.shape == z.shape + (M,)
    draws = np.einsum("nim,njm->nijm", S, S) * M
    se = np.sqrt(((draws - draws.mean(axis=-1, keepdims=True)) ** 2).sum() / M / M)
    err = np.sqrt(((draws.mean(axis=-1) - head.fisher(z)) ** 2).sum())
    assert err <= 6 * se
    assert err >= 1e-3 * se  # a Monte-Carlo estimate, not the closed form
    np.testing.assert_allclose(head.fisher(z, kind="mc", mc_samples=M, seed=7), S @ np.swapaxes(S, -1, -2))


def test_sampling_is_reproducible_and_independent_of_the_chunking(rng):
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy())
    z = rng.normal(size=(10, 3))
    S = head.sqrt_ggn_sampled(z, mc_samples=5, seed=3)
    np.testing.assert_array_equal(S, head.sqrt_ggn_sampled(z, mc_samples=5, seed=3))
    assert not np.array_equal(S, head.sqrt_ggn_sampled(z, mc_samples=5, seed=4))
    parts = [curvature.sqrt_ggn_sampled(head, z[a:b], 5, 3, row_start=a) * np.sqrt(b - a) / np.sqrt(10)
             for a, b in ((0, 1), (1, 8), (8, 10))]  # 'mean' over a chunk divides by its own rows
    np.testing.assert_allclose(np.concatenate(parts), S, rtol=1e-15)
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(head.sqrt_ggn_sampled(z, 2, g1), head.sqrt_ggn_sampled(z, 2, g2))


def test_sampled_classes_follow_the_predictive_probabilities():
    loss = jac.CrossEntropy()
    p = np.array([[0.0, 0.2, 0.5, 0.3]])
    u = curvature.row_uniforms(11, 0, 1, 40000).reshape(40000, 1)
    k = curvature.sample_targets(loss, np.repeat(p, 40000, axis=0), u)
    freq = np.bincount(k, minlength=4) / 40000
    assert freq[0] == 0  # a class of probability 0 is never drawn
    np.testing.assert_allclose(freq, p[0], atol=0.01)
    x = curvature.row_uniforms(1, 0, 100_000, 8)
    assert x.min() >= 0 and x.max() < 1
    assert abs(x.mean() - 0.5) < 5 * np.sqrt(1 / 12 / x.size)  # within 5 standard errors
    counts = np.histogram(x, bins=20, range=(0, 1))[0]
    assert ((counts - x.size / 20) ** 2 / (x.size / 20)).sum() < 50  # χ² with 19 degrees of freedom


# -- extremes, dtypes, inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("pair", [pytest.param(p, id=f"{p.activation}+{p.loss}") for p in jac.pairs()])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_second_order_at_extreme_logits(pair, dtype):
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    report = checks.check_second_order_extreme(head, dtype=dtype)
    report.raise_if_failed()


@pytest.mark.parametrize("pair", [pytest.param(p, id=f"{p.activation}+{p.loss}") for p in jac.pairs()])
def test_float32_stays_float32_and_inputs_are_never_modified(pair, rng):
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    z = readonly(make_head_logits(head, rng, SHAPE, dtype=np.float32))
    y = readonly(head_targets(head, rng, SHAPE, np.float32))
    v = readonly(rng.normal(size=SHAPE).astype(np.float32))
    z0, y0 = z.copy(), np.array(y, copy=True)
    outs = [head.hessian(z, y), head.hvp(z, y, v), head.ggn(z, y), head.fisher(z, y, "empirical")]
    if loss_hessian_indefinite(head, z, y):  # no real factor of the GGN: refused, clearly
        with pytest.raises(ValueError, match="indefinite"):
            head.sqrt_ggn(z, y)
    else:
        outs.append(head.sqrt_ggn(z, y))
    if getattr(head.loss_fn, "predictive", None) and not head.logits_loss:
        outs += [head.fisher(z, y), head.sqrt_ggn_sampled(z, 3, seed=0), head.fisher(z, kind="mc", seed=0),
                 head.sqrt_fisher(z, y)]
    for out in outs:
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(y, y0)


PAIRS = [pytest.param(p, id=f"{p.activation}+{p.loss}") for p in jac.pairs()]


@pytest.mark.parametrize("pair", PAIRS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_second_order_properties(pair, data):
    """Random shapes, dtypes and logits up to ±1e4: every block finite and symmetric, the GGN
    positive semi-definite, the dtype kept."""
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    batch = data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    shape = (*batch, data.draw(st.integers(1, 5)))
    width = 32 if dtype is np.float32 else 64
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    big = checks.inputs.extreme_magnitude(head, dtype)  # 1e4, or less where e^z would overflow (Exp)
    z = data.draw(arrays(dtype, shape, elements=st.floats(-big, big, allow_nan=False, width=width)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    z = head_input_like(head, z, seed)  # the head's width; [μ | σ²] with σ² > 0 where z is the loss's input
    shape = z.shape
    y = head_targets(head, np.random.default_rng(seed), shape, dtype)
    # round-off is relative to the terms the blocks add up (their result may cancel to 0)
    z64, y64 = z.astype(np.float64), (y.astype(np.float64) if np.asarray(y).dtype.kind == "f" else y)
    terms = max(_gauss_newton_scale(head, z64, y64), _curvature_term_scale(head, z64, y64),
                float(np.abs(head.grad(z64, y64)).max(initial=0.0)))
    tol = 1e3 * float(np.finfo(dtype).eps)
    for m in _second_methods(head):
        H = head.hessian(z, y, method=m)
        assert H.dtype == dtype and np.all(np.isfinite(H)), m
        scale = max(float(np.abs(H).max(initial=0.0)), terms)
        assert np.abs(H - np.swapaxes(H, -1, -2)).max(initial=0.0) <= tol * scale
    G = head.ggn(z, y).astype(np.float64)
    assert np.all(np.isfinite(G))
    if G.size and not loss_hessian_indefinite(head, z, y, scaled=True):  # convex in its input: the GGN is PSD
        lam = np.linalg.eigvalsh(G)
        assert lam.min() >= -tol * max(np.abs(lam).max(), terms)


# -- errors ----------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors(rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    z, y = rng.normal(size=(3, 4)), np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"v must have the shape of z, \(3, 4\); got shape \(3, 5\)"):
        head.hvp(z, y, np.zeros((3, 5)))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="mc_samples must be an int >= 1"):
            head.sqrt_ggn_sampled(z, mc_samples=bad)
    with pytest.raises(TypeError, match="seed must be"):
        head.sqrt_ggn_sampled(z, seed="x")
    with pytest.raises(ValueError, match=r"method must be one of \('auto', 'fused', 'chain'\)"):
        head.hessian(z, y, method="jacobian")
    with pytest.raises(ValueError, match=r"kind must be one of \('exact', 'mc', 'empirical'\)"):
        head.fisher(z, y, kind="type2")
    with pytest.raises(ValueError, match="kind='empirical' needs the true targets y"):
        head.fisher(z, kind="empirical")
    with pytest.raises(ValueError, match="no Hessian rule is registered for \\(Softmax, MeanSquaredError\\).*'chain'"):
        jac.Head(jac.Softmax(), jac.MeanSquaredError()).hessian(z, z, method="fused")
    fy = jac.Head(jac.Sparsemax(), jac.SparsemaxLoss())
    with pytest.raises(ValueError, match="Fenchel–Young loss of the logits: its curvature is fused-only"):
        fy.hessian(z, y, method="chain")
    for loss, y_ in ((jac.MeanAbsoluteError(), z), (jac.Huber(), z), (jac.SparsemaxLoss(), y)):
        h = jac.Head(jac.Identity(), loss)
        with pytest.raises(ValueError, match=f"{type(loss).__name__} is no negative log-likelihood"):
            h.sqrt_ggn_sampled(z)
        with pytest.raises(ValueError, match="no negative log-likelihood"):
            h.fisher(z, y_)
        h.fisher(z, y_, "empirical")  # gradients at the targets exist for any loss


def test_custom_classes_without_second_derivatives_say_what_to_write(rng):
    class Plain(jac.Loss):
        def per_sample(self, a, y):
            return ((a - y) ** 2).sum(axis=-1)

        def per_sample_grad(self, a, y):
            return 2 * (a - y)

    class PlainElementwise(jac.ElementwiseLoss):
        def per_element(self, a, y):
            return (a - y) ** 2

        def per_element_grad(self, a, y):
            return 2 * (a - y)

    class Cube(jac.Activation):
        def forward(self, z):
            return z**3

        def jacobian(self, z):
            J = np.zeros(z.shape + z.shape[-1:])
            jac.diagonal(J)[...] = 3 * z**2
            return J

    z = rng.normal(size=(2, 3))
    with pytest.raises(NotImplementedError, match=r"write per_sample_hessian\(a, y\)"):
        jac.Head(jac.Tanh(), Plain()).hessian(z, z)
    with pytest.raises(NotImplementedError, match=r"write per_element_hessian\(a, y\)"):
        jac.Head(jac.Tanh(), PlainElementwise()).hessian(z, z)
    with pytest.raises(NotImplementedError, match=r"Cube has no second derivative: write hessian\(z\)"):
        jac.Head(Cube(), jac.MeanSquaredError()).hessian(z, z)
    with pytest.raises(NotImplementedError, match="hessian_vjp"):
        Cube().hessian(z)


# -- custom classes get every method ----------------------------------------------------------------


class ScaledTanhWithHessian(ScaledTanh):
    """a_i = tanh(z_i) z_0 (non-symmetric Jacobian), with its second derivatives written out."""

    def hessian(self, z):
        t, K = np.tanh(z), z.shape[-1]
        s = 1 - t**2
        T = np.zeros(z.shape + (K, K))
        i = np.arange(K)
        T[..., i, i, i] = -2 * t * s * z[..., :1]  # ∂²/∂z_i² of tanh(z_i) z_0
        T[..., i, i, 0] += s
        T[..., i, 0, i] += s
        return T


def test_a_custom_activation_and_loss_get_every_second_order_method(rng):
    z = rng.normal(size=(4, 3))
    for head, y in [(jac.Head(ScaledTanhWithHessian(), jac.MeanSquaredError()), rng.normal(size=(4, 3))),
                    (jac.Head(jac.Softmax(), BrierWithHessian()), rng.dirichlet(np.ones(3), size=4))]:
        ref = _fd_hessian(head, z, y)
        np.testing.assert_allclose(head.hessian(z, y), ref, atol=1e-8)
        assert not head.ggn_is_hessian
        np.testing.assert_allclose(head.hvp(z, y, z), np.einsum("nij,nj->ni", ref, z), atol=1e-8)
        S = head.sqrt_ggn(z, y)
        np.testing.assert_allclose(S @ np.swapaxes(S, -1, -2), head.ggn(z, y), atol=1e-14)
        checks.check_second_order(head, z, y).raise_if_failed()


def test_a_registered_canonical_rule_is_used_and_trusted(rng, restore_registries):
    class HalfMSE(jac.MeanSquaredError):
        def per_element(self, a, y):
            return super().per_element(a, y) / 2

        def per_element_grad(self, a, y):
            return a - y

        def per_element_hessian(self, a, y):
            return np.ones_like(a)

    calls = []

    @jac.register_hessian(jac.Identity, HalfMSE, canonical=True)
    def _rule(act, loss, z, y):
        calls.append(1)
        return loss.hessian_operator(z, y)

    try:
        head = jac.Head(jac.Identity(), HalfMSE(reduction="sum"))
        assert head.ggn_is_hessian and head.hessian_rule is not None
        z = rng.normal(size=(2, 3))
        np.testing.assert_array_equal(head.hessian(z, z), np.broadcast_to(np.eye(3), (2, 3, 3)))
        np.testing.assert_array_equal(head.ggn(z, z), head.hessian(z, z))
        assert calls
        with pytest.raises(ValueError, match="already registered"):
            jac.register_hessian(jac.Identity, HalfMSE)(lambda *a: None)
    finally:
        curvature.HESSIAN_RULES.pop((jac.Identity, HalfMSE), None)


# -- the checks catch deliberate bugs ---------------------------------------------------------------


def test_check_second_order_catches_a_wrong_sign(rng):
    class Flipped(jac.MeanSquaredError):
        def per_element_hessian(self, a, y):
            return -super().per_element_hessian(a, y)

    report = checks.check_second_order(jac.Head(jac.Tanh(), Flipped()))
    assert not report.passed
    assert "H: chain vs numerical" in {r.compared for r in report.failures}


def test_check_second_order_catches_a_missing_reduction_factor(monkeypatch):
    rule = curvature.HESSIAN_RULES[(jac.Softmax, jac.CrossEntropy)]
    wrong = curvature.HessianRule(lambda act, loss, z, y: rule.hessian(act, loss, z, y).scaled(np.prod(z.shape[:-1])),
                                  True, rule.sqrt, rule.fisher, None)
    monkeypatch.setitem(curvature.HESSIAN_RULES, (jac.Softmax, jac.CrossEntropy), wrong)
    report = checks.check_second_order(jac.Head(jac.Softmax(), jac.CrossEntropy()))
    failed = {r.compared for r in report.failures}
    assert {"H: fused vs numerical", "H: chain vs fused"} <= failed


def test_check_second_order_catches_a_transposed_second_derivative():
    class Transposed(ScaledTanhWithHessian):
        def hessian(self, z):
            return np.swapaxes(super().hessian(z), -3, -2)  # T[j, i, k]: the output index misplaced

    head = jac.Head(Transposed(), jac.MeanSquaredError())
    failed = {r.compared for r in checks.check_second_order(head).failures}
    assert "H: chain vs numerical" in failed
    assert not checks.check_activation_second_order(Transposed()).passed


def test_check_second_order_catches_a_monte_carlo_sampler_off_its_distribution(monkeypatch):
    real = jac.CrossEntropy.sample_targets  # the loss draws its own targets (Loss.sample_targets)

    def biased(loss, a, u):
        return real(loss, a, np.sqrt(u))  # draws pushed towards the last classes

    monkeypatch.setattr(jac.CrossEntropy, "sample_targets", biased)
    report = checks.check_second_order(jac.Head(jac.Softmax(), jac.CrossEntropy()), shape=(20, 4))
    assert "F: mc vs exact" in {r.compared for r in report.failures}


@pytest.mark.parametrize("pair", PAIRS)
def test_check_second_order_passes_for_every_pair(pair):
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    for dtype in ("float64", "float32"):
        checks.check_second_order(head, dtype=dtype, mc_samples=500).raise_if_failed()


@pytest.mark.parametrize("act", [jac.Softmax(temperature=0.5), jac.Entmax15(temperature=3.0), jac.Entmax(1.2),
                                 jac.Entmax(2.5, temperature=3.0)], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_simplex_curvature_blocks_are_symmetric_to_the_bit(act, dtype, rng):
    """Σ g∇²a of the simplex maps is symmetric in exact arithmetic; its dense blocks are
    symmetric in floating point too (einsum's fused multiply-adds would otherwise differ
    between M_jk and M_kj)."""
    z = rng.normal(size=(64, 7)).astype(dtype)
    g = rng.normal(size=z.shape).astype(dtype)
    H = act.hessian_vjp(z, g)
    np.testing.assert_array_equal(H, np.swapaxes(H, -1, -2))
