"""The structured operators and ``diagonal`` on torch, JAX and array-api-strict arrays.

``Activation.jacobian_operator``, ``jacobian_operator_from_output`` and
``hessian_vjp_operator``, ``Head.hessian_operator`` and ``ggn_operator`` on a generic z give
an operator of z's namespace (never numpy's: that was a silent conversion). Each of its
products (``op @ v``, ``g @ op`` / ``op.vjp(g)``, ``op.T``), ``dense()`` and ``diagonal()`` is
compared with numpy's operator on the same values in float64, over the registry (every
activation and variant on array-api-strict, the defaults on torch and JAX), and the layout
with a Jacobian that is not symmetric. Dask keeps its behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import array_namespace_named, fit_shape, jax_x64, normwise, to_numpy, walk_params

import jacobians as jac
from jacobians.checks import example_inputs

EXTRA = "the arrays extra (array-api-compat, array-api-extra) is not installed"
pytestmark = pytest.mark.arrays
array_api_compat = pytest.importorskip("array_api_compat", reason=EXTRA)

K = 5
#: normwise error per result against numpy's float64 one, in units of the dtype's epsilon
#: (test_arrays_activations: 16 ulp first order, 32 second, per row; here over the batch)
ULPS = 64






def _instances():
    out = []
    for name, cls in jac.ACTIVATIONS.items():
        for kw in [{}, *cls.variants(K)]:
            label = name + "".join(f"-{k}={v}" for k, v in kw.items())
            out.append(pytest.param(cls(**kw), id=label))
    return out


def _vectors(dtype_name, shape=(2, 3, K)):
    rng = np.random.default_rng(5)
    return (rng.normal(size=shape).astype(dtype_name) for _ in range(3))


def _check_operator(xp, op, ref, zt, vt, gt, v, g, tol):
    """``op`` (generic) against ``ref`` (numpy, float64) on every method of the contract."""
    assert type(op).__module__.startswith("jacobians._arrays"), type(op)
    assert op.shape == ref.shape and op.dtype == zt.dtype and op.batch_shape == ref.batch_shape
    results = {
        "jvp": (op @ vt, ref @ v),
        "vjp": (op.vjp(gt), g @ ref),
        "dense": (op.dense(), ref.dense()),
        "diagonal": (op.diagonal(), ref.diagonal()),
        "T.jvp": (op.T @ vt, ref.T @ v),
        "T.dense": (op.T.dense(), ref.T.dense()),
    }
    if "array_api_strict" not in xp.__name__:  # its __matmul__ does not give way to ours
        results["g @ op"] = (gt @ op, g @ ref)
    for what, (got, want) in results.items():
        assert array_api_compat.array_namespace(got) is array_api_compat.array_namespace(zt), what
        assert got.dtype == zt.dtype and array_api_compat.device(got) == array_api_compat.device(zt), what
        assert tuple(got.shape) == want.shape, what
        assert normwise(to_numpy(got), want) <= tol, (what, normwise(to_numpy(got), want))


#: JAX runs softmax in float64 only (its eager calls compile op by op, ~3 s a class and
#: dtype; the generic code is the same on every namespace); the heads' operators run on
#: JAX under jit (test_operators_under_jax_jit)
JAX_ACTIVATIONS = ("softmax",)


def _walk(params, is_default, on_jax):
    """walk_params with both dtypes, JAX only for ``on_jax`` and in float64."""
    out = []
    for p in walk_params(params, is_default):
        for dt in ("float32", "float64"):
            if p.values[0] != "jax" or (on_jax(p) and dt == "float64"):
                out.append(pytest.param(p.values[0], dt, *p.values[1:], id=f"{p.id}-{dt}"))
    return out


@pytest.mark.parametrize("xp_name, dtype_name, act", _walk(_instances(), lambda p: "=" not in p.id,
                                                            lambda p: p.id[len("jax-"):] in JAX_ACTIVATIONS))
def test_activation_operators_match_numpy(xp, xp_name, dtype_name, act):
    shape = fit_shape((2, 3, K), act)  # [means | variances]: an even width
    z = example_inputs(act, shape=shape, dtype=dtype_name, seed=3)
    g, v, _ = _vectors(dtype_name, shape)
    z64, g64, v64 = (x.astype(np.float64) for x in (z, g, v))
    zt, gt, vt = xp.asarray(z), xp.asarray(g), xp.asarray(v)
    tol = ULPS * float(np.finfo(dtype_name).eps)
    _check_operator(xp, act.jacobian_operator(zt), act.jacobian_operator(z64), zt, vt, gt, v64, g64, tol)
    op = act.jacobian_operator_from_output(zt, act(zt))
    _check_operator(xp, op, act.jacobian_operator(z64), zt, vt, gt, v64, g64, tol)
    _check_operator(xp, act.hessian_vjp_operator(zt, gt), act.hessian_vjp_operator(z64, g64), zt, vt, gt, v64, g64,
                    4 * tol)


HEADS = {
    "softmax_ce": lambda: jac.Head(jac.Softmax(), jac.CrossEntropy()),
    "sigmoid_bce": lambda: jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()),
    "identity_mse": lambda: jac.Head(jac.Identity(), jac.MeanSquaredError()),
    "tanh_mse": lambda: jac.Head(jac.Tanh(), jac.MeanSquaredError()),  # not canonical: GGN ≠ Hessian
    "softmax_mse": lambda: jac.Head(jac.Softmax(), jac.MeanSquaredError()),
}


@pytest.mark.parametrize("xp_name, dtype_name, head_name", _walk(
    [pytest.param(n, id=n) for n in HEADS], lambda p: p.id in ("softmax_ce", "tanh_mse"), lambda p: False))
def test_head_operators_match_numpy(xp, xp_name, dtype_name, head_name):
    head = HEADS[head_name]()
    z, y = example_inputs(head, shape=(2, 3, K), dtype=dtype_name, seed=4)
    g, v, _ = _vectors(dtype_name)
    z64, g64, v64 = (x.astype(np.float64) for x in (z, g, v))
    y64 = y.astype(np.float64) if y.dtype.kind == "f" else y
    zt, gt, vt = xp.asarray(z), xp.asarray(g), xp.asarray(v)
    yt = xp.asarray(y) if y.dtype.kind == "f" else y
    tol = 4 * ULPS * float(np.finfo(dtype_name).eps)
    for method in ("auto", "chain"):
        _check_operator(xp, head.hessian_operator(zt, yt, method), head.hessian_operator(z64, y64, method),
                        zt, vt, gt, v64, g64, tol)
    _check_operator(xp, head.ggn_operator(zt, yt), head.ggn_operator(z64, y64), zt, vt, gt, v64, g64, tol)


class _ScaleByFirst(jac.Activation):
    """``a_i = z_i · z_0``: J = diag(z_0) + z e_0ᵀ, not symmetric (the layout's test)."""

    def forward(self, z):
        return z * z[..., :1]

    def jacobian(self, z, *, out=None, workers=None):
        J = np.eye(z.shape[-1]) * z[..., :1, None]
        J[..., :, 0] += z
        return J

    def xp_forward(self, xp, z):
        return z * z[..., :1]

    def xp_jacobian(self, xp, z):
        eye = xp.eye(z.shape[-1], dtype=z.dtype, device=array_api_compat.device(z))
        first = xp.astype(xp.arange(z.shape[-1], device=array_api_compat.device(z)) == 0, z.dtype)
        return eye * z[..., :1, None] + z[..., :, None] * first


@pytest.mark.parametrize("name", ["array_api_strict", "torch", "jax"])
def test_the_layout_with_a_jacobian_that_is_not_symmetric(name):
    xp = array_namespace_named(name)
    rng = np.random.default_rng(0)
    z, v, g = (rng.normal(size=(4, 3)) for _ in range(3))
    J = _ScaleByFirst().jacobian(z)
    with jax_x64(name, "float64"):
        op = _ScaleByFirst().jacobian_operator(xp.asarray(z))
        assert np.allclose(to_numpy(op @ xp.asarray(v)), np.einsum("nij,nj->ni", J, v), rtol=0, atol=1e-14)
        assert np.allclose(to_numpy(op.vjp(xp.asarray(g))), np.einsum("ni,nij->nj", g, J), rtol=0, atol=1e-14)
        assert np.allclose(to_numpy(op.T @ xp.asarray(v)), np.einsum("nji,nj->ni", J, v), rtol=0, atol=1e-14)
        assert np.allclose(to_numpy(op.dense()), J, rtol=0, atol=1e-14)
        assert np.allclose(to_numpy(op.T.dense()), np.swapaxes(J, -1, -2), rtol=0, atol=1e-14)


def test_errors_and_a_class_without_generic_path():
    torch = pytest.importorskip("torch", reason="the test extra's torch (CPU build) is not installed")
    z = torch.randn(4, 3, dtype=torch.float64)
    op = jac.Softmax().jacobian_operator(z)
    with pytest.raises(TypeError, match="numpy and torch|two namespaces"):
        op @ np.ones((4, 3))
    with pytest.raises(TypeError, match="numpy and torch|two namespaces"):
        np.ones((4, 3)) @ op
    with pytest.raises(ValueError, match="v must have the shape of z"):
        op @ torch.ones(4, 2, dtype=torch.float64)
    assert (op @ torch.ones(4, 3, dtype=torch.float32)).dtype == torch.float64  # cast to z's dtype
    g = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(jac.contract(g, op), op.vjp(g))  # contract takes an operator, as numpy's does

    class NumpyOnly(jac.Activation):
        def forward(self, z):
            return z

    with pytest.raises(NotImplementedError, match="NumpyOnly has no array-API path"):
        NumpyOnly().jacobian_operator(z)
    with pytest.raises(TypeError, match="must be a floating array"):
        jac.Softmax().jacobian_operator(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="y .the targets of .* is required here; got None"):
        jac.Head(jac.Softmax(), jac.CrossEntropy()).ggn_operator(z, None)
    fy = jac.Head(jac.Sparsemax(), jac.SparsemaxLoss())
    if not type(fy.loss_fn).xp_available:  # a loss without a generic path says so at once
        with pytest.raises(NotImplementedError, match="SparsemaxLoss has no array-API path"):
            fy.hessian_operator(z, torch.tensor([0, 1, 2, 0]))


def test_operators_under_jax_jit():
    jax = pytest.importorskip("jax", reason="the test extra's jax is not installed")
    rng = np.random.default_rng(1)
    z, v = rng.normal(size=(4, K)), rng.normal(size=(4, K))
    y = rng.integers(0, K, size=4)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    with jax.enable_x64(True):
        zt, vt, yt = jax.numpy.asarray(z), jax.numpy.asarray(v), jax.numpy.asarray(y)
        got = jax.jit(lambda z, v: jac.Softmax().jacobian_operator(z) @ v)(zt, vt)
        assert np.allclose(to_numpy(got), jac.Softmax().jacobian_operator(z) @ v, rtol=0, atol=1e-15)
        got = jax.jit(lambda z, y, v: v @ head.hessian_operator(z, y))(zt, yt, vt)
        assert np.allclose(to_numpy(got), head.hvp(z, y, v), rtol=0, atol=1e-15)


# -- jacobians.diagonal -----------------------------------------------------------------------


def test_diagonal_is_a_writable_view_on_torch():
    torch = pytest.importorskip("torch", reason="the test extra's torch (CPU build) is not installed")
    J = torch.zeros(2, 3, 3, dtype=torch.float32)
    d = jac.diagonal(J)
    d[...] = 1.0
    assert torch.equal(J, torch.eye(3).expand(2, 3, 3)) and d.dtype == torch.float32
    with pytest.raises(ValueError, match=r"J must have shape \(..., K, K\)"):
        jac.diagonal(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("name", ["array_api_strict", "jax"])
def test_diagonal_values_on_other_namespaces(name):
    xp = array_namespace_named(name)
    J = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    d = jac.diagonal(xp.asarray(J))
    assert array_api_compat.array_namespace(d) is array_api_compat.array_namespace(xp.asarray(J))
    assert d.dtype == xp.float32 and np.array_equal(to_numpy(d), np.einsum("...jj->...j", J))


def test_dask_keeps_its_behaviour():
    da = pytest.importorskip("dask.array", reason="dask (the dask extra) is not installed")
    z = da.from_array(np.random.default_rng(0).normal(size=(4, 3)), chunks=2)
    assert isinstance(jac.Softmax().jacobian_operator(z), jac.JacobianOperator)  # the numpy method, as before
    with pytest.raises(TypeError, match="must be a numpy array"):
        jac.diagonal(da.zeros((2, 3, 3)))
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    with pytest.raises(TypeError, match="for dask logits"):
        head.hessian_operator(z, np.array([0, 1, 2, 0]))
    with pytest.raises(TypeError, match="for dask logits"):
        head.ggn_operator(z, np.array([0, 1, 2, 0]))
