"""Every registered loss × option set × reduction × target form: values and gradients
against the per-sample loop references (torch's definitions) and central differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    IGNORE,
    REDUCTIONS,
    fit_shape,
    loss_specs,
    make_loss,
    make_loss_input,
    make_targets,
    readonly,
    target_forms,
    values_shape,
)

import jacobians as jac
from jacobians import testing

K = 4
SHAPE = (6, K)
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
FD = {"rtol": 1e-6, "atol": 1e-8}

SPECS = loss_specs()
CASES = [
    pytest.param(cls, options, form, id=f"{name}-{form}")
    for name, cls, options in SPECS
    for form in target_forms(make_loss(cls, options, K))
]


def _setup(cls, options, form, reduction, rng, shape=SHAPE, dtype=np.float64):
    loss = make_loss(cls, options, shape[-1], reduction)
    a = make_loss_input(loss, rng, shape, dtype)
    y = make_targets(loss, rng, shape, form, dtype)
    return loss, a, y


def _total(value):
    return float(np.sum(value))


def test_registry_holds_the_builtins():
    names = {"cross_entropy", "nll", "binary_cross_entropy", "mse", "mae", "huber", "kl_divergence", "sparsemax_loss", "entmax15_loss", "entmax_loss",
             "plackett_luce", "gaussian_nll", "focal", "binary_focal", "poly1", "poisson_nll", "multi_margin"}
    assert names <= set(jac.LOSSES)
    for name, cls in jac.LOSSES.items():
        assert jac.get_loss(name) is cls
    assert {jac.get_loss(name) for name in names} == set(testing.LOSS_REFERENCES)  # a loop reference for each
    with pytest.raises(KeyError, match="valid names are"):
        jac.get_loss("no_such_loss")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("cls", "options", "form"), CASES)
class TestAgainstReferences:
    def test_value_and_grad_match_the_loop_reference(self, cls, options, form, reduction, rng):
        loss, a, y = _setup(cls, options, form, reduction, rng)
        ref_value, ref_grad = testing.loop_loss(loss, a, y)
        value, grad = loss.value(a, y), loss.grad(a, y)
        testing.assert_grad_close(value, ref_value, **TIGHT)
        testing.assert_grad_close(grad, ref_grad, **TIGHT)
        assert grad.shape == a.shape and grad.dtype == np.float64

    def test_grad_matches_central_differences(self, cls, options, form, reduction, rng):
        loss, a, y = _setup(cls, options, form, reduction, rng)
        numeric = jac.numerical_grad(lambda x: _total(loss.value(x, y)), a)
        testing.assert_grad_close(loss.grad(a, y), numeric, **FD)

    def test_value_and_grad_is_value_then_grad(self, cls, options, form, reduction, rng):
        loss, a, y = _setup(cls, options, form, reduction, rng)
        value, grad = loss.value_and_grad(a, y)
        np.testing.assert_array_equal(value, loss.value(a, y))
        np.testing.assert_array_equal(value, loss(a, y))
        np.testing.assert_array_equal(grad, loss.grad(a, y))

    def test_none_shape_and_reductions_agree(self, cls, options, form, reduction, rng):
        loss, a, y = _setup(cls, options, form, "none", rng)
        per = loss.value(a, y)
        assert per.shape == values_shape(loss, a.shape)
        total = loss.with_reduction("sum")
        np.testing.assert_allclose(total.value(a, y), per.sum(), rtol=1e-13)
        np.testing.assert_allclose(total.grad(a, y), loss.grad(a, y), rtol=1e-13)
        assert loss.with_reduction(reduction).reduction == reduction and loss.reduction == "none"

    def test_float32_stays_float32(self, cls, options, form, reduction, rng):
        loss, a, y = _setup(cls, options, form, reduction, rng, dtype=np.float32)
        value, grad = loss.value_and_grad(a, y)
        assert np.asarray(value).dtype == np.float32 and grad.dtype == np.float32
        ref_value, ref_grad = testing.loop_loss(loss, a.astype(np.float64), y)
        testing.assert_grad_close(value, np.float32(ref_value) if np.ndim(ref_value) == 0 else ref_value)
        testing.assert_grad_close(grad, ref_grad)

    def test_leading_batch_axes_and_single_sample(self, cls, options, form, reduction, rng):
        loss, a, y = _setup(cls, options, form, reduction, rng, shape=(2, 3, K))
        ref_value, ref_grad = testing.loop_loss(loss, a, y)
        testing.assert_grad_close(loss.value(a, y), ref_value, **TIGHT)
        testing.assert_grad_close(loss.grad(a, y), ref_grad, **TIGHT)
        a1, y1 = a[1, 2], y[1, 2]
        if getattr(loss, "ignore_index", None) is not None and np.ndim(y1) == 0 and y1 == IGNORE:
            y1 = np.array(0)  # a single ignored sample has no 'mean'
        ref_value, ref_grad = testing.loop_loss(loss, a1, y1)
        testing.assert_grad_close(loss.value(a1, y1), ref_value, **TIGHT)
        testing.assert_grad_close(loss.grad(a1, y1), ref_grad, **TIGHT)
        assert loss.grad(a1, y1).shape == (K,)

    def test_inputs_are_never_modified(self, cls, options, form, reduction, rng):
        loss, a, y = _setup(cls, options, form, reduction, rng)
        a, y = readonly(a), readonly(y)
        a0, y0 = a.copy(), y.copy()
        loss.value_and_grad(a, y)
        loss.value(a, y)
        loss.grad(a, y)
        np.testing.assert_array_equal(a, a0)
        np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize(("name", "cls", "options"), SPECS, ids=[s[0] for s in SPECS])
def test_writeable_inputs_on_the_domain_boundary_are_not_modified(name, cls, options, rng):
    """Probabilities that underflowed to 0 (or rounded to 1) are read as they are, never
    floored in place, even when the caller's array is writeable."""
    loss = make_loss(cls, options, K, "sum")
    a = make_loss_input(loss, rng, SHAPE)
    if loss.logits_of is None and loss.domain.issubset("unit_interval"):
        a[0, 0], a[0, 1] = 0.0, 1.0 - a[0, 2:].sum() if loss.domain.issubset("simplex") else 1.0
    y = make_targets(loss, rng, SHAPE, target_forms(loss)[0])
    a0, y0 = a.copy(), np.copy(y)
    value, grad = loss.value_and_grad(a, y)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(y, y0)


