"""'mean' over nothing, one rule on every path (docs/concepts.md, "An empty batch").

An empty batch, or a class loss with every target ignored: the denominator of ``'mean'`` is
0. The value is NaN and every derivative is 0, each row's share ``c·∇ℓ_n`` taken with ``c = 0`` (what
torch 2.13 gives: ``cross_entropy`` of nothing, or of every row ignored, is nan and its
autograd gradient — in z and through a linear layer in W — is 0). Every such call warns, with
jacobians' own ``EmptyMeanWarning`` (a RuntimeWarning). ``'sum'`` of nothing is 0,
``'none'`` gives empty arrays, both silently. The tests walk every pair of the registry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import REDUCTIONS, head_methods, head_targets, make_loss, pair_options

import jacobians as jac

EmptyMeanWarning = jac.EmptyMeanWarning

K, D = 4, 3

PAIRS = []
for p in jac.pairs():
    acls, lcls = jac.get_activation(p.activation), jac.get_loss(p.loss)
    opts = pair_options(acls, lcls, K)
    if opts:
        aopt, lopt = opts[0]
        PAIRS.append(pytest.param(acls, aopt, lcls, lopt, id=f"{p.activation}+{p.loss}"))


def _head(acls, aopt, lcls, lopt, reduction):
    return jac.Head(acls(**aopt), make_loss(lcls, lopt, K, reduction))


def _empty_targets(head, rng, dtype):
    y = head_targets(head, rng, (2, K), dtype)
    return y[:0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("acls", "aopt", "lcls", "lopt"), PAIRS)
def test_every_head_on_an_empty_batch(acls, aopt, lcls, lopt, reduction, dtype, rng):
    head = _head(acls, aopt, lcls, lopt, reduction)
    z, y = np.zeros((0, K), dtype), _empty_targets(head, rng, dtype)
    for method in head_methods(head):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value, grad = head.value_and_grad(z, y, method=method)
        ours = [w for w in caught if issubclass(w.category, EmptyMeanWarning)]
        others = [w for w in caught if not issubclass(w.category, EmptyMeanWarning)]
        assert not others, [str(w.message) for w in others]  # nothing from inside numpy
        assert grad.shape == (0, K) and grad.dtype == dtype
        if reduction == "mean":
            assert np.isnan(value) and len(ours) == 1, (method, len(ours))  # one warning a call
            assert "denominator is 0" in str(ours[0].message)
            assert ours[0].filename == __file__  # the warning points at the caller
        else:
            assert not ours
            assert value == 0 if reduction == "sum" else np.shape(value)[0] == 0
    if reduction == "none":
        return
    X = np.zeros((0, D), dtype)

    def once(call, *args, **kwargs):
        """``call(*args, **kwargs)``, with exactly one EmptyMeanWarning ('mean') or none
        ('sum'), and nothing else."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = call(*args, **kwargs)
        expected = [EmptyMeanWarning] if reduction == "mean" else []
        assert [w.category for w in caught] == expected, (call.__name__, kwargs, [str(w.message) for w in caught])
        return out

    G = once(jac.linear_gradient, X, head, z, y)
    assert G.shape == (K, D + 1) and G.dtype == dtype and not G.any()
    kinds = ["hessian"] if head.loss_fn.predictive is None or head.logits_loss else ["hessian", "fisher", "fisher_mc"]
    for kind in kinds:
        full = once(jac.linear_curvature, X, head, z, y, kind=kind)
        diag = once(jac.linear_curvature, X, head, z, y, kind=kind, structure="diag")
        A, B = once(jac.linear_curvature, X, head, z, y, kind=kind, structure="kron")
        P = K * (D + 1)
        assert full.shape == (P, P) and diag.shape == (K, D + 1) and A.shape == (K, K) and B.shape == (D + 1, D + 1)
        for part in (full, diag, A, B):
            assert part.dtype == dtype and not part.any(), kind  # zeros, no NaN


