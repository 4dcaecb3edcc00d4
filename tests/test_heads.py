"""Heads: every valid (activation, loss) pair of the registries and every method that
applies, against each other, central differences of ``head.loss`` and the loop
references; the fused rules with every option; numerics at extreme logits; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import (
    REDUCTIONS,
    describe,
    head_methods,
    head_targets,
    make_head_logits,
    make_logits,
    make_loss,
    make_targets,
    pair_options,
    readonly,
    target_forms,
)

import jacobians as jac
from jacobians import checks, testing
from jacobians.head import DEFAULT_MAX_BYTES

K = 4
SHAPE = (5, K)
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
FD = {"rtol": 1e-6, "atol": 1e-8}


def _head(pair) -> jac.Head:
    return jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())


PAIRS = [pytest.param(p, id=f"{p.activation}+{p.loss}") for p in jac.pairs()]
PAIR_FORMS = [
    pytest.param(p, form, id=f"{p.activation}+{p.loss}-{form}")
    for p in jac.pairs()
    for form in target_forms(jac.get_loss(p.loss)())
]


def _logits(rng, shape=SHAPE, dtype=np.float64, head=None):
    """Logits N(0, 1.5²); with a ``head``, its loss's own input draw where z is that input."""
    if head is not None:
        return make_head_logits(head, rng, shape, scale=1.5, dtype=dtype)
    return make_logits(rng, shape, scale=1.5, dtype=dtype)


def _own_input(head):
    """The loss's own ``example_input`` where z is the loss's input (Identity), else None."""
    own = getattr(head.loss_fn, "example_input", None)
    return own if own is not None and isinstance(head.activation, jac.Identity) else None


def test_pairs_lists_every_valid_pair_and_its_fused_rule():
    listed = {(p.activation, p.loss): p.fused for p in jac.pairs()}
    for aname, acls in jac.ACTIVATIONS.items():
        for lname, lcls in jac.LOSSES.items():
            act, loss = acls(), lcls()
            try:
                jac.Head(act, loss)
            except ValueError:
                assert (aname, lname) not in listed
                continue
            assert listed[(aname, lname)] == ((acls, lcls) in jac.fused.FUSED)
    for key in [("softmax", "cross_entropy"), ("log_softmax", "nll"), ("sigmoid", "binary_cross_entropy"),
                ("identity", "mse"), ("softmax", "kl_divergence"), ("sparsemax", "sparsemax_loss"), ("entmax15", "entmax15_loss")]:
        assert listed[key] is True
    assert ("tanh", "cross_entropy") not in listed
    assert listed[("identity", "sparsemax_loss")] is False


@pytest.mark.parametrize(("pair", "form"), PAIR_FORMS)
def test_methods_agree_with_each_other_and_with_central_differences(pair, form, rng):
    head = _head(pair)
    z = _logits(rng, head=head)
    y = make_targets(head.loss_fn, rng, SHAPE, form)
    methods = head_methods(head)
    assert methods, "every valid pair has at least one method"
    grads = {m: head.grad(z, y, method=m) for m in methods}
    numeric = jac.numerical_grad(lambda x: float(head.loss(x, y)), z)
    for g in grads.values():
        assert g.shape == z.shape and g.dtype == np.float64
        testing.assert_grad_close(g, grads[methods[0]], **TIGHT)
        testing.assert_grad_close(g, numeric, **FD)
    np.testing.assert_array_equal(head.grad(z, y), grads[head.method])
    np.testing.assert_array_equal(head.grad(z, y, method="auto"), grads[head.method])


@pytest.mark.parametrize(("pair", "form"), PAIR_FORMS)
def test_every_method_matches_the_loop_reference(pair, form, rng):
    head = _head(pair)
    z = _logits(rng, head=head)
    y = make_targets(head.loss_fn, rng, SHAPE, form)
    ref_value, ref_grad = testing.loop_head(head, z, y)
    testing.assert_grad_close(head.loss(z, y), ref_value, **TIGHT)
    for m in head_methods(head):
        value, grad = head.value_and_grad(z, y, method=m)
        testing.assert_grad_close(value, ref_value, **TIGHT)
        testing.assert_grad_close(grad, ref_grad, **TIGHT)


@pytest.mark.parametrize("pair", PAIRS)
def test_value_and_grad_is_consistent(pair, rng):
    head = _head(pair)
    z = _logits(rng, head=head)
    y = head_targets(head, rng, SHAPE)
    for m in head_methods(head):
        value, grad = head.value_and_grad(z, y, method=m)
        np.testing.assert_array_equal(grad, head.grad(z, y, method=m))
        if m == "fused":
            np.testing.assert_array_equal(value, head.loss(z, y))
        else:  # the separate path's value: the loss of the activation's output
            np.testing.assert_array_equal(value, head.loss_fn(head.activation(z), y))
            testing.assert_grad_close(value, head.loss(z, y), **TIGHT)


