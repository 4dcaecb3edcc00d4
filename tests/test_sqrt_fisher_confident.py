"""The exact Fisher's square root on confident rows, elementwise activation + simplex-block Fisher
(Plackett–Luce's one step: ``diag(a') (diag(p) − p pᵀ) diag(a')``, p the softmax of the scores).

Where the top score dominates, p_top rounds to 1 in float32 and the congruence's diagonal is a
difference of numbers far larger than itself: a row built that way (or scaled by the
reduction's factor through a form that drops the exact diagonal) kept only rounding, and its
eigendecomposition raised "a block is indefinite". The reference is the float64 Fisher at the
same (float32-rounded) inputs; nothing expected is taken from the float32 path itself."""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac
from jacobians.checks import example_inputs
from jacobians.fisher import fisher_operator
from jacobians.operators import ScaledSimplexBlock

K = 10
ACTIVATIONS = {"exp": jac.Exp, "softplus": jac.Softplus, "sigmoid": jac.Sigmoid, "identity": jac.Identity}


def _row_errors(X, ref):
    """max |X − ref| over each row's block, over that block's largest |ref|."""
    X = np.asarray(X, np.float64)
    scale = np.abs(ref).max(axis=(-1, -2))
    return np.abs(X - ref).max(axis=(-1, -2)) / np.where(scale > 0, scale, 1)


def _confident_inputs(name, seed=0, n=48):
    """Scores with every other row's first candidate far ahead (the softmax over the scores
    puts 1 − 1e-3 … 1 − 1e-17 on it), the rest N(0, 1); one ranked candidate per row."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, K))
    top = np.linspace(8.0, 40.0, n // 2)
    if name == "exp":
        top = np.log(top)  # a = e^z: the same gaps in the scores
    elif name == "sigmoid":
        top = np.full(n // 2, 20.0)  # scores in (0, 1): the best sigmoid does
    z[::2, 0] = top
    y = rng.integers(0, K, size=(n, 1))
    return z.astype(np.float32), y


def test_the_reported_row_exp_plackett_luce():
    """The check's inputs (seed 2): row 2 has the top score e^3.08 ≈ 21.8."""
    head = jac.Head(jac.Exp(), jac.PlackettLuce())
    z, y = example_inputs(head, shape=(4, 10), dtype=np.float32, seed=2)
    F64 = head.fisher(z.astype(np.float64), y)
    F32 = head.fisher(z, y)
    assert _row_errors(F32, F64).max() < 1e-5  # row 2 was all error (3e-6 of 3e-6)
    S = head.sqrt_fisher(z, y)  # raised ValueError
    assert S.dtype == np.float32
    assert _row_errors(S @ np.swapaxes(S, -1, -2), F64).max() < 1e-5


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float32_square_root_matches_float64_fisher(name, reduction):
    head = jac.Head(ACTIVATIONS[name](), jac.PlackettLuce(reduction=reduction))
    z, y = _confident_inputs(name)
    F64 = head.fisher(z.astype(np.float64), y)
    assert np.all(np.isfinite(F64)) and np.abs(F64[::2]).max() > 0
    S = head.sqrt_fisher(z, y)
    SS = S.astype(np.float64) @ np.swapaxes(S, -1, -2)
    # exp's scores carry float32's rounding of e^z times the gap (up to 40): ~5e-6
    tol = 2e-5 if name == "exp" else 5e-6
    assert _row_errors(SS, F64).max() < tol
    assert _row_errors(head.fisher(z, y), F64).max() < tol
    # and in float64, to float64's round-off
    S64 = head.sqrt_fisher(z.astype(np.float64), y)
    assert _row_errors(S64 @ np.swapaxes(S64, -1, -2), F64).max() < 1e-12


@pytest.mark.parametrize("name", ["exp", "softplus", "sigmoid"])
def test_the_operator_keeps_the_block_through_scaling_and_rows(name):
    """The reduction's factor and row selection keep diag(j) H diag(j) with H's exact factor."""
    head = jac.Head(ACTIVATIONS[name](), jac.PlackettLuce())  # 'mean': scaled by 1/N
    z, y = _confident_inputs(name)
    op = fisher_operator(head, z, y, "exact")
    assert isinstance(op, ScaledSimplexBlock)
    F64 = head.fisher(z.astype(np.float64), y)
    rows = op[3:9]
    assert isinstance(rows, ScaledSimplexBlock)
    S = rows.sqrt()
    assert _row_errors(S @ np.swapaxes(S, -1, -2), F64[3:9]).max() < 2e-5
    diag64 = np.einsum("...jj->...j", F64)
    scale = np.abs(F64).max(axis=(-1, -2))[..., None]
    assert (np.abs(op.diagonal() - diag64) / scale).max() < 2e-5
    assert rows.T is rows
