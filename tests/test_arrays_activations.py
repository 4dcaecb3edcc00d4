"""The activations' generic (array API) path against their numpy path, on every namespace.

The ``xp`` fixture runs each test on array-api-strict, torch (CPU) and jax.numpy, float32
and float64 (JAX's float32 with ``jax_enable_x64`` off, its float64 with it on). The walk
goes over the registry (``jacobians.ACTIVATIONS``, each class's default instance and its
``variants``) and calls the PUBLIC methods with the namespace's arrays (the glue in
``jacobians._arrays`` dispatches them to the classes' ``xp_*`` methods); each result is
compared with the numpy path's on the same values in float64, normwise per sample
(``max|err| / max|ref|`` over a row, a Jacobian block or a Hessian tensor) in ulps of the
generic path's dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import walk_params

EXTRA = "the arrays extra (array-api-compat, array-api-extra) is not installed"
pytestmark = pytest.mark.arrays
array_api_compat = pytest.importorskip("array_api_compat", reason=EXTRA)

import jacobians as jac  # noqa: E402
from jacobians import checks  # noqa: E402
from jacobians.activations.base import Activation  # noqa: E402

NAMESPACES = ("array_api_strict", "torch", "jax")
#: registry names without a generic path yet: every method raises a clear NotImplementedError
NO_GENERIC: set = set()
#: worst normwise error allowed against numpy, in ulps of the result's dtype, per order
#: (first: forward, jacobian, vjp, jvp; second: hessian, hessian_vjp). float64: measured
#: worst 2.1 ulp (first), 8.3 (second: the curvature formulas' cancellations, e.g.
#: w(1 − 2s) near s = 1/2, amplify the namespaces' exp, ≤ 2 ulp apart, on both sides; torch
#: is 3.9 ulp from a long-double reference where numpy is 0.3). float32: the float32 result
#: against float64 numpy on the same inputs, so float32's own rounding of every step is in.
ULPS = {("float64", 1): 4, ("float64", 2): 12, ("float32", 1): 16, ("float32", 2): 32}
#: α-entmax's curvature (α ≠ 1.5, 2): ``h = (2 − α) p^{3−2α}`` (``p^{−2}`` at α = 2.5) and
#: ``g = p^{2−α}`` amplify p's round-off near the support's edge, where p is small and its
#: relative error large, on numpy's side as much as the generic one's (numpy's own tests
#: check this curvature against central differences only, to 1e-7). Measured worst: see
#: the branch report.
ENTMAX_CURVATURE_ULPS = {"float64": 256, "float32": 256}
ONE = ("__call__", "jacobian", "hessian")
TWO = ("vjp", "jvp", "hessian_vjp")
K = 6




@pytest.fixture(params=NAMESPACES)
def xp_name(request):
    return request.param






def _instances():
    out = []
    for name, cls in jac.ACTIVATIONS.items():
        for kw in [{}, *cls.variants(K)]:
            label = name + "".join(f"-{k}={v}" for k, v in kw.items())
            out.append(pytest.param(name, cls(**kw), id=label))
    return out


INSTANCES = _instances()


def _inputs(dtype_name: str, act=None):
    """Logits: N(0, 1) rows, confident N(0, 3²) rows and ±1e4 rows (less where ``act`` says:
    ``Exp``, whose e^z overflows); g and v N(0, 1)."""
    rng = np.random.default_rng(22)
    big = 1e4 if act is None else checks.inputs.extreme_magnitude(act, dtype_name)
    z = np.concatenate(
        [
            rng.normal(size=(4, K)),
            3 * rng.normal(size=(4, K)),
            big * np.sign(rng.normal(size=(2, K))) * rng.uniform(0.5, 1, size=(2, K)),
        ]
    )
    z = z.reshape(2, 5, K).astype(dtype_name)
    g = rng.normal(size=z.shape).astype(dtype_name)
    v = rng.normal(size=z.shape).astype(dtype_name)
    return z, g, v


def _ulps(result, ref, dtype_name: str, axes: int) -> np.ndarray:
    """Per sample, ``max|err| / max|ref|`` over the last ``axes`` axes, in ulps."""
    err = np.abs(np.asarray(result, dtype=np.float64) - ref)
    lead = ref.shape[: ref.ndim - axes]
    err = err.reshape(lead + (-1,)).max(axis=-1)
    scale = np.abs(ref).reshape(lead + (-1,)).max(axis=-1)
    tiny = np.finfo(dtype_name).tiny
    return np.where(err == 0, 0.0, err / np.maximum(scale, tiny)) / np.finfo(dtype_name).eps


def _allowed(xp, act, z, dtype_name: str, order: int) -> np.ndarray:
    """The tolerance per sample. JAX (XLA on CPU) divides by the temperature as
    ``z · (1/T)``: ``z/T`` is an ulp off numpy's in a quarter of the entries, and a map of
    ``z/T`` turns that into ``max|z/T|`` ulp (the map's condition number: 3e3 at logits of
    ±1e4 and T = 3), in numpy's result as much as JAX's; so JAX gets that much more."""
    base = ULPS[dtype_name, order]
    if order == 2 and isinstance(act, jac.Entmax) and act.alpha not in (1.5, 2.0):
        base = ENTMAX_CURVATURE_ULPS[dtype_name]
    T = getattr(act, "temperature", 1.0)
    if "jax" in xp.__name__ and T != 1.0:
        return base + 2 * np.abs(z).max(axis=-1) / T
    return np.full(z.shape[:-1], float(base))


def _check_array(xp, result, like):
    assert array_api_compat.array_namespace(result).__name__ == array_api_compat.array_namespace(like).__name__
    assert result.dtype == like.dtype
    assert array_api_compat.device(result) == array_api_compat.device(like)


#: the worst ulps measured, per (dtype, method): printed by test_report_worst (run -s)
WORST: dict = {}


@pytest.mark.parametrize("xp_name, name, act", walk_params(INSTANCES, lambda p: "=" not in p.id))
@pytest.mark.parametrize("method", ONE + TWO)
def test_walk_matches_numpy(xp, dtype_name, name, act, method):
    z, g, v = _inputs(dtype_name, act)
    dtype = getattr(xp, dtype_name)
    zt = xp.asarray(z, dtype=dtype)
    args = (zt,) if method in ONE else (zt, xp.asarray(v if method == "jvp" else g, dtype=dtype))
    if name in NO_GENERIC:
        with pytest.raises(NotImplementedError, match="has no array-API path"):
            getattr(act, method)(*args)
        return
    result = getattr(act, method)(*args)
    _check_array(xp, result, zt)
    np_args = [np.asarray(a, dtype=np.float64) for a in ((z,) if method in ONE else (z, v if method == "jvp" else g))]
    ref = np.asarray(getattr(act, method)(*np_args))
    assert tuple(result.shape) == ref.shape
    axes = {"__call__": 1, "vjp": 1, "jvp": 1, "jacobian": 2, "hessian_vjp": 2, "hessian": 3}[method]
    ulps = _ulps(result, ref, dtype_name, axes)
    allowed = _allowed(xp, act, z, dtype_name, 2 if method.startswith("hessian") else 1)
    key = (dtype_name, method, name if name == "entmax" else "", "T!=1 jax" if "jax" in xp.__name__ and getattr(act, "temperature", 1.0) != 1.0 else "")
    WORST[key] = max(WORST.get(key, 0.0), float(ulps.max()))
    assert np.all(ulps <= allowed), f"{name} {method}: {ulps.max():.1f} ulp"


def test_report_worst():
    """Prints the worst ulps the walk measured (``pytest -s``); runs after the walk."""
    for key in sorted(WORST):
        print("worst", key, f"{WORST[key]:.2f} ulp")


# -- the base class: a clear error, and what it derives ----------------------------------


class _ScaleByFirst(Activation):
    """``a_i = z_i · z_0``: a non-symmetric Jacobian, generic path written as xp_forward +
    xp_jacobian only."""

    def forward(self, z):
        return z * z[..., :1]

    def xp_forward(self, xp, z):
        return z * z[..., :1]

    def xp_jacobian(self, xp, z):
        K = z.shape[-1]
        eye = xp.eye(K, dtype=z.dtype, device=array_api_compat.device(z))
        first = xp.astype(xp.arange(K, device=array_api_compat.device(z)) == 0, z.dtype)
        return eye * z[..., :1, None] + z[..., :, None] * first


class _NoGeneric(Activation):
    def forward(self, z):
        return z


def test_custom_class_gets_vjp_and_jvp(xp, dtype_name):
    z = np.random.default_rng(1).normal(size=(3, 4)).astype(dtype_name)
    g = np.random.default_rng(2).normal(size=(3, 4)).astype(dtype_name)
    dtype = getattr(xp, dtype_name)
    zt, gt = xp.asarray(z, dtype=dtype), xp.asarray(g, dtype=dtype)
    act = _ScaleByFirst()
    J = z[..., :, None] * 0 + np.eye(4) * z[..., :1, None]
    J[..., :, 0] += z
    tol = 8 * np.finfo(dtype_name).eps
    np.testing.assert_allclose(np.asarray(act.jacobian(zt)), J, rtol=tol, atol=tol)
    vjp = act.vjp(zt, gt)
    _check_array(xp, vjp, zt)
    np.testing.assert_allclose(np.asarray(vjp), np.einsum("...i,...ij->...j", g, J), rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(act.jvp(zt, gt)), np.einsum("...ij,...j->...i", J, g), rtol=tol, atol=tol)
    with pytest.raises(NotImplementedError, match="has no array-API path.*second-order"):
        act.hessian_vjp(zt, gt)


def test_class_without_generic_path_says_so(xp):
    zt = xp.asarray(np.zeros((2, 3)), dtype=xp.float32)
    for call in (lambda: _NoGeneric()(zt), lambda: _NoGeneric().jacobian(zt), lambda: _NoGeneric().vjp(zt, zt)):
        with pytest.raises(NotImplementedError, match="_NoGeneric has no array-API path: write xp_forward"):
            call()


def test_subclass_changing_the_math_is_not_given_its_parents_path(xp):
    class Steeper(jac.Sigmoid):
        def forward(self, z):
            return super().forward(2 * z)

        def derivative(self, z):
            return 2 * super().derivative(2 * z)

    zt = xp.asarray(np.zeros((2, 3)), dtype=xp.float32)
    with pytest.raises(NotImplementedError, match="overrides derivative but not xp_derivative"):
        Steeper().vjp(zt, zt)


# -- training loops: jax.jit and torch tensors that require grad --------------------------


#: under jit, each class with its defaults and its temperature variants; α-entmax's other α
#: (the same code, a few seconds of compilation each) run eagerly in the walk above
JIT_INSTANCES = [p for p in INSTANCES if p.values[0] not in NO_GENERIC and not (p.values[0] == "entmax" and "alpha" in p.id)]


@pytest.mark.parametrize("name, act", JIT_INSTANCES)
def test_jax_jit(name, act):
    jax = pytest.importorskip("jax", reason="the arrays extra's jax is not installed")
    z, g, _ = _inputs("float64", act)
    with jax.enable_x64(True):
        zt, gt = jax.numpy.asarray(z), jax.numpy.asarray(g)
        first, second = (_allowed(jax.numpy, act, z, "float64", order) for order in (1, 2))
        out = jax.jit(lambda z: act(z))(zt)
        assert np.all(_ulps(out, act(z), "float64", 1) <= first)
        out = jax.jit(lambda z, g: act.vjp(z, g))(zt, gt)
        assert np.all(_ulps(out, act.vjp(z, g), "float64", 1) <= first)
        out = jax.jit(lambda z, g: act.hessian_vjp(z, g))(zt, gt)
        assert np.all(_ulps(out, act.hessian_vjp(z, g), "float64", 2) <= second)


@pytest.mark.parametrize("name, act", [p for p in INSTANCES if p.values[0] not in NO_GENERIC])
def test_torch_requires_grad(name, act):
    torch = pytest.importorskip("torch", reason="the arrays extra's torch (CPU build) is not installed")
    z, g, _ = _inputs("float64", act)
    zt = torch.tensor(z, requires_grad=True)
    out = act.vjp(zt, torch.tensor(g))
    assert isinstance(out, torch.Tensor)
    assert np.all(_ulps(out.detach(), act.vjp(z, g), "float64", 1) <= ULPS["float64", 1])
    with torch.no_grad():
        assert np.all(_ulps(act(zt), act(z), "float64", 1) <= ULPS["float64", 1])


def test_entmax_with_one_alpha_per_row(xp, dtype_name):
    z, g, _ = _inputs(dtype_name)
    alpha = np.linspace(1.2, 2.5, 5)  # one per row of the (2, 5) batch
    act = jac.Entmax(alpha=alpha)
    dtype = getattr(xp, dtype_name)
    zt, gt = xp.asarray(z, dtype=dtype), xp.asarray(g, dtype=dtype)
    z64, g64 = z.astype(np.float64), g.astype(np.float64)
    for result, ref in ((act(zt), act(z64)), (act.vjp(zt, gt), act.vjp(z64, g64))):
        _check_array(xp, result, zt)
        assert np.all(_ulps(result, ref, dtype_name, 1) <= ULPS[dtype_name, 1])
