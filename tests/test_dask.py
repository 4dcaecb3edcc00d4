"""Dask arrays where numpy arrays go: every row-wise entry point gives lazy dask results
equal to the numpy path (to 2 ulp; the gradients and curvature blocks to the bit) on
unevenly chunked data (chunks of 1, 7 and many rows; batch axes (B, T, K); K split),
with the synchronous and threaded schedulers and on a LocalCluster of two worker
processes; global reductions; sampling independent of the chunking; clear errors; and a
40 GB Jacobian path on workers limited to 1 GiB."""

from __future__ import annotations

import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="the dask extra is not installed: python -m pip install -e '.[dask]'")
dask = pytest.importorskip("dask", reason="the dask extra is not installed: python -m pip install -e '.[dask]'")
distributed = pytest.importorskip("distributed", reason="the dask extra is not installed: python -m pip install -e '.[dask]'")

from conftest import fit_shape, head_methods, head_targets, loss_hessian_indefinite, make_head_logits  # noqa: E402

import jacobians as jac  # noqa: E402

SHAPE = (3, 9, 5)  # (B, T, K)
CHUNKS = ((1, 2), (1, 7, 1), (2, 3))  # rows of 1 and 7, K split in two


@pytest.fixture(params=["synchronous", "threads"])
def scheduler(request):
    with dask.config.set(scheduler=request.param):
        yield request.param


@pytest.fixture
def synchronous():
    """The registry walks run on the synchronous scheduler; a few tests run on both."""
    with dask.config.set(scheduler="synchronous"):
        yield


