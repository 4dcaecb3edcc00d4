"""A head's factors and Fisher blocks on torch, JAX and array-api-strict arrays.

Every pair row of the check command (``jacobians.checks.plan``) runs on array-api-strict in
float32 and float64, the defaults on torch and JAX (the representative slice, as
``test_arrays_heads``): ``sqrt_ggn`` (the factor S itself where it is unique — the closed
forms and ``Jᵀ diag(√h)`` — and ``S Sᵀ`` always), ``fisher`` of each kind and
``sqrt_ggn_sampled`` against the numpy path in float64 on the same values, normwise in units
of the dtype's epsilon. The Monte-Carlo draws are numpy's: the targets are compared bit for
bit, and the sampled factor to round-off for the same seed. A pair without a Fisher or a
factor raises as numpy does (the same type and message); a pair without a generic path says
so. Then ``jax.jit``, torch's ``requires_grad``, the canonical pair's eigendecomposition
fallback, a loss with numpy math only, and the last layer's row blocks.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import (
    array_namespace_named,
    jax_x64,
    loss_hessian_indefinite,
    loss_specs,
    make_loss,
    make_loss_input,
    make_targets,
    normwise,
    registries_kept,
    target_forms,
    to_numpy,
)

import jacobians as jac
from jacobians import fisher
from jacobians.checks import example_inputs, plan
from jacobians.numerics import sampling

EXTRA = "the arrays extra (array-api-compat, array-api-extra) is not installed"
pytestmark = pytest.mark.arrays
array_api_compat = pytest.importorskip("array_api_compat", reason=EXTRA)

from jacobians._arrays import curvature  # noqa: E402

NAMESPACES = ("array_api_strict", "torch", "jax")
#: normwise tolerance in units of the dtype's epsilon: a factor Jᵀ diag(√h) of a loss whose Hessian
#: is 1/a² near a = 0 (an entmax output with BCE) amplifies the forward's round-off
ULPS = 1024
SHAPE = (2, 3, 4)
M = 3
SEED = 11


#: the pairs JAX runs, under jax.jit (its eager ops compile one by one, each taking longer
#: than the whole jitted function): the closed forms and the chain rule through a simplex
#: map and an elementwise one
JAX_PAIRS = {"sigmoid + binary_cross_entropy", "identity + mse", "softmax + binary_cross_entropy", "tanh + mse"}


def _cases():
    """Every pair row on array-api-strict in float64 and the defaults (no variant) in
    float32 there too; the defaults on torch in both dtypes; :data:`JAX_PAIRS` on JAX in
    float64 under ``jax.jit``, without the Monte-Carlo draws (``test_jax_jit...`` has them)."""
    for e in plan.plan_entries(None)[0]:
        if e.loss is None:
            continue
        default = "(" not in e.label
        for name in NAMESPACES:
            for dt in ("float64", "float32"):
                if name == "array_api_strict" and (default or dt == "float64"):
                    yield pytest.param(e, name, dt, id=f"{name}-{dt}-{e.label}")
                elif (name == "torch" and default) or (name == "jax" and dt == "float64" and e.label in JAX_PAIRS):
                    yield pytest.param(e, name, dt, id=f"{name}-{dt}-{e.label}")






def _outcome(fn):
    """``('ok', value)`` or ``('raised', exception)``."""
    try:
        return "ok", fn()
    except (ValueError, NotImplementedError, TypeError) as exc:
        return "raised", exc


def _no_generic_path(exc) -> bool:
    return isinstance(exc, NotImplementedError) and ("array-API path" in str(exc) or "not available for" in str(exc))


def _factor_is_unique(head) -> bool:
    """The generic factor is numpy's own (not an eigendecomposition of the same blocks)."""
    if head.logits_loss:  # a Fenchel–Young head: the loss's simplex factor
        return True
    if head.ggn_is_hessian:
        return getattr(head.rule, "xp_sqrt_hessian", None) is not None
    return True  # Jᵀ S_a with the built-in loss's own factor (diagonal, or the simplex factor)


def _quantities(head, *, mc=True, sampled=True):
    """name -> f(z, y) of each quantity compared."""
    out = {
        "sqrt_ggn": lambda z, y: head.sqrt_ggn(z, y),
        "exact": lambda z, y: head.fisher(z, y, kind="exact"),
        "empirical": lambda z, y: head.fisher(z, y, kind="empirical"),
    }
    if mc:
        out["mc"] = lambda z, y: head.fisher(z, y, kind="mc", mc_samples=M, seed=SEED)
    if sampled:
        out["sampled"] = lambda z, y: head.sqrt_ggn_sampled(z, M, SEED, y=y)
    return out


