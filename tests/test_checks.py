"""check_activation / check_head / check_extreme: every registered class passes, and
deliberately broken activations, losses and fused rules fail with a readable table."""

import json

import numpy as np
import pytest
from conftest import Brier, ScaledTanh, TransposedJacobian, activation_cases, fit_shape, loss_specs, make_loss

import jacobians as jac
from jacobians import checks

DTYPES = ("float64", "float32")


def _activations():
    out = []
    for name, cls in jac.ACTIVATIONS.items():
        try:
            out.append(pytest.param(cls(), id=name))
        except TypeError:  # needs arguments
            pass
    return out


def _pairs():
    return [
        pytest.param(jac.Head(jac.ACTIVATIONS[p.activation](), jac.LOSSES[p.loss]()), id=f"{p.activation}+{p.loss}")
        for p in jac.pairs()
    ]


# -- a non-symmetric activation, and broken variants of it -----------------------------------


class VjpOffByFactor(ScaledTanh):
    def vjp(self, z, g):
        return 2.0 * super().vjp(z, g)


class JvpTransposed(ScaledTanh):
    def jvp(self, z, v):  # Jᵀ v instead of J v
        return np.einsum("...ij,...i->...j", self.jacobian(z), v)


class UpcastingJacobian(ScaledTanh):
    def jacobian(self, z, *, out=None, workers=None):
        return super().jacobian(z).astype(np.float64)


class RaisingVjp(ScaledTanh):
    def vjp(self, z, g):
        raise RuntimeError("vjp is broken")


class WritesIntoInput(ScaledTanh):
    def vjp(self, z, g):
        z[...] = 0  # inputs are never modified: the check passes read-only arrays
        return super().vjp(z, g)


class SquaredError(jac.Loss):
    """Σ (a − y)² per sample; declares no target kind, so it gets real targets."""

    def per_sample(self, a, y):
        return ((a - y) ** 2).sum(axis=-1)

    def per_sample_grad(self, a, y):
        return 2 * (a - y)


class GradOffByFactor(SquaredError):
    def per_sample_grad(self, a, y):
        return 3 * (a - y)


# -- every registered activation and pair passes -----------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", _activations())
def test_every_activation_passes(act, dtype):
    report = jac.check_activation(act, dtype=dtype, shape=(2, 3, 4))
    report.raise_if_failed()
    assert {r.dtype for r in report} == {dtype}
    compared = {r.compared for r in report}
    for what in ("J: jacobian vs numerical", "vjp: vjp vs numerical", "jvp: jvp vs numerical",
                 "J: operator vs jacobian", "vjp: vjp vs jacobian", "jvp: jvp vs jacobian"):
        assert what in compared


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head", _pairs())
def test_every_pair_passes(head, dtype):
    report = jac.check_head(head, dtype=dtype)
    report.raise_if_failed()
    methods = {r.method for r in report if r.reference == "numerical"}
    if head.logits_loss:
        assert methods == {"fused"}
    else:
        expected = {"jacobian", "vjp", "operator", "jvp"} | ({"fused"} if head.fused_rule else set())
        assert methods == expected
    assert any(r.compared == "value: vjp vs fused" for r in report) == (head.fused_rule is not None and not head.logits_loss)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("obj", _activations() + _pairs())
def test_every_activation_and_pair_at_extreme_logits(obj, dtype):
    report = checks.check_extreme(obj, dtype=dtype)
    report.raise_if_failed()
    if isinstance(obj, jac.Head) and obj.fused_rule is not None:
        assert any(r.reference == "closed form" for r in report)


