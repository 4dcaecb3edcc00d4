"""The generic path's foundation (``jacobians.xp``) on every installed array API namespace.

The ``xp`` fixture runs each test on array_api_compat's numpy, array-api-strict, torch (CPU)
and jax.numpy, float32 and float64 (JAX's float32 with ``jax_enable_x64`` off, its float64
with it on). The shims are compared with mpmath at 400 digits (independent formulas, no
shift, no branch), in ulps of the result's dtype; the uniforms with
``jacobians.numerics.sampling`` bit for bit.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import array_namespace_named

EXTRA = "the arrays extra (array-api-compat, array-api-extra) is not installed"
pytestmark = pytest.mark.arrays
array_api_compat = pytest.importorskip("array_api_compat", reason=EXTRA)

from jacobians.numerics import sampling  # noqa: E402
from jacobians.xp import shims  # noqa: E402
from jacobians.xp.namespace import as_targets, is_generic_type, namespace_of  # noqa: E402
from jacobians.xp.random import float64_available, uniforms_for_rows  # noqa: E402

NAMESPACES = ("numpy", "array_api_strict", "torch", "jax")
#: measured worst ulps of the shims (float32, float64) on every namespace, with room for
#: another platform's libm (see the report of the branch xp-foundation)
ULPS = {"logsumexp": 2, "expit": 3, "softplus": 3, "log_sigmoid": 3, "log1mexp": 4}




@pytest.fixture(params=NAMESPACES)
def xp_name(request):
    return request.param






@pytest.fixture
def dtype(xp, dtype_name):
    return getattr(xp, dtype_name)


def to_numpy(a) -> np.ndarray:
    return np.from_dlpack(a)


# -- references: mpmath, plain formulas at 60 digits ---------------------------------------

mpmath = pytest.importorskip("mpmath", reason="mpmath (the shims' reference) is not installed")
mpmath.mp.dps = 400  # log(1 + e^x) of x = -745 needs 330 digits: plain formulas, no log1p


def _ref(f, x: np.ndarray) -> np.ndarray:
    return np.array([float(f(mpmath.mpf(float(v)))) for v in x.reshape(-1)]).reshape(x.shape)


REFERENCES = {
    "expit": lambda v: 1 / (1 + mpmath.exp(-v)),
    "softplus": lambda v: mpmath.log(1 + mpmath.exp(v)),
    "log_sigmoid": lambda v: -mpmath.log(1 + mpmath.exp(-v)),
    "log1mexp": lambda v: mpmath.log(1 - mpmath.exp(v)),
}


def _ref_lse(x: np.ndarray) -> np.ndarray:
    rows = x.reshape(-1, x.shape[-1])
    out = [float(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))) for row in rows]
    return np.array(out).reshape(x.shape[:-1])


def ulps(got: np.ndarray, ref: np.ndarray, np_dtype) -> float:
    """Worst ``|got − ref|`` in units of the spacing of ``ref`` rounded to ``np_dtype``.

    Where ``ref`` is subnormal in ``np_dtype`` only ``|got − ref| ≤ tiny`` (the smallest
    normal) is asked: XLA on CPU flushes subnormal results to zero (JAX gives
    ``expit(-89.07f) = 0``, numpy ``2e-39``).
    """
    tiny = np.finfo(np_dtype).tiny
    err = np.abs(got.astype(np.float64) - ref)
    sub = (np.abs(ref) < tiny) & (ref != 0)
    assert (err[sub] <= tiny).all()
    spacing = np.spacing(np.abs(ref.astype(np_dtype))).astype(np.float64)
    return float(np.max(np.where(sub, 0.0, err / spacing)))


def _elementwise_inputs(np_dtype) -> np.ndarray:
    rng = np.random.default_rng(22)
    huge = 80.0 if np_dtype == np.float32 else 700.0  # the tails down to the smallest normals
    x = np.concatenate(
        [
            rng.normal(size=400),
            rng.normal(size=200) * 30,
            np.linspace(-huge, huge, 401),
            -np.logspace(-30, 4, 200),
            np.logspace(-30, 4, 200),
            [-1e4, 1e4, 0.0, -math.log(2), -0.6931, -0.6932],
        ]
    )
    return x.astype(np_dtype)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_elementwise_shim_against_mpmath(xp, dtype, dtype_name, name):
    np_dtype = np.dtype(dtype_name).type
    x = _elementwise_inputs(np_dtype)
    if name == "log1mexp":
        x = -np.abs(x)
        x = x[x < 0]
    got = to_numpy(getattr(shims, name)(xp, xp.asarray(x, dtype=dtype)))
    assert got.dtype == np_dtype
    ref = _ref(REFERENCES[name], x)
    assert ulps(got, ref, np_dtype) <= ULPS[name]


def _lse_inputs(np_dtype) -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = [rng.normal(size=(100, 7)) * s for s in (1.0, 30.0, 1e4)]
    special = np.array(
        [
            [1e4, -1e4, 0.0, 1e4 - 1, 3.0, -2.0, 1.0],
            [0.0, -30.0, -40.0, -50.0, -60.0, -70.0, -80.0],  # log1p(tiny): the max term kept out
            [-1e4, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4],  # ties at the max
            [2.5, 2.5, -np.inf, -np.inf, 0.0, 1.0, -1.0],
            [1e6, 1e6 - 1, 1e6 - 2, 1e6, -1e6, 0.0, 1e6 - 0.5],
        ]
    )
    return np.concatenate(rows + [special]).astype(np_dtype)


def test_logsumexp_against_mpmath(xp, dtype, dtype_name):
    np_dtype = np.dtype(dtype_name).type
    x = _lse_inputs(np_dtype)
    got = to_numpy(shims.logsumexp(xp, xp.asarray(x, dtype=dtype)))
    assert got.dtype == np_dtype and got.shape == (x.shape[0],)
    assert ulps(got, _ref_lse(x), np_dtype) <= ULPS["logsumexp"]
    # another axis, keepdims
    got0 = to_numpy(shims.logsumexp(xp, xp.asarray(x[:7].T, dtype=dtype), axis=0, keepdims=True))
    assert got0.shape == (1, 7) and ulps(got0[0], _ref_lse(x[:7]), np_dtype) <= ULPS["logsumexp"]


def test_special_values(xp, dtype):
    inf, nan = math.inf, math.nan
    rows = xp.asarray([[-inf, -inf, -inf], [inf, 0.0, -inf], [nan, 0.0, 1.0], [-inf, -inf, 0.0]], dtype=dtype)
    lse = to_numpy(shims.logsumexp(xp, rows))
    assert lse[0] == -inf and lse[1] == inf and np.isnan(lse[2]) and lse[3] == 0.0
    x = xp.asarray([-inf, inf], dtype=dtype)
    np.testing.assert_array_equal(to_numpy(shims.expit(xp, x)), [0.0, 1.0])
    np.testing.assert_array_equal(to_numpy(shims.softplus(xp, x)), [0.0, inf])
    np.testing.assert_array_equal(to_numpy(shims.log_sigmoid(xp, x)), [-inf, 0.0])
    np.testing.assert_array_equal(to_numpy(shims.log1mexp(xp, xp.asarray([0.0, -inf], dtype=dtype))), [-inf, 0.0])
    assert np.isnan(to_numpy(shims.log1mexp(xp, xp.asarray([1.0], dtype=dtype)))).all()


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("fallback", [False, True], ids=["xp", "fallback"])
def test_take_along_axis_against_numpy(xp, dtype, axis, fallback):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5, 6))
    shape = list(x.shape)
    shape[axis] = 3
    idx = rng.integers(-x.shape[axis], x.shape[axis], size=shape)
    ns = _without(xp, "take_along_axis") if fallback else xp
    got = shims.take_along_axis(ns, xp.asarray(x, dtype=dtype), xp.asarray(idx), axis=axis)
    want = np.take_along_axis(x.astype(to_numpy(xp.zeros(1, dtype=dtype)).dtype), idx, axis=axis)
    np.testing.assert_array_equal(to_numpy(got), want)


def _without(xp, attr):
    """A view of namespace ``xp`` without ``attr`` (a namespace before the 2024.12 standard)."""

    class Hidden:
        def __getattr__(self, name):
            if name == attr:
                raise AttributeError(name)
            return getattr(xp, name)

    return Hidden()


@pytest.mark.parametrize("axis", [-1, 0])
def test_put_along_axis_against_numpy(xp, dtype, axis):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 6))
    idx = rng.integers(-6 if axis else -5, 6 if axis else 5, size=(5, 3) if axis else (3, 6))
    values = rng.normal(size=idx.shape)
    want = x.astype(to_numpy(xp.zeros(1, dtype=dtype)).dtype)
    np.put_along_axis(want, idx, values, axis=axis)  # repeated indices: the last write wins
    xa = xp.asarray(x, dtype=dtype)
    got = shims.put_along_axis(xp, xa, xp.asarray(idx), xp.asarray(values, dtype=dtype), axis=axis)
    np.testing.assert_array_equal(to_numpy(got), want)
    np.testing.assert_array_equal(to_numpy(xa), x.astype(want.dtype))  # x untouched
    one = shims.put_along_axis(xp, xa, xp.asarray(idx[:, :1] if axis else idx[:1]), 0.0, axis=axis)
    assert to_numpy(one).dtype == want.dtype


# -- the uniforms, bit for bit -------------------------------------------------------------

HOST_ROWS = np.array([0, 1, 2, 5, 2**31 - 1, 2**31, 2**32 + 7, 2**40 + 3, 2**63 - 1, 2**64 - 1], dtype=np.uint64)


def _expected(u64: np.ndarray, np_dtype) -> np.ndarray:
    return u64 if np_dtype == np.float64 else (np.floor(u64 * 2.0**24) * 2.0**-24).astype(np.float32)


UNIFORM_KEYS = (0, 1, 7, 2**63 + 12345, 2**64 - 1)
#: every key and width on numpy and array-api-strict (the reference namespace); on torch and
#: JAX (the same integer code, whose eager JAX compiles per shape) a slice that still takes
#: each width and the keys with the high bit set and all bits set
UNIFORM_SLICE = ((0, 1), (2**63 + 12345, 3), (2**64 - 1, 1000))


def _uniform_cases():
    for name in NAMESPACES:
        full = name in ("numpy", "array_api_strict")
        for key, per_row in ([(k, n) for n in (1, 3, 1000) for k in UNIFORM_KEYS] if full else UNIFORM_SLICE):
            yield pytest.param(name, key, per_row, id=f"{name}-{per_row}-{key}")


@pytest.mark.parametrize(("xp_name", "key", "per_row"), list(_uniform_cases()))
def test_uniforms_bitwise_numpy(xp, dtype, dtype_name, key, per_row):
    np_dtype = np.dtype(dtype_name).type
    got = to_numpy(uniforms_for_rows(xp, key, HOST_ROWS, per_row, dtype=dtype))
    want = _expected(sampling.uniforms_for_rows(key, HOST_ROWS, per_row), np_dtype)
    assert got.dtype == np_dtype and got.shape == (HOST_ROWS.size, per_row)
    np.testing.assert_array_equal(got, want)
    assert ((got >= 0) & (got < 1)).all()


def test_uniforms_rows_on_the_device(xp, dtype, dtype_name):
    np_dtype = np.dtype(dtype_name).type
    ints = [xp.int32] + ([xp.int64] if "int64" in xp.__array_namespace_info__().dtypes(kind="integral") else [])
    for int_dtype in ints:
        big = xp.iinfo(int_dtype).max
        rows = [0, 3, 2**31 - 1, big]
        got = to_numpy(uniforms_for_rows(xp, 99, xp.asarray(rows, dtype=int_dtype), 4, dtype=dtype))
        np.testing.assert_array_equal(got, _expected(sampling.uniforms_for_rows(99, rows, 4), np_dtype))


def test_uniforms_default_dtype(xp, dtype_name):
    u = uniforms_for_rows(xp, 5, range(3), 2)
    assert u.dtype == (xp.float64 if float64_available(xp) else xp.float32)
    if not float64_available(xp):  # JAX without x64
        with pytest.raises(TypeError, match="float64 is not available"):
            uniforms_for_rows(xp, 5, range(3), 2, dtype=xp.float64)


def test_uniforms_under_jit(dtype_name):
    jax = pytest.importorskip("jax", reason="the arrays extra's jax is not installed")
    with jax.enable_x64(dtype_name == "float64"):
        jnp = jax.numpy
        dtype = getattr(jnp, dtype_name)
        got = jax.jit(lambda: uniforms_for_rows(jnp, 3, HOST_ROWS, 5, dtype=dtype))()
        want = _expected(sampling.uniforms_for_rows(3, HOST_ROWS, 5), np.dtype(dtype_name).type)
        np.testing.assert_array_equal(np.asarray(got), want)
        z = jnp.asarray(_lse_inputs(np.dtype(dtype_name).type), dtype=dtype)
        np.testing.assert_array_equal(jax.jit(lambda a: shims.logsumexp(jnp, a))(z), shims.logsumexp(jnp, z))


# -- namespaces and targets ----------------------------------------------------------------


def test_namespace_of_numpy_only_as_targets(xp, dtype, xp_name):
    z = xp.zeros((2, 3), dtype=dtype)
    assert namespace_of(z, None, 1.5, np.float64(2.0)) is array_api_compat.array_namespace(z)
    if xp_name == "numpy":
        return
    assert namespace_of(z, targets=(np.zeros(2), [1, 2])).__name__ == array_api_compat.array_namespace(z).__name__
    with pytest.raises(TypeError, match=rf"numpy and {xp.__name__.replace('array_api_compat.', '')}"):
        namespace_of(z, np.zeros(3))


def test_namespace_of_two_generic_namespaces_names_both():
    available = []
    for name in NAMESPACES[1:]:
        try:
            available.append((name, array_namespace_named(name)))
        except pytest.skip.Exception:
            pass
    if len(available) < 2:
        pytest.skip("fewer than two generic namespaces installed")
    short = {"array_api_strict": "array_api_strict", "torch": "torch", "jax": "jax.numpy"}
    for (na, a), (nb, b) in itertools.combinations(available, 2):
        with pytest.raises(TypeError, match=rf"two namespaces in one call: {short[na]} and {short[nb]}"):
            namespace_of(a.zeros(2), None, b.zeros(2))
        with pytest.raises(TypeError, match=rf"{short[nb]} and {short[na]}"):
            namespace_of(b.zeros(2), targets=(a.zeros(2),))


def test_as_targets(xp, dtype):
    z = xp.zeros((3, 4), dtype=dtype)
    device = array_api_compat.device(z)
    y = as_targets(np.array([0, 3, 1]), z)
    assert xp.isdtype(y.dtype, "integral") and array_api_compat.device(y) == device
    np.testing.assert_array_equal(to_numpy(y), [0, 3, 1])
    soft = as_targets(np.full((3, 4), 0.25), z)
    assert soft.dtype == z.dtype and array_api_compat.device(soft) == device
    assert as_targets([1, 2, 0], z).shape == (3,)
    same = xp.asarray([1, 2, 0])
    np.testing.assert_array_equal(to_numpy(as_targets(same, z)), [1, 2, 0])
    assert as_targets(xp.asarray(np.ones((3, 4)), dtype=xp.float32), z).dtype == z.dtype


def test_is_generic_type(xp, dtype, xp_name):
    assert is_generic_type(type(xp.zeros(2, dtype=dtype))) is (xp_name != "numpy")
    for cls in (np.ndarray, np.float64, float, int, type(None), np.ma.MaskedArray):
        assert not is_generic_type(cls)

    class Foreign:
        def __array_namespace__(self, api_version=None):
            return None

    assert is_generic_type(Foreign)
    Foreign.__module__ = "dask.array.core"
    assert not is_generic_type(Foreign)


def test_import_jacobians_imports_no_array_library():
    """The generic backend registers its detector (jacobians.xp.detect) on import; nothing
    else of jacobians.xp, and no array library, is imported before such an array comes."""
    code = (
        "import sys, jacobians; "
        "bad = [m for m in ('torch', 'jax', 'cupy', 'array_api_compat', 'array_api_strict', 'array_api_extra', "
        "'jacobians.xp.namespace', 'jacobians.xp.shims', 'jacobians.xp.random', 'jacobians._arrays.rows', "
        "'jacobians._arrays.heads') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
