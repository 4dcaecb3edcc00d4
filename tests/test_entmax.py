"""α-entmax (``Entmax``), its loss (``EntmaxLoss``) and the temperature of the sparse maps:
what the registry-walking tests do not cover.

* α drawn in (1.01, 4), one per row, against a long-double reference, with Σp = 1 to a few
  ulp, every method against each other and central differences;
* the limits α = 2 and 1.5 against ``Sparsemax`` and ``Entmax15`` to 4 ulp;
* logits of ±1e4 and masked (−inf) entries, float32 included;
* ``alpha_vjp`` and ``EntmaxLoss.alpha_grad`` against central differences in α;
* α's validation and shapes (per row: ``(...,)`` or ``(..., 1)``), α = 1 refused, mismatched α;
* the temperature of ``Sparsemax``, ``Entmax15`` and ``Entmax`` and of their Fenchel–Young heads.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import entmax_longdouble, readonly
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jacobians as jac
from jacobians import checks, testing

LD = np.longdouble
DTYPES = (np.float32, np.float64)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


@st.composite
def rows_and_alphas(draw, max_abs=20.0):
    """Logits (n, K) of either dtype with one α in (1.01, 4) per row."""
    dtype = draw(st.sampled_from(DTYPES))
    n, K = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    width = 32 if dtype is np.float32 else 64
    entry = st.floats(-max_abs, max_abs, allow_nan=False, width=width)
    z = np.array(draw(st.lists(entry, min_size=n * K, max_size=n * K)), dtype=dtype).reshape(n, K)
    alpha = np.array(draw(st.lists(st.floats(1.01, 4.0), min_size=n, max_size=n)))
    return z, alpha


def _bound(p_ref, z, alpha, dtype):
    """What rounding the map's input costs each entry (a few eps), in long double.

    The input (α − 1)(z − max) is rounded to a few eps of its size (at most 1 on the
    support), and p moves by β w_i (dx_i − ŵ·dx) with the Jacobian's weights w = p^{2−α}: a
    few eps·w_i·max_S |z − max|, as β(α − 1) = 1 (w is large near the edge for α > 2)."""
    zl = z.astype(LD)
    a = np.asarray(alpha, dtype=LD).reshape(-1, 1)
    on = p_ref > 0
    w = np.where(on, np.where(on, p_ref, 1) ** (2 - a), 0)
    reach = np.where(on, zl.max(axis=-1, keepdims=True) - zl, 0).max(axis=-1, keepdims=True)
    return 8 * _eps(dtype) * (1 + w * reach)


# -- the map ---------------------------------------------------------------------------------------


@SETTINGS
@given(rows_and_alphas())
def test_per_row_alpha_matches_long_double_and_sums_to_one(case):
    z, alpha = case
    p = jac.Entmax(alpha=alpha)(readonly(z))
    assert p.dtype == z.dtype and p.shape == z.shape
    ref = entmax_longdouble(z, alpha.reshape(-1, 1))
    assert np.all(np.abs(p.astype(LD) - ref) <= _bound(ref, z, alpha, z.dtype))
    assert np.all(np.abs(p.astype(LD).sum(axis=-1) - 1) <= 4 * _eps(z.dtype) * z.shape[-1] ** 0.5)
    assert np.all(p >= 0)
    # the support is the reference's (an entry on the edge within round-off may go either way)
    edge = np.abs(p.astype(LD) - ref) > 0
    assert np.array_equal((p > 0) | edge, (ref > 0) | edge)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_is_one_to_a_few_ulp_over_many_rows(dtype):
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(4000, 12)) * rng.choice([0.3, 2.0, 10.0], size=(4000, 1))).astype(dtype)
    alpha = rng.uniform(1.01, 4.0, size=4000)
    p = jac.Entmax(alpha=alpha)(z)
    assert float(np.abs(p.astype(np.float64).sum(axis=-1) - 1).max()) <= 4 * _eps(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_per_row_alpha_passes_every_check(seed, dtype):
    """Generated inputs clear of each row's support edge: every method against each other,
    central differences and the loop references (which take α row by row)."""
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(1.01, 4.0, size=(2, 3))
    act = jac.Entmax(alpha=alpha, temperature=[0.7, 1.0, 2.0][seed])
    checks.check_activation(act, shape=(2, 3, 6), dtype=dtype, seed=seed).raise_if_failed()
    loss = jac.EntmaxLoss(alpha=alpha, reduction=["mean", "sum", "none"][seed])
    checks.check_head(jac.Head(act, loss), shape=(2, 3, 6), dtype=dtype, seed=seed).raise_if_failed()
    checks.check_head(jac.Head(jac.Identity(), loss), shape=(2, 3, 6), dtype=dtype, seed=seed).raise_if_failed()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_the_limits_are_sparsemax_and_entmax15_to_4_ulp(temperature, dtype):
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(3000, 9)) * rng.choice([0.2, 1.0, 5.0, 1e4], size=(3000, 1))).astype(dtype)
    for alpha, limit in ((2.0, jac.Sparsemax(temperature)), (1.5, jac.Entmax15(temperature))):
        p, q = jac.Entmax(alpha, temperature)(z), limit(z)
        assert float(np.abs(p - q).max()) <= 4 * _eps(dtype), alpha  # 4 ulp of 1, the simplex's scale
        np.testing.assert_array_equal(p > 0, q > 0)  # the same support


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.01, 1.25, 1.5, 2.0, 3.0, 4.0])
def test_logits_of_1e4_are_exact(alpha, dtype):
    z = np.array([[1e4, -1e4, 0.0], [1e4, 1e4 - 0.5, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4]], dtype=dtype)
    act = jac.Entmax(alpha)
    p = act(z)
    shifted = act(np.array([[0.0, -2e4, -1e4], [0.0, -0.5, -2e4], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype))
    np.testing.assert_array_equal(p[0], [1, 0, 0])
    np.testing.assert_allclose(p, shifted, rtol=0, atol=4 * _eps(dtype))
    np.testing.assert_allclose(p[2:], 1 / 3, rtol=0, atol=2 * _eps(dtype))
    g = np.ones_like(z)
    for out in (act.jacobian(z), act.vjp(z, g), act.jvp(z, g), act.alpha_vjp(z, g)):
        assert out.dtype == dtype and np.all(np.isfinite(out))
    value, grad = jac.Head(act, jac.EntmaxLoss(alpha)).value_and_grad(z, np.array([1, 2, 0, 1]))
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and grad.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_entries_get_zero(dtype):
    z = np.array([[1.0, -np.inf, 0.5, -np.inf], [-np.inf, 2.0, -np.inf, -np.inf]], dtype=dtype)
    for alpha in (1.1, 1.5, 3.0):
        p = jac.Entmax(alpha)(z)
        assert np.all(p[np.isinf(z)] == 0) and p[1, 1] == 1
        np.testing.assert_allclose(p[0], jac.Entmax(alpha)(np.array([1.0, 0.5], dtype=dtype))[[0, 0, 1, 1]] * [1, 0, 1, 0])


def test_inputs_are_not_modified_and_read_only_inputs_work():
    rng = np.random.default_rng(2)
    z, g = readonly(rng.normal(size=(5, 4))), readonly(rng.normal(size=(5, 4)))
    alpha = readonly(np.linspace(1.1, 3.5, 5))
    act = jac.Entmax(alpha=alpha, temperature=0.5)
    z0, g0 = z.copy(), g.copy()
    for fn in (act.forward, act.jacobian):
        fn(z)
    act.vjp(z, g), act.jvp(z, g), act.alpha_vjp(z, g)
    jac.EntmaxLoss(alpha=alpha).alpha_grad(z, np.arange(5) % 4)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(g, g0)
    assert act.alpha is not alpha and not act.alpha.flags.writeable


# -- the gradient in α ---------------------------------------------------------------------------------


def _d_alpha(fn, alpha, h=1e-6):
    """Central difference in α of ``fn(α)`` (α a float, or an array: each row's own)."""
    return (fn(alpha + h) - fn(alpha - h)) / (2 * h)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("alpha", [1.05, 1.3, 1.5, 1.8, 2.0, 2.5, 3.7])
def test_alpha_vjp_matches_central_differences(alpha, temperature):
    rng = np.random.default_rng(3)
    z = checks.example_inputs(jac.Entmax(alpha, temperature), shape=(6, 5), seed=3)  # clear of the edge
    g = rng.normal(size=z.shape)
    got = jac.Entmax(alpha, temperature).alpha_vjp(z, g)
    numeric = _d_alpha(lambda a: (jac.Entmax(a, temperature)(z) * g).sum(axis=-1), alpha)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


def test_alpha_vjp_per_row_is_each_rows_own_derivative():
    rng = np.random.default_rng(4)
    alpha = rng.uniform(1.1, 3.5, size=(2, 3))
    z = checks.example_inputs(jac.Entmax(alpha), shape=(2, 3, 7), seed=4)
    g = rng.normal(size=z.shape)
    got = jac.Entmax(alpha).alpha_vjp(z, g)
    numeric = _d_alpha(lambda a: (jac.Entmax(a)(z) * g).sum(axis=-1), alpha)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)
    # the (..., 1) form of the same α gives the same numbers
    np.testing.assert_array_equal(jac.Entmax(alpha[..., None]).alpha_vjp(z, g), got)