def test_given_float32_inputs_are_checked_in_float32(rng):
    z = rng.normal(size=(5, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=5)
    report = jac.check_head(jac.Head(jac.Softmax(), jac.CrossEntropy()), z, y)
    assert report.passed
    assert {r.dtype for r in report} == {"float32"}
    assert {r.shape for r in report} == {(5, 4)}
    assert all(r.rtol == checks.TOLERANCES["float32"]["numerical"][0] for r in report if r.reference == "numerical")


def test_float32_reference_is_computed_in_float64(rng):
    """The finite differences call the activation in float64; the methods run in float32."""
    seen = set()

    class Spy(ScaledTanh):
        def forward(self, z):
            seen.add(np.asarray(z).dtype)
            return super().forward(z)

    report = jac.check_activation(Spy(), rng.normal(size=(3, 4)).astype(np.float32))
    assert report.passed, str(report)
    assert seen == {np.dtype(np.float64)}  # forward is only used by the reference here
    assert {r.dtype for r in report} == {"float32"}


def test_scaled_tanh_passes_in_both_dtypes():
    for dtype in DTYPES:
        assert jac.check_activation(ScaledTanh(), dtype=dtype).passed


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("loss_id", "loss_cls", "options"), [pytest.param(*spec, id=spec[0]) for spec in loss_specs()])
def test_every_loss_variant_passes_with_every_activation(loss_id, loss_cls, options, reduction):
    """Non-default parameters (smoothing, class weights, ignore_index, pos_weight, δ,
    temperature) and every reduction, at moderate and at extreme logits."""
    checked = 0
    for param in activation_cases():
        act = param.values[0]
        shape = fit_shape((2, 3, 5), act, loss_cls)  # the width the pair takes ([μ | σ²]: even)
        loss = make_loss(loss_cls, options, shape[-1], reduction)  # class weights of that width
        try:
            head = jac.Head(act, loss)
        except ValueError:
            continue
        report = jac.check_head(head, shape=shape) + checks.check_extreme(head, shape=shape)
        report.raise_if_failed()
        checked += 1
    assert checked > 0


# -- broken activations, losses and rules are caught -------------------------------------------


def _failed(report):
    return {r.compared for r in report.failures}


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_jacobian_is_caught(dtype):
    report = jac.check_activation(TransposedJacobian(), dtype=dtype)
    assert not report.passed
    assert {"J: jacobian vs numerical", "vjp: vjp vs numerical", "jvp: jvp vs numerical"} <= _failed(report)
    with pytest.raises(AssertionError) as info:
        report.raise_if_failed()
    message = str(info.value)
    assert "gradient checks failed" in message
    assert "J: jacobian vs numerical" in message and "FAIL" in message
    assert "transposed_jacobian" in message  # the subject, by its registry name


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_off_by_a_factor_is_caught_and_located(dtype):
    report = jac.check_activation(VjpOffByFactor(), dtype=dtype)
    assert _failed(report) == {"vjp: vjp vs numerical", "vjp: vjp vs jacobian"}
    bad = [r for r in report.failures if r.reference == "numerical"][0]
    assert bad.max_rel == pytest.approx(1.0, rel=1e-3)  # 2x the right answer: error = its size


def test_transposed_jvp_is_caught():
    assert _failed(jac.check_activation(JvpTransposed())) == {"jvp: jvp vs numerical", "jvp: jvp vs jacobian"}


def test_upcast_to_float64_fails_with_a_dtype_note():
    report = jac.check_activation(UpcastingJacobian(), dtype="float32")
    row = next(r for r in report.failures if r.compared == "J: jacobian vs numerical")
    assert "dtype float64, expected float32" in row.note
    assert "dtype float64, expected float32" in str(report)
    assert jac.check_activation(UpcastingJacobian(), dtype="float64").passed


def test_an_exception_becomes_a_failed_row():
    report = jac.check_activation(RaisingVjp())
    rows = [r for r in report.failures]
    assert {r.compared for r in rows} == {"vjp: vjp vs numerical", "vjp: vjp vs jacobian"}
    assert all("RuntimeError: vjp is broken" in r.note for r in rows)


def test_writing_into_the_input_fails():
    report = jac.check_activation(WritesIntoInput())
    assert "vjp: vjp vs numerical" in _failed(report)
    assert "read-only" in str(report)


@pytest.mark.parametrize("act", [jac.Identity(), jac.Softmax(), jac.Tanh(), ScaledTanh()], ids=repr)
def test_loss_gradient_off_by_a_factor_is_caught(act):
    report = jac.check_head(jac.Head(act, GradOffByFactor()))
    assert not report.passed
    failed = _failed(report)
    assert {"dE/dz: jacobian vs numerical", "dE/dz: vjp vs numerical", "dE/dz: operator vs numerical"} <= failed
    assert jac.check_head(jac.Head(act, SquaredError())).passed