CLASS_SPECS = [
    pytest.param(cls, options, id=name)
    for name, cls, options in SPECS
    if getattr(cls, "target_kind", None) == "class" and "ignore_index" not in options(K)
]


@pytest.mark.parametrize(("cls", "options"), CLASS_SPECS)
def test_index_and_one_hot_targets_agree(cls, options, rng):
    loss = make_loss(cls, options, K, "none")
    a = make_loss_input(loss, rng, SHAPE)
    idx = rng.integers(0, K, size=SHAPE[0])
    onehot = np.eye(K)[idx]
    # per sample and summed: identical
    for red in ("none", "sum"):
        one = loss.with_reduction(red)
        np.testing.assert_allclose(one.value(a, idx), one.value(a, onehot), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(one.grad(a, idx), one.grad(a, onehot), rtol=1e-14, atol=1e-15)
    mean = loss.with_reduction("mean")
    total = _total(loss.with_reduction("sum").value(a, idx))
    weight = getattr(loss, "weight", None)
    if weight is None or mean.mean_denominator(a, idx) == SHAPE[0]:  # (MultiMargin: weights, 'mean' over rows)
        np.testing.assert_allclose(mean.value(a, idx), mean.value(a, onehot), rtol=1e-14)
        np.testing.assert_allclose(mean.grad(a, idx), mean.grad(a, onehot), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(mean.value(a, idx), total / SHAPE[0], rtol=1e-14)
    else:
        # torch: index targets divide by the summed weights of the targets, rows by N
        np.testing.assert_allclose(mean.value(a, idx), total / weight[idx].sum(), rtol=1e-14)
        np.testing.assert_allclose(mean.value(a, onehot), total / SHAPE[0], rtol=1e-14)


@pytest.mark.parametrize("cls", [jac.CrossEntropy, jac.NLLLoss])
def test_ignored_targets_contribute_nothing(cls, rng):
    loss = cls(ignore_index=IGNORE, weight=np.linspace(0.5, 2.0, K))
    a = make_loss_input(loss, rng, SHAPE)
    y = np.array([0, IGNORE, 3, IGNORE, 1, 2])
    kept = y != IGNORE
    grad = loss.grad(a, y)
    assert not grad[~kept].any()
    plain = cls(weight=np.linspace(0.5, 2.0, K))
    np.testing.assert_allclose(loss.value(a, y), plain.value(a[kept], y[kept]), rtol=1e-14)
    np.testing.assert_allclose(grad[kept], plain.grad(a[kept], y[kept]), rtol=1e-14)


def test_cross_entropy_closed_forms():
    a = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4]])
    y = np.array([0, 1])
    np.testing.assert_allclose(jac.CrossEntropy()(a, y), -(np.log(0.7) + np.log(0.5)) / 2, rtol=1e-15)
    # label smoothing ε: target (1 − ε) e_y + ε/K
    eps = 0.3
    q = (1 - eps) * np.eye(3)[y] + eps / 3
    np.testing.assert_allclose(jac.CrossEntropy(label_smoothing=eps)(a, y), -(q * np.log(a)).sum() / 2, rtol=1e-15)
    np.testing.assert_allclose(jac.CrossEntropy(label_smoothing=eps).grad(a, y), -q / a / 2, rtol=1e-15)
    # class weights, index targets: 'mean' divides by w[y].sum()
    w = np.array([2.0, 0.5, 1.0])
    expected = -(w[0] * np.log(0.7) + w[1] * np.log(0.5)) / (w[0] + w[1])
    np.testing.assert_allclose(jac.CrossEntropy(weight=w)(a, y), expected, rtol=1e-15)


