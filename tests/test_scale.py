"""Scale and the fast paths: every way of building or applying a Jacobian gives the same
numbers as the plain one.

* dense Jacobians: threaded (``workers``), into ``out=``, through the operator, in row
  blocks — against ``workers=1`` and, for softmax, a per-sample closed-form loop;
* structured operators: ``.dense``, ``.diagonal()``, ``op @ v``, ``g @ op``, ``op[rows]``,
  ``.nbytes`` — against the dense array;
* ``head.grad(method='jacobian', max_bytes=...)`` in blocks and threads — against
  ``contract(dE/da, J)`` with the whole J;
* the exp-without-shift fast path and the BCE kernel — against long-double / log1p references;
* memory: a 20,000×256 batch (10 GiB dense) in a subprocess under 1 GiB of peak RSS.

No timing is asserted anywhere.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import activation_cases, head_methods, head_targets, make_head_logits, peak_rss

import jacobians as jac
from jacobians import head as head_module
from jacobians._kernels import numpy_impl
from jacobians.numerics import buffers, parallel
from jacobians.numerics import softmax as nsoftmax

ACTIVATIONS = activation_cases()
# pairs with a Jacobian path (a Fenchel–Young loss of its own mapping's logits has none)
JACOBIAN_PAIRS = [
    pytest.param(p, id=f"{p.activation}+{p.loss}")
    for p in jac.pairs()
    if "jacobian" in head_methods(jac.Head(jac.get_activation(p.activation)(), jac.get_loss(p.loss)()))
]

N_BIG, K_BIG = 300, 72


@pytest.fixture(params=["default", "small"])
def blocks(request, monkeypatch):
    """Run with the toolkit's block sizes, and again with tiny ones so that these sizes
    cross every threshold many times: threads (PARALLEL_MIN_BYTES), the blocked dense
    build (DENSE_BLOCK_BYTES), the chunked VJPs (CHUNK_ENTRIES; the numba kernels' CHUNK)
    and the per-thread blocks of method='jacobian' (JACOBIAN_BLOCK_BYTES)."""
    if request.param == "small":
        monkeypatch.setattr(buffers, "CHUNK_ENTRIES", 1000)
        monkeypatch.setattr(numpy_impl, "DENSE_BLOCK_BYTES", 64 << 10)
        if jac.kernels() == "numba":
            from jacobians._kernels import numba_impl

            monkeypatch.setattr(numba_impl, "CHUNK", 300)
        monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 64 << 10)
        monkeypatch.setattr(head_module, "PARALLEL_MIN_BYTES", 64 << 10)
        monkeypatch.setattr(head_module, "JACOBIAN_BLOCK_BYTES", 256 << 10)
    return request.param


def test_sizes_cross_the_thresholds():
    dense = N_BIG * K_BIG * K_BIG * 8
    assert dense > parallel.PARALLEL_MIN_BYTES
    assert dense > 2 * numpy_impl.DENSE_BLOCK_BYTES
    assert dense > head_module.JACOBIAN_BLOCK_BYTES
    assert N_BIG * K_BIG > 2 * 1000


def _readonly(x):
    x = np.array(x)
    x.setflags(write=False)
    return x


def _tol(dtype):
    return dict(rtol=0, atol=32 * np.finfo(dtype).eps) if dtype == np.float32 else dict(rtol=0, atol=1e-14)


# -- dense: threaded, out=, operator --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_paths_agree(act, dtype, rng, blocks):
    z = _readonly((rng.normal(size=(N_BIG, K_BIG)) * 2).astype(dtype))
    z_before = z.copy()
    plain = act.jacobian(z, workers=1)
    assert plain.shape == (N_BIG, K_BIG, K_BIG) and plain.dtype == dtype
    threaded = act.jacobian(z, workers=2)
    default = act.jacobian(z)
    buf = np.full((N_BIG, K_BIG, K_BIG), np.nan, dtype=dtype)
    into = act.jacobian(z, out=buf, workers=2)
    assert into is buf
    op = act.jacobian_operator(z)
    buf2 = np.full_like(buf, np.nan)
    from_op = op.dense(out=buf2, workers=3)
    for other in (threaded, default, into, from_op, op.dense()):
        np.testing.assert_array_equal(other, plain)  # same kernels on the same rows: bitwise
    np.testing.assert_array_equal(z, z_before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_dense_matches_a_per_sample_loop(dtype, rng):
    z = (rng.normal(size=(N_BIG, K_BIG)) * 3).astype(dtype)
    J = jac.Softmax().jacobian(z)
    z64 = z.astype(np.float64)
    for n in range(0, N_BIG, 37):
        e = np.exp(z64[n] - z64[n].max())
        s = e / e.sum()
        np.testing.assert_allclose(J[n], np.diagflat(s) - np.outer(s, s), **_tol(dtype))


@pytest.mark.parametrize("act", [jac.Softmax(), jac.Sigmoid(), jac.LogSoftmax()], ids=lambda a: type(a).__name__)
def test_out_is_checked(act):
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match="shape"):
        act.jacobian(z, out=np.empty((4, 3, 2)))
    with pytest.raises(TypeError, match="dtype"):
        act.jacobian(z, out=np.empty((4, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        act.jacobian(z, out=np.empty((4, 3, 6))[..., ::2])
    with pytest.raises(TypeError):
        act.jacobian(z, out=[[0.0]])
    ro = np.empty((4, 3, 3))
    ro.setflags(write=False)
    with pytest.raises(ValueError):
        act.jacobian(z, out=ro)
    with pytest.raises(ValueError, match="workers"):
        act.jacobian(z, workers=0)


# -- operators --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_operator_matches_its_dense_form(act, dtype, rng, blocks):
    shape = (3, 100, K_BIG)  # batch axes
    z = _readonly((rng.normal(size=shape) * 2).astype(dtype))
    v = _readonly(rng.normal(size=shape).astype(dtype))
    g = _readonly(rng.normal(size=shape).astype(dtype))
    op = act.jacobian_operator(z)
    J = act.jacobian(z).astype(np.float64)
    assert op.shape == J.shape and op.dtype == dtype
    assert op.nbytes <= 3 * z.nbytes < op.dense_nbytes  # O(N·K), not O(N·K²)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    # round-off scales with the terms the products add up (α-entmax's J is unbounded for α > 2)
    terms = max(1.0, float(np.einsum("...ij,...j->...i", np.abs(J), np.abs(v)).max()),
                float(np.einsum("...i,...ij->...j", np.abs(g), np.abs(J)).max()))
    tol["atol"] *= terms
    np.testing.assert_allclose(op.diagonal(), np.einsum("...jj->...j", J), **tol)
    jvp, vjp = op @ v, g @ op
    assert jvp.dtype == dtype and vjp.dtype == dtype
    np.testing.assert_allclose(jvp, np.einsum("...ij,...j->...i", J, v.astype(np.float64)), **tol)
    np.testing.assert_allclose(vjp, np.einsum("...i,...ij->...j", g.astype(np.float64), J), **tol)
    np.testing.assert_allclose(act.vjp(z, g), vjp, **tol)
    np.testing.assert_allclose(act.jvp(z, v), jvp, **tol)
    np.testing.assert_allclose(jac.contract(g, op), vjp, **tol)
    flat = J.reshape(-1, K_BIG, K_BIG)
    part = op[50:170]
    assert part.shape == (120, K_BIG, K_BIG)
    np.testing.assert_allclose(part.dense(), flat[50:170], **tol)


# -- head.grad(method='jacobian') in blocks ------------------------------------------------------------


@pytest.mark.parametrize("pair", JACOBIAN_PAIRS)
def test_blocked_jacobian_method_matches_the_whole_jacobian(pair, rng, blocks):
    head = jac.Head(jac.get_activation(pair.activation)(), jac.get_loss(pair.loss)())
    z = _readonly(make_head_logits(head, rng, (N_BIG, K_BIG)))  # σ² > 0 where z is [μ | σ²]
    y = head_targets(head, rng, z.shape)
    a = head.activation(z)
    dE_da = head.loss_fn.grad(a, y)
    reference = np.einsum("ij,ijk->ik", dE_da, head.activation.jacobian(z, workers=1))
    row = K_BIG * K_BIG * 8
    for max_bytes, workers in [(None, None), (None, 1), (5 * row, 1), (7 * row, 2), (row // 2, 2), (10**12, 3)]:
        g = head.grad(z, y, method="jacobian", max_bytes=max_bytes, workers=workers)
        np.testing.assert_allclose(g, reference, rtol=1e-12, atol=1e-15, err_msg=f"{max_bytes=} {workers=}")
    # batch axes and float32 go through the same blocks
    z3 = z.reshape(3, 100, K_BIG).astype(np.float32)
    y3 = head_targets(head, rng, z3.shape, np.float32)
    g3 = head.grad(z3, y3, method="jacobian", max_bytes=9 * row // 2)
    assert g3.shape == z3.shape and g3.dtype == np.float32
    np.testing.assert_allclose(g3, head.grad(z3, y3, method="jacobian", max_bytes=10**12), rtol=1e-5, atol=1e-7)


def test_max_bytes_is_checked():
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_bytes"):
            head.grad(np.zeros((2, 3)), np.array([0, 1]), method="jacobian", max_bytes=bad)


# -- exp without the max shift ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unshifted_exp_is_used_only_when_exact(dtype):
    bound = nsoftmax.EXP_SAFE_BOUND[np.dtype(dtype)]
    assert nsoftmax.exp_is_safe(np.array([[-bound, bound]], dtype=dtype))
    for bad in (bound * 1.01, -bound * 1.01, np.inf, -np.inf, np.nan):
        assert not nsoftmax.exp_is_safe(np.array([[0.0, bad]], dtype=dtype))
    assert not nsoftmax.exp_is_safe(np.zeros((0, 3), dtype=dtype))
    # at the bound, exp and a sum over many entries stay finite and normal
    with np.errstate(all="raise"):
        e = np.exp(np.array([bound, -bound], dtype=dtype))
        assert np.isfinite(e[0] * 1e6) and e[1] >= np.finfo(dtype).tiny


def _long_double_references(z, y):
    zl = z.astype(np.longdouble)
    el = np.exp(zl - zl.max(axis=-1, keepdims=True))
    s = el / el.sum(axis=-1, keepdims=True)
    rows = np.arange(z.shape[0])
    ce = np.log(el.sum(axis=-1)) + zl.max(axis=-1) - zl[rows, y]
    grad = s.copy()
    grad[rows, y] -= 1
    return s, ce, grad


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_softmax_and_fused_ce_agree_with_long_double_references(dtype, scale, rng, blocks):
    """The unshifted path (|z| small) and the shifted one (z moved by 1e4, so not safe)
    both match long-double references to a few ulps."""
    z = (rng.normal(size=(500, 40)) * scale).astype(dtype)
    y = rng.integers(0, 40, size=500)
    eps = np.finfo(dtype).eps
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="none"))
    for shift in (0.0, 1e4):
        zs = z + dtype(shift)
        assert nsoftmax.exp_is_safe(zs) == (shift == 0.0)
        s_ref, ce_ref, grad_ref = (x.astype(np.float64) for x in _long_double_references(zs, y))
        s = jac.Softmax()(zs)
        assert s.dtype == dtype
        assert float((np.abs(s - s_ref) / s_ref).max()) < 64 * eps, shift
        value, grad = head.value_and_grad(zs, y)
        assert value.dtype == dtype and grad.dtype == dtype
        np.testing.assert_allclose(grad, grad_ref, rtol=0, atol=8 * eps)
        np.testing.assert_allclose(value, ce_ref, rtol=32 * eps, atol=8 * eps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_sigmoid_bce_matches_a_log1p_reference(dtype, reduction, rng, blocks):
    """softplus(z) − y z and σ(z) − y against numpy's log1p in float64, over logits from
    1e-3 to 1e4 in both signs, including well-classified entries with tiny losses."""
    mags = np.concatenate([rng.normal(size=4000) * s for s in (1e-3, 1.0, 10.0, 40.0, 1e4)])
    z = mags.astype(dtype).reshape(-1, 50)  # 20,000 entries: several chunks
    y = (rng.random(z.shape) < 0.5).astype(dtype)
    y[:, :5] = (z[:, :5] > 0).astype(dtype)  # well classified: loss as small as exp(−|z|)
    z64, y64 = z.astype(np.float64), y.astype(np.float64)
    e = np.exp(-np.abs(z64))
    ref = (np.maximum(z64, 0) - y64 * z64) + np.log1p(e)
    gref = np.where(z64 >= 0, 1 / (1 + e), e / (1 + e)) - y64
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(reduction=reduction))
    value, grad = head.value_and_grad(z, y)
    eps = np.finfo(dtype).eps
    scale = 1.0 / z.size if reduction == "mean" else 1.0
    np.testing.assert_allclose(grad.astype(np.float64), gref * scale, rtol=0, atol=4 * eps * scale)
    if reduction == "none":
        normal = ref > np.finfo(dtype).tiny
        rel = np.abs(value.astype(np.float64) - ref)[normal] / ref[normal]
        assert float(rel.max()) < 16 * eps
    else:
        total = ref.sum() * scale
        assert abs(float(value) - total) <= 64 * eps * abs(total)


# -- memory ---------------------------------------------------------------------------------------------

_PEAK = """
N, K, max_bytes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
z = rng.normal(size=(N, K))
y = rng.integers(0, K, size=N)
head = jac.Head(jac.Softmax(), jac.CrossEntropy())
fused = head.grad(z, y, method="fused")
base = vmhwm()
g = head.grad(z, y, method="jacobian", max_bytes=max_bytes)
print(json.dumps({"base": base, "peak": vmhwm(), "err": float(np.abs(g - fused).max()),
                  "scale": float(np.abs(fused).max())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc/self/status (Linux)")
@pytest.mark.parametrize("max_bytes", [256 << 20, 32 << 20])
def test_a_10_gib_jacobian_runs_in_under_1_gib(max_bytes):
    """20,000 × 256 in float64: the dense Jacobian would take 10 GiB. Peak RSS (VmHWM of a
    fresh process) stays under 1 GiB, and above the baseline by at most the budget plus
    a few N×K arrays."""
    N, K = 20_000, 256
    out = peak_rss(_PEAK, N, K, max_bytes)
    assert N * K * K * 8 > 10**10  # 10.5 GB (9.8 GiB)
    assert out["peak"] < 2**30, out
    assert out["peak"] - out["base"] <= max_bytes + 8 * N * K * 8, out
    assert out["err"] <= 1e-15 * max(1.0, out["scale"]) * 64, out


# -- edges of the fast paths ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fast_paths_on_an_empty_batch(dtype, reduction):
    z = np.zeros((0, 3), dtype=dtype)
    cases = [
        (jac.Head(jac.Softmax(), jac.CrossEntropy(reduction=reduction)), np.zeros(0, dtype=int)),
        (jac.Head(jac.LogSoftmax(), jac.NLLLoss(reduction=reduction)), np.zeros(0, dtype=int)),
        (jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(reduction=reduction)), np.zeros((0, 3), dtype=dtype)),
    ]
    for head, y in cases:
        if reduction == "mean":  # torch's mean over nothing, said (tests/test_empty.py has the rule)
            with pytest.warns(RuntimeWarning, match="'mean' over nothing"):
                value, grad = head.value_and_grad(z, y)
        else:
            value, grad = head.value_and_grad(z, y)
        assert grad.shape == (0, 3) and grad.dtype == dtype
        if reduction == "mean":
            assert np.isnan(value)
        elif reduction == "sum":
            assert value == 0
        else:
            assert value.size == 0
    act = jac.Softmax()
    assert act.vjp(z, z).shape == (0, 3) and act.jacobian(z).shape == (0, 3, 3)
    assert (z @ act.jacobian_operator(z)).shape == (0, 3)
    with pytest.warns(RuntimeWarning, match="'mean' over nothing"):
        assert jac.Head(act, jac.CrossEntropy()).grad(z, np.zeros(0, dtype=int), method="jacobian").shape == (0, 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_of_one_class_is_exactly_one_with_a_zero_jacobian(dtype, rng):
    """K = 1: s = 1 and J = 0 exactly, on the unshifted path (|z| small) and the shifted one."""
    for scale in (1.0, 1e4):
        z = (rng.normal(size=(200, 1)) * scale).astype(dtype)
        g = rng.normal(size=(200, 1)).astype(dtype)
        act = jac.Softmax()
        np.testing.assert_array_equal(act(z), np.ones_like(z))
        np.testing.assert_array_equal(act.vjp(z, g), np.zeros_like(z))
        np.testing.assert_array_equal(g @ act.jacobian_operator(z), np.zeros_like(z))
        np.testing.assert_array_equal(act.jacobian(z), np.zeros((200, 1, 1), dtype=dtype))
