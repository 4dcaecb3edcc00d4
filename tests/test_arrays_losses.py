"""The losses' generic (array API) path against numpy's, on every installed namespace.

The ``xp`` fixture runs each test on array-api-strict, torch (CPU) and jax.numpy, float32
and float64 (JAX's float32 with ``jax_enable_x64`` off, its float64 with it on). The walk
takes every registered loss, its default instance and ``cls.variants(K)``, every reduction
and ``with_denominator``, with inputs from the numpy checks' own generator
(:func:`jacobians.checks.example_inputs` on a head whose activation puts ``a`` in the
loss's domain), and compares ``value``, ``grad``, ``value_and_grad``, ``hessian`` and
``hvp`` through the public API (targets given as numpy and as the namespace's own array)
with the numpy path on the same values in float64. Errors are normwise, in units of the
dtype's epsilon: ``max|got − ref| / (max|ref| · eps)``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Brier, array_namespace_named, walk_params

EXTRA = "the arrays extra (array-api-compat, array-api-extra) is not installed"
pytestmark = pytest.mark.arrays
array_api_compat = pytest.importorskip("array_api_compat", reason=EXTRA)

import jacobians as jac  # noqa: E402
from jacobians.checks import example_inputs  # noqa: E402

NAMESPACES = ("array_api_strict", "torch", "jax")
K = 4
SHAPE = (2, 3, K)
#: normwise bounds in eps of the dtype (measured worst: see WORST, printed with -s)
BOUND = {"float64": 4.0, "float32": 8.0}
#: the activation that puts a loss's input in its domain
ACTIVATION = {
    "real": jac.Identity,
    "open_simplex": jac.Softmax,
    "simplex": jac.Softmax,
    "log_simplex": jac.LogSoftmax,
    "unit_interval": jac.Sigmoid,
    "open_unit_interval": jac.Sigmoid,
    "nonnegative": jac.Softplus,
}
WORST: dict = {}
#: Entmax.alpha_vjp's bound in eps of the dtype (its terms cancel: see test_entmax_alpha_vjp)
ALPHA_BOUND = 32.0




@pytest.fixture(params=NAMESPACES)
def xp_name(request):
    return request.param






@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    for key in sorted(WORST):
        print(f"worst normwise error {key}: {WORST[key][0]:.2f} eps ({WORST[key][1]})")


def to_numpy(x) -> np.ndarray:
    return np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)


def cases():
    out = []
    for name, cls in jac.LOSSES.items():
        for i, kw in enumerate([{}] + cls.variants(K)):
            out.append(pytest.param(name, kw, id=f"{name}-{i}"))
    return out


def inputs(loss, seed=0):
    """``(a, y)`` in float64 numpy: ``a`` in the loss's domain, clear of its kinks."""
    act = ACTIVATION[loss.domain.name]()
    z, y = example_inputs(jac.Head(act, loss), shape=SHAPE, seed=seed)
    return np.asarray(act(z), dtype=np.float64), y


def normwise(got, ref, dtype_name) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    nan = np.isnan(ref)
    assert (np.isnan(got) == nan).all()
    scale = np.abs(ref[~nan]).max(initial=0.0)
    err = np.abs(got[~nan] - ref[~nan]).max(initial=0.0)
    if scale == 0:
        return 0.0 if err == 0 else np.inf
    return err / (scale * np.finfo(dtype_name).eps)


def check_result(xp, got, like, ref, dtype_name, what, bound=None):
    assert array_api_compat.array_namespace(got) is array_api_compat.array_namespace(like)
    assert got.dtype == like.dtype, what
    assert array_api_compat.device(got) == array_api_compat.device(like)
    e = normwise(to_numpy(got), ref, dtype_name)
    key = (dtype_name, what.split()[-1])
    WORST[key] = max(WORST.get(key, (0.0, "")), (e, f"{what} on {array_api_compat.array_namespace(like).__name__}"))
    assert e <= (bound or BOUND[dtype_name]), f"{what}: {e:.2f} eps"


