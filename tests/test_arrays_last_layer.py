"""``linear_gradient`` and ``linear_curvature`` on torch, JAX and array-api-strict arrays.

Every pair row of the check command's plan runs on array-api-strict (float64, the Hessian
and, where it differs, the GGN; every structure for the defaults, ``'full'`` for the
variants); torch runs the pairs with their defaults in float32 and float64; JAX (whose eager
calls compile op by op) runs under ``jax.jit``, float64 and float32. Each result is compared with the numpy path's (itself checked against central
differences in ``test_last_layer``) on the same values in float64, normwise in units of the
dtype's epsilon; the type, dtype and device come back as they went in. A pair without a
generic path must say so (the clear ``NotImplementedError``).

The Fisher kinds: their accumulation (dense blocks for ``'fisher'``, factors for
``'fisher_mc'`` and ``'empirical_fisher'``) is tested with the row blocks taken from the
numpy path (``row_blocks`` replaced), and end to end on the generic row blocks.
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

from jacobians._arrays import curvature  # noqa: E402

NAMESPACES = ("array_api_strict", "torch", "jax")
N, K, D = 6, 5, 2
#: normwise error allowed against numpy's float64 result, in units of the dtype's epsilon
#: (the head's blocks' own tolerance in test_arrays_heads, 4 × 64, summed over a few rows)
ULPS = 512
STRUCTURES = ("full", "diag", "kron")







def _dense(result):
    """The (P, P) matrix of a 'kron' result, else the result itself, in numpy."""
    if isinstance(result, jac.Kron):
        A, B = (x if isinstance(x, np.ndarray) else to_numpy(x) for x in result)
        return np.kron(A, B)
    return result if isinstance(result, np.ndarray) else to_numpy(result)


def _problem(head, dtype_name, label, shape=(N, K)):
    z, y = example_inputs(head, shape=shape, dtype=dtype_name, seed=zlib.crc32(label.encode()))
    X = np.random.default_rng(zlib.crc32(label.encode()) + 1).normal(size=shape[:-1] + (D,)).astype(dtype_name)
    return X, z, y


def _as(xp, X, z, y):
    """The arrays of ``xp``; class indices stay numpy (moved to z's device by the call)."""
    return xp.asarray(X), xp.asarray(z), (xp.asarray(y) if y.dtype.kind == "f" else y)


def _f64(X, z, y):
    return X.astype(np.float64), z.astype(np.float64), (y.astype(np.float64) if y.dtype.kind == "f" else y)


def _check_type(result, zt):
    for x in result if isinstance(result, jac.Kron) else (result,):
        assert array_api_compat.array_namespace(x) is array_api_compat.array_namespace(zt)
        assert x.dtype == zt.dtype and array_api_compat.device(x) == array_api_compat.device(zt)


ENTRIES = [e for e in plan.plan_entries(None)[0] if e.loss is not None]


def _cases():
    for e in ENTRIES:
        for name in NAMESPACES:
            if name != "array_api_strict" and "(" in e.label:
                continue  # the variants run on array-api-strict; the defaults everywhere
            if name == "jax":
                continue  # JAX's eager calls compile op by op (40 s for the defaults): test_jax_jit
            for dt in ("float64",) if name != "torch" else ("float64", "float32"):
                yield pytest.param(e, name, dt, id=f"{name}-{dt}-{e.label}")


@pytest.mark.parametrize("entry, name, dtype_name", list(_cases()))
def test_every_pair_matches_numpy(entry, name, dtype_name):
    xp = array_namespace_named(name)
    head = entry.build(K)
    X, z, y = _problem(head, dtype_name, entry.label)
    eps = float(np.finfo(dtype_name).eps)
    X64, z64, y64 = _f64(X, z, y)
    with jax_x64(name, dtype_name):
        Xt, zt, yt = _as(xp, X, z, y)
        try:
            G = jac.linear_gradient(Xt, head, zt, yt)
        except NotImplementedError as exc:
            assert "array-API path" in str(exc) or "not available for" in str(exc)
            with pytest.raises(NotImplementedError, match="array-API path|not available for"):
                jac.linear_curvature(Xt, head, zt, yt, kind="hessian")
            return
        _check_type(G, zt)
        assert normwise(to_numpy(G), jac.linear_gradient(X64, head, z64, y64)) <= ULPS * eps
        kinds = ("hessian",) if head.ggn_is_hessian else ("hessian", "ggn")
        structures = ("full",) if "(" in entry.label else STRUCTURES  # a variant: its factors in 'full'
        for kind in kinds:
            for structure in structures:
                try:
                    got = jac.linear_curvature(Xt, head, zt, yt, kind=kind, structure=structure)
                except NotImplementedError as exc:  # e.g. no generic second derivative
                    assert type(head.activation).__name__ in str(exc) or type(head.loss_fn).__name__ in str(exc)
                    continue
                ref = jac.linear_curvature(X64, head, z64, y64, kind=kind, structure=structure)
                _check_type(got, zt)
                assert normwise(_dense(got), _dense(ref)) <= ULPS * eps, (kind, structure)


def _softmax_ce():
    return jac.Head(jac.Softmax(), jac.CrossEntropy())


@pytest.mark.parametrize("name", ["array_api_strict", "torch"])  # JAX's row blocks: test_jax_jit
@pytest.mark.parametrize("bias", [True, False])
def test_batch_axes_bias_and_row_blocks(name, bias, monkeypatch):
    """Batch axes (2, 3), with and without a bias, and a budget of a row or two per block:
    the same sums, in row blocks (never more rows than the budget's)."""
    xp = array_namespace_named(name)
    head = _softmax_ce()
    X, z, y = _problem(head, "float64", f"batch-{bias}", shape=(2, 3, K))
    seen = []
    real = curvature.row_blocks

    def spy(*args, **kwargs):
        seen.append(args[2].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(curvature, "row_blocks", spy)
    budget = 8 * K * K * (8 + D + bias) * 2  # two rows a block for 'full'
    with jax_x64(name, "float64"):
        Xt, zt, yt = _as(xp, X, z, y)
        for structure in STRUCTURES:
            seen.clear()
            got = jac.linear_curvature(Xt, head, zt, yt, kind="hessian", structure=structure, bias=bias, max_bytes=budget)
            ref = jac.linear_curvature(X, head, z, y, kind="hessian", structure=structure, bias=bias)
            assert normwise(_dense(got), _dense(ref)) <= 64 * np.finfo(np.float64).eps, structure
            assert sum(seen) == 6 and (structure != "full" or max(seen) == 2), seen
        G = jac.linear_gradient(Xt, head, zt, yt, bias=bias)
        assert tuple(G.shape) == (K, D + bias)
        assert normwise(to_numpy(G), jac.linear_gradient(X, head, z, y, bias=bias)) <= 16 * np.finfo(np.float64).eps


def test_kron_holds_arrays_of_the_namespace_and_its_dense_is_np_kron():
    torch = pytest.importorskip("torch", reason="the test extra's torch (CPU build) is not installed")
    head = jac.Head(jac.Identity(), jac.MeanSquaredError())
    X, z, y = _problem(head, "float64", "kron")
    got = jac.linear_curvature(torch.asarray(X), head, torch.asarray(z), torch.asarray(y), structure="kron")
    assert isinstance(got, jac.Kron) and isinstance(got.A, torch.Tensor) and isinstance(got.dense(), torch.Tensor)
    assert np.allclose(got.dense().numpy(), np.kron(got.A.numpy(), got.B.numpy()), rtol=0, atol=1e-15)
    # identity + MSE: every block is the same, so K-FAC is exact
    full = jac.linear_curvature(torch.asarray(X), head, torch.asarray(z), torch.asarray(y))
    assert torch.allclose(got.dense(), full, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["array_api_strict", "torch"])  # JAX's float32: test_jax_jit
def test_float32_stays_float32_and_targets_may_be_of_the_namespace(name):
    xp = array_namespace_named(name)
    head = _softmax_ce()
    X, z, y = _problem(head, "float32", "f32")
    with jax_x64(name, "float32"):
        Xt, zt = xp.asarray(X), xp.asarray(z)
        yt = xp.asarray(y.astype(np.int32))
        for structure in STRUCTURES:
            got = jac.linear_curvature(Xt, head, zt, yt, structure=structure)
            _check_type(got, zt)
        # integer features are promoted to z's dtype, as on numpy's path
        Xi = xp.asarray(np.arange(N * D, dtype=np.int32).reshape(N, D))
        got = jac.linear_curvature(Xi, head, zt, yt, structure="diag")
        ref = jac.linear_curvature(np.arange(N * D).reshape(N, D), head, z.astype(np.float64), y, structure="diag")
        _check_type(got, zt)
        assert normwise(to_numpy(got), ref) <= ULPS * float(np.finfo(np.float32).eps)


@pytest.mark.parametrize("name", ["array_api_strict", "torch"])
def test_confident_predictions_keep_their_small_curvature(name):
    """Rows with p near one-hot (p_0 = 1 − 2e-13): the (0, 0) blocks of 'full' and the
    diagonal keep their tiny curvature to round-off (test_last_layer's case)."""
    xp = array_namespace_named(name)
    head = _softmax_ce()
    X = np.random.default_rng(9).normal(size=(5, 2))
    z = np.zeros((5, 3))
    z[:, 0] = 30.0
    y = np.zeros(5, int)
    p = jac.Softmax()(z)
    h00 = (p[:, 0] * (p[:, 1] + p[:, 2])) / 5  # the exact (0, 0) entries of the blocks
    Xt = np.concatenate([X, np.ones((5, 1))], 1)
    H = to_numpy(jac.linear_curvature(xp.asarray(X), head, xp.asarray(z), y, kind="hessian"))
    np.testing.assert_allclose(H[:3, :3], Xt.T @ (h00[:, None] * Xt), rtol=1e-12)
    d = to_numpy(jac.linear_curvature(xp.asarray(X), head, xp.asarray(z), y, kind="hessian", structure="diag"))
    np.testing.assert_allclose(d[0], np.diag(Xt.T @ (h00[:, None] * Xt)), rtol=1e-12)


def test_a_loss_with_its_own_denominator_keeps_it():
    xp = array_namespace_named("array_api_strict")
    head = jac.Head(jac.Softmax(), jac.CrossEntropy().with_denominator(40.0))
    X, z, y = _problem(head, "float64", "denominator")
    for structure in STRUCTURES:
        got = jac.linear_curvature(xp.asarray(X), head, xp.asarray(z), y, kind="hessian", structure=structure)
        ref = jac.linear_curvature(X, head, z, y, kind="hessian", structure=structure)
        assert normwise(_dense(got), _dense(ref)) <= 64 * np.finfo(np.float64).eps


def test_jax_jit():
    jax = pytest.importorskip("jax", reason="the test extra's jax is not installed")
    head = _softmax_ce()
    X, z, y = _problem(head, "float64", "jit")
    with jax.enable_x64(True):
        Xt, zt, yt = jax.numpy.asarray(X), jax.numpy.asarray(z), jax.numpy.asarray(y)
        H = jax.jit(lambda X, z, y: jac.linear_curvature(X, head, z, y, kind="hessian", max_bytes=4000))(Xt, zt, yt)
        G = jax.jit(lambda X, z, y: jac.linear_gradient(X, head, z, y))(Xt, zt, yt)
        assert normwise(to_numpy(H), jac.linear_curvature(X, head, z, y, kind="hessian")) <= 64 * np.finfo(np.float64).eps
        assert normwise(to_numpy(G), jac.linear_gradient(X, head, z, y)) <= 16 * np.finfo(np.float64).eps
    # float32 (x64 off) stays float32; a pair that is not canonical, its GGN, as a Kron
    head = jac.Head(jac.Tanh(), jac.MeanSquaredError())
    X, z, y = _problem(head, "float32", "jit32")
    A, B = jax.jit(lambda X, z, y: tuple(jac.linear_curvature(X, head, z, y, structure="kron")))(
        jax.numpy.asarray(X), jax.numpy.asarray(z), jax.numpy.asarray(y))
    assert A.dtype == B.dtype == jax.numpy.float32
    ref = jac.linear_curvature(X.astype(np.float64), head, z.astype(np.float64), y.astype(np.float64), structure="kron")
    assert normwise(np.kron(to_numpy(A), to_numpy(B)), ref.dense()) <= ULPS * float(np.finfo(np.float32).eps)


def test_errors():
    torch = pytest.importorskip("torch", reason="the test extra's torch (CPU build) is not installed")
    head = _softmax_ce()
    X, z, y = (torch.asarray(a) for a in _problem(head, "float64", "errors"))
    with pytest.raises(TypeError, match="numpy and torch|two namespaces"):
        jac.linear_curvature(X.numpy(), head, z, y)
    with pytest.raises(TypeError, match="head must be a jacobians.Head"):
        jac.linear_gradient(X, jac.Softmax(), z, y)
    with pytest.raises(ValueError, match="features must have the batch shape of z"):
        jac.linear_curvature(X[:3], head, z, y)
    with pytest.raises(ValueError, match="y must have shape"):
        jac.linear_gradient(X, head, z, y[:3])
    with pytest.raises(ValueError, match="structure must be one of"):
        jac.linear_curvature(X, head, z, y, structure="block")
    with pytest.raises(ValueError, match="kind must be one of"):
        jac.linear_curvature(X, head, z, y, kind="hessain")
    with pytest.raises(ValueError, match="max_bytes"):
        jac.linear_curvature(X, head, z, y, max_bytes=0)
    with pytest.raises(ValueError, match="needs the targets"):
        jac.linear_curvature(X, head, z, None, kind="ggn")
    with pytest.raises(TypeError, match="z must be a floating array"):
        jac.linear_gradient(X, head, z.to(torch.int64), y)


# -- the Fisher kinds ------------------------------------------------------------------------


FISHER_KINDS = ("fisher", "fisher_mc", "empirical_fisher")


def _numpy_row_blocks(head, meaning, z, y, *, key=0, mc_samples=1, row_ids=None):
    """``row_blocks``'s contract served from numpy's blocks (the test's stand-in)."""
    import array_api_compat

    xp = array_api_compat.array_namespace(z)
    zn = to_numpy(z)
    yn = None if y is None else (to_numpy(y) if xp.isdtype(y.dtype, "real floating") else np.asarray(np.from_dlpack(y)))
    blocks = jac.fisher.blocks_for_rows(head, meaning, zn, yn, key=key, mc_samples=mc_samples, row_ids=row_ids)
    if isinstance(blocks, np.ndarray):
        return "factor", xp.asarray(blocks, dtype=z.dtype)
    return "blocks", xp.asarray(blocks.dense().reshape(-1, zn.shape[-1], zn.shape[-1]), dtype=z.dtype)


@pytest.mark.parametrize("name", ["array_api_strict", "torch"])
@pytest.mark.parametrize("kind", FISHER_KINDS)
def test_fisher_kinds_accumulate_blocks_and_factors_as_numpy(name, kind, monkeypatch):
    """Dense blocks ('fisher') and factors ('fisher_mc' with 3 columns, 'empirical_fisher')
    through every structure, in row blocks, equal numpy's sums."""
    monkeypatch.setattr(curvature, "row_blocks", _numpy_row_blocks)
    xp = array_namespace_named(name)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(ignore_index=-100))
    X, z, y = _problem(head, "float64", f"fisher-{kind}")
    y[1] = -100
    for structure in STRUCTURES:
        opts = dict(kind=kind, structure=structure, mc_samples=3, seed=11)
        got = jac.linear_curvature(xp.asarray(X), head, xp.asarray(z), y, max_bytes=2000, **opts)
        ref = jac.linear_curvature(X, head, z, y, **opts)
        assert normwise(_dense(got), _dense(ref)) <= 64 * np.finfo(np.float64).eps, structure


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("kind", FISHER_KINDS)
def test_fisher_kinds_match_numpy(name, kind):
    """On the real generic row blocks: the exact and empirical Fisher equal numpy's; the
    Monte-Carlo one too (a seed draws the same targets on every namespace)."""
    xp = array_namespace_named(name)
    head = _softmax_ce()
    X, z, y = _problem(head, "float64", f"fisher-real-{kind}")
    with jax_x64(name, "float64"):
        for structure in STRUCTURES:
            opts = dict(kind=kind, structure=structure, mc_samples=4, seed=5)
            got = jac.linear_curvature(xp.asarray(X), head, xp.asarray(z), y, **opts)
            ref = jac.linear_curvature(X, head, z, y, **opts)
            _check_type(got, xp.asarray(z))
            assert normwise(_dense(got), _dense(ref)) <= 64 * np.finfo(np.float64).eps, structure


def test_fisher_without_targets():
    xp = array_namespace_named("array_api_strict")
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy())
    X, z, _ = _problem(head, "float64", "fisher-no-y")
    got = jac.linear_curvature(xp.asarray(X), head, xp.asarray(z), None, kind="fisher", structure="diag")
    ref = jac.linear_curvature(X, head, z, None, kind="fisher", structure="diag")
    assert normwise(to_numpy(got), ref) <= 64 * np.finfo(np.float64).eps