def test_loss_gradient_off_by_a_factor_is_caught_on_large_inputs():
    """Above 2048 entries the reference is taken along random directions: still caught."""
    head = jac.Head(jac.Softmax(), GradOffByFactor())
    report = jac.check_head(head, shape=(300, 10))
    assert not report.passed
    assert all("directions" in r.quantity for r in report if r.reference == "numerical" and r.method != "jvp")
    assert jac.check_head(jac.Head(jac.Softmax(), SquaredError()), shape=(300, 10)).passed


def test_wrong_fused_rule_is_caught(restore_registries):
    class Brier(SquaredError):
        input_domain = "simplex"

    @jac.register_fused(jac.Softmax, Brier)
    def wrong(act, loss, z, y):
        s = act(z)
        return ((s - y) ** 2).sum() / len(z), 2 * (s - y) / len(z)  # forgot the softmax Jacobian

    report = jac.check_head(jac.Head(jac.Softmax(), Brier()))
    assert _failed(report) == {"dE/dz: fused vs numerical", "dE/dz: fused vs jacobian"}


def test_wrong_fused_value_is_caught_at_extreme_logits(restore_registries):
    @jac.register_fused(jac.Softmax, jac.CrossEntropy, replace=True)
    def clipped(act, loss, z, y):  # log(max(s, 1e-7)): the eps-clipped recipe posing as a fused rule
        s = act(z)
        value = -np.log(np.maximum(np.take_along_axis(s, y[..., None], axis=-1), 1e-7)).mean()
        return value, (s - np.eye(z.shape[-1])[y]) / y.size

    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    assert jac.check_head(head).passed  # moderate logits: the clip never bites
    report = checks.check_extreme(head, shape=(6, 4))
    assert _failed(report) == {"value: fused vs closed form"}


# -- kinks, targets and inputs ----------------------------------------------------------------


@pytest.mark.parametrize("cls", [jac.ReLU, jac.LeakyReLU])
def test_generated_inputs_keep_clear_of_relu_kink(cls):
    z = checks.example_inputs(cls(), shape=(200, 10), seed=3)
    assert np.abs(z).min() >= checks.KINK_MARGIN


def test_generated_inputs_keep_clear_of_sparsemax_support_boundary():
    z = checks.example_inputs(jac.Sparsemax(), shape=(100, 6), seed=1)
    p = jac.Sparsemax()(z)
    tau = (z - p).max(axis=-1, keepdims=True)  # p = z − τ on the support
    assert np.abs(z - tau).min() >= checks.KINK_MARGIN
    assert ((p > 0).sum(axis=-1) > 1).any()  # some rows have several entries in the support


def test_generated_targets_keep_clear_of_mae_kink():
    head = jac.Head(jac.Tanh(), jac.MeanAbsoluteError())
    z, y = checks.example_inputs(head, shape=(100, 5), seed=2)
    assert np.abs(np.tanh(z) - y).min() >= checks.KINK_MARGIN


def test_given_inputs_at_a_kink_fail_with_a_note():
    report = jac.check_activation(jac.ReLU(), np.array([[0.0, 1.0, -1.0]]))
    assert "J: jacobian vs numerical" in _failed(report)
    assert "within 0.01 of a kink of ReLU" in str(report)


@pytest.mark.parametrize("dtype", DTYPES)
def test_targets_follow_target_kind(dtype):
    shape = (50, 4)
    _, y = checks.example_inputs(jac.Head(jac.Softmax(), jac.CrossEntropy()), shape=shape, dtype=dtype)
    assert y.shape == (50,) and y.dtype.kind == "i" and 0 <= y.min() and y.max() < 4
    _, y = checks.example_inputs(jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()), shape=shape, dtype=dtype)
    assert y.shape == shape and y.dtype == dtype and 0 <= y.min() and y.max() <= 1 and 0 < y.mean() < 1
    _, y = checks.example_inputs(jac.Head(jac.Tanh(), jac.MeanSquaredError()), shape=shape, dtype=dtype)
    assert y.shape == shape and y.dtype == dtype and y.min() < 0 < y.max()