def walk_cases():
    """The walk's ``(xp_name, name, kw, y_form)``: targets as numpy and as the namespace's
    array, and for a class loss also as probability rows."""
    out = []
    for p in walk_params(cases(), lambda p: p.id.endswith("-0")):
        xp_name, name, kw = p.values
        cls = jac.LOSSES[name]  # (a loss drawing its own targets, e.g. indices only, takes no soft rows)
        soft = cls.target_kind == "class" and getattr(cls, "example_targets", None) is None
        forms = ["numpy", "namespace"] + (["probabilities"] if soft else [])
        out += [pytest.param(xp_name, name, kw, form, id=f"{p.id}-{form}") for form in forms]
    return out


@pytest.mark.parametrize("xp_name, name, kw, y_form", walk_cases())
def test_walk(xp, dtype_name, name, kw, y_form):
    """``y_form``: the generated targets as numpy or as the namespace's array; for a class
    loss also soft probability rows (Dirichlet draws, given as the namespace's array)."""
    cls = jac.LOSSES[name]
    base = cls(**kw)
    a64, y = inputs(base)
    if y_form == "probabilities":
        y = np.random.default_rng(2).dirichlet(np.ones(K), size=SHAPE[:-1])
    np_dtype = np.dtype(dtype_name)
    a_np = a64.astype(np_dtype).astype(np.float64)  # the same values on both paths
    if y.dtype.kind == "f":
        y = y.astype(np_dtype).astype(np.float64)
    a = xp.asarray(a_np.astype(np_dtype))
    yt = y if y_form == "numpy" else xp.asarray(y.astype(np_dtype) if y.dtype.kind == "f" else y)
    v = np.random.default_rng(1).normal(size=SHAPE)
    v_np = v.astype(np_dtype).astype(np.float64)
    vt = xp.asarray(v_np.astype(np_dtype))
    for reduction in ("mean", "sum", "none"):
        for denominator in (None, 10.0):
            loss = cls(**kw, reduction=reduction).with_denominator(denominator)
            what = f"{name} {reduction}"
            check_result(xp, loss.value(a, yt), a, loss.value(a_np, y), dtype_name, what + " value")
            check_result(xp, loss.grad(a, yt), a, loss.grad(a_np, y), dtype_name, what + " grad")
            val, g = loss.value_and_grad(a, yt)
            rv, rg = loss.value_and_grad(a_np, y)
            check_result(xp, val, a, rv, dtype_name, what + " value")
            check_result(xp, g, a, rg, dtype_name, what + " grad")
            check_result(xp, loss.hessian(a, yt), a, loss.hessian(a_np, y), dtype_name, what + " hessian")
            check_result(xp, loss.hvp(a, yt, vt), a, loss.hvp(a_np, y, v_np), dtype_name, what + " hvp")
            scale = loss.xp_reduction_scale(xp, a, loss.xp_check_targets(xp, a, xp.asarray(y)))
            assert float(scale) == pytest.approx(float(loss.reduction_scale(a_np.astype(np_dtype), y)), rel=1e-6)


#: under jit, every loss and variant but α-entmax's other α (the same code as its default, which
#: the walk runs eagerly); α-entmax in float32, whose bisection has half the unrolled steps
#: to compile (seconds each in float64)
JIT_CASES = [p for p in cases() if not (p.values[0] == "entmax_loss" and p.values[1])]


@pytest.mark.parametrize("name, kw", JIT_CASES)
def test_jit(name, kw):
    """Every registered loss under jax.jit: value, gradient, Hessian and HVP in one traced
    function (one compilation), against numpy's float64 on the same values."""
    jax = pytest.importorskip("jax", reason="the arrays extra's jax is not installed")
    cls = jac.LOSSES[name]
    dtype_name = "float32" if name == "entmax_loss" else "float64"
    with jax.enable_x64(dtype_name == "float64"):
        loss = cls(**kw)
        a_np, y = inputs(loss)
        v = np.random.default_rng(1).normal(size=a_np.shape)
        a_np, v = (x.astype(dtype_name).astype(np.float64) for x in (a_np, v))
        f = jax.jit(lambda a, v: (*loss.value_and_grad(a, y), loss.hessian(a, y), loss.hvp(a, y, v)))
        got = f(*(jax.numpy.asarray(x.astype(dtype_name)) for x in (a_np, v)))
        refs = (*loss.value_and_grad(a_np, y), loss.hessian(a_np, y), loss.hvp(a_np, y, v))
        for what, g, r in zip(("value", "grad", "hessian", "hvp"), got, refs):
            assert g.dtype == jax.numpy.dtype(dtype_name), what
            assert normwise(np.asarray(g), r, dtype_name) <= BOUND[dtype_name], what


