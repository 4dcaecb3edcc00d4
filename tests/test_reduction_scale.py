"""``Loss.reduction_scale(a, y)``: the one factor c with E = c · Σ_n ℓ_n.

Hand-computed factors for the reductions, class weights, ``ignore_index``,
``with_denominator`` and the empty batch; and, for every loss of the registry and its
variants, E = c · Σ of the ``'none'`` values (an identity checked against the loss's own
reductions, the factors above being independent of them)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import IGNORE, loss_specs, make_loss, make_loss_input, make_targets, target_forms

import jacobians as jac

K = 4


def _probs(n, dtype=np.float64):
    return np.full((n, K), 1 / K, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hand_computed_factors(dtype):
    a = _probs(5, dtype)
    y = np.array([0, 1, IGNORE, 3, IGNORE])
    w = np.array([0.5, 2.0, 1.0, 4.0])
    cases = [
        (jac.CrossEntropy(), np.array([0, 1, 2, 3, 0]), 1 / 5),
        (jac.CrossEntropy(ignore_index=IGNORE), y, 1 / 3),
        (jac.CrossEntropy(weight=w), np.array([0, 1, 2, 3, 0]), 1 / (0.5 + 2 + 1 + 4 + 0.5)),
        (jac.CrossEntropy(weight=w, ignore_index=IGNORE), y, 1 / (0.5 + 2 + 4)),
        (jac.CrossEntropy(weight=w), np.eye(K, dtype=dtype)[[0, 1, 2, 3, 0]], 1 / 5),  # probabilities: N
        (jac.NLLLoss(weight=w, ignore_index=IGNORE), y, 1 / 6.5),
        (jac.KLDivergence(), np.eye(K, dtype=dtype)[[0, 1, 2, 3, 0]], 1 / 5),
        (jac.SparsemaxLoss(ignore_index=IGNORE), y, 1 / 3),
        (jac.MeanSquaredError(), np.zeros((5, K), dtype), 1 / 20),
        (jac.BinaryCrossEntropy(), np.zeros((5, K), dtype), 1 / 20),
        (jac.CrossEntropy(reduction="sum"), y * 0, 1.0),
        (jac.MeanSquaredError(reduction="none"), np.zeros((5, K), dtype), 1.0),
        (jac.CrossEntropy(weight=w).with_denominator(40), np.array([0, 1, 2, 3, 0]), 1 / 40),
        (jac.MeanSquaredError().with_denominator(7), np.zeros((5, K), dtype), 1 / 7),
        (jac.MeanSquaredError(reduction="sum").with_denominator(7), np.zeros((5, K), dtype), 1.0),
    ]
    for loss, targets, expected in cases:
        c = loss.reduction_scale(a, targets)
        assert isinstance(c, np.generic) and c.dtype == dtype, loss
        assert c == dtype(1) / dtype(1 / expected) if expected != 1 else c == 1, (loss, c, expected)


def test_without_targets_and_with_a_dtype():
    a = _probs(3, np.float32)
    assert jac.CrossEntropy().reduction_scale(a, None) == np.float32(1) / np.float32(3)
    assert jac.MeanSquaredError().reduction_scale(a) == np.float32(1) / np.float32(12)
    c = jac.CrossEntropy().reduction_scale(a, [0, 1, 2], dtype=np.float64)
    assert c.dtype == np.float64 and c == 1 / 3
    # a list is read as an array, float64
    assert jac.MeanSquaredError().reduction_scale([[0, 1]], [[0, 0]]).dtype == np.float64


@pytest.mark.parametrize(
    "loss, a, y",
    [
        (jac.CrossEntropy(), _probs(0), np.zeros(0, int)),
        (jac.CrossEntropy(ignore_index=IGNORE), _probs(2), np.array([IGNORE, IGNORE])),
        (jac.CrossEntropy(weight=np.array([0.0, 1, 1, 1])), _probs(2), np.array([0, 0])),
        (jac.MeanSquaredError(), _probs(0), np.zeros((0, K))),
    ],
)
def test_empty_mean_is_zero_with_a_warning(loss, a, y):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = loss.reduction_scale(a, y)
    assert c == 0
    assert any(issubclass(w.category, jac.EmptyMeanWarning) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loss.with_reduction("sum").reduction_scale(a, y) == 1


@pytest.mark.parametrize(("cls", "options"), [pytest.param(c, o, id=i) for i, c, o in loss_specs(K)])
def test_every_registered_loss_value_is_its_factor_times_the_sum(cls, options, rng):
    mean = make_loss(cls, options, K, "mean")
    none = make_loss(cls, options, K, "none")
    for form in target_forms(mean):
        a = make_loss_input(mean, rng, (6, K))
        y = make_targets(mean, rng, (6, K), form)
        c = mean.reduction_scale(a, y)
        total = np.asarray(none(a, y), dtype=np.float64).sum()
        np.testing.assert_allclose(float(mean(a, y)), float(c) * total, rtol=1e-12, atol=1e-300)
        assert 0 < c <= 1
        assert make_loss(cls, options, K, "sum").reduction_scale(a, y) == 1
        piece = mean.with_denominator(11.0)
        assert piece.reduction_scale(a, y) == 1 / 11.0
