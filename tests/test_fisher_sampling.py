"""The Monte-Carlo Fisher's expectation is the exact Fisher, ``ignore_index`` included."""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac


def _data(N=24, K=5, seed=0):
    rng = np.random.default_rng(seed)
    z = 1.5 * rng.normal(size=(N, K))
    y = rng.integers(0, K, size=N)
    y[:4] = K - 1  # rows ignored when ignore_index = K − 1
    return z, y


@pytest.mark.parametrize(
    "head",
    [
        jac.Head(jac.Softmax(), jac.CrossEntropy(ignore_index=4)),
        jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1, weight=np.linspace(0.5, 2.0, 5), ignore_index=4)),
        jac.Head(jac.LogSoftmax(), jac.NLLLoss(ignore_index=4)),
    ],
    ids=["ce", "ce-smoothing-weights", "nll"],
)
@pytest.mark.parametrize("with_targets", [True, False], ids=["y", "no-y"])
def test_mc_fisher_converges_to_the_exact_one_when_ignore_index_is_a_class(head, with_targets):
    # a drawn class equal to ignore_index is a class like any other: only the true targets
    # select the rows (before the fix, E[S Sᵀ] missed the term c·p_4 g_4 g_4ᵀ of every row)
    z, y = _data()
    y_arg = y if with_targets else None
    exact = head.fisher(z, y_arg)
    mc = head.fisher(z, y_arg, kind="mc", mc_samples=4000, seed=3)
    assert np.abs(mc - exact).max() < 0.1 * np.abs(exact).max()
    if with_targets:
        ignored = y == 4
        assert np.all(mc[ignored] == 0) and np.all(exact[ignored] == 0)


def test_sampled_columns_leave_the_heads_loss_alone():
    z, y = _data()
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(ignore_index=4))
    S = head.sqrt_ggn_sampled(z, 200, seed=1, y=y)
    assert head.loss_fn.ignore_index == 4
    valid = y != 4
    # no column of a valid row is zero (a drawn class 4 has a non-zero gradient)
    assert np.all(np.abs(S[valid]).max(axis=-2) > 0)
