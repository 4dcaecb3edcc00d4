"""Heads, ``contract`` and the autograd adapters on torch, JAX and array-api-strict arrays.

Every pair row of the check command (``jacobians.checks.plan``: each pair with its
defaults and each variant) runs on array-api-strict in float32 and float64; torch and
JAX run the pairs with their defaults (the representative slice: the generic formulas are
the same code on every namespace). A Fenchel–Young loss after an activation other than its
own map or Identity (the chain rule at ``a = act(z)``) runs its defaults on
array-api-strict only (see ``_chain_with_logits_loss``). Each method's result is compared with the numpy
path's on the same values in float64, normwise in units of the dtype's epsilon; the type,
dtype and device come back as they went in. A pair without a generic path must say so
(the clear ``NotImplementedError``), which is asserted too. The adapters are checked
against plain autograd of the same loss (torch's ``cross_entropy``, ``jax.nn``),
``gradcheck``/``gradgradcheck`` and ``jax.test_util.check_grads``.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import array_namespace_named, jax_x64, normwise, to_numpy

import jacobians as jac
from jacobians.checks import example_inputs, plan

EXTRA = "the arrays extra (array-api-compat, array-api-extra) is not installed"
pytestmark = pytest.mark.arrays
array_api_compat = pytest.importorskip("array_api_compat", reason=EXTRA)

NAMESPACES = ("array_api_strict", "torch", "jax")
#: normwise error (max |x − ref| / max |ref|) allowed against numpy's float64 result, in
#: units of the dtype's epsilon (float32: the generic path's float32 rounding included)
ULPS = {"float64": 64, "float32": 64}
SHAPE = (6, 5)






def _pair_entries():
    return [e for e in plan.plan_entries(None)[0] if e.loss is not None]


ENTRIES = _pair_entries()


def _chain_with_logits_loss(e) -> bool:
    """A Fenchel–Young loss (a loss of logits) after another activation than its own map or
    Identity: the chain rule at ``a = act(z)``, the same code as every other chain pair,
    with the loss's generic methods walked on every namespace by test_arrays_losses."""
    head = e.obj
    own = head.loss_fn.logits_of
    return own is not None and not head.logits_loss and not isinstance(head.activation, jac.Identity)


def _cases():
    for e in ENTRIES:
        for name in NAMESPACES:
            if name != "array_api_strict" and ("(" in e.label or _chain_with_logits_loss(e)):
                continue  # the variants run on array-api-strict; the defaults everywhere
            if "(" in e.label and _chain_with_logits_loss(e):
                continue  # (their defaults only: α-entmax's bisection is costly op by op)
            for dt in ("float64", "float32"):
                yield pytest.param(e, name, dt, id=f"{name}-{dt}-{e.label}")






def _inputs(head, dtype_name, label):
    z, y = example_inputs(head, shape=SHAPE, dtype=dtype_name, seed=zlib.crc32(label.encode()))
    return z, y


class _Unsupported(Exception):
    pass


def _run(fn):
    try:
        return fn()
    except NotImplementedError as exc:
        if "array-API path" in str(exc) or "not available for" in str(exc):
            raise _Unsupported(str(exc)) from exc
        raise


def _methods(head):
    if head.logits_loss:
        return ["fused"]
    return (["fused"] if head.fused_rule is not None else []) + ["vjp", "jacobian"]