def test_entmax_alpha_vjp_jit():
    jax = pytest.importorskip("jax", reason="the arrays extra's jax is not installed")
    act = jac.Entmax(1.5)
    z, g = np.random.default_rng(6).normal(size=(2,) + SHAPE)
    with jax.enable_x64(False):  # float32: the bisection's 30 steps to compile, not 60
        got = jax.jit(lambda z, g: act.alpha_vjp(z, g))(*(jax.numpy.asarray(x, dtype="float32") for x in (z, g)))
    ref = act.alpha_vjp(*(x.astype(np.float32).astype(np.float64) for x in (z, g)))
    assert got.dtype == jax.numpy.float32 and normwise(np.asarray(got), ref, "float32") <= ALPHA_BOUND


def test_empty_mean_warns_nan_value_zero_grad():
    torch = pytest.importorskip("torch", reason="the arrays extra's torch (CPU build) is not installed")
    a = torch.full((0, 3), 0.5, dtype=torch.float64)
    loss = jac.MeanSquaredError()
    with pytest.warns(jac.EmptyMeanWarning):
        val, g = loss.value_and_grad(a, np.zeros((0, 3)))
    assert torch.isnan(val) and g.shape == (0, 3)


def test_empty_weighted_mean_under_jit():
    """Every target ignored: the summed-weight denominator is 0 in the graph (no warning can
    be given under jit), the value NaN and the gradient zero, as numpy's."""
    jax = pytest.importorskip("jax", reason="the arrays extra's jax is not installed")
    with jax.enable_x64(True):
        loss = jac.CrossEntropy(weight=np.linspace(0.5, 2.0, 3), ignore_index=-100)
        a = np.full((2, 3), 1 / 3)
        y = np.array([-100, -100])
        val, g = jax.jit(lambda a: loss.value_and_grad(a, y))(jax.numpy.asarray(a))
        assert np.isnan(float(val)) and not np.asarray(g).any()
        with pytest.warns(jac.EmptyMeanWarning):
            val, g = loss.value_and_grad(jax.numpy.asarray(a), y)
        assert np.isnan(float(val)) and not np.asarray(g).any()


@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence", "binary_cross_entropy", "nll"])
def test_extreme_inputs(xp, dtype_name, name):
    """Probabilities that underflowed to 0 (or reached 1): the floors and clamps of numpy's path
    (compared with numpy in the same dtype, where ``tiny`` and the largest float are)."""
    loss = jac.LOSSES[name](reduction="none")
    np_dtype = np.dtype(dtype_name)
    a = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1e-30, 0.25, 0.75]])
    if name == "nll":
        with np.errstate(divide="ignore"):
            a = np.log(np.maximum(a, 1e-30))
    a = a.astype(np_dtype)
    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]]) if name != "nll" else np.array([0, 1, 2])
    y = y.astype(np_dtype) if y.dtype.kind == "f" else y
    at = xp.asarray(a)
    for method in ("value", "grad", "hessian"):
        got = to_numpy(getattr(loss, method)(at, y))
        ref = getattr(loss, method)(a, y)  # numpy's own dtype: its floors and saturations are the dtype's
        assert np.isfinite(got).all()
        ok = np.isclose(got, ref, rtol=8 * np.finfo(np_dtype).eps, atol=0)
        assert ok.all(), (method, got, ref)


