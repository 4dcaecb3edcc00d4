"""A class carries its own references: ``loop_reference`` (the plain loop that
``jacobians.testing`` and the checks compare with) and ``kinks`` (where generated inputs
keep away). A class without a reference is listed by the checks, never skipped silently;
one with a wrong reference fails them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import BrierWithHessian, ScaledTanh  # no references: a_i = tanh(z_i) · z_0, Σ_k (a_k − y_k)²

import jacobians as jac
from jacobians import checks, testing


def _scaled_tanh_sample(act, z):
    """The textbook entries of one sample, one at a time: ∂a_i/∂z_j."""
    K = z.size
    a = np.array([math.tanh(z[i]) * z[0] for i in range(K)])
    J = np.zeros((K, K))
    for i in range(K):
        for j in range(K):
            J[i, j] = (1 - math.tanh(z[i]) ** 2) * z[0] * (i == j) + math.tanh(z[i]) * (
                j == 0
            )
    return a, J


class ScaledTanhWithReference(ScaledTanh):
    loop_reference = _scaled_tanh_sample


class ScaledTanhWrongReference(ScaledTanh):
    def loop_reference(self, z):
        a, J = _scaled_tanh_sample(self, z)
        return a, J.T  # the planted bug: the layout transposed


class Brier(BrierWithHessian):
    """Σ_k (a_k − y_k)² per sample on any real input (a sigmoid's output too), no reference."""

    input_domain = "real"


def _brier_rows(loss, a, y):
    K = a.shape[-1]
    rows, targets = a.reshape(-1, K), np.asarray(y, dtype=np.float64).reshape(-1, K)
    values = np.array(
        [sum((r[k] - t[k]) ** 2 for k in range(K)) for r, t in zip(rows, targets)]
    )
    grads = np.array(
        [[2 * (r[k] - t[k]) for k in range(K)] for r, t in zip(rows, targets)]
    )
    return values, grads, float(len(values))


class BrierWithReference(Brier):
    loop_reference = _brier_rows


class BrierWrongReference(Brier):
    def loop_reference(self, a, y):
        values, grads, n = _brier_rows(self, a, y)
        return values, grads, n + 1  # the planted bug: 'mean' over N + 1


def _loop_rows(report):
    return [r for r in report.rows if r.reference == "loop"]


def test_a_user_activation_without_a_reference_is_listed():
    report = jac.check_activation(ScaledTanh())
    assert report.passed  # listed, not failed: the other rows check it
    assert not _loop_rows(report)
    assert len(report.missing) == 1
    assert "the activation ScaledTanh has no loop_reference" in report.missing[0]
    assert "loop_reference(self, z) -> (a, J)" in report.missing[0]
    assert "missing: the activation ScaledTanh has no loop_reference" in str(report)
    assert report.to_dict()["missing"] == report.missing


def test_a_user_loss_without_a_reference_is_listed_by_every_head_check():
    head = jac.Head(jac.Sigmoid(), Brier())
    for report in (jac.check_head(head), jac.check_second_order(head)):
        assert report.passed
        assert len(report.missing) == 1, report.missing
        assert "the loss Brier has no loop_reference" in report.missing[0]
        assert (
            "loop_reference(self, a, y) -> (values, grads, denominator)"
            in report.missing[0]
        )
    both = jac.check_head(head) + jac.check_second_order(head)
    assert len(both.missing) == 1  # listed once
    with pytest.raises(
        TypeError,
        match="no loop reference for the loss Brier.*give Brier a loop_reference",
    ):
        testing.loop_loss(Brier(), np.full((1, 2), 0.5), np.zeros((1, 2)))


def test_a_head_of_two_classes_without_references_lists_both():
    report = jac.check_head(jac.Head(ScaledTanh(), Brier()))
    assert [m.split(" has ")[0] for m in report.missing] == [
        "the activation ScaledTanh",
        "the loss Brier",
    ]


def test_the_built_ins_carry_their_references():
    for cls in list(jac.ACTIVATIONS.values()) + list(jac.LOSSES.values()):
        assert cls.loop_reference is not None, cls
    assert not jac.check_activation(jac.ReLU()).missing
    report = jac.check_head(jac.Head(jac.Softmax(), jac.CrossEntropy()))
    assert not report.missing and _loop_rows(report)


def test_a_user_reference_is_compared_with_and_a_wrong_one_fails():
    good = jac.check_activation(ScaledTanhWithReference())
    assert good.passed and not good.missing
    assert [r.compared for r in _loop_rows(good)] == ["J: jacobian vs loop"]
    bad = jac.check_activation(ScaledTanhWrongReference())
    assert not bad.passed
    assert [r.compared for r in bad.failures] == ["J: jacobian vs loop"]

    head = jac.Head(jac.Sigmoid(), BrierWithReference())
    good = jac.check_head(head)
    assert good.passed and not good.missing
    assert {r.compared for r in _loop_rows(good)} >= {
        "dE/dz: vjp vs loop",
        "value: vjp vs loop",
    }
    bad = jac.check_head(jac.Head(jac.Sigmoid(), BrierWrongReference()))
    assert not bad.passed
    assert {r.reference for r in bad.failures} == {"loop"}


def test_the_loop_drivers_run_a_users_reference(rng):
    z = rng.normal(size=(3, 4))
    testing.assert_jacobian_close(
        ScaledTanh().jacobian(z), testing.loop_jacobian(ScaledTanhWithReference(), z)
    )
    a, y = rng.uniform(size=(3, 4)), rng.uniform(size=(3, 4))
    value, grad = testing.loop_loss(BrierWithReference(reduction="sum"), a, y)
    np.testing.assert_allclose(value, ((a - y) ** 2).sum(), rtol=1e-14)
    np.testing.assert_allclose(grad, 2 * (a - y), rtol=1e-14)


def test_a_reference_is_not_inherited_and_a_subclass_can_keep_its_parents():
    class MySoftmax(jac.Softmax):
        pass

    class KeepsIt(jac.Softmax):
        loop_reference = jac.Softmax.loop_reference

    class MyReLU(jac.ReLU):
        pass

    assert MySoftmax.loop_reference is None  # it may change the math
    assert KeepsIt.loop_reference is jac.Softmax.loop_reference
    assert MyReLU.kinks is jac.ReLU.kinks  # kinks are inherited
    assert (
        "the activation MySoftmax has no loop_reference"
        in jac.check_activation(MySoftmax()).missing[0]
    )
    report = jac.check_activation(KeepsIt())
    assert report.passed and not report.missing and _loop_rows(report)


def test_a_user_class_with_kinks_gets_inputs_clear_of_them():
    class Step(jac.ElementwiseActivation):
        """max(z − 1, 0): a kink at z = 1."""

        def forward(self, z):
            return np.maximum(z - 1.0, 0.0)

        def derivative(self, z):
            return (z > 1.0).astype(z.dtype)

        def kinks(self, z, a=None):
            return np.abs(z - 1.0)

    z = checks.example_inputs(Step(), shape=(200, 5))
    assert np.abs(z - 1.0).min() >= checks.KINK_MARGIN
    report = jac.check_activation(Step(), np.ones((1, 3)))
    assert not report.passed and "within 0.01 of a kink of Step" in str(report)


def test_the_tables_are_views_of_the_registries(restore_registries):
    assert testing.ACTIVATION_REFERENCES[jac.Softmax] is jac.Softmax.loop_reference
    assert testing.LOSS_REFERENCES[jac.Huber] is jac.Huber.loop_reference
    assert (
        checks.KINKS[jac.ReLU] is jac.ReLU.kinks
        and checks.KINKS[jac.Huber] is jac.Huber.kinks
    )
    assert (
        jac.Softmax not in checks.KINKS
        and ScaledTanh not in testing.ACTIVATION_REFERENCES
    )
    jac.register_activation(ScaledTanhWithReference, name="scaled_tanh")
    jac.register_loss(Brier, name="brier")
    assert testing.ACTIVATION_REFERENCES[ScaledTanhWithReference] is _scaled_tanh_sample
    assert Brier not in testing.LOSS_REFERENCES  # registered, but no reference
    with pytest.raises(TypeError, match="KINKS is keyed by class"):
        checks.KINKS["scaled_tanh"] = lambda act, z, y: np.abs(z)


# -- the old way: entries written into the tables (docs/custom.md before the classes
# -- carried their references) set the class's method and still reach the checks


def test_an_old_style_reference_entry_reaches_the_checks():
    class OldTanh(ScaledTanh):
        pass

    class OldBrier(Brier):
        pass

    testing.ACTIVATION_REFERENCES[OldTanh] = _scaled_tanh_sample  # (act, z_1d) -> (a, J)
    testing.LOSS_REFERENCES[OldBrier] = _brier_rows  # (loss, a, y) -> (values, grads, n)
    assert OldTanh.loop_reference is _scaled_tanh_sample
    assert OldBrier.loop_reference is _brier_rows
    assert testing.ACTIVATION_REFERENCES[OldTanh] is _scaled_tanh_sample
    report = jac.check_activation(OldTanh())
    assert report.passed and not report.missing
    assert [r.compared for r in _loop_rows(report)] == ["J: jacobian vs loop"]
    report = jac.check_head(jac.Head(jac.Sigmoid(), OldBrier()))
    assert report.passed and not report.missing
    assert "dE/dz: vjp vs loop" in {r.compared for r in _loop_rows(report)}

    assert testing.LOSS_REFERENCES.pop(OldBrier) is _brier_rows
    del testing.ACTIVATION_REFERENCES[OldTanh]
    assert OldTanh.loop_reference is None and OldBrier.loop_reference is None
    assert "OldTanh has no loop_reference" in jac.check_activation(OldTanh()).missing[0]
    with pytest.raises(KeyError):
        del testing.LOSS_REFERENCES[OldBrier]


class Step(jac.ElementwiseActivation):
    """max(z − 1, 0): a kink at z = 1, written without kinks (given the old way)."""

    def forward(self, z):
        return np.maximum(z - 1.0, 0.0)

    def derivative(self, z):
        return (z > 1.0).astype(z.dtype)


class HingeMSE(jac.ElementwiseLoss):
    """|a − y| elementwise: a kink at a = y, written without kinks."""

    target_kind = "real"

    def per_element(self, a, y):
        return np.abs(a - y)

    def per_element_grad(self, a, y):
        return np.sign(a - y)


def test_an_old_style_kinks_entry_reaches_the_checks():
    class OldStep(Step):
        pass

    class OldHinge(HingeMSE):
        pass

    # the old entries' signatures: fn(act, z, y) (y is None), fn(loss, a, y)
    checks.KINKS[OldStep] = lambda act, z, y: np.abs(z - 1.0)
    checks.KINKS[OldHinge] = lambda loss, a, y: np.abs(a - y)
    assert checks.KINKS[OldStep] is OldStep.kinks
    z = checks.example_inputs(OldStep(), shape=(200, 5))
    assert np.abs(z - 1.0).min() >= checks.KINK_MARGIN
    report = jac.check_activation(OldStep(), np.ones((1, 3)))
    assert not report.passed and "within 0.01 of a kink of OldStep" in str(report)
    head = jac.Head(jac.Identity(), OldHinge())
    z, y = checks.example_inputs(head, shape=(200, 5))
    assert np.abs(z - y).min() >= checks.KINK_MARGIN
    assert jac.check_head(head).passed

    del checks.KINKS[OldStep]
    checks.KINKS.pop(OldHinge)
    assert OldStep.kinks is None and OldHinge.kinks is None
    with pytest.raises(KeyError):
        checks.KINKS.pop(OldStep)
