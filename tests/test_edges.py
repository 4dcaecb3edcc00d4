"""Edges of the size- and range-dispatched paths, against long-double references.

* every fused rule at the edges of the unshifted-exp fast path (rows spreading up to
  twice :data:`~jacobians.numerics.softmax.EXP_SAFE_BOUND`, the target at the bottom, the maximum at
  the bound or just past it), value and gradient against long-double references, with
  floating-point warnings raised as errors;
* the cross-entropy value to a few ulp on those rows (the value once overflowed to inf);
* every branch of :func:`jacobians.contract` and of the row dot products, forced by their
  thresholds, with a non-symmetric Jacobian;
* the saturating derivatives of sigmoid and tanh to a few ulp, down to subnormal outputs.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import entmax_longdouble, make_loss, make_targets, pair_options, target_forms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plackett_luce_reference import plackett_luce_longdouble
from test_focal import binary_focal_longdouble, focal_longdouble
from test_poly1 import poly_longdouble

import jacobians as jac
from jacobians import checks
from jacobians.numerics import buffers
from jacobians.numerics import softmax as nsoftmax

contract_module = importlib.import_module("jacobians.contract")  # the module, not the function

LD = np.longdouble
DTYPES = (np.float32, np.float64)
RAISE = {"over": "raise", "divide": "raise", "invalid": "raise"}


def _ld(x) -> np.ndarray:
    return np.asarray(x).astype(LD)


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


# -- long-double references, one per fused rule ---------------------------------------------
# Each returns the unreduced (values, dE/dz rows, denominator of 'mean') and the size of the
# terms each value and gradient entry adds up (what its round-off scales with), in long double.


def _neg_log_softmax(x: np.ndarray) -> np.ndarray:
    """``−log softmax(x)_k = log1p(Σ_{j≠k} e^{x_j − x_k})`` per entry: no shift to share, no
    cancellation (long double's exponent range holds every difference drawn here)."""
    K = x.shape[-1]
    d = x[..., None, :] - x[..., :, None]  # d[..., k, j] = x_j − x_k
    off = ~np.eye(K, dtype=bool)
    return np.log1p(np.where(off, np.exp(np.where(off, d, 0)), 0).sum(axis=-1))


def _neg_log_softmax_rows(x: np.ndarray) -> np.ndarray:
    """The same in O(K) a row: ``(m − x_k) + log1p(Σ_{j≠argmax} e^{x_j − m})``, two
    non-negative terms (long double: every exp and sum to 11 more bits than float64)."""
    top = x.argmax(axis=-1)[..., None]
    m = np.take_along_axis(x, top, axis=-1)
    e = np.exp(x - m)
    np.put_along_axis(e, top, 0, axis=-1)
    return (m - x) + np.log1p(e.sum(axis=-1, keepdims=True))


def _class_coefficients(loss, y, K: int):
    """torch's coefficient rows ``c`` (per-sample loss ``−Σ c log p``) and the 'mean' denominator."""
    w = np.ones(K, dtype=LD) if getattr(loss, "weight", None) is None else _ld(loss.weight)
    eps = LD(getattr(loss, "label_smoothing", 0.0))
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        ignore = getattr(loss, "ignore_index", None)
        valid = np.ones(y.shape, bool) if ignore is None else y != ignore
        safe = np.where(valid, y, 0)
        onehot = np.eye(K, dtype=LD)[safe]
        c = w * ((1 - eps) * onehot + eps / K) * valid[..., None]
        return c, (w[safe] * valid).sum()
    return w * ((1 - eps) * _ld(y) + eps / K), LD(np.prod(y.shape[:-1]))


def _softmax_family_reference(act, loss, z, y):
    T = LD(getattr(act, "temperature", 1.0))
    x = _ld(z) / T
    nls = _neg_log_softmax(x)
    s = np.exp(-nls)
    K = z.shape[-1]
    if isinstance(loss, jac.KLDivergence):
        c, denom = (np.eye(K, dtype=LD)[y] if np.asarray(y).dtype.kind in "iu" else _ld(y)), LD(np.prod(z.shape[:-1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            logc = np.where(c > 0, np.log(np.where(c > 0, c, 1)), 0)
        terms = c * (logc + nls)
    else:
        c, denom = _class_coefficients(loss, y, K)
        terms = c * nls
    off = ~np.eye(K, dtype=bool)
    # s_k Σc − c_k = s_k Σ_{j≠k} c_j − c_k Σ_{j≠k} s_j: two products, nothing to cancel first
    c_other = np.einsum("...j,kj->...k", c, off.astype(LD))
    s_other = np.einsum("...j,kj->...k", s, off.astype(LD))
    grads = (s * c_other - c * s_other) / T
    gscale = (s * c_other + c * s_other) / T
    scale = np.abs(terms).sum(axis=-1)
    csum = c.sum(axis=-1, keepdims=True)
    if T != 1:  # z/T is rounded: errors of eps·|z/T| in every logit move p by as much
        big = np.abs(x).max(axis=-1, keepdims=True)
        scale = scale + 2 * big[..., 0] * csum[..., 0]
        gscale = gscale + 2 * big * (s * csum + c) / T
    # the shifted path rounds x − max: each s_k moves by eps·|x_k − max| of itself (a tiny s_k
    # far below the maximum, e^{-64} in float32, keeps only ~17 of its bits)
    gap_s = s * (x.max(axis=-1, keepdims=True) - x)
    gscale = gscale + (gap_s * csum + c * gap_s.sum(axis=-1, keepdims=True)) / T
    return terms.sum(axis=-1), scale, grads, gscale, denom


def _softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid_bce_reference(act, loss, z, y):
    x = _ld(z)
    eps = LD(loss.label_smoothing)
    t = _ld(y) * (1 - eps) + eps / 2
    p = np.ones(z.shape, LD) if loss.pos_weight is None else np.broadcast_to(_ld(loss.pos_weight), z.shape)
    sig, sig_neg = np.exp(-_softplus(-x)), np.exp(-_softplus(x))  # σ(z), σ(−z) = 1 − σ(z)
    values = (1 - t) * _softplus(x) + p * t * _softplus(-x)
    grads = (1 - t) * sig - p * t * sig_neg
    gscale = (1 - t) * sig + p * t * sig_neg
    # the smoothed target is rounded to the inputs' dtype: its error times |z| is in scale
    scale = values + (eps > 0) * np.abs(x)
    return values, scale, grads, gscale + (eps > 0), LD(z.size)


def _identity_mse_reference(act, loss, z, y):
    d = _ld(z) - _ld(y)
    return d * d, d * d + np.abs(_ld(z)) * np.abs(d), 2 * d, 2 * np.abs(_ld(z)) + 2 * np.abs(_ld(y)), LD(z.size)


def _log_link_poisson_reference(act, loss, z, y):
    """Identity + the log-rate, Exp + the rate (eps kept), Stirling's term where y > 1."""
    zl, yl = _ld(z), _ld(y)
    w = np.exp(zl)
    if loss.log_input:
        values, scale, grads, gscale = w - yl * zl, w + np.abs(yl * zl), w - yl, w + yl
    else:
        r = w + LD(loss.eps)
        values, scale = w - yl * np.log(r), w + yl * (np.abs(np.log(r)) + 1)
        grads, gscale = w - yl * w / r, w + yl * w / r
    if loss.full:
        ys = np.where(yl > 1, yl, LD(1))
        values = values + np.where(yl > 1, ys * np.log(ys) - ys + np.log(2 * np.pi * ys) / 2, LD(0))
        scale = scale + np.where(yl > 1, ys * np.abs(np.log(ys)) + ys + np.abs(np.log(2 * np.pi * ys)), LD(0))
    return values, scale, grads, gscale, LD(z.size)


def _sparsemax_ld(x):
    srt = -np.sort(-x, axis=-1)
    cs = np.cumsum(srt, axis=-1)
    k = np.arange(1, x.shape[-1] + 1, dtype=LD)
    n = (1 + k * srt > cs).sum(axis=-1, keepdims=True)
    tau = (np.take_along_axis(cs, n - 1, axis=-1) - 1) / n
    return np.maximum(x - tau, 0)


def _entmax15_ld(x):
    x = x / 2
    srt = -np.sort(-x, axis=-1)
    k = np.arange(1, x.shape[-1] + 1, dtype=LD)
    mean = np.cumsum(srt, axis=-1) / k
    ss = k * (np.cumsum(srt * srt, axis=-1) / k - mean * mean)
    tau = mean - np.sqrt(np.maximum((1 - ss) / k, 0))
    n = (tau <= srt).sum(axis=-1, keepdims=True)
    return np.maximum(x - np.take_along_axis(tau, n - 1, axis=-1), 0) ** 2


def _fenchel_young_reference(mapping):
    """A Fenchel–Young loss with its own mapping of ``z/T``: ``L(z/T, y)``, gradient ``(p − y)/T``."""

    def ref(act, loss, z, y):
        T = LD(getattr(act, "temperature", 1.0))
        alpha = LD(loss.alpha)
        zl = _ld(z)
        m = zl.max(axis=-1)
        x = (zl - m[..., None]) / T
        p = mapping(x, alpha)
        y = np.asarray(y)
        K = z.shape[-1]
        valid = np.ones(z.shape[:-1], bool)
        if y.dtype.kind in "iu":
            ignore = getattr(loss, "ignore_index", None)
            valid = y != ignore if ignore is not None else valid
            t = np.eye(K, dtype=LD)[np.where(valid, y, 0)]
        else:
            t = _ld(y)

        def tsallis(q):
            return (1 - (q**alpha).sum(axis=-1)) / (alpha * (alpha - 1))

        inner = x * (p - t)
        values = inner.sum(axis=-1) + (m / T) * (1 - t.sum(axis=-1)) + tsallis(p) - tsallis(t)
        # (m/T)(1 − Σy): the rounding of Σy is amplified by the row's maximum
        scale = np.abs(inner).sum(axis=-1) + 1 + np.abs(m / T) * (1 + t.sum(axis=-1))
        # the map's input (α − 1)(z − m)/T is rounded (a few eps of its size, at most 1 on the
        # support), and p moves by β w_i (dx_i − ŵ·dx) with w = p^{2−α}, the Jacobian's weights
        # (large near the edge for α > 2): a few eps·w_i·max_S |z − m|/T, as β(α − 1) = 1
        w = np.where(p > 0, np.where(p > 0, p, 1) ** (2 - alpha), 0)
        reach = np.where(p > 0, np.abs(x), 0).max(axis=-1, keepdims=True)
        gscale = (p + t + 1 + w * reach) / T
        values, scale = values * valid, scale * valid
        grads, gscale = (p - t) / T * valid[..., None], gscale * valid[..., None]
        return values, scale, grads, gscale, LD(valid.sum())

    return ref


#: (activation class, loss class) -> long-double reference; every fused rule must have one
REFERENCES = {
    (jac.Softmax, jac.CrossEntropy): _softmax_family_reference,
    (jac.Softmax, jac.KLDivergence): _softmax_family_reference,
    (jac.LogSoftmax, jac.NLLLoss): _softmax_family_reference,
    (jac.Sigmoid, jac.BinaryCrossEntropy): _sigmoid_bce_reference,
    (jac.Identity, jac.MeanSquaredError): _identity_mse_reference,
    (jac.Identity, jac.PoissonNLL): _log_link_poisson_reference,
    (jac.Exp, jac.PoissonNLL): _log_link_poisson_reference,
    (jac.Sparsemax, jac.SparsemaxLoss): _fenchel_young_reference(lambda x, alpha: _sparsemax_ld(x)),
    (jac.Entmax15, jac.Entmax15Loss): _fenchel_young_reference(lambda x, alpha: _entmax15_ld(x)),
    (jac.Entmax, jac.EntmaxLoss): _fenchel_young_reference(entmax_longdouble),
    (jac.Softmax, jac.FocalLoss): focal_longdouble,
    (jac.Sigmoid, jac.BinaryFocalLoss): binary_focal_longdouble,
    (jac.Softmax, jac.PolyLoss): poly_longdouble,
    (jac.Identity, jac.PlackettLuce): plackett_luce_longdouble,
}

FUSED_PAIRS = [pytest.param(key, id=f"{key[0].__name__}+{key[1].__name__}") for key in jac.fused.FUSED]


def test_every_fused_rule_has_a_long_double_reference():
    missing = [f"{a.__name__} + {b.__name__}" for a, b in jac.fused.FUSED if (a, b) not in REFERENCES]
    assert not missing, f"add a long-double reference for {missing} to REFERENCES"


def _reduce(values, scale, grads, gscale, denom, reduction):
    if reduction == "none":
        return values, scale, grads, gscale
    if reduction == "sum":
        return values.sum(), scale.sum(), grads, gscale
    return values.sum() / denom, scale.sum() / denom, grads / denom, gscale / denom


# -- rows at the fast path's edges ------------------------------------------------------------


@st.composite
def edge_rows(draw, dtype):
    """Rows whose maximum sits at the fast path's bound B (or just past it, or at −B + the
    spread) and whose minimum — where the targets go — lies up to 2B below it."""
    B = nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)]
    n = draw(st.integers(1, 4))
    K = draw(st.integers(1, 6))
    top = draw(st.sampled_from([B, float(np.nextafter(dtype(B), dtype(np.inf))), 1.5 * B, 0.0]))
    spreads = np.array(draw(st.lists(st.floats(0.0, 2 * B), min_size=n, max_size=n)))
    fracs = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n * K, max_size=n * K))).reshape(n, K)
    bottom = np.array(draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n)))
    rows = np.arange(n)
    fracs[rows, bottom] = 1.0
    if K > 1:
        fracs[rows, (bottom + 1) % K] = 0.0  # the maximum
    z = (top - fracs * spreads[:, None]).astype(dtype)
    return z, bottom