@pytest.mark.parametrize("form", ["index", "soft", "ignored"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_alpha_grad_matches_central_differences(reduction, form):
    rng = np.random.default_rng(5)
    alpha = rng.uniform(1.1, 3.5, size=6)
    z = checks.example_inputs(jac.Entmax(alpha), shape=(6, 5), seed=5)
    y = {"index": rng.integers(0, 5, size=6), "soft": rng.dirichlet(np.ones(5), size=6),
         "ignored": np.array([0, -100, 2, 3, -100, 1])}[form]
    ignore = -100 if form == "ignored" else None
    loss = jac.EntmaxLoss(alpha, ignore_index=ignore, reduction=reduction)
    got = loss.alpha_grad(z, y)
    numeric = _d_alpha(lambda a: np.broadcast_to(jac.EntmaxLoss(a, ignore_index=ignore, reduction="none")(z, y), (6,)), alpha)
    if reduction == "mean":
        numeric = numeric / (4 if form == "ignored" else 6)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-9)
    if form == "ignored":
        assert got[1] == 0 and got[4] == 0
    shared = jac.EntmaxLoss(1.7, reduction=reduction)
    total = _d_alpha(lambda a: np.sum(jac.EntmaxLoss(a, reduction=reduction)(z, y if form != "ignored" else np.abs(y) % 5)), 1.7)
    np.testing.assert_allclose(shared.alpha_grad(z, y if form != "ignored" else np.abs(y) % 5).sum(), total, rtol=1e-6)


# -- α: values and shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [jac.Entmax, jac.EntmaxLoss])
def test_alpha_one_is_refused_pointing_at_softmax(cls):
    with pytest.raises(ValueError, match=r"alpha must be > 1; got 1\.0.*Softmax"):
        cls(alpha=1.0)
    with pytest.raises(ValueError, match=r"alpha must be > 1; got \[1\.\].*Softmax"):
        cls(alpha=[1.5, 1.0])


@pytest.mark.parametrize("cls", [jac.Entmax, jac.EntmaxLoss])
@pytest.mark.parametrize(("bad", "error", "message"), [
    (0.5, ValueError, r"alpha must be > 1; got 0\.5"),
    (-2, ValueError, r"alpha must be > 1"),
    (float("nan"), ValueError, r"alpha must be finite"),
    (float("inf"), ValueError, r"alpha must be finite"),
    ([1.5, np.inf], ValueError, r"alpha must be finite"),
    (True, TypeError, r"alpha must be a real number > 1"),
    ("1.5", TypeError, r"alpha must be a real number > 1"),
    (np.array(["a"]), TypeError, r"alpha must be a real number > 1 or an array of them; got dtype"),
])
def test_bad_alpha_is_a_clear_error(cls, bad, error, message):
    with pytest.raises(error, match=message):
        cls(alpha=bad)


def test_alpha_shapes_broadcast_against_the_batch_axes_or_with_a_trailing_one():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(2, 3, 5))
    per_row = rng.uniform(1.1, 3.0, size=(2, 3))
    expected = np.stack([[jac.Entmax(per_row[i, j])(z[i, j]) for j in range(3)] for i in range(2)])
    for alpha in (per_row, per_row[..., None], per_row.tolist()):
        np.testing.assert_allclose(jac.Entmax(alpha)(z), expected, rtol=1e-14, atol=1e-15)
    by_t = per_row[0]  # one α per t, shared over the leading axis: (3,) or (1, 3, 1)
    want = np.stack([[jac.Entmax(by_t[j])(z[i, j]) for j in range(3)] for i in range(2)])
    for alpha in (by_t, by_t[None, :, None]):
        np.testing.assert_allclose(jac.Entmax(alpha)(z), want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(jac.Entmax(np.array(1.7))(z), jac.Entmax(1.7)(z))  # 0-d: a float
    one = jac.Entmax(np.array([1.7]))  # one value: both readings agree
    np.testing.assert_allclose(one(z), jac.Entmax(1.7)(z), rtol=1e-15)


def test_alpha_shapes_that_do_not_fit_are_clear_errors():
    z = np.zeros((3, 3, 4))
    with pytest.raises(ValueError, match=r"alpha of shape \(2,\) must broadcast against the batch axes of z, \(3, 3\)"):
        jac.Entmax([1.5, 2.0])(z)
    with pytest.raises(ValueError, match=r"alpha of shape \(3, 1\) is ambiguous for z of shape \(3, 3, 4\)"):
        jac.Entmax(np.array([[1.2], [1.5], [2.0]]))(z)
    with pytest.raises(ValueError, match="alpha of shape"):
        jac.EntmaxLoss(np.full((3, 3, 4), 1.5))(z, np.zeros((3, 3), int))


# -- pairs ---------------------------------------------------------------------------------------------------


def test_mismatched_alpha_is_not_a_pair():
    with pytest.raises(ValueError, match=r"Entmax\(alpha=1\.5\) and EntmaxLoss\(alpha=2\.0\) have different α"):
        jac.Head(jac.Entmax(1.5), jac.EntmaxLoss(2.0))
    with pytest.raises(ValueError, match="different α"):
        jac.Head(jac.Entmax([1.5, 2.0]), jac.EntmaxLoss([1.5, 2.5]))
    with pytest.raises(ValueError, match="different α"):
        jac.Head(jac.Entmax([1.5, 2.0]), jac.EntmaxLoss([1.5, 2.0, 2.5]))
    assert jac.Head(jac.Entmax([1.5, 1.5]), jac.EntmaxLoss(1.5)).method == "fused"  # equal once broadcast
    assert jac.Head(jac.Entmax(3.0, temperature=2.0), jac.EntmaxLoss(3.0)).logits_loss


@pytest.mark.parametrize("alpha", [1.2, 1.5, 2.0, 3.0])
def test_own_pair_runs_the_fused_rule_only_and_identity_runs_every_method(alpha):
    rng = np.random.default_rng(7)
    z = rng.normal(size=(5, 4)) * 2
    y = rng.integers(0, 4, size=5)
    head = jac.Head(jac.Entmax(alpha), jac.EntmaxLoss(alpha))
    assert head.method == "fused" and head.logits_loss
    testing.assert_grad_close(head.grad(z, y), (jac.Entmax(alpha)(z) - np.eye(4)[y]) / 5, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="EntmaxLoss is a Fenchel–Young loss of the logits"):
        head.grad(z, y, method="vjp")
    ident = jac.Head(jac.Identity(), jac.EntmaxLoss(alpha))
    for method in ("vjp", "jacobian"):
        testing.assert_grad_close(ident.grad(z, y, method=method), head.grad(z, y), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("limit", [(2.0, jac.SparsemaxLoss), (1.5, jac.Entmax15Loss)])
def test_the_loss_limits(limit):
    alpha, cls = limit
    rng = np.random.default_rng(8)
    z = rng.normal(size=(30, 6)) * 3
    for y in (rng.integers(0, 6, size=30), rng.dirichlet(np.ones(6), size=30)):
        v1, g1 = jac.EntmaxLoss(alpha, reduction="none").value_and_grad(z, y)
        v2, g2 = cls(reduction="none").value_and_grad(z, y)
        np.testing.assert_allclose(v1, v2, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g1, g2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.01, 1.2, 1.5, 2.0, 3.0])
def test_loss_value_against_long_double(alpha, dtype):
    """⟨z, p − y⟩ + H_α(p): H_α of the mapped p as a sum of non-negative terms keeps the value
    to a few eps of the terms it adds up, also as α → 1 (where 1/(α(α − 1)) is 100)."""
    rng = np.random.default_rng(12)
    z = (rng.normal(size=(3000, 8)) * rng.choice([0.5, 2.0, 8.0], size=(3000, 1))).astype(dtype)
    y = rng.integers(0, 8, size=3000)
    zl = z.astype(LD)
    p = entmax_longdouble(z, alpha)
    t = np.eye(8, dtype=LD)[y]
    x = zl - zl.max(axis=-1, keepdims=True)
    ref = (x * (p - t)).sum(axis=-1) + (1 - (p ** LD(alpha)).sum(axis=-1)) / (LD(alpha) * LD(alpha - 1))
    terms = (np.abs(x) * (p + t)).sum(axis=-1) + 1
    got = jac.EntmaxLoss(alpha, reduction="none")(z, y)
    assert got.dtype == dtype
    assert np.all(np.abs(got.astype(LD) - ref) <= 8 * _eps(dtype) * terms)


@pytest.mark.parametrize("cls", [jac.SparsemaxLoss, jac.Entmax15Loss, jac.EntmaxLoss])
def test_fenchel_young_ignore_index(cls):
    rng = np.random.default_rng(9)
    z = rng.normal(size=(6, 4))
    y = np.array([0, -100, 3, 1, -100, 2])
    kept = y != -100
    loss = cls(ignore_index=-100, reduction="none")
    value, grad = loss.value_and_grad(z, y)
    assert np.all(value[~kept] == 0) and np.all(grad[~kept] == 0)
    np.testing.assert_allclose(value[kept], cls(reduction="none")(z[kept], y[kept]), rtol=1e-14)
    mean = cls(ignore_index=-100)
    np.testing.assert_allclose(mean(z, y), value.sum() / kept.sum(), rtol=1e-14)
    np.testing.assert_allclose(mean.grad(z, y), grad / kept.sum(), rtol=1e-14)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 4\).*ignore_index=-100"):
        loss(z, np.array([0, -7, 3, 1, 0, 2]))