def test_a_loss_declaring_nothing_gets_real_targets():
    seen = []

    class Spy(SquaredError):
        def per_sample(self, a, y):
            seen.append(np.asarray(y))
            return super().per_sample(a, y)

    assert jac.check_head(jac.Head(jac.Identity(), Spy()), shape=(20, 3)).passed
    y = seen[0]
    assert y.shape == (20, 3) and y.dtype.kind == "f" and y.min() < 0 < y.max()


def test_unknown_target_kind_is_a_clear_error():
    class Odd(SquaredError):
        target_kind = "ranking"

    with pytest.raises(ValueError, match="target_kind must be one of"):
        jac.check_head(jac.Head(jac.Identity(), Odd()))


def test_bad_arguments():
    with pytest.raises(TypeError, match="instance"):
        jac.check_activation(jac.Softmax)
    with pytest.raises(TypeError, match="Head"):
        jac.check_head(jac.Softmax())
    with pytest.raises(ValueError, match="float32 or float64"):
        jac.check_activation(jac.Softmax(), dtype="float16")
    with pytest.raises(ValueError, match="shape"):
        jac.check_activation(jac.Softmax(), shape=(3, 0))


def test_generated_logits_keep_clear_of_the_kinks_of_given_targets(rng):
    head = jac.Head(jac.Tanh(), jac.MeanAbsoluteError())
    y = np.round(rng.uniform(-1, 1, size=(100, 5)), 1)  # many targets tanh(z) could land on
    z, y_out = checks.example_inputs(head, shape=(100, 5), seed=4, y=y)
    np.testing.assert_array_equal(y_out, y)
    assert np.abs(np.tanh(z) - y).min() >= checks.KINK_MARGIN
    assert jac.check_head(head, y=y).passed


def test_given_targets_set_the_shape():
    report = jac.check_head(jac.Head(jac.Softmax(), jac.CrossEntropy()), y=np.array([0, 1, 2]), shape=(1, 4))
    assert report.passed and {r.shape for r in report} == {(3, 4)}


def test_check_is_deterministic_for_a_seed():
    a = jac.check_head(jac.Head(jac.Softmax(), jac.MeanSquaredError()), seed=7).to_dict()
    b = jac.check_head(jac.Head(jac.Softmax(), jac.MeanSquaredError()), seed=7).to_dict()
    assert a == b


def test_reused_inputs_give_the_same_checks_and_generator_state():
    """Within reuse_inputs() a second draw for the same object, shape, dtype and generator
    state returns the first draw (copies) and leaves the generator where the draw left it:
    every check sees what it would have drawn alone (the check command runs a row's first
    and second order so)."""
    from jacobians.checks.inputs import _generate, reuse_inputs

    head = jac.Head(jac.Entmax(alpha=1.7), jac.BinaryCrossEntropy())
    alone = [jac.check_head(head, seed=3).to_dict(), jac.check_second_order(head, seed=3).to_dict()]
    with reuse_inputs():
        reused = [jac.check_head(head, seed=3).to_dict(), jac.check_second_order(head, seed=3).to_dict()]
        r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
        a, b = _generate(head, (4, 6), np.float32, r1, None), _generate(head, (4, 6), np.float32, r2, None)
        assert a[0] is not b[0] and r1.bit_generator.state == r2.bit_generator.state
        assert all(np.array_equal(p, q) for p, q in zip(a, b))
        a[0][...] = 0  # a caller's copy: the next draw is unchanged
        assert np.array_equal(_generate(head, (4, 6), np.float32, np.random.default_rng(5), None)[0], b[0])
    assert reused == alone
    fresh = np.random.default_rng(5)
    c = _generate(head, (4, 6), np.float32, fresh, None)  # outside the block: drawn again, the same
    assert np.array_equal(c[0], b[0]) and fresh.bit_generator.state == r1.bit_generator.state


