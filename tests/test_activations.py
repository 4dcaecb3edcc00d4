"""Every registered activation: forward, Jacobian, VJP, JVP, operator, against independent
references (plain per-sample loops, central differences, explicit contractions)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import activation_cases, fit_shape, make_logits, readonly

import jacobians as jac
from jacobians import checks, testing
from jacobians.numerics.parallel import PARALLEL_MIN_BYTES

CASES = activation_cases()
SHAPE = (6, 4)

# Closed forms against float64 loops: round-off only.
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
# Central differences in float64: step eps^(1/3) ≈ 6e-6, error ≈ 1e-10 on entries of order one.
FD = {"rtol": 1e-6, "atol": 1e-8}


def _logits(rng, shape=SHAPE, dtype=np.float64):
    # scale 2 exercises the sparse mappings' supports; no entry sits on ReLU's kink
    return make_logits(rng, shape, scale=2.0, dtype=dtype)


def test_registry_holds_the_builtins():
    names = {"softmax", "log_softmax", "sigmoid", "tanh", "relu", "leaky_relu", "identity", "softplus", "sparsemax", "entmax15", "entmax",
             "mean_variance", "exp"}
    assert names <= set(jac.ACTIVATIONS)
    for name, cls in jac.ACTIVATIONS.items():
        assert jac.get_activation(name) is cls
    assert {jac.get_activation(name) for name in names} == set(testing.ACTIVATION_REFERENCES)
    with pytest.raises(KeyError, match="valid names are"):
        jac.get_activation("no_such_activation")


@pytest.mark.parametrize("act", CASES)
class TestAgainstReferences:
    def test_forward_matches_loop(self, act, rng):
        z = _logits(rng)
        a = act(z)
        assert a.shape == z.shape and a.dtype == np.float64
        testing.assert_grad_close(a, testing.loop_forward(act, z), **TIGHT)
        np.testing.assert_array_equal(act.forward(z), a)

    def test_jacobian_matches_loop(self, act, rng):
        z = _logits(rng)
        J = act.jacobian(z)
        assert J.shape == SHAPE + SHAPE[-1:]
        testing.assert_jacobian_close(J, testing.loop_jacobian(act, z), **TIGHT)

    def test_jacobian_matches_central_differences(self, act, rng):
        z = _logits(rng)
        testing.assert_jacobian_close(act.jacobian(z), jac.numerical_jacobian(act, z), **FD)

    def test_vjp_and_jvp_match_dense_contraction_and_loops(self, act, rng):
        z = _logits(rng)
        g = rng.normal(size=z.shape)
        v = rng.normal(size=z.shape)
        J = act.jacobian(z)
        testing.assert_grad_close(act.vjp(z, g), np.einsum("ni,nij->nj", g, J), **TIGHT)
        testing.assert_grad_close(act.jvp(z, v), np.einsum("nij,nj->ni", J, v), **TIGHT)
        testing.assert_grad_close(act.vjp(z, g), testing.loop_vjp(act, z, g), **TIGHT)
        testing.assert_grad_close(act.jvp(z, v), testing.loop_jvp(act, z, v), **TIGHT)

    def test_operator_products(self, act, rng):
        z = _logits(rng)
        g = rng.normal(size=z.shape)
        v = rng.normal(size=z.shape)
        op = act.jacobian_operator(z)
        J = testing.loop_jacobian(act, z)
        assert op.shape == J.shape and op.dtype == np.float64
        testing.assert_jacobian_close(op.dense(), J, **TIGHT)
        testing.assert_grad_close(op.diagonal(), np.einsum("nii->ni", J), **TIGHT)
        testing.assert_grad_close(op @ v, np.einsum("nij,nj->ni", J, v), **TIGHT)
        testing.assert_grad_close(g @ op, np.einsum("ni,nij->nj", g, J), **TIGHT)
        testing.assert_grad_close(jac.contract(g, op), np.einsum("ni,nij->nj", g, J), **TIGHT)
        assert op.nbytes <= op.dense_nbytes
        part = op[1:4]
        testing.assert_jacobian_close(part.dense(), J[1:4], **TIGHT)

    def test_out_buffer(self, act, rng):
        z = _logits(rng)
        buf = np.full(SHAPE + SHAPE[-1:], np.nan)
        J = act.jacobian(z, out=buf)
        assert J is buf
        np.testing.assert_array_equal(buf, act.jacobian(z))

    def test_leading_batch_axes_and_single_sample(self, act, rng):
        z = _logits(rng, (2, 3, 4))
        g = rng.normal(size=z.shape)
        J = act.jacobian(z)
        assert act(z).shape == (2, 3, 4) and J.shape == (2, 3, 4, 4)
        testing.assert_jacobian_close(J, testing.loop_jacobian(act, z), **TIGHT)
        testing.assert_grad_close(act.vjp(z, g), testing.loop_vjp(act, z, g), **TIGHT)
        testing.assert_grad_close(act.jvp(z, g), testing.loop_jvp(act, z, g), **TIGHT)
        one = z[1, 2]
        assert act(one).shape == (4,) and act.jacobian(one).shape == (4, 4)
        testing.assert_jacobian_close(act.jacobian(one), J[1, 2], **TIGHT)
        testing.assert_grad_close(act.vjp(one, g[1, 2]), act.vjp(z, g)[1, 2], **TIGHT)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_dtype_is_kept(self, act, rng, dtype):
        z = _logits(rng, dtype=dtype)
        g = rng.normal(size=z.shape).astype(dtype)
        outputs = [act(z), act.jacobian(z), act.vjp(z, g), act.jvp(z, g), act.jacobian_operator(z).dense()]
        if isinstance(act, jac.ElementwiseActivation):
            outputs.append(act.derivative(z))
        assert [o.dtype for o in outputs] == [np.dtype(dtype)] * len(outputs)
        if dtype is np.float32:  # float32 work agrees with the float64 loops to float32 round-off
            z64 = z.astype(np.float64)
            testing.assert_grad_close(outputs[0], testing.loop_forward(act, z64))
            testing.assert_jacobian_close(outputs[1], testing.loop_jacobian(act, z64))
            testing.assert_grad_close(outputs[2], testing.loop_vjp(act, z64, g))

    def test_integer_input_is_promoted_to_float64(self, act):
        z = np.array([[1, -2, 0, 3], [0, 0, 1, -1]])
        a, J = act(z), act.jacobian(z)
        assert a.dtype == np.float64 and J.dtype == np.float64
        testing.assert_jacobian_close(J, testing.loop_jacobian(act, z.astype(np.float64)), **TIGHT)

    def test_inputs_are_never_modified(self, act, rng):
        z = readonly(_logits(rng))
        g = readonly(rng.normal(size=z.shape))
        z0, g0 = z.copy(), g.copy()
        act(z)
        act.jacobian(z)
        act.vjp(z, g)
        act.jvp(z, g)
        op = act.jacobian_operator(z)
        op.dense()
        op @ g
        g @ op
        np.testing.assert_array_equal(z, z0)
        np.testing.assert_array_equal(g, g0)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_extreme_logits_stay_finite(self, act, rng, dtype):
        big = checks.inputs.extreme_magnitude(act, dtype)  # 1e4, or less where e^z would overflow (Exp)
        z = rng.choice([-big, big, 0.0, 1.0], size=fit_shape((8, 5), act)).astype(dtype)
        z[0] = big  # a row of ties at the top
        z[1] = -big
        g = rng.normal(size=z.shape).astype(dtype)
        for out in (act(z), act.jacobian(z), act.vjp(z, g), act.jvp(z, g)):
            assert np.all(np.isfinite(out)) and out.dtype == dtype
        testing.assert_jacobian_close(act.jacobian(z), testing.loop_jacobian(act, z.astype(np.float64)))

    def test_errors_name_the_argument(self, act):
        W = fit_shape((2, 3), act)[-1]  # 3, or the width the activation needs ([means | variances]: 4)
        W1 = fit_shape((1, 1), act)[-1]
        with pytest.raises(ValueError, match=r"z must have at least 1 dimension.*0-d"):
            act(np.float64(1.0))
        with pytest.raises(ValueError, match=r"z must have at least 1 dimension.*0-d"):
            act.jacobian(np.float64(1.0))
        with pytest.raises(ValueError, match=rf"g must have the shape of z, \(2, {W}\); got shape \(2, {W + 1}\)"):
            act.vjp(np.zeros((2, W)), np.zeros((2, W + 1)))
        with pytest.raises(ValueError, match=rf"v must have the shape of z, \(2, {W}\); got shape \({W},\)"):
            act.jvp(np.zeros((2, W)), np.zeros(W))
        with pytest.raises(TypeError, match="z must be a real numeric array.*got dtype <U1"):
            act(np.array(["a", "b"]))
        with pytest.raises(ValueError, match=rf"out must have shape \(2, {W}, {W}\); got shape \(2, {W}, {W + 1}\)"):
            act.jacobian(np.zeros((2, W)), out=np.empty((2, W, W + 1)))
        with pytest.raises(TypeError, match="out must have dtype float64; got dtype float32"):
            act.jacobian(np.zeros((2, W)), out=np.empty((2, W, W), np.float32))
        with pytest.raises(ValueError, match="out must be a writeable, C-contiguous array"):
            act.jacobian(np.zeros((2, W)), out=np.empty((2, W, 2 * W))[..., ::2])
        with pytest.raises(TypeError, match="out must be a numpy array; got list"):
            act.jacobian(np.zeros((1, W1)), out=np.zeros((1, W1, W1)).tolist())
        with pytest.raises(ValueError, match="workers must be a positive int or None; got 0"):
            act.jacobian(np.zeros((2, W)), workers=0)


@pytest.mark.parametrize("act", CASES)
def test_threads_give_identical_numbers_above_the_parallel_threshold(act, rng):
    N, K = 600, 32  # 600·32·32·8 bytes ≈ 4.9 MB > the 4 MiB threshold
    assert N * K * K * 8 > PARALLEL_MIN_BYTES
    z = _logits(rng, (N, K))
    one = act.jacobian(z, workers=1)
    two = act.jacobian(z, workers=2)
    buf = np.empty_like(one)
    act.jacobian(z, out=buf, workers=3)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, buf)
    rows = slice(0, N, 97)  # spot-check the threaded build against the loop reference
    testing.assert_jacobian_close(two[rows], testing.loop_jacobian(act, z[rows]), **TIGHT)


@pytest.mark.parametrize("act", [c for c in CASES if isinstance(c.values[0], jac.ElementwiseActivation)])
def test_elementwise_derivative_is_the_jacobian_diagonal(act, rng):
    z = _logits(rng)
    d = act.derivative(z)
    J = testing.loop_jacobian(act, z)
    testing.assert_grad_close(d, np.einsum("nii->ni", J), **TIGHT)
    off = J - np.einsum("ni,ij->nij", np.einsum("nii->ni", J), np.eye(z.shape[-1]))
    assert not off.any()  # an elementwise activation's Jacobian is diagonal
    testing.assert_jacobian_close(act.jacobian(z), J, **TIGHT)


def test_layout_with_a_non_symmetric_jacobian(rng):
    """J[..., i, j] = ∂a_i/∂z_j, checked on log-softmax (J = I − 1 sᵀ, not symmetric)."""
    act = jac.LogSoftmax()
    z = _logits(rng, (3, 4))
    J = act.jacobian(z)
    assert not np.allclose(J, np.swapaxes(J, -1, -2))
    # move z_j alone: the change of a_i is column j of J
    h = 1e-6
    for j in range(4):
        zp, zm = z.copy(), z.copy()
        zp[:, j] += h
        zm[:, j] -= h
        column = (act(zp) - act(zm)) / (2 * h)
        testing.assert_grad_close(J[:, :, j], column, rtol=1e-6, atol=1e-8)
    s = np.exp(act(z))
    testing.assert_jacobian_close(J, np.eye(4) - np.einsum("i,nj->nij", np.ones(4), s), **TIGHT)
    g = rng.normal(size=z.shape)
    testing.assert_grad_close(act.vjp(z, g), np.einsum("ni,nij->nj", g, J), **TIGHT)
    assert not np.allclose(act.vjp(z, g), act.jvp(z, g))


def test_softmax_jacobian_closed_form_and_temperature(rng):
    z = _logits(rng)
    for T in (1.0, 0.25, 4.0):
        e = np.exp(z / T - (z / T).max(-1, keepdims=True))
        s = e / e.sum(-1, keepdims=True)
        expected = (np.einsum("ni,ij->nij", s, np.eye(z.shape[-1])) - np.einsum("ni,nj->nij", s, s)) / T
        testing.assert_jacobian_close(jac.Softmax(temperature=T).jacobian(z), expected, **TIGHT)
    J = jac.Softmax().jacobian(z)
    testing.assert_grad_close(J.sum(axis=-1), np.zeros(z.shape), atol=1e-15)  # rows sum to 0
    testing.assert_jacobian_close(J, np.swapaxes(J, -1, -2), **TIGHT)


def test_sparse_mappings_have_sparse_outputs_and_rows_on_the_simplex(rng):
    z = _logits(rng, (50, 6)) * 2
    for act in (jac.Sparsemax(), jac.Entmax15()):
        p = act(z)
        assert (p == 0).any() and np.all(p >= 0)
        testing.assert_grad_close(p.sum(-1), np.ones(50), **TIGHT)
        J = act.jacobian(z)
        zero = p == 0  # rows and columns of the Jacobian vanish off the support
        assert not np.einsum("nij,ni->nj", np.abs(J), zero.astype(float)).any()