@pytest.mark.parametrize("method", ["fused", "vjp", "jacobian"])
def test_every_target_ignored(method, rng):
    """Rows that all count nothing: value nan (warned), gradients and curvature 0, as torch."""
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(ignore_index=-1))
    z, y = rng.normal(size=(5, K)), np.full(5, -1)
    with pytest.warns(EmptyMeanWarning, match="every target ignored"):
        value, grad = head.value_and_grad(z, y, method=method)
    assert np.isnan(value)
    np.testing.assert_array_equal(grad, np.zeros_like(z))
    X = rng.normal(size=(5, D))
    with pytest.warns(EmptyMeanWarning):
        np.testing.assert_array_equal(jac.linear_gradient(X, head, z, y), np.zeros((K, D + 1)))
    with pytest.warns(EmptyMeanWarning):
        np.testing.assert_array_equal(jac.linear_curvature(X, head, z, y), np.zeros((K * (D + 1),) * 2))
    with pytest.warns(EmptyMeanWarning):
        np.testing.assert_array_equal(head.hessian(z, y), np.zeros((5, K, K)))
    # one row that counts: the usual mean over it, no warning
    y[2] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = head.value_and_grad(z, y, method=method)
    p = jac.Softmax()(z[2])
    assert value == pytest.approx(-np.log(p[1]), rel=1e-13)
    np.testing.assert_allclose(grad[2], p - np.eye(K)[1], rtol=1e-13, atol=1e-16)


def test_on_dask(rng):
    da = pytest.importorskip("dask.array", reason="the dask extra")
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    z, y, X = da.zeros((0, K), chunks=(1, K)), da.zeros(0, dtype=int, chunks=1), da.zeros((0, D), chunks=(1, D))
    with pytest.warns(EmptyMeanWarning):
        assert np.isnan(head.loss(z, y).compute())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyMeanWarning)  # seen above; here: the numbers
        assert not jac.linear_gradient(X, head, z, y).compute().any()
        for structure in ("full", "diag"):
            out = jac.linear_curvature(X, head, z, y, structure=structure).compute()
            assert out.size and not out.any()
        kron = jac.linear_curvature(X, head, z, y, structure="kron")
        assert not kron.A.compute().any() and not kron.B.compute().any()


@pytest.mark.parametrize("name", sorted(jac.ACTIVATIONS))
def test_every_activation_on_an_empty_batch(name):
    """Row-wise maps of no rows: empty results of the right shape (α-entmax's τ solve raised
    numpy's 'zero-size array to reduction operation maximum')."""
    act = jac.get_activation(name)()
    z = np.zeros((0, K))
    assert act(z).shape == (0, K)
    assert act.jacobian(z).shape == (0, K, K)
    assert act.vjp(z, z).shape == (0, K) and act.jvp(z, z).shape == (0, K)
    op = act.jacobian_operator(z)
    assert (z @ op).shape == (0, K) and (op @ z).shape == (0, K) and op.dense().shape == (0, K, K)


def test_every_target_ignored_on_dask(rng):
    """The denominator summed lazily from the targets is 0: the curvature is 0 without a
    division by zero inside dask (the suite turns numpy's warnings into errors)."""
    da = pytest.importorskip("dask.array", reason="the dask extra")
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(ignore_index=-1))
    z, y = da.from_array(rng.normal(size=(3, K)), chunks=(1, K)), da.from_array(np.full(3, -1), chunks=1)
    X = da.from_array(rng.normal(size=(3, D)), chunks=(1, D))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyMeanWarning)  # ours is expected; numpy's would fail
        for structure in ("full", "diag"):
            assert not jac.linear_curvature(X, head, z, y, structure=structure).compute().any()
        assert not jac.linear_curvature(X, head, z, y, structure="kron").A.compute().any()
        assert not head.grad(z, y).compute().any()