@pytest.mark.parametrize("entry, name, dtype_name", list(_cases()))
def test_every_method_matches_numpy(entry, name, dtype_name):
    xp = array_namespace_named(name)
    head = entry.build(SHAPE[-1])
    z, y = _inputs(head, dtype_name, entry.label)
    eps = float(np.finfo(dtype_name).eps)
    z64, y64 = z.astype(np.float64), (y.astype(np.float64) if y.dtype.kind == "f" else y)
    v = np.random.default_rng(3).normal(size=z.shape).astype(dtype_name)
    with jax_x64(name, dtype_name):
        zt, vt = xp.asarray(z), xp.asarray(v)
        yt = xp.asarray(y) if y.dtype.kind == "f" else y  # class indices as numpy: moved to z's device
        try:
            results = {}
            for method in _methods(head):
                results[method] = _run(lambda m=method: head.value_and_grad(zt, yt, m))
            results["loss"] = (_run(lambda: head.loss(zt, yt)), None)
            second = {
                "hessian": lambda: head.hessian(zt, yt),
                "ggn": lambda: head.ggn(zt, yt),
                "hvp": lambda: head.hvp(zt, yt, vt),
            }
            got2 = {k: _run(f) for k, f in second.items()}
        except _Unsupported as exc:
            # the clear error: it names the class (or the entry point) that has no generic path
            assert type(head.activation).__name__ in str(exc) or type(head.loss_fn).__name__ in str(exc) or "Head." in str(exc)
            return
        for method, (value, grad) in results.items():
            ref_value, ref_grad = head.value_and_grad(z64, y64, method if method != "loss" else head.method)
            assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(zt)
            assert value.dtype == zt.dtype
            assert normwise(to_numpy(value), np.asarray(ref_value)) <= ULPS[dtype_name] * eps, method
            if grad is not None:
                assert grad.dtype == zt.dtype and tuple(grad.shape) == z.shape
                assert array_api_compat.device(grad) == array_api_compat.device(zt)
                assert normwise(to_numpy(grad), ref_grad) <= ULPS[dtype_name] * eps, method
        refs = {"hessian": head.hessian(z64, y64), "ggn": head.ggn(z64, y64), "hvp": head.hvp(z64, y64, v.astype(np.float64))}
        for k, got in got2.items():
            assert got.dtype == zt.dtype, k
            assert normwise(to_numpy(got), refs[k]) <= ULPS[dtype_name] * eps * 4, k


# -- namespaces, training loops ----------------------------------------------------------------


def _softmax_ce():
    return jac.Head(jac.Softmax(), jac.CrossEntropy())


def test_two_namespaces_in_one_call_raise_naming_both():
    torch = pytest.importorskip("torch", reason="torch (the test extra's CPU build) is not installed")
    jnp = pytest.importorskip("jax", reason="jax (the test extra) is not installed").numpy
    z = torch.zeros((2, 3), dtype=torch.float64)
    with pytest.raises(TypeError, match="torch and jax"):
        _softmax_ce().grad(z, jnp.zeros((2,), dtype=jnp.int32))
    with pytest.raises(TypeError, match="numpy and torch|two namespaces"):
        jac.contract(np.zeros((2, 3)), torch.zeros((2, 3, 3), dtype=torch.float64))


def test_missing_targets_raise_naming_y():
    torch = pytest.importorskip("torch", reason="torch (the test extra's CPU build) is not installed")
    head, z = _softmax_ce(), torch.zeros((2, 3), dtype=torch.float64)
    for call in (head.loss, head.grad, head.hessian, head.ggn, head.sqrt_ggn, lambda z, y: head.hvp(z, y, z)):
        with pytest.raises(ValueError, match=r"y \(the targets of CrossEntropy.*\) is required here; got None"):
            call(z, None)


def test_torch_requires_grad_gives_plain_tensors_also_under_no_grad():
    torch = pytest.importorskip("torch", reason="torch (the test extra's CPU build) is not installed")
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    g = _softmax_ce().grad(z, y)
    assert isinstance(g, torch.Tensor) and not g.requires_grad
    with torch.no_grad():
        g2 = _softmax_ce().grad(z, y)
    ref = torch.softmax(z.detach(), -1) - torch.nn.functional.one_hot(y, 3)
    assert torch.allclose(g, ref / 4, atol=1e-15) and torch.equal(g, g2)


def test_jax_jit_and_vmap():
    jax = pytest.importorskip("jax", reason="jax (the test extra) is not installed")
    jnp = jax.numpy
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        z = jnp.asarray(rng.normal(size=(3, 4, 5)))
        y = jnp.asarray(rng.integers(0, 5, size=(3, 4)))
        head = _softmax_ce()
        eager = head.grad(z[0], y[0])
        jitted = jax.jit(lambda z, y: head.grad(z, y))(z[0], y[0])
        assert np.allclose(to_numpy(jitted), to_numpy(eager), rtol=0, atol=1e-15)
        batched = jax.vmap(lambda z, y: head.grad(z, y))(z, y)
        ref = np.stack([head.grad(np.asarray(z[i]), np.asarray(y[i])) for i in range(3)])
        assert np.allclose(to_numpy(batched), ref, rtol=0, atol=1e-15)
        H = jax.jit(lambda z, y: head.hessian(z, y))(z[0], y[0])
        assert np.allclose(to_numpy(H), head.hessian(np.asarray(z[0]), np.asarray(y[0])), rtol=0, atol=1e-15)