def test_the_command_checks_a_rows_orders_on_the_same_inputs():
    """run_entry: each order's report is the one its check gives alone with the row's seeds."""
    from jacobians.checks import plan

    entry = next(e for e in plan.plan_entries(["sigmoid", "mse"])[0] if e.loss is not None)
    got = plan.run_entry(entry, ["float32"], 0, (1, 2))
    for order, check in ((1, jac.check_head), (2, lambda h, **kw: jac.check_second_order(h, mc_samples=plan.MC_SAMPLES, **kw))):
        want = sum((check(entry.build(s[-1]), shape=s, dtype="float32", seed=plan._seed(0, entry.label, 0, i))
                    for i, s in enumerate(plan.SHAPES)), jac.checks.CheckReport())
        rows = got[order][0].rows[: len(want)]
        assert [r.to_dict() if hasattr(r, "to_dict") else vars(r) for r in rows] == [
            r.to_dict() if hasattr(r, "to_dict") else vars(r) for r in want.rows]
        assert got[order][1] > 0  # its CPU seconds


# -- the report ---------------------------------------------------------------------------------


def test_report_table_and_json():
    good = jac.check_activation(jac.Softmax(), shape=(3, 4))
    bad = jac.check_activation(TransposedJacobian(), shape=(3, 4))
    both = good + bad
    assert len(both) == len(good) + len(bad)
    assert not both.passed and good.passed
    text = str(both)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["subject", "dtype", "shape", "compared"]
    assert sum(" FAIL" in line for line in lines) == len(bad.failures)
    assert f"{len(both)} checks, {len(bad.failures)} failed" in text
    data = json.loads(json.dumps(both.to_dict()))
    assert data["passed"] is False
    assert len(data["rows"]) == len(both)
    row = data["rows"][0]
    assert {"subject", "dtype", "shape", "compared", "max_abs", "max_rel", "allowed", "rtol", "atol", "passed", "note"} <= set(row)
    assert json.loads(both.to_json())["rows"][-1]["passed"] is bad.rows[-1].passed


def test_tolerances_scale_with_the_reference():
    """A fixed relative error passes or fails the same way whatever the gradient's size."""
    z = np.random.default_rng(0).normal(size=(4, 3))
    for scale in (1e-6, 1.0, 1e6):
        class Scaled(ScaledTanh):
            def forward(self, z, s=scale):
                return s * super().forward(z)

            def jacobian(self, z, *, out=None, workers=None, s=scale):
                return s * super().jacobian(z)

        class SlightlyOff(Scaled):
            def vjp(self, z, g):
                return (1 + 1e-3) * super().vjp(z, g)

        assert jac.check_activation(Scaled(), z).passed, scale
        assert _failed(jac.check_activation(SlightlyOff(), z)) == {"vjp: vjp vs numerical", "vjp: vjp vs jacobian"}, scale


def test_empty_report_does_not_pass():
    assert not checks.CheckReport().passed
    assert str(checks.CheckReport()) == "(no checks)"


# -- the stacked references against the one-entry-at-a-time ones ---------------------------------


def _heads_for_references():
    K = 5
    w = np.linspace(0.5, 2.0, K)
    return [
        jac.Head(jac.Softmax(), jac.CrossEntropy()),
        jac.Head(jac.Softmax(temperature=0.5), jac.CrossEntropy(weight=w, ignore_index=-100)),
        jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(label_smoothing=0.2, pos_weight=w)),
        jac.Head(jac.Identity(), jac.MeanSquaredError()),  # elementwise: 'mean' over N·K
        jac.Head(jac.Tanh(), jac.MeanSquaredError(reduction="sum")),
        jac.Head(jac.Sparsemax(temperature=0.5), jac.SparsemaxLoss()),  # a logits loss at a temperature
        jac.Head(jac.Entmax(alpha=1.7), jac.EntmaxLoss(alpha=1.7)),
        jac.Head(jac.Softmax(), jac.EntmaxLoss(alpha=2.5)),
        jac.Head(jac.Softmax(), Brier()),  # a user's loss
    ]