@pytest.mark.parametrize("pair", PAIRS)
def test_method_property_and_auto(pair):
    head = _head(pair)
    rule = jac.fused.FUSED.get((type(head.activation), type(head.loss_fn)))
    assert head.fused_rule is rule
    assert head.method == ("fused" if rule is not None else "vjp")
    assert pair.fused == (rule is not None)


@pytest.mark.parametrize("pair", [p for p in PAIRS if p.values[0].fused])
def test_fused_rule_value_equals_separate_loss_on_moderate_logits(pair, rng):
    head = _head(pair)
    z = _logits(rng, head=head)
    y = head_targets(head, rng, SHAPE)
    if head.logits_loss:
        separate = head.loss_fn(z, y)
    else:
        separate = head.loss_fn(head.activation(z), y)
    testing.assert_grad_close(head.loss(z, y), separate, **TIGHT)


# -- the fused rules with every option ---------------------------------------------------------

FUSED_CASES = [
    pytest.param(acls, aopt, lcls, lopt, form, red,
                 id=f"{describe(acls, aopt)}+{describe(lcls, lopt(K))}-{form}-{red}")
    for (acls, lcls) in list(jac.fused.FUSED)
    for aopt, lopt in pair_options(acls, lcls, K)
    for form in target_forms(make_loss(lcls, lopt, K))
    for red in REDUCTIONS
]


@pytest.mark.parametrize(("acls", "aopt", "lcls", "lopt", "form", "reduction"), FUSED_CASES)
def test_fused_rules_with_every_option(acls, aopt, lcls, lopt, form, reduction, rng):
    loss = make_loss(lcls, lopt, K, reduction)
    head = jac.Head(acls(**aopt), loss)
    z = _logits(rng)
    y = make_targets(loss, rng, SHAPE, form)
    value, grad = head.value_and_grad(z, y, method="fused")
    ref_value, ref_grad = testing.loop_head(head, z, y)
    testing.assert_grad_close(value, ref_value, **TIGHT)
    testing.assert_grad_close(grad, ref_grad, **TIGHT)
    if reduction == "none":
        assert np.shape(value) == (z.shape if isinstance(loss, jac.ElementwiseLoss) else z.shape[:-1])
    for m in head_methods(head)[1:]:
        v2, g2 = head.value_and_grad(z, y, method=m)
        testing.assert_grad_close(g2, grad, **TIGHT)
        testing.assert_grad_close(v2, value, **TIGHT)
    total = head.loss_fn.with_reduction("sum") if reduction == "none" else None
    numeric = jac.numerical_grad(
        lambda x: float(np.sum(head.loss(x, y) if total is None else jac.Head(head.activation, total).loss(x, y))), z
    )
    testing.assert_grad_close(grad, numeric, **FD)


# -- Fenchel–Young losses -----------------------------------------------------------------------

FY = [(jac.Sparsemax, jac.SparsemaxLoss), (jac.Entmax15, jac.Entmax15Loss)]


@pytest.mark.parametrize(("acls", "lcls"), FY)
def test_fenchel_young_pair_runs_the_fused_rule_only(acls, lcls, rng):
    head = jac.Head(acls(), lcls())
    assert head.logits_loss and head.method == "fused"
    z = _logits(rng)
    y = rng.integers(0, K, size=SHAPE[0])
    grad = head.grad(z, y)
    testing.assert_grad_close(grad, (acls()(z) - np.eye(K)[y]) / SHAPE[0], **TIGHT)  # (p − y)/N
    for method in ("vjp", "jacobian"):
        with pytest.raises(ValueError, match=rf"{lcls.__name__} is a Fenchel–Young loss of the logits.*method='{method}' does not apply"):
            head.grad(z, y, method=method)
        with pytest.raises(ValueError, match="Fenchel–Young"):
            head.value_and_grad(z, y, method=method)


@pytest.mark.parametrize("lcls", [lcls for _, lcls in FY])
def test_identity_with_a_fenchel_young_loss_runs_every_method(lcls, rng):
    head = jac.Head(jac.Identity(), lcls())
    assert not head.logits_loss
    z = _logits(rng)
    y = rng.integers(0, K, size=SHAPE[0])
    grads = [head.grad(z, y, method=m) for m in ("vjp", "jacobian")]
    expected = jac.Head(lcls.logits_of(), lcls()).grad(z, y, method="fused")
    for g in grads:
        testing.assert_grad_close(g, expected, **TIGHT)


