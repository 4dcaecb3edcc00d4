"""The book example of ``shared/seeds/000_9a3a95d3883b98fd.txt`` (combined vs separate
softmax + cross-entropy gradients), its sigmoid + BCE derivation, and the einsum recipe
of seed 003."""

from __future__ import annotations

import numpy as np
import pytest

import jacobians as jac
from jacobians import testing

SOFTMAX_OUTPUTS = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4], [0.02, 0.9, 0.08]])
CLASS_TARGETS = np.array([0, 1, 1])

# printed by the seed, twice ("combined loss and activation" and "separate loss and activation")
PRINTED = np.array(
    [
        [-0.1, 0.03333333, 0.06666667],
        [0.03333333, -0.16666667, 0.13333333],
        [0.00666667, -0.03333333, 0.02666667],
    ]
)
PRINTED_ATOL = 5e-9  # eight decimals


def seed_jacobian(s):
    """Seed 003's recipe: ``einsum('ij,ik->ijk', s, -s)`` plus s on the diagonal view."""
    res = np.einsum("ij,ik->ijk", s, -s)
    np.einsum("ijj->ij", res)[...] += s
    return res


def test_combined_formula_reproduces_the_printed_gradients():
    n = len(CLASS_TARGETS)
    combined = SOFTMAX_OUTPUTS.copy()
    combined[range(n), CLASS_TARGETS] -= 1  # the seed's backward, index targets
    combined /= n
    np.testing.assert_allclose(combined, PRINTED, atol=PRINTED_ATOL)
    onehot = np.eye(3)[CLASS_TARGETS]
    np.testing.assert_allclose((SOFTMAX_OUTPUTS - onehot) / n, PRINTED, atol=PRINTED_ATOL)


@pytest.mark.parametrize("targets", [CLASS_TARGETS, np.eye(3)[CLASS_TARGETS]], ids=["indices", "one-hot"])
def test_separate_loss_and_activation_reproduce_the_printed_gradients(targets):
    dE_da = jac.CrossEntropy().grad(SOFTMAX_OUTPUTS, targets)
    np.testing.assert_allclose(dE_da, -np.eye(3)[CLASS_TARGETS] / SOFTMAX_OUTPUTS / 3, rtol=1e-15)
    # the softmax Jacobian built from the outputs, three ways
    J_seed = seed_jacobian(SOFTMAX_OUTPUTS)
    J_op = jac.DiagonalPlusRankOne(SOFTMAX_OUTPUTS, SOFTMAX_OUTPUTS, SOFTMAX_OUTPUTS)  # diag(s) − s sᵀ
    J_loop = np.array([np.diag(s) - np.outer(s, s) for s in SOFTMAX_OUTPUTS])
    testing.assert_jacobian_close(J_seed, J_loop, rtol=1e-15, atol=1e-16)
    testing.assert_jacobian_close(J_op.dense(), J_loop, rtol=1e-15, atol=1e-16)
    for J in (J_seed, J_op):
        np.testing.assert_allclose(jac.contract(dE_da, J), PRINTED, atol=PRINTED_ATOL)
    np.testing.assert_allclose(np.einsum("ij,ijk->ik", dE_da, J_seed), PRINTED, atol=PRINTED_ATOL)


@pytest.mark.parametrize("method", ["fused", "vjp", "jacobian"])
def test_every_head_method_reproduces_the_printed_gradients(method):
    # z = log s has softmax(z) = s, since the seed's rows sum to 1
    np.testing.assert_allclose(SOFTMAX_OUTPUTS.sum(axis=1), 1.0, rtol=1e-15)
    z = np.log(SOFTMAX_OUTPUTS)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    np.testing.assert_allclose(head.grad(z, CLASS_TARGETS, method=method), PRINTED, atol=PRINTED_ATOL)
    expected_loss = -np.mean(np.log([0.7, 0.5, 0.9]))
    np.testing.assert_allclose(head.loss(z, CLASS_TARGETS), expected_loss, rtol=1e-14)


def test_sigmoid_bce_derivation(rng):
    """dL/dŷ_j = −(1/J)(y_j/ŷ_j − (1 − y_j)/(1 − ŷ_j)), dσ_j/dz_j = σ_j(1 − σ_j), so
    dL/dz_j = (ŷ_j − y_j)/J per sample; 'mean' over N samples adds 1/N: (σ − y)/(N·K)."""
    N, K = 4, 5
    z = rng.normal(size=(N, K)) * 2
    y = rng.integers(0, 2, size=(N, K)).astype(float)
    sig = 1 / (1 + np.exp(-z))
    dL_da = -(y / sig - (1 - y) / (1 - sig)) / (N * K)
    np.testing.assert_allclose(jac.BinaryCrossEntropy().grad(sig, y), dL_da, rtol=1e-12)
    dsig = sig * (1 - sig)
    np.testing.assert_allclose(jac.Sigmoid().derivative(z), dsig, rtol=1e-12)
    J = np.array([np.diag(row) for row in dsig])  # the diagonal dσ/dz of the seed
    np.testing.assert_allclose(jac.contract(dL_da, J), (sig - y) / (N * K), rtol=1e-9, atol=1e-15)
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy())
    for method in ("fused", "vjp", "jacobian"):
        np.testing.assert_allclose(head.grad(z, y, method=method), (sig - y) / (N * K), rtol=1e-9, atol=1e-15)


def test_seed_003_recipes_equal_the_softmax_jacobian(rng):
    z = rng.normal(size=(100, 4))

    def softmax(x):  # seed 003 (its global max shift is fine for these logits)
        e = np.exp(x - np.max(x))
        return e / np.sum(e, axis=1)[:, None]

    def softmax_derivative(Z):  # seed 003's tensordot version
        N, K = Z.shape
        s = softmax(Z)[:, :, np.newaxis]
        a = np.tensordot(s, np.ones((1, K)), axes=([-1], [0]))
        eye = np.repeat(np.eye(K, K)[np.newaxis, :, :], N, axis=0)
        b = eye - np.tensordot(np.ones((K, 1)), s.T, axes=([-1], [0])).T
        return a * np.swapaxes(b, 1, 2)

    def softmax_derivative_test(Z):  # seed 003's triple loop
        N, K = Z.shape
        da_dz = np.zeros((N, K, K))
        s = softmax(Z)
        for n in range(N):
            for i in range(K):
                for j in range(K):
                    da_dz[n, i, j] = s[n, i] * ((i == j) - s[n, j])
        return da_dz

    J = jac.Softmax().jacobian(z)
    testing.assert_jacobian_close(J, seed_jacobian(softmax(z)), rtol=1e-13, atol=1e-16)
    testing.assert_jacobian_close(J, softmax_derivative(z), rtol=1e-13, atol=1e-16)
    testing.assert_jacobian_close(J, softmax_derivative_test(z), rtol=1e-13, atol=1e-16)
    y = np.eye(4)[rng.integers(0, 4, size=100)]
    S = softmax(z)
    dE_da = -(y / S) / len(y)  # seed 003's cross_entropy_derivative
    dE_dz = np.einsum("ij,ijk->ik", dE_da, seed_jacobian(S))  # seed 003's dE_dz_pp
    np.testing.assert_allclose(dE_dz, (S - y) / len(y), atol=1e-16)
    np.testing.assert_allclose(jac.contract(dE_da, J), dE_dz, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(jac.Head(jac.Softmax(), jac.CrossEntropy()).grad(z, y), dE_dz, rtol=1e-12, atol=1e-16)