# -- temperature -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [jac.Sparsemax, jac.Entmax15, lambda T: jac.Entmax(1.3, T), lambda T: jac.Entmax(2.6, T)],
                         ids=["sparsemax", "entmax15", "entmax1.3", "entmax2.6"])
@pytest.mark.parametrize("T", [0.25, 4.0])
def test_temperature_maps_z_over_t_and_its_jacobian_carries_1_over_t(make, T):
    rng = np.random.default_rng(10)
    z = rng.normal(size=(8, 5)) * 2
    hot, cold = make(T), make(1.0)
    np.testing.assert_allclose(hot(z), cold(z / T), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(hot.jacobian(z), cold.jacobian(z / T) / T, rtol=1e-12, atol=1e-14)
    g = rng.normal(size=z.shape)
    np.testing.assert_allclose(hot.vjp(z, g), cold.vjp(z / T, g) / T, rtol=1e-12, atol=1e-14)
    z = checks.example_inputs(hot, shape=(8, 5), seed=10)
    testing.assert_jacobian_close(hot.jacobian(z), jac.numerical_jacobian(hot, z), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("act", "loss"), [
    (jac.Sparsemax(temperature=0.5), jac.SparsemaxLoss()),
    (jac.Entmax15(temperature=3.0), jac.Entmax15Loss()),
    (jac.Entmax(2.5, temperature=0.5), jac.EntmaxLoss(2.5)),
], ids=["sparsemax", "entmax15", "entmax"])
def test_fenchel_young_head_with_a_temperature_is_the_loss_of_z_over_t(act, loss):
    rng = np.random.default_rng(11)
    z = rng.normal(size=(6, 5)) * 2
    for y in (rng.integers(0, 5, size=6), rng.dirichlet(np.ones(5), size=6)):
        value, grad = jac.Head(act, loss).value_and_grad(z, y)
        T = act.temperature
        np.testing.assert_allclose(value, loss(z / T, y), rtol=1e-13)
        np.testing.assert_allclose(grad, loss.grad(z / T, y) / T, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(grad, (act(z) - (np.eye(5)[y] if y.ndim == 1 else y)) / (6 * T), rtol=1e-12, atol=1e-15)
        numeric = jac.numerical_grad(lambda x, y=y: jac.Head(act, loss).loss(x, y), z)
        testing.assert_grad_close(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_temperature_keeps_huge_logits_exact(dtype):
    z = np.array([[1e4, 1e4 - 0.25, -1e4]], dtype=dtype)
    for act in (jac.Sparsemax(temperature=0.5), jac.Entmax15(temperature=0.5), jac.Entmax(1.8, temperature=0.5)):
        ref = type(act)(**{k: v for k, v in vars(act).items() if k != "temperature"})(np.array([[0.0, -0.5, -4e4]], dtype=dtype))
        np.testing.assert_allclose(act(z), ref, rtol=0, atol=4 * _eps(dtype))


def test_second_order_with_one_alpha_per_row_and_a_temperature():
    """Σ g∇²p and the Fenchel–Young head's Hessian blocks against central differences of the
    exact first order, for α drawn per row over (1.05, 3.5) and T = 0.7; α = 1.5 is Entmax15's."""
    rng = np.random.default_rng(12)
    z = rng.normal(size=(2, 3, 5))
    alpha = rng.uniform(1.05, 3.5, size=(2, 3))
    g = rng.normal(size=z.shape)
    for T in (1.0, 0.7):
        act = jac.Entmax(alpha, temperature=T)
        numeric = jac.numerical_jacobian(lambda x, act=act: act.vjp(x, g), z)
        np.testing.assert_allclose(act.hessian_vjp(z, g), numeric, rtol=0, atol=1e-7 * np.abs(numeric).max())
        head = jac.Head(act, jac.EntmaxLoss(alpha, ignore_index=-1))
        y = rng.integers(0, 5, size=(2, 3))
        y[0, 1] = -1
        blocks = head.hessian(z, y)
        numeric = jac.numerical_jacobian(lambda x, head=head, y=y: head.grad(x, y), z)
        np.testing.assert_allclose(blocks, numeric, rtol=0, atol=1e-8 * np.abs(numeric).max())
        assert not blocks[0, 1].any()  # the ignored row
    same = jac.Entmax(1.5, temperature=2.0).hessian_vjp(z, g)
    np.testing.assert_allclose(same, jac.Entmax15(temperature=2.0).hessian_vjp(z, g), rtol=0, atol=4 * _eps(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.05, 1.5, 1.75, 2.5, 4.0])
def test_rows_do_not_depend_on_the_rest_of_the_batch(alpha, dtype):
    """A row's α-entmax and VJP are the same bits computed alone, in a chunk or in the whole
    batch (the τ solve stops each row on its own and sums over widths set by the row): Dask
    chunks and max_bytes blocks give the numpy path's bits."""
    for seed in range(12):  # with widths set by the batch, α = 1.5 and 2.5 differed by an ulp in some
        rng = np.random.default_rng(seed)
        z = (rng.normal(size=(300, 30)) * rng.choice([0.1, 1, 5, 50], size=(300, 1))).astype(dtype)
        g = rng.normal(size=z.shape).astype(dtype)
        act = jac.Entmax(alpha)
        whole, vjp = act(z), act.vjp(z, g)
        for rows in (slice(0, 1), slice(1, 8), slice(8, 40), slice(40, 300), slice(17, 18)):
            np.testing.assert_array_equal(act(z[rows]), whole[rows])
            np.testing.assert_array_equal(act.vjp(z[rows], g[rows]), vjp[rows])