@pytest.mark.parametrize("entry, name, dtype_name", list(_cases()))
def test_factors_and_fishers_match_numpy(entry, name, dtype_name):
    xp = array_namespace_named(name)
    head = entry.build(SHAPE[-1])
    z, y = example_inputs(head, shape=SHAPE, dtype=dtype_name, seed=zlib.crc32(entry.label.encode()))
    z64, y64 = z.astype(np.float64), (y.astype(np.float64) if y.dtype.kind == "f" else y)
    tol = ULPS * float(np.finfo(dtype_name).eps)
    with jax_x64(name, dtype_name):
        zt = xp.asarray(z)
        yt = xp.asarray(y) if y.dtype.kind == "f" else y  # class indices as numpy: moved to z's device
        if name == "jax":
            import jax

            yt = xp.asarray(y)
        kw = {"mc": name == "torch", "sampled": name != "jax"}  # (the MC Fisher is S Sᵀ of 'sampled')
        fns = _quantities(head, **kw)
        if name == "jax":  # one compilation for all (each pair of JAX_PAIRS has them all)
            got = {k: ("ok", v) for k, v in jax.jit(lambda z, y: {k: f(z, y) for k, f in fns.items()})(zt, yt).items()}
        else:
            got = {k: _outcome(lambda f=f: f(zt, yt)) for k, f in fns.items()}
    ref = {k: _outcome(lambda f=f: f(z64, y64)) for k, f in _quantities(head, **kw).items()}
    for k, (state, value) in got.items():
        ref_state, ref_value = ref[k]
        if state == "raised" and _no_generic_path(value):
            # the clear error: it names the class that has no generic path
            assert type(head.loss_fn).__name__ in str(value) or type(head.activation).__name__ in str(value), k
            continue
        if ref_state == "raised":
            assert state == "raised", f"{k}: numpy raises {ref_value!r}, the generic path returned"
            assert type(value) is type(ref_value) and str(value) == str(ref_value), k
            continue
        assert state == "ok", f"{k}: {value!r}"
        assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(zt), k
        assert value.dtype == zt.dtype and array_api_compat.device(value) == array_api_compat.device(zt), k
        assert tuple(value.shape) == ref_value.shape, k
        got_np = to_numpy(value)
        if k in ("sqrt_ggn", "sampled"):
            SSt = got_np @ np.swapaxes(got_np, -1, -2)
            assert normwise(SSt, ref_value @ np.swapaxes(ref_value, -1, -2)) <= tol, k
            if k == "sampled" or _factor_is_unique(head):
                assert normwise(got_np, ref_value) <= tol, k
        else:
            assert normwise(got_np, ref_value) <= tol, k


@pytest.mark.parametrize("cls, options", [pytest.param(c, o, id=i) for i, c, o in loss_specs(4)])
def test_loss_factor_and_fisher_blocks_match_numpy(cls, options):
    """Each loss's own pieces on array-api-strict: ``xp_sqrt_hessian`` (its Hessian's
    factor) and ``xp_fisher_blocks``, against ``hessian_operator(a, y).sqrt()`` and
    ``fisher_blocks(a)`` (reached by a pair without a closed form of its own)."""
    xs = array_namespace_named("array_api_strict")
    loss = make_loss(cls, options, 4)
    rng = np.random.default_rng(zlib.crc32(cls.__name__.encode()))
    a = make_loss_input(loss, rng, (2, 3, 4))
    y = make_targets(loss, rng, a.shape, target_forms(loss)[0])
    at = xs.asarray(a)
    tol = 64 * np.finfo(np.float64).eps
    if not type(loss).xp_available:
        return  # (its numpy math only: the walk above asserts the clear error)
    yl = loss.xp_check_targets(xs, at, xs.asarray(y))
    if loss_hessian_indefinite(loss, a, y):  # not convex in a (Gaussian NLL in (μ, σ²)): no real factor, on both
        for sqrt in (lambda: loss.hessian_operator(a, y).sqrt(), lambda: loss.xp_sqrt_hessian(xs, at, yl)):
            with pytest.raises(ValueError, match="indefinite"):
                sqrt()
    else:
        S = to_numpy(loss.xp_sqrt_hessian(xs, at, yl))
        assert normwise(S, loss.hessian_operator(a, y).sqrt()) <= tol
    state, ref = _outcome(lambda: loss.fisher_blocks(a))
    state_xp, got = _outcome(lambda: loss.xp_fisher_blocks(xs, at))
    if state == "raised":
        assert state_xp == "raised" and type(got) is type(ref) and str(got) == str(ref)
    else:
        assert normwise(to_numpy(got), ref.dense()) <= tol