def test_binary_cross_entropy_follows_torch_clamps_and_keras_smoothing():
    a = np.array([[0.0, 1.0, 0.25]])
    y = np.array([[1.0, 0.0, 1.0]])
    bce = jac.BinaryCrossEntropy(reduction="none")
    # log terms clamped at −100: −1·max(log 0, −100) = 100
    np.testing.assert_allclose(bce(a, y), [[100.0, 100.0, -np.log(0.25)]], rtol=1e-15)
    # gradient denominator a(1 − a) clamped at torch's single-precision constant 1e-12f
    eps = float(np.float32(1e-12))
    np.testing.assert_allclose(bce.grad(a, y), [[-1.0 / eps, 1.0 / eps, (0.25 - 1) / (0.25 * 0.75)]], rtol=1e-15)
    assert np.all(np.isfinite(bce.grad(a, y)))
    eps = 0.2
    smooth = jac.BinaryCrossEntropy(label_smoothing=eps, reduction="none")
    b = np.array([[0.3, 0.6]])
    t = np.array([[1.0, 0.0]]) * (1 - eps) + eps / 2
    np.testing.assert_allclose(smooth(b, np.array([[1.0, 0.0]])), -(t * np.log(b) + (1 - t) * np.log(1 - b)), rtol=1e-15)
    pw = np.array([3.0, 0.5])
    weighted = jac.BinaryCrossEntropy(pos_weight=pw, reduction="none")
    yy = np.array([[1.0, 1.0]])
    np.testing.assert_allclose(weighted(b, yy), -pw * np.log(b), rtol=1e-15)
    np.testing.assert_allclose(jac.BinaryCrossEntropy()(b, yy), -np.log(b).mean(), rtol=1e-15)  # mean over N·K