def _ulps(actual, expected, block_axes: int = 0) -> float:
    """Largest error in units of the last place of the expected entry — or, with
    ``block_axes``, of the largest entry of each trailing block of that many axes (a row's
    vector or matrix: entries that cancel to nearly 0 have no meaningful ulp of their own)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape, actual.dtype)
    size = np.abs(expected)
    if block_axes:
        axes = tuple(range(expected.ndim - block_axes, expected.ndim))
        size = np.broadcast_to(size.max(axis=axes, keepdims=True), expected.shape)
    spacing = np.spacing(size.astype(expected.dtype)).astype(np.float64)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    return float(np.max(err / np.maximum(spacing, np.finfo(expected.dtype).smallest_subnormal), initial=0.0))


def _lazy(x):
    assert type(x).__module__.startswith("dask"), type(x)
    return x.compute()


def _dask(x, chunks=CHUNKS):
    return da.from_array(x, chunks=chunks[: x.ndim])


def _targets(y):
    """y as a dask array with the rows chunked (and a K axis, if any, whole: a split one is an error)."""
    y = np.asarray(y)
    return da.from_array(y, chunks=CHUNKS[:2] + ((y.shape[-1],) if y.ndim == 3 else ()))


def _walk_shape(obj):
    """SHAPE and CHUNKS for a registered object: K rounded up to the width it needs
    (``[means | variances]``: even), still split in two chunks."""
    shape = fit_shape(SHAPE, obj)
    K = shape[-1]
    return shape, CHUNKS[:2] + ((2, K - 2),)


PAIRS = [pytest.param(p, id=f"{p.activation}+{p.loss}") for p in jac.pairs()]


def test_import_jacobians_does_not_import_dask():
    code = "import sys, jacobians; print('dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("act", [pytest.param(cls(), id=name) for name, cls in jac.ACTIVATIONS.items()])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activations(act, dtype, synchronous, rng):
    shape, chunks = _walk_shape(act)
    z = rng.normal(size=shape).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    zd, gd = _dask(z, chunks), _dask(g, chunks)
    assert _ulps(_lazy(act(zd)), act(z)) == 0
    assert _ulps(_lazy(act.jacobian(zd)), act.jacobian(z)) == 0
    for method in ("vjp", "jvp", "hessian_vjp"):
        fn = getattr(act, method)
        assert _ulps(_lazy(fn(zd, gd)), fn(z, g)) == 0, method
        assert _ulps(_lazy(fn(zd, g)), fn(z, g)) == 0, method  # a numpy g with a dask z
    J = act.jacobian(z)
    assert _ulps(_lazy(jac.contract(gd, _dask(J, chunks + (shape[-1:],)))), jac.contract(g, J)) == 0


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_heads_every_method(pair, dtype, synchronous, rng):
    """Every method and reduction, with numpy and dask targets: gradients to the bit, values
    to 2 ulp (reduced values are 0-d dask arrays)."""
    acls, lcls = jac.get_activation(pair.activation), jac.get_loss(pair.loss)
    shape, chunks = _walk_shape(jac.Head(acls(), lcls()))
    z = make_head_logits(jac.Head(acls(), lcls()), rng, shape, dtype=dtype)
    zd = _dask(z, chunks)
    lazy, expected = [], []
    for reduction in ("mean", "sum", "none"):
        head = jac.Head(acls(), lcls(reduction=reduction))
        y = head_targets(head, rng, shape, dtype)
        for y_in in (y, _targets(y)):
            for m in head_methods(head):
                vd, gd = head.value_and_grad(zd, y_in, m)
                assert reduction == "none" or vd.ndim == 0
                value, grad = head.value_and_grad(z, y, m)
                lazy += [gd, vd]
                expected += [(grad, 0), (np.asarray(value), 2)]
            lazy += [head.loss(zd, y_in), head.grad(zd, y_in)]
            expected += [(np.asarray(head.loss(z, y)), 2), (head.grad(z, y), 0)]
    for got, (want, ulps) in zip(dask.compute(*lazy), expected):
        assert _ulps(got, want) <= ulps


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_second_order(pair, dtype, synchronous, rng):
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    shape, chunks = _walk_shape(head)
    z = make_head_logits(head, rng, shape, dtype=dtype)
    y = head_targets(head, rng, shape, dtype)
    v = rng.normal(size=shape).astype(dtype)
    zd, yd, vd = _dask(z, chunks), _targets(y), _dask(v, chunks)
    assert _ulps(_lazy(head.hessian(zd, yd)), head.hessian(z, y)) == 0
    assert _ulps(_lazy(head.hvp(zd, yd, vd)), head.hvp(z, y, v)) == 0
    assert _ulps(_lazy(head.ggn(zd, yd)), head.ggn(z, y)) == 0
    if loss_hessian_indefinite(head, z, y):  # no real factor (Gaussian NLL in (μ, σ²)): refused on both
        for zz, yy in ((z, y), (zd, yd)):
            with pytest.raises(ValueError, match="indefinite"):
                dask.compute(head.sqrt_ggn(zz, yy))
    else:
        assert _ulps(_lazy(head.sqrt_ggn(zd, yd)), head.sqrt_ggn(z, y)) == 0
    assert _ulps(_lazy(head.fisher(zd, yd, "empirical")), head.fisher(z, y, "empirical")) == 0
    if getattr(head.loss_fn, "predictive", None) is not None and not head.logits_loss:
        assert _ulps(_lazy(head.fisher(zd, yd)), head.fisher(z, y)) == 0
        assert _ulps(_lazy(head.fisher(zd)), head.fisher(z)) == 0
        S = head.sqrt_ggn_sampled(z, 4, seed=11, y=y)
        assert _ulps(_lazy(head.sqrt_ggn_sampled(zd, 4, seed=11, y=yd)), S, block_axes=2) <= 2
        # S Sᵀ of factors within 2 ulp of the block's scale: 2·2 ulp from the factors, plus the
        # rounding of the 4-term sums (softmax + poisson_nll's float32 draws reached 5 with numba)
        assert _ulps(_lazy(head.fisher(zd, yd, "mc", mc_samples=4, seed=11)),
                     head.fisher(z, y, "mc", mc_samples=4, seed=11), block_axes=2) <= 6


@pytest.mark.parametrize("method", ["fused", "vjp", "jacobian"])
def test_on_both_schedulers(method, scheduler, rng):
    head = jac.Head(jac.Softmax(temperature=0.7), jac.CrossEntropy(label_smoothing=0.1, weight=np.linspace(0.5, 2, 5)))
    z = rng.normal(size=SHAPE)
    y = rng.integers(0, 5, size=SHAPE[:2])
    zd, yd = _dask(z), _targets(y)
    value, grad = head.value_and_grad(zd, yd, method)
    assert _ulps(_lazy(grad), head.grad(z, y, method)) == 0
    assert _ulps(_lazy(value), np.asarray(head.value_and_grad(z, y, method)[0])) <= 2
    assert _ulps(_lazy(head.hessian(zd, yd)), head.hessian(z, y)) == 0
    assert _ulps(_lazy(head.sqrt_ggn_sampled(zd, 3, seed=1, y=yd)), head.sqrt_ggn_sampled(z, 3, seed=1, y=y), 2) <= 2
    act = jac.Sparsemax()
    assert _ulps(_lazy(act.jacobian(zd)), act.jacobian(z)) == 0


def test_mean_is_global_with_weights_and_ignored_rows(scheduler, rng):
    """'mean' divides by the summed weights of the whole batch's targets not ignored."""
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(weight=np.linspace(0.5, 3, 5), ignore_index=-1))
    z = rng.normal(size=(40, 5))
    y = rng.integers(0, 5, size=40)
    y[::3] = -1
    zd = da.from_array(z, chunks=((1, 7, 30, 2), 5))
    value, grad = head.value_and_grad(zd, y)
    assert _ulps(value.compute(), np.asarray(head.loss(z, y))) <= 2
    assert _ulps(grad.compute(), head.grad(z, y)) == 0
    loss = jac.CrossEntropy(weight=np.linspace(0.5, 3, 5))
    a = jac.Softmax()(z)
    assert _ulps(_lazy(loss.grad(da.from_array(a, chunks=(7, 5)), y.clip(0))), loss.grad(a, y.clip(0))) == 0
    assert _ulps(_lazy(loss.value(da.from_array(a, chunks=(7, 5)), y.clip(0))), np.asarray(loss.value(a, y.clip(0)))) <= 2
    assert _ulps(_lazy(loss.hessian(da.from_array(a, chunks=(7, 5)), y.clip(0))), loss.hessian(a, y.clip(0))) == 0