@pytest.mark.parametrize("head", _heads_for_references(), ids=checks.label)
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)])
def test_stacked_grad_reference_equals_numerical_grad(head, shape):
    """One call on every row's 2K perturbed copies, times the reduction factor, against
    central differences of the reduced loss moving one entry at a time."""
    from jacobians.checks.head import stacked_grad_reference
    from jacobians.checks.inputs import head_inputs

    z, y, _ = head_inputs(head, None, None, shape=shape, dtype=np.float64, rng=np.random.default_rng(3))
    calls = []

    def loss(x):
        calls.append(x.shape)
        return np.sum(head.loss(x, y))

    plain = jac.numerical_grad(loss, z)
    assert len(calls) == 2 * z.size
    stacked = stacked_grad_reference(head, z, y)
    assert stacked.shape == z.shape
    scale = max(np.abs(plain).max(), 1e-3)
    assert np.abs(stacked - plain).max() <= 1e-8 * scale


@pytest.mark.parametrize("head", _heads_for_references(), ids=checks.label)
def test_stacked_hessian_reference_equals_column_at_a_time(head):
    from jacobians.checks.head import reduction_factor
    from jacobians.checks.inputs import head_inputs
    from jacobians.checks.second_order import _hessian_reference

    z, y, _ = head_inputs(head, None, None, shape=(4, 5), dtype=np.float64, rng=np.random.default_rng(4))
    plain = jac.numerical_jacobian(lambda x: head.grad(x, y), z)  # 2K calls on the whole batch
    stacked = _hessian_reference(head, z, y, reduction_factor(head, z, y))
    assert np.abs(stacked - plain).max() <= 1e-8 * max(np.abs(plain).max(), 1e-3)


def test_reduction_factor_reads_the_denominator_off_the_values():
    from jacobians.checks.head import reduction_factor

    K, N = 4, 6
    w = np.arange(1.0, K + 1)
    y = np.array([0, 1, 2, 3, -100, 1])
    z = np.random.default_rng(0).normal(size=(N, K))
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(weight=w, ignore_index=-100))
    # torch's weighted mean: the summed weights of the targets not ignored
    assert reduction_factor(head, z, y) == pytest.approx(1 / (w[[0, 1, 2, 3, 1]].sum()), rel=1e-12)
    assert reduction_factor(jac.Head(jac.Tanh(), jac.MeanSquaredError()), z, np.tanh(z)) is None  # losses add to 0
    assert reduction_factor(jac.Head(jac.Tanh(), jac.MeanSquaredError()), z, 0 * z) == pytest.approx(1 / (N * K))
    assert reduction_factor(jac.Head(jac.Tanh(), jac.MeanSquaredError(reduction="sum")), z, z) == 1.0


def test_a_wrong_gradient_still_fails_with_the_stacked_reference():
    class Off(jac.Loss):
        def per_sample(self, a, y):
            return ((a - y) ** 2).sum(axis=-1)

        def per_sample_grad(self, a, y):
            return 2.02 * (a - y)  # 1 % off

    report = checks.check_head(jac.Head(jac.Tanh(), Off()))
    assert not report.passed
    assert "dE/dz: jacobian vs numerical" in [r.compared for r in report.failures]
    assert all(r.err_over_tol > 1 for r in report.failures if r.err_over_tol is not None)


def test_kink_distance_from_the_activation_output_is_the_recomputed_one(rng):
    """head inputs measure a simplex activation's kinks from its own output (no second forward
    pass): the same distances, to the bit, as recomputing the map, at T = 1 and T != 1."""
    from jacobians.checks.inputs import _row_distance

    z = rng.normal(scale=1.5, size=(40, 6))
    for act in (jac.Sparsemax(), jac.Sparsemax(temperature=0.5), jac.Entmax15(), jac.Entmax15(temperature=3.0),
                jac.Entmax(1.2), jac.Entmax(2.5, temperature=0.5), jac.Entmax(np.linspace(1.1, 2.9, 40)[:, None])):
        plain, _ = _row_distance(act, z)
        shared, _ = _row_distance(act, z, a=act(z))
        np.testing.assert_array_equal(shared, plain, err_msg=repr(act))
        assert np.all(plain >= 0)