# -- the draws, bit for bit ------------------------------------------------------------------------

PREDICTIVE_LOSSES = {
    "categorical": (jac.CrossEntropy, "simplex"),
    "categorical_log": (jac.NLLLoss, "log_simplex"),
    "bernoulli": (jac.BinaryCrossEntropy, "unit"),
    "gaussian": (jac.MeanSquaredError, "real"),
}


@pytest.mark.parametrize("name", ["array_api_strict", "torch", "jax"])
@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("predictive", sorted(PREDICTIVE_LOSSES))
def test_sampled_targets_are_numpys(predictive, dtype_name, name):
    xp = array_namespace_named(name)
    cls, dom = PREDICTIVE_LOSSES[predictive]
    loss = cls()
    rng = np.random.default_rng(zlib.crc32(predictive.encode()))
    N, K = 400, 5
    x = rng.normal(size=(N, K)) * 2
    p = np.exp(x - x.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    a = {"simplex": p, "log_simplex": np.log(p), "unit": rng.uniform(size=(N, K)), "real": x}[dom].astype(dtype_name)
    ids = np.arange(1000, 1000 + N)
    per = loss.predictive_uniforms(K)
    u = sampling.uniforms_for_rows(SEED, ids, per)
    want = loss.sample_targets(a, u)
    with jax_x64(name, "float64"):  # float64 uniforms (numpy's, bit for bit: test_xp_foundation)
        got = np.asarray(np.from_dlpack(loss.xp_sample_targets(xp, xp.asarray(a), xp.asarray(u))))
    assert got.dtype.kind == want.dtype.kind and got.shape == want.shape
    if predictive == "gaussian":  # a + N(0, ½) through log and cos: the same to round-off
        np.testing.assert_allclose(got, want, rtol=0, atol=8 * np.finfo(dtype_name).eps * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)
        assert len(np.unique(want)) > 1


def test_sampled_columns_are_numpys_for_global_rows():
    """The row blocks' MC factor draws for the global rows given (host ids or an array of
    the namespace), as numpy's ``blocks_for_rows``."""
    xs = array_namespace_named("array_api_strict")
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum"))
    z, y = example_inputs(head, shape=(5, 4), seed=3)
    ids = np.array([7, 2**40, 3, 11, 0])
    ref = fisher.blocks_for_rows(head, "fisher_mc", z, y, key=SEED, mc_samples=4, row_ids=ids)
    for row_ids in (ids, xs.asarray(ids)):
        kind, S = curvature.row_blocks(head, "fisher_mc", xs.asarray(z), y, key=SEED, mc_samples=4, row_ids=row_ids)
        assert kind == "factor" and normwise(to_numpy(S), ref) <= 64 * np.finfo(np.float64).eps
    with pytest.raises(ValueError, match="one index per row"):
        curvature.row_blocks(head, "fisher_mc", xs.asarray(z), y, key=SEED, row_ids=ids[:3])


@pytest.mark.parametrize("kind", ["fisher", "empirical_fisher", "hessian", "ggn"])
def test_row_blocks_match_numpys(kind):
    xs = array_namespace_named("array_api_strict")
    head = jac.Head(jac.Softmax(), jac.CrossEntropy(reduction="sum", ignore_index=-100, weight=np.linspace(0.5, 2, 4)))
    z, _ = example_inputs(head, shape=(6, 4), seed=5)
    y = np.array([0, -100, 3, 1, -100, 2])
    ref = fisher.blocks_for_rows(head, kind, z, y)
    ref = ref if isinstance(ref, np.ndarray) else ref.dense()
    form, got = curvature.row_blocks(head, kind, xs.asarray(z), y)
    assert form == ("factor" if kind == "empirical_fisher" else "blocks")
    assert normwise(to_numpy(got), ref) <= 64 * np.finfo(np.float64).eps


# -- jit, autograd, float32 ------------------------------------------------------------------------


def test_jax_jit_gives_numpys_results_with_the_same_draws():
    jax = pytest.importorskip("jax", reason="the test extra's jax is not installed")
    head = jac.Head(jac.Softmax(temperature=2.0), jac.CrossEntropy(label_smoothing=0.1, ignore_index=-100))
    z, _ = example_inputs(head, shape=(5, 4), seed=1)
    y = np.array([1, -100, 0, 3, 2])
    fns = _quantities(head)
    with jax.enable_x64(True):
        got = jax.jit(lambda z, y: {k: f(z, y) for k, f in fns.items()})(jax.numpy.asarray(z), jax.numpy.asarray(y))
    for k, f in fns.items():
        assert normwise(to_numpy(got[k]), f(z, y)) <= 64 * np.finfo(np.float64).eps, k


def test_torch_requires_grad_gives_plain_tensors_and_float32_stays():
    torch = pytest.importorskip("torch", reason="the test extra's torch (CPU build) is not installed")
    head = jac.Head(jac.Sigmoid(), jac.BinaryCrossEntropy(pos_weight=np.linspace(0.5, 3.0, 4)))
    z0, y0 = example_inputs(head, shape=(5, 4), dtype="float32", seed=2)
    z = torch.tensor(z0, requires_grad=True)
    y = torch.tensor(y0)
    for k, f in _quantities(head).items():
        out = f(z, y)
        assert isinstance(out, torch.Tensor) and not out.requires_grad and out.dtype == torch.float32, k
    with torch.no_grad():
        assert torch.equal(head.sqrt_ggn(z, y), head.sqrt_ggn(z.detach(), y))


# -- raising as numpy does -----------------------------------------------------------------------


class Quartic(jac.ElementwiseLoss):
    """``(a − y)⁴`` per entry, numpy and generic math; predictive Gaussian without a Fisher."""

    predictive = "gaussian"
    sign = 1.0

    def per_element(self, a, y):
        return self.sign * (a - y) ** 4

    def per_element_grad(self, a, y):
        return self.sign * 4 * (a - y) ** 3

    def per_element_hessian(self, a, y):
        return self.sign * 12 * (a - y) ** 2

    def xp_per_element(self, xp, a, y):
        return self.sign * (a - y) ** 4

    def xp_per_element_grad(self, xp, a, y):
        return self.sign * 4 * (a - y) ** 3

    def xp_per_element_hessian(self, xp, a, y):
        return self.sign * 12 * (a - y) ** 2


class Concave(Quartic):
    sign = -1.0


class Saddle(jac.Loss):
    """``a₀ a₁`` per sample: an indefinite Hessian (no real factor)."""

    def per_sample(self, a, y):
        return a[..., 0] * a[..., 1]

    def per_sample_grad(self, a, y):
        return np.stack([a[..., 1], a[..., 0]] + [0 * a[..., 0]] * (a.shape[-1] - 2), axis=-1)

    def per_sample_hessian(self, a, y):
        H = np.zeros(a.shape + a.shape[-1:])
        H[..., 0, 1] = H[..., 1, 0] = 1
        return H

    def xp_per_sample(self, xp, a, y):
        return a[..., 0] * a[..., 1]

    def xp_per_sample_grad(self, xp, a, y):
        return xp.stack([a[..., 1], a[..., 0]] + [0 * a[..., 0]] * (a.shape[-1] - 2), axis=-1)

    def xp_per_sample_hessian(self, xp, a, y):
        k = xp.arange(a.shape[-1])
        pair = ((k[:, None] == 0) & (k[None, :] == 1)) | ((k[:, None] == 1) & (k[None, :] == 0))
        H = xp.zeros(tuple(a.shape) + (a.shape[-1],), dtype=a.dtype)
        return xp.where(pair, xp.ones_like(H), H)


class NumpyFisherOnly(jac.CrossEntropy):
    """Writes ``fisher_blocks`` and ``sample_targets`` for numpy only."""

    def fisher_blocks(self, a):
        return super().fisher_blocks(a)

    def sample_targets(self, a, u):
        return super().sample_targets(a, u)


def _both(xp, head, fn_name, z, y, **kw):
    out = []
    for zz, yy in ((z, y), (xp.asarray(z), xp.asarray(y))):
        out.append(_outcome(lambda zz=zz, yy=yy: getattr(head, fn_name)(zz, yy, **kw)))
    return out


@pytest.mark.parametrize(
    "head, what, kw",
    [
        (jac.Head(jac.Tanh(), Concave()), "sqrt_ggn", {}),  # a negative diagonal
        (jac.Head(jac.Tanh(), Saddle()), "sqrt_ggn", {}),  # an indefinite block (eigh)
        (jac.Head(jac.Identity(), Quartic()), "fisher", {}),  # a Gaussian predictive, no fisher_blocks
        (jac.Head(jac.Tanh(), jac.Huber()), "fisher", {}),  # no predictive
        (jac.Head(jac.Tanh(), jac.Huber()), "sqrt_ggn_sampled", {}),
        (jac.Head(jac.Identity(), jac.MeanAbsoluteError()), "fisher", {"kind": "mc"}),
    ],
    ids=["negative-diagonal", "indefinite", "no-fisher-blocks", "no-predictive", "no-predictive-mc", "mae-mc"],
)
def test_pairs_without_a_factor_or_fisher_raise_as_numpy(head, what, kw):
    xs = array_namespace_named("array_api_strict")
    rng = np.random.default_rng(4)
    z, y = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    if what == "sqrt_ggn_sampled":
        (s_np, e_np), (s_xp, e_xp) = [
            _outcome(lambda zz=zz: head.sqrt_ggn_sampled(zz, 2, 0)) for zz in (z, xs.asarray(z))
        ]
    else:
        (s_np, e_np), (s_xp, e_xp) = _both(xs, head, what, z, y, **kw)
    assert s_np == s_xp == "raised", (e_np, e_xp)
    assert type(e_xp) is type(e_np) and str(e_xp) == str(e_np)


def test_numpy_only_fisher_math_has_no_generic_path():
    xs = array_namespace_named("array_api_strict")
    head = jac.Head(jac.Softmax(), NumpyFisherOnly())
    z, y = np.random.default_rng(0).normal(size=(3, 4)), np.array([0, 1, 2])
    for kind in ("exact", "mc"):
        with pytest.raises(NotImplementedError, match="NumpyFisherOnly has no array-API path for"):
            head.fisher(xs.asarray(z), y, kind=kind)
    assert np.isfinite(head.fisher(z, y)).all()  # numpy keeps its own


def test_canonical_rule_without_a_generic_factor_uses_the_eigendecomposition():
    xs = array_namespace_named("array_api_strict")
    with registries_kept(jac.RULES):

        @jac.register_rule
        class IdentityQuartic(jac.PairRule):
            pairs = ((jac.Identity, Quartic),)
            canonical = True

            def value_and_grad(self, activation, loss, z, y):
                return loss.value_and_grad(z, y)

            def hessian(self, activation, loss, z, y):
                return jac.DiagonalJacobian(12 * (z - y) ** 2 * loss.reduction_scale(z, y))

        head = jac.Head(jac.Identity(), Quartic())
        rng = np.random.default_rng(6)
        z, y = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
        S = to_numpy(head.sqrt_ggn(xs.asarray(z), xs.asarray(y)))
        ref = head.sqrt_ggn(z, y)
        assert S.shape == ref.shape
        assert normwise(S @ np.swapaxes(S, -1, -2), ref @ np.swapaxes(ref, -1, -2)) <= 64 * np.finfo(np.float64).eps


@pytest.mark.parametrize("kind", ["exact", "mc", "empirical"])
def test_fisher_without_targets_as_numpy(kind):
    """Without y, 'mean' divides by the rows (the entries, elementwise); 'empirical' needs y."""
    xs = array_namespace_named("array_api_strict")
    for head in (jac.Head(jac.Softmax(), jac.CrossEntropy()), jac.Head(jac.Sparsemax(), jac.BinaryCrossEntropy())):
        z = np.random.default_rng(8).normal(size=(3, 2, 4))
        ref, got = (
            _outcome(lambda h=head, x=x: h.fisher(x, kind=kind, mc_samples=2, seed=4)) for x in (z, xs.asarray(z))
        )
        assert got[0] == ref[0]
        if ref[0] == "raised":
            assert type(got[1]) is type(ref[1]) and str(got[1]) == str(ref[1])
        else:
            assert normwise(to_numpy(got[1]), ref[1]) <= 64 * np.finfo(np.float64).eps