# -- the autograd adapters ------------------------------------------------------------------------


ADAPTER_HEADS = {
    "softmax_ce": (lambda: jac.Head(jac.Softmax(), jac.CrossEntropy()), "class"),
    "sigmoid_bce": (lambda: jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy()), "probability"),
    "identity_mse": (lambda: jac.Head(jac.Identity(), jac.MeanSquaredError()), "real"),
    "tanh_mse_chain": (lambda: jac.Head(jac.Tanh(), jac.MeanSquaredError()), "real"),
}


def _adapter_inputs(kind, N=5, K=4):
    rng = np.random.default_rng(7)
    z = rng.normal(size=(N, K))
    y = {"class": rng.integers(0, K, size=N), "probability": rng.uniform(size=(N, K)), "real": rng.normal(size=(N, K))}[kind]
    return z, y


def _torch_reference(name, z, y):
    import torch
    import torch.nn.functional as F

    return {
        "softmax_ce": lambda: F.cross_entropy(z, y),
        "sigmoid_bce": lambda: F.binary_cross_entropy_with_logits(z, y),
        "identity_mse": lambda: F.mse_loss(z, y),
        "tanh_mse_chain": lambda: F.mse_loss(torch.tanh(z), y),
    }[name]()


@pytest.mark.parametrize("name", sorted(ADAPTER_HEADS))
def test_torch_loss_matches_plain_autograd_and_passes_gradchecks(name):
    torch = pytest.importorskip("torch", reason="torch (the test extra's CPU build) is not installed")
    import jacobians.torch

    build, kind = ADAPTER_HEADS[name]
    z0, y0 = _adapter_inputs(kind)
    y = torch.as_tensor(y0)
    f = jacobians.torch.loss(build())
    z = torch.tensor(z0, requires_grad=True)
    E, E_ref = f(z, y), _torch_reference(name, z, y)
    (g,) = torch.autograd.grad(E, z, create_graph=True)
    (g_ref,) = torch.autograd.grad(E_ref, z, create_graph=True)
    u = torch.randn_like(z)
    (hv,) = torch.autograd.grad(g, z, u)
    (hv_ref,) = torch.autograd.grad(g_ref, z, u)
    assert abs(float(E.detach() - E_ref.detach())) <= 1e-12 * max(1.0, abs(float(E_ref.detach())))
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-12) and torch.allclose(hv, hv_ref, rtol=0, atol=1e-12)
    H = torch.autograd.functional.hessian(lambda x: f(x, y), z.detach())
    H_ref = torch.autograd.functional.hessian(lambda x: _torch_reference(name, x, y), z.detach())
    assert torch.allclose(H, H_ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: f(x, y), (z,))
    assert torch.autograd.gradgradcheck(lambda x: f(x, y), (z,))


def test_torch_loss_with_reduction_none_backpropagates_each_row():
    torch = pytest.importorskip("torch", reason="torch (the test extra's CPU build) is not installed")
    import jacobians.torch

    f = jacobians.torch.loss(jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none")))
    z0, y0 = _adapter_inputs("class")
    z, y = torch.tensor(z0, requires_grad=True), torch.as_tensor(y0)
    w = torch.arange(1.0, 6.0, dtype=torch.float64)
    (g,) = torch.autograd.grad((f(z, y) * w).sum(), z)
    (g_ref,) = torch.autograd.grad((torch.nn.functional.cross_entropy(z, y, reduction="none") * w).sum(), z)
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-12)


def _jax_reference(name, z, y):
    import jax
    import jax.numpy as jnp

    return {
        "softmax_ce": lambda: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=-1)),
        "sigmoid_bce": lambda: jnp.mean(jax.nn.softplus(z) - y * z),
        "identity_mse": lambda: jnp.mean((z - y) ** 2),
        "tanh_mse_chain": lambda: jnp.mean((jnp.tanh(z) - y) ** 2),
    }[name]()