# -- numerics --------------------------------------------------------------------------------------


def _extreme_logits(rng, shape=(6, K), dtype=np.float64, big=1e4):
    z = rng.choice([-big, big, 0.0, 2.0], size=shape).astype(dtype)
    z[0] = big
    z[1] = [-big] * (shape[-1] - 1) + [big]
    return z


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pair", PAIRS)
def test_extreme_logits_give_finite_values_and_gradients(pair, dtype, rng):
    head = _head(pair)
    big = checks.inputs.extreme_magnitude(head, dtype)  # less where e^z overflows
    z = _extreme_logits(rng, dtype=dtype, big=big)
    if _own_input(head) is not None:  # the loss's own input, times the extreme magnitude (as checks.extreme_inputs)
        z = (_own_input(head)(z.shape, rng) * big).astype(dtype)
    y = head_targets(head, rng, z.shape, dtype)
    assert np.isfinite(head.loss(z, y))
    for m in head_methods(head):
        value, grad = head.value_and_grad(z, y, method=m)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), m
        assert grad.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separate_path_stays_finite_with_large_class_weights_over_underflowed_probabilities(dtype):
    """dE/da = −c/max(a, tiny) overflows to inf once a class weight exceeds ~4 where softmax
    underflowed to 0, and inf · 0 is NaN in the VJP; the gradient must stay finite."""
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], dtype=dtype)
    y = np.array([1, 2])
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(weight=[1.0, 10.0, 8.0]))
    for m in ("vjp", "jacobian"):
        value, grad = head.value_and_grad(z, y, method=m)
        assert np.isfinite(value) and np.all(np.isfinite(grad)) and grad.dtype == dtype, m
    assert np.all(np.isfinite(head.loss_fn.grad(head.activation(z), y)))


def _lse(row):
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def test_softmax_cross_entropy_is_exact_for_extreme_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [3.0, -1e4, 2.0]])
    y = np.array([1, 0, 2])
    exact = [(_lse(list(row)) - row[t]) for row, t in zip(z, y)]  # lse(z) − z_y, sample by sample
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none"))
    np.testing.assert_allclose(head.loss(z, y), exact, rtol=1e-15)
    assert head.loss(z, y)[0] == 2e4  # −log softmax = 2e4 exactly: no clip at log(tiny)
    s = np.exp(z - np.array([_lse(list(r)) for r in z])[:, None])
    np.testing.assert_allclose(head.grad(z, y), s - np.eye(3)[y], atol=1e-15)
    nll = jac.Head(jac.LogSoftmax(), jac.NLLLoss(reduction="none"))
    np.testing.assert_allclose(nll.loss(z, y), exact, rtol=1e-15)
    kl = jac.Head(jac.Softmax(), jac.KLDivergence(reduction="none"))
    np.testing.assert_allclose(kl.loss(z, y), exact, rtol=1e-15)
    smooth = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1, reduction="none"))
    expected = [0.9 * e + 0.1 / 3 * sum(_lse(list(r)) - v for v in r) for e, r in zip(exact, z)]
    np.testing.assert_allclose(smooth.loss(z, y), expected, rtol=1e-15)


def test_sigmoid_bce_is_exact_for_extreme_logits():
    z = np.array([[1e4, -1e4, 0.0, 40.0]])
    y = np.array([[0.0, 1.0, 1.0, 0.0]])
    pw = np.array([2.0, 3.0, 0.5, 1.0])
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(pos_weight=pw, reduction="none"))
    # −(p y log σ(z) + (1 − y) log σ(−z)) with log σ(x) = −log(1 + e^{−x}), computed with logaddexp
    exact = pw * y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    np.testing.assert_allclose(head.loss(z, y), exact, rtol=1e-15)
    assert head.loss(z, y)[0, 0] == 1e4  # not the separate path's clamp at 100