@pytest.mark.parametrize("loss", [pytest.param(jac.CrossEntropy(), id="plain"),
                                  pytest.param(jac.CrossEntropy(weight=np.linspace(0.5, 3, 5), ignore_index=-1), id="weighted")])
def test_the_mean_denominator_comes_from_the_targets_alone(loss, scheduler, monkeypatch, rng):
    """A class loss's 'mean' denominator is N from the shapes (no weights, no ignore_index) or
    is summed from y alone: the softmax is not computed for it (the fused gradient and the
    closed-form Hessian blocks never call the activation)."""
    calls = []
    forward = jac.Softmax.forward
    monkeypatch.setattr(jac.Softmax, "forward", lambda self, z: calls.append(z.shape) or forward(self, z))
    head = jac.Head(jac.Softmax(), loss)
    z = rng.normal(size=(40, 5))
    y = rng.integers(0, 5, size=40)
    y[::3] = -1 if loss.ignore_index is not None else y[::3]
    zd = da.from_array(z, chunks=((1, 7, 30, 2), 5))
    H = head.hessian(z, y)
    for y_in in (y, da.from_array(y, chunks=13)):
        calls.clear()
        value, grad, H_dask = dask.compute(*head.value_and_grad(zd, y_in), head.hessian(zd, y_in))
        assert calls == []  # not even on dask's meta arrays when the graph is built
        assert _ulps(grad, head.grad(z, y)) == 0
        assert _ulps(value, np.asarray(head.loss(z, y))) <= 2
        assert _ulps(H_dask, H) == 0
    if loss.ignore_index is None:  # N, known from the shapes: no reduction in the graph
        assert not any(k.startswith(("one-", "fsum-")) for k in dict(head.grad(zd, y).__dask_graph__().layers))


@pytest.mark.parametrize("loss", [jac.CrossEntropy(), jac.MeanSquaredError(),
                                  jac.CrossEntropy(weight=np.linspace(0.5, 3, 5), ignore_index=-1)], ids=str)
def test_a_loss_with_its_own_denominator_keeps_it(loss, synchronous, rng):
    """``loss.with_denominator(d)`` divides by d on dask arrays too, not by the batch's own."""
    z = rng.normal(size=(12, 5))
    y = rng.integers(0, 5, size=12) if not isinstance(loss, jac.MeanSquaredError) else rng.normal(size=(12, 5))
    head = jac.Head(jac.Softmax(), loss.with_denominator(37.0))
    zd = da.from_array(z, chunks=((1, 7, 4), 5))
    assert _ulps(_lazy(head.grad(zd, y)), head.grad(z, y)) == 0
    assert _ulps(_lazy(head.loss(zd, y)), np.asarray(head.loss(z, y))) <= 2
    assert _ulps(_lazy(head.hessian(zd, y)), head.hessian(z, y)) == 0
    assert not np.allclose(head.grad(z, y), jac.Head(jac.Softmax(), loss).grad(z, y))  # 37 is not the batch's