@pytest.mark.parametrize("name", sorted(ADAPTER_HEADS))
def test_jax_loss_matches_plain_autodiff_and_check_grads(name):
    jax = pytest.importorskip("jax", reason="jax (the test extra) is not installed")
    from jax.test_util import check_grads

    import jacobians.jax

    build, kind = ADAPTER_HEADS[name]
    z0, y0 = _adapter_inputs(kind)
    with jax.enable_x64(True):
        z, y = jax.numpy.asarray(z0), jax.numpy.asarray(y0)
        f = jacobians.jax.loss(build())
        g = jax.jit(jax.grad(f))(z, y)
        g_ref = jax.grad(lambda x: _jax_reference(name, x, y))(z)
        assert np.allclose(to_numpy(g), to_numpy(g_ref), rtol=0, atol=1e-12)
        H = jax.jit(jax.hessian(f))(z, y)
        H_ref = jax.hessian(lambda x: _jax_reference(name, x, y))(z)
        assert np.allclose(to_numpy(H), to_numpy(H_ref), rtol=0, atol=1e-12)
        # (check_grads's numerical side evaluates at numpy points: as JAX arrays, with y)
        check_grads(lambda x: f(jax.numpy.asarray(x), y), (z,), order=2, modes=("fwd", "rev"))


# -- confident rows and ties: entrywise, not normwise ------------------------------------------

CONFIDENT_HEADS = {
    "softmax+ce(none)": lambda: jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none")),
    "softmax+ce(smoothing, sum)": lambda: jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1, reduction="sum")),
    "softmax(T=2)+ce": lambda: jac.Head(jac.Softmax(temperature=2.0), jac.CrossEntropy()),
    "log_softmax+nll(none)": lambda: jac.Head(jac.LogSoftmax(), jac.NLLLoss(reduction="none")),
}


def _confident_rows(dtype_name):
    """Logits of ±1e4 with exact gaps (``1 − p_top`` about e^-gap, lost to a difference
    ``Σe − 1``), ties at the top (the target among them or not) and a flat row."""
    g = 12.0 if dtype_name == "float32" else 30.0
    z = np.array(
        [
            [1e4, 1e4 - g, -1e4, -1e4, -1e4],  # target: the confident top
            [1e4, 1e4 - g, -1e4, -1e4, -1e4],  # target: the runner-up
            [1e4, 1e4, 1e4 - g, -1e4, 0.0],  # a tie at the top, the target in it
            [1e4, 1e4, 1e4 - g, -1e4, 0.0],  # ... the target below it
            [-1e4] * 5,  # flat
            [0.0, -g, 3.0, 3.0, -2.0],
        ],
        dtype=dtype_name,
    )
    return z, np.array([0, 1, 0, 2, 3, 2])


@pytest.mark.parametrize(
    "name, dtype_name, label",
    [(n, dt, h) for n in NAMESPACES for dt in ("float64", "float32") for h in CONFIDENT_HEADS if n == "array_api_strict" or h == "softmax+ce(none)"],
)
def test_softmax_family_keeps_confident_rows_and_ties_entrywise(name, dtype_name, label):
    """value, gradient, Hessian blocks and their factor of the softmax family against numpy in float64,
    each entry to a few ulps of itself: ``1 − p_top`` and ``p_y − 1`` at a confident top
    (about e^-gap) keep their digits, ties at the top count each tied entry."""
    xp = array_namespace_named(name)
    head = CONFIDENT_HEADS[label]()
    z, y = _confident_rows(dtype_name)
    eps = float(np.finfo(dtype_name).eps)
    with jax_x64(name, dtype_name):
        zt = xp.asarray(z)
        value, grad = head.value_and_grad(zt, y)
        got = {"value": value, "grad": grad, "hessian": head.hessian(zt, y), "factor": head.sqrt_ggn(zt, y)}
        ref_value, ref_grad = head.value_and_grad(z.astype(np.float64), y)
        refs = {"value": ref_value, "grad": ref_grad, "hessian": np.asarray(head.hessian(z.astype(np.float64), y))}
        refs["factor"] = np.asarray(head.sqrt_ggn(z.astype(np.float64), y))
        for k, ref in refs.items():
            out, ref = to_numpy(got[k]), np.asarray(ref, np.float64)
            assert got[k].dtype == zt.dtype, k
            tol = 64 * eps * np.abs(ref) + np.finfo(np.float64).tiny
            bad = np.abs(out - ref) > tol
            assert not bad.any(), (k, out[bad], ref[bad])