@pytest.mark.parametrize("pair", FUSED_PAIRS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fused_rules_at_the_fast_path_edges_match_long_double_references(pair, data):
    acls, lcls = pair
    dtype = data.draw(st.sampled_from(DTYPES))
    z, bottom = data.draw(edge_rows(dtype))
    K = z.shape[-1]
    aopt, lopt = data.draw(st.sampled_from(pair_options(acls, lcls, K)))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    loss = make_loss(lcls, lopt, K, reduction)
    head = jac.Head(acls(**aopt), loss)
    big = checks.inputs.extreme_magnitude(head, dtype)  # 1e4, or less where e^z overflows (Exp, a log-rate)
    z = np.clip(z, -big, big)
    form = data.draw(st.sampled_from(target_forms(loss)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    y = make_targets(loss, rng, z.shape, form, dtype)
    if form == "index":
        y = np.where(y == getattr(loss, "ignore_index", None), y, bottom)  # the target at the bottom
    with np.errstate(**RAISE):
        value, grad = head.value_and_grad(z, y, method="fused")
        assert np.asarray(value).dtype == dtype and grad.dtype == dtype
        ref, scale, gref, gscale = _reduce(*REFERENCES[pair](head.activation, loss, z, y), reduction)
    eps = _eps(dtype)
    value = np.asarray(value).astype(LD)
    assert np.all(np.abs(value - ref) <= 32 * eps * scale + np.finfo(dtype).tiny), (value, ref)
    assert np.all(np.abs(grad.astype(LD) - gref) <= 32 * eps * gscale + np.finfo(dtype).tiny), (z, y, grad, gref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_class_poly_loss_with_smoothed_soft_targets_is_within_the_rounding_of_its_coefficients(dtype):
    """K = 1: p ≡ 1, the value is ε(1 − Σc) with c = 0.9 t + 0.1 rounded to the dtype (a draw
    of the walk above, the .[test] venv, 2026-12-04: −2.78e-17 against −2.50e-17 in long double;
    the reference's scale now holds the coefficients' own rounding). The gradient is exactly 0."""
    z = np.array([[600.0], [600.0]], dtype)
    y = np.array([[0.3], [1.0]], dtype)
    loss = jac.PolyLoss(epsilon=-0.5, label_smoothing=0.1)
    head = jac.Head(jac.Softmax(temperature=3.0), loss)
    with np.errstate(**RAISE):
        value, grad = head.value_and_grad(z, y, method="fused")
    ref, scale, _, _ = _reduce(*REFERENCES[(jac.Softmax, jac.PolyLoss)](head.activation, loss, z, y), "mean")
    assert np.all(grad == 0)
    assert abs(_ld(value) - ref) <= 32 * _eps(dtype) * scale, (value, ref)


@pytest.mark.parametrize("path", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", [(jac.Softmax, jac.CrossEntropy), (jac.LogSoftmax, jac.NLLLoss)], ids=lambda p: p[1].__name__)
def test_a_soft_target_near_one_at_the_top_keeps_its_small_gradient(pair, dtype, path):
    """``s·Σc − c`` at the top entry with ``c_top`` near ``Σc``: the others' coefficients are
    summed directly, not as ``Σc − c_top`` (which cancelled: 24–38 ulp of the gradient's own
    scale at these rows before, found by the hypothesis walk above; under 1 ulp now)."""
    acls, lcls = pair
    z = np.array([[591.0, 600.0, 580.0], [600.0, 600.0, 590.0], [0.0, 9.0, -2.0]], dtype=dtype)
    y = np.array([[0.0054, 0.9946, 0.0], [0.33918, 0.66082, 0.0], [0.0, 0.99981, 0.00019]], dtype=dtype)
    loss = lcls(ignore_index=-100)
    head = jac.Head(acls(), loss)
    ref, _, gref, gscale = _reduce(*REFERENCES[pair](head.activation, loss, z, y), "mean")
    if path == "numpy":
        grad = head.grad(z, y, method="fused")
    else:
        xp = pytest.importorskip("array_api_strict", reason="array-api-strict (the test extra) is not installed")
        pytest.importorskip("array_api_compat", reason="the arrays extra (array-api-compat) is not installed")
        grad = np.from_dlpack(head.grad(xp.asarray(z), xp.asarray(y), method="fused"))
    assert grad.dtype == dtype
    assert np.all(np.abs(grad.astype(LD) - gref) <= 4 * _eps(dtype) * gscale), (grad, gref)


# -- the cross-entropy value to a few ulp ---------------------------------------------------------


def test_the_reported_calls():
    with np.errstate(**RAISE):
        head = jac.Head(jac.Softmax(), jac.CrossEntropy())
        value = head.loss(np.array([[50.0, -45.0]], np.float32), np.array([1]))
        assert value.dtype == np.float32 and value == np.float32(95.0)
        assert head.loss(np.array([[400.0, -400.0]]), np.array([1])) == 800.0
        nll = jac.Head(jac.LogSoftmax(), jac.NLLLoss())
        assert nll.loss(np.array([[400.0, -400.0]]), np.array([1])) == 800.0
        # the other way round, the loss is e^-95 (not 0) and e^-800 (below float64's range)
        assert head.loss(np.array([[50.0, -45.0]], np.float32), np.array([0])) == np.float32(np.exp(-95.0))
        assert head.loss(np.array([[400.0, -400.0]]), np.array([0])) == 0.0


def _ulps(value, ref, dtype) -> np.ndarray:
    """|value − ref| in units of the last place of ref (rounded to dtype)."""
    return np.abs(value.astype(LD) - ref) / np.spacing(np.abs(ref).astype(dtype)).astype(LD)


#: the most the value may be off on the fast path, in ulp: with the target at the bottom of
#: its row (the value at least log 2) and anywhere (tiny values too, where the errors of the
#: exps and of their sum — numpy's float32 exp alone is off by up to 2.4 ulp — pass through)
VALUE_ULPS = {"bottom": {np.float64: 2.0, np.float32: 2.0}, "anywhere": {np.float64: 3.0, np.float32: 4.0}}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [2, 10, 100])
@pytest.mark.parametrize("where", ["bottom", "anywhere"])
@pytest.mark.parametrize("past", [False, True], ids=["at_bound", "past_bound"])
@pytest.mark.parametrize(
    "head",
    [
        jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none")),
        jac.Head(jac.LogSoftmax(), jac.NLLLoss(reduction="none")),
        jac.Head(jac.Softmax(), jac.KLDivergence(reduction="none")),
        jac.Head(jac.Softmax(), jac.CrossEntropy(ignore_index=-1, reduction="none")),
    ],
    ids=["ce", "nll", "kl", "ce_ignore"],
)
def test_cross_entropy_value_is_exact_to_a_few_ulp(head, past, where, K, dtype, rng):
    """Rows with the maximum at ±B (the fast path) or at ±1.2B (past it: the shifted path),
    spreads up to 2B, and the target at the bottom (values up to 2B) or anywhere (values
    down to e^{−2B}, far below 1): every row's value against long double, and the target's
    gradient entry −Σ_{k≠y} p_k to a few ulp too.

    On the shifted path ``z − max`` is rounded: a tiny value e^{z_k − z_y} then carries the
    relative error of its exponent, up to ``eps·|z_k − max|``, on top of the ulps."""
    B = nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)] * (1.2 if past else 1.0)
    N = 2000
    spread = rng.uniform(0, 2 * B, size=(N, 1)) * rng.choice([1.0, 1e-3, 1e-6], size=(N, 1))
    # the maximum at B, or (target anywhere) half the rows with their minimum at −B
    top = np.where(rng.random((N, 1)) < (1.0 if where == "bottom" else 0.5), B, spread - B)
    z = (top - rng.random((N, K)) * spread).astype(dtype)
    z[:, 0] = top[:, 0]
    assert nsoftmax.exp_is_safe(z) != past
    y = z.argmin(axis=-1) if where == "bottom" else rng.integers(0, K, size=N)
    with np.errstate(**RAISE):
        value, grad = head.value_and_grad(z, y)
    zl = _ld(z)
    ref = _neg_log_softmax_rows(zl)[np.arange(N), y]
    allowed = VALUE_ULPS[where][dtype] * np.spacing(ref.astype(dtype)).astype(LD)
    if past:
        allowed += _eps(dtype) * np.abs(zl - zl.max(axis=-1, keepdims=True)).max(axis=-1) * ref
    excess = np.abs(value.astype(LD) - ref) / allowed
    worst = int(excess.argmax())
    assert float(excess[worst]) <= 1, f"{_ulps(value, ref, dtype)[worst]:.1f} ulp at z = {z[worst]}, y = {y[worst]}"
    # the target's entry s_y − 1 = −Σ_{k≠y} s_k = expm1(−value), not rounded against 1
    g_y = grad[np.arange(N), y].astype(LD)
    p_other = -np.expm1(-ref)
    g_allowed = 8 * np.spacing(p_other.astype(dtype)).astype(LD) + (allowed / ref * p_other if past else 0)
    assert np.all(np.abs(g_y + p_other) <= g_allowed)


# -- dispatch branches ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["einsum", "matmul", "opt_einsum"])
def test_every_contract_kernel_is_the_chain_rule(kernel, dtype, rng, monkeypatch):
    """Each kernel, forced by its thresholds, on a non-symmetric J: Σ_i g_i J[i, j]."""
    if kernel == "einsum":  # every J counts as large and short-rowed
        monkeypatch.setattr(contract_module, "EINSUM_MIN_BYTES", 0)
    else:
        monkeypatch.setattr(contract_module, "EINSUM_MIN_BYTES", 1 << 62)
    J = rng.normal(size=(3, 5, 4, 4)).astype(dtype)
    J[..., 0, :] += 10.0  # far from symmetric
    other = np.float64 if dtype == np.float32 else np.float32
    g = rng.normal(size=(3, 5, 4)).astype(dtype if kernel != "opt_einsum" else other)
    assert contract_module.contract_kernel(g, J) == kernel
    out = jac.contract(g, J)
    loop = np.array([[g[a, b].astype(np.float64) @ J[a, b].astype(np.float64) for b in range(5)] for a in range(3)])
    assert out.shape == (3, 5, 4)
    np.testing.assert_allclose(out, loop, rtol=64 * _eps(dtype), atol=64 * _eps(dtype) * 40)
    assert not np.allclose(out, np.einsum("...i,...ji->...j", g, J))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_custom_activation_vjp_takes_the_einsum_kernel_when_j_is_large(dtype, rng, monkeypatch):
    """The VJP of an activation that writes only ``jacobian`` contracts through ``contract``."""
    from conftest import ScaledTanh

    monkeypatch.setattr(contract_module, "EINSUM_MIN_BYTES", 0)
    z = rng.normal(size=(6, 5)).astype(dtype)
    g = rng.normal(size=(6, 5)).astype(dtype)
    J = ScaledTanh().jacobian(z)
    assert contract_module.contract_kernel(g, J) == "einsum"
    expected = np.einsum("ni,nij->nj", g.astype(np.float64), J.astype(np.float64))
    np.testing.assert_allclose(ScaledTanh().vjp(z, g), expected, rtol=64 * _eps(dtype), atol=64 * _eps(dtype))


@pytest.mark.parametrize("K", [63, 64, 65])
def test_row_dots_on_both_sides_of_the_matmul_threshold(K, rng):
    x, y = rng.normal(size=(7, K)), rng.normal(size=(7, K))
    np.testing.assert_allclose(buffers.rowdot(x, y), [a @ b for a, b in zip(x, y)], rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_far_target_branch_is_taken_and_exact(dtype):
    """Where ``o/e_y`` exceeds 2**RATIO_MAX_EXP the row is redone on shifted logits."""
    B = nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)]
    z = np.array([[B, -B, 0.0], [1.0, -1.0, 0.0]], dtype=dtype)
    y = np.array([1, 1])
    e = np.exp(z)
    other, e_y = e[:, [0, 2]].sum(axis=-1), e[:, 1]
    _, far = nsoftmax.log1p_ratio(other, e_y)
    assert far.tolist() == [True, False]
    with np.errstate(**RAISE):
        value = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none")).loss(z, y)
    ref = _neg_log_softmax(_ld(z))[[0, 1], y]
    assert float(_ulps(value, ref, dtype).max()) <= 1


# -- saturating derivatives -------------------------------------------------------------------------


def _saturation_grid(dtype) -> np.ndarray:
    """|z| from 0 to where the derivative underflows to 0, through the subnormal outputs."""
    top = 110.0 if dtype == np.float32 else 760.0
    z = np.concatenate([np.linspace(0.0, top, 20001), np.geomspace(1e-8, top, 2001)])
    return np.concatenate([z, -z]).astype(dtype)


DERIVATIVES = {
    # long-double σ(z)(1 − σ(z)) = e^{−|z|}/(1 + e^{−|z|})² and 1 − tanh²(z) = 4e^{−2|z|}/(1 + e^{−2|z|})²
    "sigmoid": (jac.Sigmoid(), lambda e1, e2: e1 / (1 + e1) ** 2),
    "tanh": (jac.Tanh(), lambda e1, e2: 4 * e2 / (1 + e2) ** 2),
    "softplus": (jac.Softplus(), None),
}


def _derivative_ulps(derivative, reference, z) -> np.ndarray:
    """Errors in units of the last place of the reference rounded to z's dtype: relative
    for normal outputs, absolute in steps of the smallest subnormal below them."""
    zl = np.abs(_ld(z))
    ref = reference(np.exp(-zl), np.exp(-2 * zl))
    return np.abs(np.asarray(derivative(z)).astype(LD) - ref) / np.spacing(ref.astype(z.dtype)).astype(LD)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturating_derivatives_are_accurate_to_a_few_ulp_down_to_subnormals(name, dtype):
    act, reference = DERIVATIVES[name]
    z = _saturation_grid(dtype)
    with np.errstate(**RAISE):
        d = act.derivative(z)
    assert d.dtype == dtype
    ulps = _derivative_ulps(act.derivative, reference, z)
    assert float(ulps.max()) <= 8, f"{name}: {float(ulps.max()):.1f} ulp at z = {z[ulps.argmax()]}"
    tiny = np.finfo(dtype).smallest_subnormal
    assert np.any((d > 0) & (d < np.finfo(dtype).tiny)), "the grid reaches subnormal outputs"
    assert np.all(d[np.abs(z) >= (104 if dtype == np.float32 else 745)] <= tiny)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_derivative_check_rejects_the_naive_formulas(dtype):
    """σ(1 − σ) and 1 − tanh² are 0 where σ or tanh round to ±1: the test above must see it."""
    z = _saturation_grid(dtype)
    naive = {
        "sigmoid": lambda x: jac.Sigmoid()(x) * (1 - jac.Sigmoid()(x)),
        "tanh": lambda x: 1 - np.tanh(x) ** 2,
    }
    for name, fn in naive.items():
        assert float(_derivative_ulps(fn, DERIVATIVES[name][1], z).max()) > 1e6, name


# -- memory layouts -----------------------------------------------------------------------------

def _layouts(z: np.ndarray) -> dict:
    """The same logits in other memory layouts: Fortran order, a transposed view, negative
    strides, and a read-only broadcast (zero strides) of equal rows."""
    rev = z[::-1].copy()
    return {
        "fortran": np.asfortranarray(z),
        "transposed_view": z.T.copy().T,
        "negative_strides": rev[::-1],
        "broadcast": np.broadcast_to(z[:1], z.shape),
    }


LAYOUT_PAIRS = [pytest.param(p, id=f"{p.activation}+{p.loss}") for p in jac.pairs()]


@pytest.mark.parametrize("pair", LAYOUT_PAIRS)
def test_every_method_gives_the_same_numbers_for_any_memory_layout(pair, rng):
    """A fused rule once wrote the target's gradient entries through ``reshape(-1)`` of an
    array laid out like the input: for Fortran-ordered logits (``(W @ X).T``) the writes went
    to a copy and the gradient came back as ``p`` instead of ``p − e_y``."""
    from conftest import fit_shape, head_methods, head_targets, make_head_logits

    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    z = make_head_logits(head, rng, fit_shape((6, 5), head))  # [μ | σ²]: an even width, σ² > 0
    y = head_targets(head, rng, z.shape)
    second = ["fused"] if head.logits_loss else (["fused"] if head.hessian_rule else []) + ["chain"]
    for name, zl in _layouts(z).items():
        zc = np.ascontiguousarray(zl)
        for m in head_methods(head):
            v1, g1 = head.value_and_grad(zl, y, method=m)
            v2, g2 = head.value_and_grad(zc, y, method=m)
            np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-15, err_msg=f"{name} {m}")
            np.testing.assert_allclose(v1, v2, rtol=1e-13, err_msg=f"{name} {m}")
        for m in second:
            np.testing.assert_allclose(head.hessian(zl, y, m), head.hessian(zc, y, m), rtol=1e-12, atol=1e-15,
                                       err_msg=f"{name} hessian {m}")
        np.testing.assert_allclose(head.hvp(zl, y, zc), head.hvp(zc, y, zc), rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("act", [pytest.param(cls(), id=name) for name, cls in jac.ACTIVATIONS.items()])
def test_activations_give_the_same_numbers_for_any_memory_layout(act, rng):
    from conftest import fit_shape

    z = rng.normal(size=fit_shape((6, 5), act))
    g = rng.normal(size=z.shape)
    for name, zl in _layouts(z).items():
        zc = np.ascontiguousarray(zl)
        for method, args in (("forward", ()), ("jacobian", ()), ("vjp", (g,)), ("jvp", (g,)), ("hessian_vjp", (g,))):
            np.testing.assert_allclose(getattr(act, method)(zl, *args), getattr(act, method)(zc, *args),
                                       rtol=1e-13, atol=1e-15, err_msg=f"{name} {method}")
