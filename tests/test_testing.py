"""``jacobians.testing`` itself: the assertions fail when they should and say where; the
loop references reproduce closed forms and values computed by torch 2.13 (typed in here,
so that torch is not a test dependency); and they catch deliberately wrong code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import readonly

import jacobians as jac
from jacobians import testing
from jacobians.activations.references import bisect_threshold  # the loop references' solver

# -- assertions --------------------------------------------------------------------------------


def test_assertions_pass_on_close_arrays_and_accept_operators(rng):
    J = rng.normal(size=(3, 4, 4))
    testing.assert_jacobian_close(J, J.copy())
    testing.assert_jacobian_close(J, J * (1 + 1e-9))
    testing.assert_grad_close(J[..., 0], J[..., 0] + 1e-11)
    z = rng.normal(size=(3, 4))
    testing.assert_jacobian_close(jac.Softmax().jacobian_operator(z), jac.Softmax().jacobian(z))
    testing.assert_grad_close(np.zeros((0, 3)), np.zeros((0, 3)))
    testing.assert_grad_close(np.array([np.inf, -np.inf]), np.array([np.inf, -np.inf]))


def test_failure_message_names_errors_and_worst_index():
    expected = np.zeros((2, 3, 3))
    actual = expected.copy()
    actual[1, 2, 0] = 1e-3
    actual[0, 1, 1] = 1e-8
    with pytest.raises(AssertionError) as info:
        testing.assert_jacobian_close(actual, expected)
    msg = str(info.value)
    assert "Jacobians not close (rtol=1e-07, atol=1e-09; dtypes float64 and float64): 2 of 18 entries differ" in msg
    assert "max abs error 0.001 at index (1, 2, 0)" in msg
    assert "worst entry at index (1, 2, 0): actual = 0.001, expected = 0.0" in msg
    with pytest.raises(AssertionError, match=r"max rel error 0\.5 at index \(1,\)"):
        testing.assert_grad_close(np.array([1.0, 3.0]), np.array([1.0, 2.0]))


def test_shape_mismatch_and_nan_fail():
    with pytest.raises(AssertionError, match=r"shapes differ: actual has shape \(2, 3\), expected has shape \(3, 2\)"):
        testing.assert_grad_close(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(AssertionError, match="NaN at 1 entries"):
        testing.assert_grad_close(np.array([0.0, np.nan]), np.array([0.0, 0.0]))
    with pytest.raises(AssertionError, match="NaN at 1 entries"):
        testing.assert_grad_close(np.array([0.0, np.nan]), np.array([0.0, np.nan]))
    with pytest.raises(AssertionError, match="1 of 1 entries differ"):
        testing.assert_grad_close(np.array([np.inf]), np.array([-np.inf]))
    with pytest.raises(AssertionError, match="1 of 2 entries differ"):
        testing.assert_grad_close(np.array([1.0, 5.0]), np.array([1.0, np.inf]))
    with pytest.raises(TypeError, match="expected must be a real numeric array"):
        testing.assert_grad_close(np.zeros(1), np.array(["a"]))


def test_default_tolerances_follow_the_least_precise_dtype():
    assert testing.default_tolerances(np.zeros(1)) == (1e-7, 1e-9)
    assert testing.default_tolerances(np.zeros(1, np.float32), np.zeros(1)) == (1e-4, 1e-5)
    assert testing.default_tolerances(np.zeros(1, np.float16)) == (1e-2, 1e-3)
    assert testing.default_tolerances(np.zeros(1, int)) == (1e-7, 1e-9)
    x = np.array([1.0, 2.0])
    off = x * (1 + 1e-6)
    testing.assert_grad_close(off.astype(np.float32), x)  # float32: looser
    with pytest.raises(AssertionError):
        testing.assert_grad_close(off, x)  # float64: 1e-6 relative is too much
    testing.assert_grad_close(off, x, rtol=1e-5)  # explicit tolerances win
    with pytest.raises(AssertionError, match=r"rtol=0, atol=0"):
        testing.assert_grad_close(x + 1e-15, x, rtol=0, atol=0)


# -- loop references: closed forms -----------------------------------------------------------


def test_softmax_and_log_softmax_references():
    z = np.array([0.0, math.log(3.0)])  # softmax = [1/4, 3/4]
    np.testing.assert_allclose(testing.loop_forward(jac.Softmax(), z), [0.25, 0.75], rtol=1e-15)
    np.testing.assert_allclose(testing.loop_jacobian(jac.Softmax(), z), [[0.1875, -0.1875], [-0.1875, 0.1875]], rtol=1e-15)
    # temperature T: softmax(z/T) and J/T
    np.testing.assert_allclose(testing.loop_forward(jac.Softmax(temperature=2.0), 2 * z), [0.25, 0.75], rtol=1e-15)
    np.testing.assert_allclose(testing.loop_jacobian(jac.Softmax(temperature=2.0), 2 * z), [[0.09375, -0.09375], [-0.09375, 0.09375]], rtol=1e-15)
    # log-softmax: J[i, j] = δ_ij − s_j, not symmetric
    np.testing.assert_allclose(testing.loop_forward(jac.LogSoftmax(), z), np.log([0.25, 0.75]), rtol=1e-15)
    np.testing.assert_allclose(testing.loop_jacobian(jac.LogSoftmax(), z), [[0.75, -0.75], [-0.25, 0.25]], rtol=1e-15)


def test_elementwise_references():
    z = np.array([-1.0, 0.0, 2.0])
    sig = 1 / (1 + np.exp(-z))
    cases = {
        jac.Sigmoid(): (sig, sig * (1 - sig)),
        jac.Tanh(): (np.tanh(z), 1 - np.tanh(z) ** 2),
        jac.ReLU(): ([0.0, 0.0, 2.0], [0.0, 0.0, 1.0]),
        jac.LeakyReLU(slope=0.1): ([-0.1, 0.0, 2.0], [0.1, 0.1, 1.0]),
        jac.Identity(): (z, [1.0, 1.0, 1.0]),
        jac.Softplus(): (np.log1p(np.exp(z)), sig),
    }
    for act, (a, d) in cases.items():
        np.testing.assert_allclose(testing.loop_forward(act, z), a, rtol=1e-14, err_msg=repr(act))
        np.testing.assert_allclose(testing.loop_jacobian(act, z), np.diag(d), rtol=1e-14, err_msg=repr(act))
    big = np.array([-1e4, 1e4, 800.0])
    for act in cases:
        assert np.all(np.isfinite(testing.loop_jacobian(act, big)))


def test_sparsemax_and_entmax_references():
    z = np.array([0.5, 0.2, -2.0])
    np.testing.assert_allclose(testing.loop_forward(jac.Sparsemax(), z), [0.65, 0.35, 0.0], rtol=1e-14)
    np.testing.assert_allclose(testing.loop_jacobian(jac.Sparsemax(), z), [[0.5, -0.5, 0], [-0.5, 0.5, 0], [0, 0, 0]], atol=1e-15)
    # 1.5-entmax of [1, 0.5, −3]: on the support {0, 1}, (0.5 − τ)² + (0.25 − τ)² = 1
    tau = (1.5 - math.sqrt(7.75)) / 4
    p = np.array([(0.5 - tau) ** 2, (0.25 - tau) ** 2, 0.0])
    np.testing.assert_allclose(testing.loop_forward(jac.Entmax15(), np.array([1.0, 0.5, -3.0])), p, rtol=1e-14)
    g = np.sqrt(p)
    J = np.diag(g) - np.outer(g, g) / g.sum()
    np.testing.assert_allclose(testing.loop_jacobian(jac.Entmax15(), np.array([1.0, 0.5, -3.0])), J, atol=1e-15)
    # one class dominates: both give the vertex e_0
    np.testing.assert_allclose(testing.loop_forward(jac.Sparsemax(), np.array([1e4, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(testing.loop_forward(jac.Entmax15(), np.array([5.0, 0.0, 0.0])), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(testing.loop_forward(jac.Sparsemax(), np.array([3.0])), [1.0])


def _scalar_bisection(x, mass):
    """The plain bisection the stepped one replaces: one midpoint a step, to adjacent floats."""
    lo, hi = float(x.max()) - 1.0, float(x.max())
    while lo < 0.5 * (lo + hi) < hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mass(mid) >= 1.0 else (lo, mid)
    return 0.5 * (lo + hi)


def _sorted_sparsemax(z):
    """Sparsemax of one row by sorting (Martins & Astudillo 2016), in long double."""
    x = np.asarray(z, np.longdouble)
    x = x - x.max()
    s = np.sort(x)[::-1]
    k = np.arange(1, x.size + 1)
    cs = np.cumsum(s)
    kmax = k[1 + k * s > cs].max()
    return np.maximum(x - (cs[kmax - 1] - 1) / kmax, 0)


def _reference_rows(rng):
    rows = [rng.normal(scale=s, size=K) for s in (0.1, 1.0, 3.0) for K in (1, 2, 5, 17) for _ in range(5)]
    rows += [np.array([1.0, 1.0, 1.0, -2.0]), np.array([0.3, 0.3, 0.3]), np.array([2.0, 2.0, 0.0, 0.0]),
             np.array([1e4, 0.0, -1e4]), np.array([1e300, 1e300 - 1e290, -1e300]), np.array([-1e4, -1e4 + 0.5, -1e4])]
    return rows


def test_stepped_bisection_equals_a_plain_scalar_bisection(rng):
    """The references' bisection evaluates 63 points a step; it ends on the same bracket of
    adjacent floats as a plain one-midpoint-a-step bisection, for each mass."""
    for x in _reference_rows(rng):
        x = x - x.max()
        for power in (1.0, 2.0, 1 / 0.3, 1 / 1.7):
            stepped = bisect_threshold(x, lambda t, p=power, x=x: (np.maximum(x - t[:, None], 0.0) ** p).sum(axis=1))
            plain = _scalar_bisection(x, lambda t, p=power, x=x: (np.maximum(x - t, 0.0) ** p).sum())
            assert abs(stepped - plain) <= 2 * np.spacing(abs(plain) + 1.0), (x, power, stepped, plain)
            # stopped once no entry lies in the bracket: the same support, but for entries at the
            # root itself (within round-off of the plain τ), whose share is 0 either way
            early = bisect_threshold(x, lambda t, p=power, x=x: (np.maximum(x - t[:, None], 0.0) ** p).sum(axis=1),
                                              support_only=True)
            at_root = np.abs(x - plain) <= 4 * np.spacing(abs(plain) + 1.0)
            np.testing.assert_array_equal((x > early)[~at_root], (x > plain)[~at_root], err_msg=f"{x!r} {power}")


def test_simplex_references_equal_sorting_and_long_double(rng):
    """sparsemax against the sort-based closed form, 1.5-entmax and α-entmax against the long
    double bisection of conftest, on random rows, ties and huge logits."""
    from conftest import entmax_longdouble

    for x in _reference_rows(rng):
        np.testing.assert_allclose(testing.loop_forward(jac.Sparsemax(), x), _sorted_sparsemax(x).astype(float),
                                   rtol=1e-13, atol=1e-15, err_msg=repr(x))
        if np.abs(x).max() > 1e10:  # α-entmax scales x by α − 1: keep the long double reference in range
            continue
        np.testing.assert_allclose(testing.loop_forward(jac.Entmax15(), x), entmax_longdouble(x, 1.5).astype(float),
                                   rtol=1e-12, atol=1e-15, err_msg=repr(x))
        for alpha in (1.3, 1.5, 2.0, 2.7):
            np.testing.assert_allclose(testing.loop_forward(jac.Entmax(alpha), x),
                                       entmax_longdouble(x, alpha).astype(float),
                                       rtol=1e-12, atol=1e-15, err_msg=f"{x!r} alpha={alpha}")


def test_vjp_and_jvp_references_use_the_layout():
    z = np.log([0.25, 0.75])
    J = np.array([[0.75, -0.75], [-0.25, 0.25]])
    g = np.array([1.0, 2.0])
    np.testing.assert_allclose(testing.loop_vjp(jac.LogSoftmax(), z, g), g @ J, atol=1e-15)
    np.testing.assert_allclose(testing.loop_jvp(jac.LogSoftmax(), z, g), J @ g, atol=1e-15)
    assert not np.allclose(g @ J, J @ g)


# -- loop references: values computed by torch 2.13 (CPU, float64) -------------------------

Z = np.array([[1.0, -0.5, 0.25], [0.3, 0.2, -1.0], [-2.0, 1.5, 0.0], [0.7, 0.7, -0.3]])
W = np.array([0.5, 1.5, 1.0])
SOFT = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.1, 0.1, 0.8], [0.0, 0.5, 0.5]])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cross_entropy_index_targets_with_smoothing_weights_and_ignore_index_match_torch():
    # F.cross_entropy(z, [0, -100, 2, 1], weight=W, label_smoothing=0.2, ignore_index=-100)
    y = np.array([0, -100, 2, 1])
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.2, weight=W, ignore_index=-100))
    value, grad = testing.loop_head(head, Z, y)
    assert value == pytest.approx(1.14423785151989, rel=1e-14)
    torch_grad = [
        [-0.026484911713081913, -0.0070130039039504695, 0.03349791561703237],
        [0.0, 0.0, 0.0],
        [-0.0030798550154949806, 0.2326253420689975, -0.22954548705350253],
        [0.18597099473959738, -0.23625122748262486, 0.05028023274302745],
    ]
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-13, atol=1e-16)


def test_cross_entropy_probability_targets_match_torch():
    # F.cross_entropy(z, SOFT, weight=W, label_smoothing=0.1): 'mean' divides by N
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1, weight=W))
    value, grad = testing.loop_head(head, Z, SOFT)
    assert value == pytest.approx(1.3753656759386697, rel=1e-14)
    torch_grad = [
        [0.14068842039595392, -0.14390803262206306, 0.0032196122261091316],
        [-0.05351706424695041, 0.044640123203453445, 0.00887694104349696],
        [-0.00939322459495457, 0.1532190065517481, -0.1438257819567936],
        [0.1251684652978608, -0.05191486803547254, -0.07325359726238823],
    ]
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-13, atol=1e-16)


def test_nll_kl_bce_huber_match_torch():
    # F.nll_loss(log_softmax(z), [0, 1, 2, 1], weight=W): 'mean' divides by Σ w[y] = 4.5
    value, grad = testing.loop_loss(jac.NLLLoss(weight=W), np.log(_softmax(Z)), np.array([0, 1, 2, 1]))
    assert value == pytest.approx(1.022212927434167, rel=1e-14)
    np.testing.assert_allclose(grad, [[-1 / 9, 0, 0], [0, -1 / 3, 0], [0, 0, -2 / 9], [0, -1 / 3, 0]], rtol=1e-15)
    # F.kl_div(log p, SOFT, reduction='batchmean'), gradient with respect to p
    value, grad = testing.loop_loss(jac.KLDivergence(), _softmax(Z), SOFT)
    assert value == pytest.approx(0.7642644767521362, rel=1e-14)
    np.testing.assert_allclose(grad[0], [-0.08477483564447225, -0.9498361358688426, -0.26920249270152674], rtol=1e-13)
    np.testing.assert_allclose(grad[2], [-1.0376127014405743, -0.031333188589268715, -1.1234048707149358], rtol=1e-13)
    # F.binary_cross_entropy(a, y, reduction='sum') with a = 0 and 1: torch's clamps. torch's
    # gradient clamp is the float 1e-12f = 9.9999999960e-13, 4e-9 relative from 1e-12.
    a = np.array([[0.0, 1.0, 0.3], [0.9, 0.5, 0.05]])
    yb = np.array([[0.5, 0.2, 1.0], [0.0, 1.0, 0.3]])
    value, grad = testing.loop_loss(jac.BinaryCrossEntropy(reduction="sum"), a, yb)
    assert value == pytest.approx(135.13433006601738, rel=1e-14)
    torch_grad = [[-500000001997.9014, 800000003196.6423, -3.333333333333333], [10.000000000000002, -2.0, -5.2631578947368425]]
    np.testing.assert_allclose(grad, torch_grad, rtol=5e-9)
    # F.huber_loss(x, 0, delta=0.5, reduction='sum')
    value, grad = testing.loop_loss(jac.Huber(delta=0.5, reduction="sum"), np.array([[0.1, -2.0, 0.7]]), np.zeros((1, 3)))
    assert value == pytest.approx(1.105, rel=1e-14)
    np.testing.assert_allclose(grad, [[0.1, -0.5, 0.5]], rtol=1e-15)


def test_fenchel_young_reference_is_the_sparsemax_loss_closed_form():
    # Martins & Astudillo: L = −z_y + ½ Σ_{j∈S} (z_j² − τ²) + ½
    z = np.array([[0.5, 0.2, -2.0]])
    tau = (0.5 + 0.2 - 1) / 2
    expected = -0.2 + 0.5 * ((0.5**2 - tau**2) + (0.2**2 - tau**2)) + 0.5
    value, grad = testing.loop_loss(jac.SparsemaxLoss(), z, np.array([1]))
    assert value == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(grad, [[0.65, 0.35 - 1, 0.0]], atol=1e-15)


def test_reductions_and_shapes_of_loop_loss(rng):
    a = _softmax(rng.normal(size=(2, 3, 4)))
    y = rng.integers(0, 4, size=(2, 3))
    v, g = testing.loop_loss(jac.CrossEntropy(reduction="none"), a, y)
    assert v.shape == (2, 3) and g.shape == (2, 3, 4)
    v, g = testing.loop_loss(jac.MeanSquaredError(reduction="none"), a, a * 0)
    assert v.shape == (2, 3, 4)
    total, _ = testing.loop_loss(jac.MeanSquaredError(reduction="sum"), a, a * 0)
    mean, _ = testing.loop_loss(jac.MeanSquaredError(), a, a * 0)
    assert mean == pytest.approx(total / 24, rel=1e-15) and isinstance(mean, float)
    everything_ignored, grad = testing.loop_loss(jac.CrossEntropy(ignore_index=-1), a[0, :1], np.array([-1]))
    # torch 2.13: cross_entropy(..., ignore_index=-1) of every row ignored is nan, its gradient 0
    assert math.isnan(everything_ignored) and np.array_equal(grad, np.zeros_like(grad))


# -- the references catch wrong code ----------------------------------------------------------


def test_references_catch_a_transposed_jacobian_and_a_wrong_factor(rng):
    z = rng.normal(size=(4, 5))
    good = jac.LogSoftmax().jacobian(z)
    reference = testing.loop_jacobian(jac.LogSoftmax(), z)
    testing.assert_jacobian_close(good, reference)
    with pytest.raises(AssertionError, match="Jacobians not close"):
        testing.assert_jacobian_close(np.swapaxes(good, -1, -2), reference)
    a = _softmax(z)
    y = rng.integers(0, 5, size=4)
    _, grad = testing.loop_loss(jac.CrossEntropy(), a, y)
    testing.assert_grad_close(jac.CrossEntropy().grad(a, y), grad)
    with pytest.raises(AssertionError, match="gradients not close"):
        testing.assert_grad_close(jac.CrossEntropy(reduction="sum").grad(a, y), grad)  # off by N


def test_unknown_classes_get_a_clear_error():
    class MySoftmax(jac.Softmax):
        pass

    class MyLoss(jac.Loss):
        def per_sample(self, a, y):
            return a.sum(-1)

    with pytest.raises(TypeError, match=r"no loop reference for the activation MySoftmax; references exist for: .*Softmax"):
        testing.loop_jacobian(MySoftmax(), np.zeros((1, 2)))
    with pytest.raises(TypeError, match="no loop reference for the loss MyLoss.*numerical_grad"):
        testing.loop_loss(MyLoss(), np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(TypeError, match="no loop reference for the activation"):
        testing.loop_head(jac.Head(MySoftmax(), jac.CrossEntropy()), np.zeros((1, 2)), np.array([0]))


def test_reference_input_errors():
    with pytest.raises(ValueError, match="z must have shape .*0-d"):
        testing.loop_forward(jac.Softmax(), 1.0)
    with pytest.raises(ValueError, match=r"g must have the shape of z, \(2, 3\); got shape \(2, 2\)"):
        testing.loop_vjp(jac.Softmax(), np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"y: class index 3 is out of range for K = 3"):
        testing.loop_loss(jac.CrossEntropy(), np.full((1, 3), 1 / 3), np.array([3]))
    with pytest.raises(ValueError, match="y must be int indices"):
        testing.loop_loss(jac.CrossEntropy(), np.full((1, 3), 1 / 3), np.array([0.0]))


def test_references_work_on_any_batch_shape_in_float64_and_leave_inputs_alone(rng):
    z = readonly(rng.normal(size=(2, 3, 4)).astype(np.float32))
    z0 = z.copy()
    for act in (jac.Softmax(), jac.Entmax15(), jac.Tanh()):
        J = testing.loop_jacobian(act, z)
        assert J.shape == (2, 3, 4, 4) and J.dtype == np.float64
        np.testing.assert_allclose(J[1, 2], testing.loop_jacobian(act, z[1, 2]), rtol=1e-15)
        assert testing.loop_vjp(act, z, z).shape == (2, 3, 4)
    np.testing.assert_array_equal(z, z0)