def test_fenchel_young_extreme_logits(xp, dtype_name):
    """The Fenchel–Young losses at logits of ±1e4 (rows with two close top entries, a flat row,
    ignored rows), index and probability targets, and a head of the loss's own map at a
    temperature: float32 stays float32 and exact, against numpy's float64 on the same values."""
    np_dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(5)
    z = rng.normal(size=SHAPE) * 1e4  # the walk's shape: JAX's compiled eager ops are reused
    z[0, 0, :2] = [1e4, 1e4 - 0.5]  # the map is not one-hot: p from the gap only
    z[0, 1] = -1e4  # a flat row: p uniform
    z[1, 0, 1:] = z[1, 0, 0] - 0.25  # three tied runners-up close to the top
    z = z.astype(np_dtype).astype(np.float64)
    y = np.array([[1, 2, -100], [0, 3, 1]])
    probs = rng.dirichlet(np.ones(K), size=SHAPE[:-1]).astype(np_dtype).astype(np.float64)
    zt = xp.asarray(z.astype(np_dtype))
    cases = [(jac.SparsemaxLoss(ignore_index=-100), y), (jac.Entmax15Loss(), probs), (jac.EntmaxLoss(1.2, ignore_index=-100), y)]
    for loss, yy in cases:
        yt = xp.asarray(yy.astype(np_dtype)) if yy.dtype.kind == "f" else yy
        for method in ("value", "grad", "hessian"):
            check_result(xp, getattr(loss, method)(zt, yt), zt, getattr(loss, method)(z, yy), dtype_name, f"{loss!r} extreme {method}")
    head = jac.Head(jac.Entmax15(temperature=0.5), jac.Entmax15Loss(ignore_index=-100))
    val, g = head.value_and_grad(zt, y)
    rv, rg = head.value_and_grad(z, y)
    check_result(xp, val, zt, rv, dtype_name, "head extreme value")
    check_result(xp, g, zt, rg, dtype_name, "head extreme grad")
    check_result(xp, head.hessian(zt, y), zt, head.hessian(z, y), dtype_name, "head extreme hessian")


@pytest.mark.parametrize("xp_name", ["array_api_strict", "torch"])  # JAX: under jit below
def test_entmax_alpha_vjp(xp, dtype_name):
    """``Entmax.alpha_vjp`` (the gradient of α, beside EntmaxLoss's ``alpha_grad``) on the
    generic path: shared and per-row α, a temperature; numpy's float64 on the same values.
    Its two terms cancel (β² and β times O(1)): numpy's own float32 result is ~18 eps off
    here, hence ALPHA_BOUND."""
    np_dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(6)
    z, g = (rng.normal(size=SHAPE).astype(np_dtype).astype(np.float64) for _ in range(2))
    zt, gt = xp.asarray(z.astype(np_dtype)), xp.asarray(g.astype(np_dtype))
    for act in (jac.Entmax(1.75), jac.Entmax(1.5, temperature=3.0), jac.Entmax(np.array([[1.3, 2.0, 2.5], [1.5, 1.5, 3.0]]))):
        got = act.alpha_vjp(zt, gt)
        assert tuple(got.shape) == SHAPE[:-1]
        check_result(xp, got, zt, act.alpha_vjp(z, g), dtype_name, f"{act!r} alpha_vjp", ALPHA_BOUND)


def test_target_errors(xp):
    a = xp.asarray(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"y: class indices must be in \[0, 3\).*got values in \[0, 3\]"):
        jac.CrossEntropy().value(a, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"or equal ignore_index=-100\); got values in \[-1, -1\]"):
        jac.CrossEntropy(ignore_index=-100).value(a, xp.asarray(np.array([-1, -100])))
    with pytest.raises(TypeError, match="y: class indices of shape \\(2,\\) must have an integer dtype"):
        jac.NLLLoss().value(a, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y must be class indices of shape \(2,\) or probabilities of shape \(2, 3\)"):
        jac.KLDivergence().value(a, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"y: target probabilities must be in \[0, 1\]"):
        jac.CrossEntropy().value(a, np.full((2, 3), 1.5))
    with pytest.raises(ValueError, match=r"y: binary targets must be in \[0, 1\]"):
        jac.BinaryCrossEntropy().value(a, np.full((2, 3), -0.5))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) does not broadcast against a of shape \(2, 3\)"):
        jac.BinaryCrossEntropy(pos_weight=np.ones(4)).value(a, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"y must have the shape of a, \(2, 3\); got shape \(2,\)"):
        jac.MeanSquaredError().value(a, np.zeros(2))
    with pytest.raises(ValueError, match=r"weight must have shape \(K,\) = \(3,\)"):
        jac.CrossEntropy(weight=np.ones(4)).value(a, np.array([0, 1]))