def test_kl_divergence_is_batchmean_and_index_targets_are_one_hot():
    a = np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    y = np.array([[0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    per = [0.5 * np.log(0.5 / 0.5) + 0.5 * np.log(0.5 / 0.25), 0.1 * np.log(0.1 / 0.2) + 0.3 * np.log(0.3 / 0.2)]
    np.testing.assert_allclose(jac.KLDivergence(reduction="none")(a, y), per, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(jac.KLDivergence()(a, y), sum(per) / 2, rtol=1e-14)
    np.testing.assert_allclose(jac.KLDivergence(reduction="none")(a, np.array([0, 2])), -np.log([0.5, 0.6]), rtol=1e-15)


def test_regression_losses_closed_forms():
    a = np.array([[0.5, 3.0, -2.0]])
    y = np.zeros((1, 3))
    np.testing.assert_allclose(jac.MeanSquaredError()(a, y), (0.25 + 9 + 4) / 3, rtol=1e-15)
    np.testing.assert_allclose(jac.MeanAbsoluteError().grad(a, y), [[1 / 3, 1 / 3, -1 / 3]], rtol=1e-15)
    np.testing.assert_allclose(jac.MeanAbsoluteError().grad(y, y), np.zeros((1, 3)))  # 0 at the kink, as torch
    np.testing.assert_allclose(jac.Huber(delta=1.0, reduction="none")(a, y), [[0.125, 2.5, 1.5]], rtol=1e-15)
    np.testing.assert_allclose(jac.Huber(delta=1.0, reduction="sum").grad(a, y), [[0.5, 1.0, -1.0]], rtol=1e-15)


def test_fenchel_young_losses_vanish_at_their_own_mapping_and_are_nonnegative(rng):
    z = rng.normal(size=(20, 5)) * 3
    for loss, act in ((jac.SparsemaxLoss(reduction="none"), jac.Sparsemax()), (jac.Entmax15Loss(reduction="none"), jac.Entmax15())):
        p = act(z)
        np.testing.assert_allclose(loss(z, p), 0.0, atol=1e-12)
        np.testing.assert_allclose(loss.grad(z, p), 0.0, atol=1e-15)
        y = rng.integers(0, 5, size=20)
        assert np.all(loss(z, y) >= -1e-12)
        np.testing.assert_allclose(loss.grad(z, y), p - np.eye(5)[y], atol=1e-15)


@pytest.mark.parametrize(("name", "cls", "options"), SPECS, ids=[s[0] for s in SPECS])
def test_integer_inputs_are_promoted_to_float64(name, cls, options):
    loss = make_loss(cls, options, 2)
    rng = np.random.default_rng(0)
    if getattr(loss, "example_input", None) is not None:  # its own draw, rounded up: [μ | σ²] keeps σ² >= 1
        a = np.ceil(loss.example_input(fit_shape((2, 2), loss), rng)).astype(np.int64)
    elif loss.logits_of is None and loss.domain.issubset("nonnegative"):  # probabilities: one-hot rows
        a = np.array([[1, 0], [0, 1]])
    elif loss.logits_of is None and loss.domain.issubset("nonpositive"):  # log-probabilities
        a = np.array([[0, -1], [-2, 0]])
    else:
        a = np.array([[1, -1], [0, 2]])
    y = np.array([0, 1]) if loss.target_kind == "class" else np.array([[1, 0], [0, 1]])
    if getattr(loss, "example_targets", None) is not None:  # targets shaped unlike a, as integers
        y = np.rint(loss.example_targets(a.shape, rng)).astype(np.int64)
    value, grad = loss.with_reduction("sum").value_and_grad(a, y)
    assert np.asarray(value).dtype == np.float64 and grad.dtype == np.float64


# -- errors ------------------------------------------------------------------------------------

PROBS = np.full((2, 3), 1 / 3)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: jac.CrossEntropy()(PROBS, np.array([0, 3])), ValueError, r"y: class indices must be in \[0, 3\).*got values in \[0, 3\]"),
        (lambda: jac.CrossEntropy()(PROBS, np.array([-1, 0])), ValueError, r"class indices must be in \[0, 3\)"),
        (lambda: jac.NLLLoss()(np.log(PROBS), np.array([0, 5])), ValueError, r"class indices must be in \[0, 3\)"),
        (lambda: jac.CrossEntropy(ignore_index=IGNORE)(PROBS, np.array([0, 7])), ValueError, "or equal ignore_index=-100"),
        (lambda: jac.CrossEntropy()(PROBS, np.array([0.0, 1.0])), TypeError, r"y: class indices of shape \(2,\) must have an integer dtype; got dtype float64"),
        (lambda: jac.CrossEntropy()(PROBS, np.array([0, 1, 2])), ValueError, r"y must be class indices of shape \(2,\) or probabilities of shape \(2, 3\).*got shape \(3,\)"),
        (lambda: jac.KLDivergence()(PROBS, np.zeros((2, 4))), ValueError, r"got shape \(2, 4\)"),
        (lambda: jac.CrossEntropy()(PROBS, -np.ones((2, 3))), ValueError, r"target probabilities must be in \[0, 1\]"),
        (lambda: jac.MeanSquaredError()(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, r"y must have the shape of a, \(2, 3\); got shape \(2, 4\)"),
        (lambda: jac.BinaryCrossEntropy()(np.full((2, 3), 0.5), np.full((2, 3), 2.0)), ValueError, r"y: binary targets must be in \[0, 1\]"),
        (lambda: jac.BinaryCrossEntropy()(np.full((2, 3), 1.5), np.zeros((2, 3))), ValueError, r"a must hold values in \[0, 1\].*got values in \[1.5, 1.5\]"),
        (lambda: jac.CrossEntropy()(np.full((2, 3), 2.0), np.array([0, 1])), ValueError, "a must hold strictly positive probabilities"),
        (lambda: jac.NLLLoss()(np.full((2, 3), 0.5), np.array([0, 1])), ValueError, "a must hold log-probabilities"),
        (lambda: jac.CrossEntropy(reduction="avg"), ValueError, r"reduction must be one of \('mean', 'sum', 'none'\); got 'avg'"),
        (lambda: jac.MeanSquaredError(reduction=None), ValueError, "reduction must be one of"),
        (lambda: jac.MeanSquaredError().with_reduction("all"), ValueError, "reduction must be one of"),
        (lambda: jac.CrossEntropy(label_smoothing=-0.1), ValueError, r"label_smoothing must be in \[0, 1.0\]; got -0.1"),
        (lambda: jac.CrossEntropy(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1.0\]; got 1.5"),
        (lambda: jac.BinaryCrossEntropy(label_smoothing=-1), ValueError, "label_smoothing must be in"),
        (lambda: jac.CrossEntropy(label_smoothing="0.1"), TypeError, "label_smoothing must be a real number"),
        (lambda: jac.MeanSquaredError()(np.float64(1.0), np.float64(1.0)), ValueError, r"a must have at least 1 dimension.*0-d"),
        (lambda: jac.CrossEntropy()(np.float64(1.0), np.array(0)), ValueError, "a must have at least 1 dimension"),
        (lambda: jac.CrossEntropy(weight=np.ones(4))(PROBS, np.array([0, 1])), ValueError, r"weight must have shape \(K,\) = \(3,\) to match a; got shape \(4,\)"),
        (lambda: jac.CrossEntropy(weight=np.ones((2, 3))), ValueError, r"weight must be a 1-d array of shape \(K,\); got shape \(2, 3\)"),
        (lambda: jac.NLLLoss(weight=-np.ones(3)), ValueError, "weight must be finite and >= 0"),
        (lambda: jac.CrossEntropy(ignore_index=1.5), TypeError, "ignore_index must be an int or None; got 1.5"),
        (lambda: jac.BinaryCrossEntropy(pos_weight=np.ones(4))(np.full((2, 3), 0.5), np.zeros((2, 3))), ValueError, r"pos_weight of shape \(4,\) does not broadcast against a of shape \(2, 3\)"),
        (lambda: jac.BinaryCrossEntropy(pos_weight=-np.ones(3)), ValueError, "pos_weight must be finite and >= 0"),
        (lambda: jac.Huber(delta=0), ValueError, "delta must be > 0; got 0.0"),
        (lambda: jac.MeanSquaredError()(np.array(["a"]), np.zeros(1)), TypeError, "a must be a real numeric array"),
        (lambda: jac.SparsemaxLoss()(np.zeros((2, 3)), np.array([0, 3])), ValueError, r"class indices must be in \[0, 3\)"),
    ],
    ids=lambda x: None,
)
def test_bad_input_gets_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()