def test_sampling_does_not_depend_on_the_chunking(rng):
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy())
    z = rng.normal(size=(4, 6, 3))
    ref = head.sqrt_ggn_sampled(z, 3, seed=5)
    for chunks in (((4,), (6,), (3,)), ((1, 3), (2, 4), (3,)), ((1, 1, 1, 1), (1,) * 6, (1, 2))):
        S = head.sqrt_ggn_sampled(da.from_array(z, chunks=chunks), 3, seed=5)
        np.testing.assert_array_equal(S.compute(), ref)


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher", "fisher_mc", "empirical_fisher"])
def test_last_layer(structure, kind, rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1))
    X = rng.normal(size=(3, 9, 4))
    z = rng.normal(size=(3, 9, 5))
    y = rng.integers(0, 5, size=(3, 9))
    kw = {"kind": kind, "structure": structure, "mc_samples": 3, "seed": 2}
    ref = jac.linear_curvature(X, head, z, y, **kw)
    out = jac.linear_curvature(da.from_array(X, chunks=((1, 2), (1, 7, 1), (4,))), head, _dask(z), y, **kw)
    if structure == "kron":
        np.testing.assert_allclose(_lazy(out.A), ref.A, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(_lazy(out.B), ref.B, rtol=1e-13, atol=1e-16)
    else:
        assert out.ndim == ref.ndim  # a small dask array: the sum over rows in a tree
        np.testing.assert_allclose(_lazy(out), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_lazy(jac.linear_gradient(X, head, _dask(z), y)), jac.linear_gradient(X, head, z, y),
                               rtol=1e-13, atol=1e-16)


def test_errors(rng):
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    z = da.from_array(rng.normal(size=(10, 4)), chunks=(3, 4))
    unknown = z[z[:, 0] > 0]  # boolean indexing: NaN chunk sizes
    with pytest.raises(ValueError, match=r"z has unknown chunk sizes \(NaN\).*compute_chunk_sizes\(\)"):
        head.grad(unknown, np.zeros(5, int))
    with pytest.raises(ValueError, match=r"y must have shape \(10,\) \(one per row\)"):
        head.grad(z, np.zeros(9, int))
    soft = da.from_array(np.full((10, 4), 0.25), chunks=(5, 2))
    with pytest.raises(ValueError, match=r"y is split across chunks along its last axis.*rechunk"):
        head.grad(z, soft)
    with pytest.raises(TypeError, match="out= is a numpy buffer"):
        jac.Softmax().jacobian(z, out=np.empty((10, 4, 4)))
    with pytest.raises(TypeError, match="hessian_operator holds numpy arrays"):
        head.hessian_operator(z, np.zeros(10, int))
    with pytest.raises(ValueError, match="no negative log-likelihood"):
        jac.Head(jac.Identity(), jac.MeanAbsoluteError()).sqrt_ggn_sampled(z)


# -- a real cluster -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_client():
    """Two worker processes of one thread each, started and closed inside the test run."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="1GiB", silence_logs=40) as cluster, Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_on_a_local_cluster(cluster_client, rng):
    head = jac.Head(jac.Softmax(temperature=2.0), jac.CrossEntropy(label_smoothing=0.1))
    z = rng.normal(size=(200, 7))
    y = rng.integers(0, 7, size=200)
    zd = da.from_array(z, chunks=(37, 7))
    for m in ("fused", "vjp", "jacobian"):
        v, g = head.value_and_grad(zd, y, m)
        v, g = cluster_client.compute([v, g], sync=True)
        # the same method on numpy to the bit; the fused value (head.loss) a few ulp away, as the
        # methods' values are computed differently (up to 3 ulp apart with the numba kernels here)
        assert _ulps(g, head.grad(z, y, m)) == 0 and v == head.value_and_grad(z, y, m)[0]
        assert _ulps(v, np.asarray(head.loss(z, y))) <= 4
    H = cluster_client.compute(head.hessian(zd, y), sync=True)
    assert _ulps(H, head.hessian(z, y)) == 0
    S = cluster_client.compute(head.sqrt_ggn_sampled(zd, 5, seed=3), sync=True)
    np.testing.assert_array_equal(S, head.sqrt_ggn_sampled(z, 5, seed=3))
    X = rng.normal(size=(200, 3))
    G = cluster_client.compute(jac.linear_curvature(da.from_array(X, chunks=(37, 3)), head, zd, y), sync=True)
    np.testing.assert_allclose(G, jac.linear_curvature(X, head, z, y), rtol=1e-12, atol=1e-16)


@pytest.mark.slow
def test_a_40_gb_jacobian_path_on_workers_of_1_gib(cluster_client):
    """500,000 × 100 logits drawn lazily: the dense Jacobians would take 40 GB; the workers,
    limited to 1 GiB each, never go above it (their own memory reports), and the result is
    the fused gradient."""
    N, K = 500_000, 100
    z = da.random.RandomState(0).normal(size=(N, K), chunks=(12_500, K))
    y = da.random.RandomState(1).randint(0, K, size=N, chunks=12_500)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    g = head.grad(z, y, method="jacobian", max_bytes=64 << 20)
    diff = abs(g - head.grad(z, y, method="fused")).max()
    before = cluster_client.run(lambda dask_worker: dask_worker.monitor.count)
    assert float(cluster_client.compute(diff, sync=True)) < 1e-15
    limit = 1 << 30
    peaks = cluster_client.run(
        lambda dask_worker, start=None: max(dask_worker.monitor.quantities["memory"], default=0))
    assert len(peaks) == 2 and before
    assert all(0 < peak <= limit for peak in peaks.values()), peaks


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_last_layer_casts_the_features_like_z(structure, rng):
    """float64 features with float32 logits: numpy casts the features to z's dtype, so Dask must
    too (it returned float64 linear_gradient and Kron B)."""
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    X = rng.normal(size=(3, 9, 4))
    z = rng.normal(size=(3, 9, 5)).astype(np.float32)
    y = rng.integers(0, 5, size=(3, 9))
    Xd = da.from_array(X, chunks=((1, 2), (4, 5), (4,)))
    ref = jac.linear_curvature(X, head, z, y, structure=structure)
    out = jac.linear_curvature(Xd, head, _dask(z), y, structure=structure)
    for r, o in zip(ref if structure == "kron" else [ref], out if structure == "kron" else [out]):
        assert r.dtype == np.float32
        assert o.dtype == np.float32, "lazy dtype"
        computed = _lazy(o)
        assert computed.dtype == np.float32
        np.testing.assert_allclose(computed, r, rtol=2e-5, atol=1e-7)
    G = jac.linear_gradient(Xd, head, _dask(z), y)
    assert jac.linear_gradient(X, head, z, y).dtype == np.float32
    assert G.dtype == np.float32 and _lazy(G).dtype == np.float32
    np.testing.assert_allclose(_lazy(G), jac.linear_gradient(X, head, z, y), rtol=2e-5, atol=1e-7)


def test_a_denominator_read_from_the_values_is_summed_over_the_chunks(synchronous, rng):
    """``denominator_from_targets = False``: ``mean_denominator`` is given each chunk's own
    ``a`` (the activation's output, not a stand-in) and the chunks' counts are added."""

    class Counted(jac.MeanSquaredError):
        denominator_from_targets = False
        seen: ClassVar[list] = []  # on the class: dask copies what a closure holds

        def mean_denominator(self, a, y=None):
            type(self).seen.append(np.shape(a)[:-1] if np.all(np.asarray(a) > 0) else "zeros")
            return int(np.count_nonzero(np.asarray(a) > 0))  # N·K, read from the values

    head = jac.Head(jac.Softmax(), Counted())
    z, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    zd = da.from_array(z, chunks=((1, 7, 4), 5))
    ref = jac.Head(jac.Softmax(), jac.MeanSquaredError())
    assert _ulps(_lazy(head.grad(zd, y)), ref.grad(z, y)) == 0
    assert {(1,), (7,), (4,)} <= set(Counted.seen) and "zeros" not in Counted.seen  # each chunk's own a
    assert _ulps(_lazy(head.loss(zd, y)), np.asarray(ref.loss(z, y))) <= 2