def test_value_checks_skipped_under_jit():
    """Out-of-range indices are found on concrete arrays; under jit only shapes are checked."""
    jax = pytest.importorskip("jax", reason="the arrays extra's jax is not installed")
    loss = jac.CrossEntropy()
    a = jax.numpy.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="class indices must be in"):
        loss.value(a, jax.numpy.asarray([0, 5]))
    jax.jit(lambda a, y: loss.value(a, y))(a, jax.numpy.asarray([0, 5]))  # traced: not checked
    with pytest.raises(ValueError, match="y must be class indices of shape"):
        jax.jit(lambda a, y: loss.value(a, y))(a, jax.numpy.zeros((3,), dtype=jax.numpy.int32))




class MyCrossEntropy(jac.CrossEntropy):
    """A subclass that changes the numpy math: the parent's generic formula is not its own."""

    def _terms(self, a, t, need_grad):
        values, grads, denom = super()._terms(a, t, need_grad)
        return 2 * values, (None if grads is None else 2 * grads), denom


@pytest.mark.parametrize("loss", [Brier(), MyCrossEntropy()], ids=repr)
def test_no_generic_path(xp, loss):
    a = xp.asarray(np.full((2, 3), 1 / 3))
    y = np.zeros((2, 3)) if isinstance(loss, Brier) else np.array([0, 1])
    name = type(loss).__name__
    for method in ("value", "grad", "value_and_grad", "hessian"):
        with pytest.raises(NotImplementedError, match=f"{name} has no array-API path: write xp_per_sample"):
            getattr(loss, method)(a, y)


class SoftmaxFY(jac.SparsemaxLoss):
    """A Fenchel–Young subclass with its own numpy mapping and no generic twin."""

    def mapping(self, z):
        return jac.Softmax()(z)


def test_a_fenchel_young_mapping_without_its_twin_has_no_generic_path(xp):
    z, y = xp.asarray(np.array([[0.5, -1.0, 2.0], [0.0, 0.1, 0.2]])), np.array([0, 1])
    for call in (lambda: SoftmaxFY().value(z, y), lambda: jac.Head(jac.Identity(), SoftmaxFY()).grad(z, y),
                 lambda: jac.Head(jac.Identity(), SoftmaxFY()).hessian(z, y)):
        with pytest.raises(NotImplementedError, match="SoftmaxFY has no array-API path for mapping: .* no xp_mapping"):
            call()


@pytest.mark.parametrize("name", ["cross_entropy", "nll", "kl_divergence", "binary_cross_entropy", "mse", "huber"])
def test_per_sample_methods(name):
    """The per-sample twins (what a pair rule or a user's subclass builds on) against numpy's."""
    xp = array_namespace_named("array_api_strict")
    loss = jac.LOSSES[name]()
    a_np, y = inputs(loss)
    a = xp.asarray(a_np)
    t = loss.xp_check_targets(xp, a, xp.asarray(y))
    for method in ("per_sample", "per_sample_grad", "per_sample_hessian"):
        got = to_numpy(getattr(loss, "xp_" + method)(xp, a, t))
        assert normwise(got, getattr(loss, method)(a_np, y), "float64") <= BOUND["float64"], method
    if hasattr(loss, "coefficients"):
        c, denom = loss.xp_coefficients(xp, a, t)
        rc, rdenom = loss.coefficients(loss.check_targets(a_np, y), a_np.dtype)
        assert np.array_equal(to_numpy(c), rc) and float(denom) == rdenom


def test_bce_values_elementwise_ulps(xp, dtype_name):
    """BCE's per-entry values on a fine grid of a, in ulps of each entry (not normwise): the
    log of the complement avoids XLA's float64 log1p, off by up to 128 ulp on [−0.413, −0.352]."""
    np_dtype = np.dtype(dtype_name)
    a = np.linspace(0.001, 0.999, 4000).astype(np_dtype).reshape(-1, 4)
    y = np.zeros_like(a)  # the loss is −log(1 − a)
    got = to_numpy(jac.BinaryCrossEntropy(reduction="none").value(xp.asarray(a), y)).astype(np.float64)
    ref = -np.log1p(-a.astype(np.float64))
    ulps = np.abs(got - ref) / np.spacing(np.abs(ref).astype(np_dtype)).astype(np.float64)
    assert ulps.max() <= 4, ulps.max()