def test_float32_logits_near_1e6_stay_exact():
    z = (np.float32(1e6) + np.array([[0.0, -1.0, -2.5, 0.5], [3.0, 0.0, -0.5, 1.0]], dtype=np.float32)).astype(np.float32)
    assert z.dtype == np.float32 and np.all(z - np.float32(1e6) == [[0.0, -1.0, -2.5, 0.5], [3.0, 0.0, -0.5, 1.0]])
    y = np.array([2, 0])
    z64 = z.astype(np.float64)
    exact = [_lse(list(r)) - r[t] for r, t in zip(z64, y)]
    for head in (jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none")), jac.Head(jac.LogSoftmax(), jac.NLLLoss(reduction="none"))):
        value, grad = head.value_and_grad(z, y)
        assert value.dtype == np.float32 and grad.dtype == np.float32
        np.testing.assert_allclose(value, exact, rtol=2e-7)
        s = np.exp(z64 - np.array([_lse(list(r)) for r in z64])[:, None])
        np.testing.assert_allclose(grad, s - np.eye(4)[y], atol=1e-7)


@pytest.mark.parametrize(("acls", "lcls"), FY)
def test_fenchel_young_losses_are_exact_for_extreme_logits(acls, lcls):
    z = np.array([[1e4, -1e4, 0.0], [1e4, 1e4 - 0.5, -1e4]])
    y = np.array([1, 0])
    head = jac.Head(acls(), lcls(reduction="none"))
    value, grad = head.value_and_grad(z, y)
    ref_value, ref_grad = testing.loop_loss(head.loss_fn, z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-12)
    assert value[0] == pytest.approx(2e4, rel=1e-12)  # ⟨z, p − y⟩ = z_0 − z_1 with p = e_0


# -- dtypes, shapes, read-only inputs ------------------------------------------------------------


@pytest.mark.parametrize("pair", PAIRS)
def test_float32_in_float32_out_for_every_method(pair, rng):
    head = _head(pair)
    z = _logits(rng, dtype=np.float32, head=head)
    y = head_targets(head, rng, SHAPE, np.float32)
    ref_value, ref_grad = testing.loop_head(head, z.astype(np.float64), y)
    assert np.asarray(head.loss(z, y)).dtype == np.float32
    for m in head_methods(head):
        value, grad = head.value_and_grad(z, y, method=m)
        assert np.asarray(value).dtype == np.float32 and grad.dtype == np.float32, m
        testing.assert_grad_close(grad, ref_grad)
        testing.assert_grad_close(np.float32(value), ref_value)


@pytest.mark.parametrize("pair", PAIRS)
def test_integer_logits_are_promoted_to_float64(pair, rng):
    head = _head(pair)
    own = _own_input(head)
    z = rng.integers(-3, 4, size=SHAPE) if own is None else np.ceil(own(SHAPE, rng)).astype(np.int64)  # σ² >= 1
    y = head_targets(head, rng, SHAPE)
    for m in head_methods(head):
        value, grad = head.value_and_grad(z, y, method=m)
        assert np.asarray(value).dtype == np.float64 and grad.dtype == np.float64
        testing.assert_grad_close(grad, testing.loop_head(head, z, y)[1], **TIGHT)


@pytest.mark.parametrize("pair", PAIRS)
def test_leading_batch_axes_and_single_sample(pair, rng):
    head = _head(pair)
    z = _logits(rng, (2, 3, K), head=head)
    y = head_targets(head, rng, z.shape)
    ref_value, ref_grad = testing.loop_head(head, z, y)
    one_value, one_grad = testing.loop_head(head, z[1, 2], y[1, 2])
    for m in head_methods(head):
        value, grad = head.value_and_grad(z, y, method=m)
        assert grad.shape == (2, 3, K)
        testing.assert_grad_close(value, ref_value, **TIGHT)
        testing.assert_grad_close(grad, ref_grad, **TIGHT)
        value, grad = head.value_and_grad(z[1, 2], y[1, 2], method=m)
        assert grad.shape == (K,)
        testing.assert_grad_close(value, one_value, **TIGHT)
        testing.assert_grad_close(grad, one_grad, **TIGHT)


@pytest.mark.parametrize("pair", PAIRS)
def test_inputs_are_never_modified(pair, rng):
    head = _head(pair)
    z = readonly(_logits(rng, head=head))
    y = readonly(head_targets(head, rng, SHAPE))
    z0, y0 = z.copy(), y.copy()
    head.loss(z, y)
    for m in head_methods(head):
        head.value_and_grad(z, y, method=m)
        head.grad(z, y, method=m)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(y, y0)


# -- the blocked Jacobian path -------------------------------------------------------------------

ONE_PAIR_PER_ACTIVATION = {}
for _p in jac.pairs():
    if _p.activation not in ONE_PAIR_PER_ACTIVATION and not _head(_p).logits_loss:
        ONE_PAIR_PER_ACTIVATION[_p.activation] = _p


@pytest.mark.parametrize("pair", list(ONE_PAIR_PER_ACTIVATION.values()), ids=list(ONE_PAIR_PER_ACTIVATION))
@pytest.mark.parametrize("rows_per_block", [1, 3, 7])
def test_blocked_jacobian_path_is_identical_to_the_unblocked_one(pair, rows_per_block, rng):
    head = _head(pair)
    z = _logits(rng, (2, 11, 6))
    y = head_targets(head, rng, z.shape)
    budget = rows_per_block * 6 * 6 * 8
    plain = head.grad(z, y, method="jacobian")
    blocked = head.grad(z, y, method="jacobian", max_bytes=budget)
    np.testing.assert_array_equal(blocked, plain)
    value, grad = head.value_and_grad(z, y, method="jacobian", max_bytes=budget, workers=1)
    np.testing.assert_array_equal(grad, plain)
    assert DEFAULT_MAX_BYTES >= z.size * 6 * 8  # the default budget holds this batch unblocked


def test_blocked_path_of_a_custom_dense_jacobian(rng):
    class Cubic(jac.Activation):
        def forward(self, z):
            return z**3 + z[..., :1]

        def jacobian(self, z, *, out=None, workers=None):
            J = np.zeros(z.shape + z.shape[-1:])
            jac.diagonal(J)[...] = 3 * z**2
            J[..., :, 0] += 1.0
            return J

    head = jac.Head(Cubic(), jac.MeanSquaredError())
    z = _logits(rng, (9, 3))
    y = rng.normal(size=z.shape)
    plain = head.grad(z, y, method="jacobian")
    np.testing.assert_array_equal(head.grad(z, y, method="jacobian", max_bytes=2 * 9 * 8), plain)
    testing.assert_grad_close(plain, jac.numerical_grad(lambda x: float(head.loss(x, y)), z), **FD)


# -- errors ------------------------------------------------------------------------------------------


def test_invalid_pair_says_why():
    with pytest.raises(ValueError, match=r"Tanh outputs signed_unit_interval.*CrossEntropy needs open_simplex.*makes no sense.*softmax"):
        jac.Head(jac.Tanh(), jac.CrossEntropy())
    with pytest.raises(ValueError, match="LogSoftmax outputs log_simplex.*BinaryCrossEntropy needs unit_interval"):
        jac.Head(jac.LogSoftmax(), jac.BinaryCrossEntropy())
    with pytest.raises(ValueError, match="Sparsemax outputs simplex.*CrossEntropy needs open_simplex"):
        jac.Head(jac.Sparsemax(), jac.CrossEntropy())


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: jac.Head(jac.Softmax, jac.CrossEntropy()), TypeError, r"activation must be an instance; got the class Softmax \(write Softmax\(\)\)"),
        (lambda: jac.Head(jac.Softmax(), jac.CrossEntropy), TypeError, r"loss must be an instance; got the class CrossEntropy"),
        (lambda: jac.Head("softmax", jac.CrossEntropy()), TypeError, "activation must be a jacobians.Activation instance; got str"),
        (lambda: jac.Head(jac.Softmax(), np.mean), TypeError, "loss must be a jacobians.Loss instance"),
    ],
)
def test_head_construction_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_head_call_errors():
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    z, y = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match=r"method must be one of \('auto', 'fused', 'vjp', 'jacobian'\); got 'magic'"):
        head.grad(z, y, method="magic")
    with pytest.raises(ValueError, match="method must be one of"):
        head.value_and_grad(z, y, method=None)
    with pytest.raises(ValueError, match=r"y must be class indices of shape \(2,\) or probabilities of shape \(2, 3\).*got shape \(3,\)"):
        head.grad(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"y must be class indices.*got shape \(2, 4\)"):
        head.grad(z, np.zeros((2, 4)), method="vjp")
    with pytest.raises(TypeError, match="integer dtype; got dtype float64"):
        head.grad(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\)"):
        head.loss(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="z must have at least 1 dimension.*0-d"):
        head.grad(np.float64(0.0), np.array(0))
    with pytest.raises(ValueError, match="max_bytes must be a positive int; got 0"):
        head.grad(z, y, method="jacobian", max_bytes=0)
    plain = jac.Head(jac.Tanh(), jac.MeanSquaredError())
    with pytest.raises(ValueError, match=r"no fused rule is registered for \(Tanh, MeanSquaredError\); use method='vjp' or 'jacobian'"):
        plain.grad(z, np.zeros((2, 3)), method="fused")
    with pytest.raises(ValueError, match=r"y must have the shape of a, \(2, 3\); got shape \(2, 4\)"):
        plain.grad(z, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"y: binary targets must be in \[0, 1\]"):
        jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()).grad(z, np.full((2, 3), 2.0))
