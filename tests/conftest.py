"""Shared fixtures and input makers for the test suite.

The tests walk the registries (``ACTIVATIONS``, ``LOSSES``, ``FUSED``, ``pairs()``), so
the helpers here make inputs and targets for any activation or loss from what it
declares: its input domain, its target kind, and whether it is a loss of the logits.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import jacobians as jac
from jacobians.domains import domain

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's id: deterministic, and different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@contextlib.contextmanager
def registries_kept(*registries):
    """Snapshot each registry (a dict, or a view such as ``FUSED``) and restore them, in that
    order, on the way out."""
    saved = [(reg, dict(reg)) for reg in registries]
    try:
        yield
    finally:
        for reg, snapshot in saved:
            reg.clear()
            reg.update(snapshot)


@pytest.fixture
def restore_registries():
    """Snapshot ``ACTIVATIONS``, ``LOSSES``, ``FUSED`` and ``RULES`` and restore them after the test."""
    with registries_kept(jac.ACTIVATIONS, jac.LOSSES, jac.fused.FUSED, jac.RULES):
        yield


# -- instances and variants ------------------------------------------------------------------

REDUCTIONS = ("mean", "sum", "none")
IGNORE = jac.losses.classification.IGNORE_INDEX


def default_instance(cls):
    """``cls()``, or None when the class needs arguments."""
    try:
        return cls()
    except TypeError:
        return None


def variant_options(cls, K: int = 4) -> list:
    """``[{}, *variants]`` of a registered class, each a function of K giving the keywords
    (``cls.variants(K)`` shapes its class weights by K)."""
    return [lambda K: {}] + [lambda K, i=i: cls.variants(K)[i] for i in range(len(cls.variants(K)))]


def describe(cls, options: dict) -> str:
    """``name`` or ``name(key=value, ...)``; array values show as their key alone."""
    name = jac.registry.registry_name(cls)
    if not options:
        return name
    return name + "(" + ",".join(k if isinstance(v, np.ndarray) else f"{k}={v}" for k, v in options.items()) + ")"


def activation_cases(K: int = 4) -> list:
    """``pytest.param(activation)`` for every registered activation and its variants."""
    out = []
    for cls in jac.ACTIVATIONS.values():
        for options in [{}] + cls.variants(K):
            act = cls(**options) if options else default_instance(cls)
            if act is not None:
                out.append(pytest.param(act, id=describe(cls, options)))
    return out


def make_loss(cls, options, K: int, reduction: str = "mean"):
    """An instance of ``cls`` with ``options`` (a dict, or a function of K giving one) and
    ``reduction``."""
    kwargs = options(K) if callable(options) else options
    return cls(reduction=reduction, **kwargs)


def pair_options(acls, lcls, K: int = 4) -> list[tuple[dict, object]]:
    """``(activation keywords, loss options)`` of every variant of the activation with every
    variant of the loss that makes a valid head (an ``Entmax`` and an ``EntmaxLoss`` of
    different α are not a pair)."""
    out = []
    for aopt in [{}] + acls.variants(K):
        for lopt in variant_options(lcls, K):
            try:
                jac.Head(acls(**aopt), make_loss(lcls, lopt, K))
            except ValueError:
                continue
            out.append((aopt, lopt))
    return out


def loss_specs(K: int = 4) -> list[tuple[str, type, object]]:
    """``(id, class, options)`` for every registered loss and its variants (options a
    function of K)."""
    out = []
    for cls in jac.LOSSES.values():
        if default_instance(cls) is None:
            continue
        for options in variant_options(cls, K):
            out.append((describe(cls, options(K)), cls, options))
    return out


# -- references -----------------------------------------------------------------------------------


def entmax_longdouble(x, alpha) -> np.ndarray:
    """α-entmax of rows ``x`` (..., K) in long double: bisection on τ to 2^-90, then Newton on
    the support; independent of the library's kernel (plain powers of ``x − τ``). ``alpha``
    a number or an array broadcasting against ``x.shape[:-1] + (1,)``."""
    LD = np.longdouble
    x = np.asarray(x).astype(LD)
    a1 = np.asarray(alpha).astype(LD) - 1
    beta = 1 / a1
    xs = a1 * (x - x.max(axis=-1, keepdims=True))
    lo, hi = np.full(xs.shape[:-1] + (1,), LD(-1)), np.zeros(xs.shape[:-1] + (1,), LD)
    for _ in range(90):
        mid = (lo + hi) / 2
        above = (np.maximum(xs - mid, 0) ** beta).sum(axis=-1, keepdims=True) >= 1
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    tau = lo
    for _ in range(3):
        u = xs - tau
        on = u > 0
        us = np.where(on, u, 1)
        f = np.where(on, us**beta, 0).sum(axis=-1, keepdims=True) - 1
        fp = beta * np.where(on, us ** (beta - 1), 0).sum(axis=-1, keepdims=True)
        new = tau + f / fp
        tau = np.where((new < np.where(on, xs, np.inf).min(axis=-1, keepdims=True)) & (new > lo - 1), new, tau)
    return np.maximum(xs - tau, 0) ** beta


def fd_hessian_blocks(head, z, y, h=1e-5) -> np.ndarray:
    """A head's Hessian blocks (N, K, K) at rows ``z`` (N, K), from central differences of its
    'vjp' gradient (rows do not interact)."""
    N, K = z.shape
    H = np.empty((N, K, K))
    for j in range(K):
        zp, zm = z.copy(), z.copy()
        zp[:, j] += h
        zm[:, j] -= h
        H[:, :, j] = (head.grad(zp, y, method="vjp") - head.grad(zm, y, method="vjp")) / (2 * h)
    return H


# -- inputs ------------------------------------------------------------------------------------


def softmax_rows(x: np.ndarray) -> np.ndarray:
    """Plain numpy softmax over the last axis (input making only)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_logits(rng, shape, *, scale: float = 1.0, dtype=np.float64) -> np.ndarray:
    return (rng.normal(size=shape) * scale).astype(dtype)


def make_loss_input(loss, rng, shape, dtype=np.float64) -> np.ndarray:
    """An input ``a`` inside the loss's domain, away from its boundaries (so that finite
    differences stay inside it): probabilities >= ~0.05, log-probabilities, logits, ..."""
    if getattr(loss, "example_input", None) is not None:  # the loss's own draw inside its domain
        return np.asarray(loss.example_input(tuple(shape), rng), dtype=dtype)
    if loss.logits_of is not None:
        return make_logits(rng, shape, scale=1.5, dtype=dtype)
    d = domain(loss.input_domain)
    x = rng.normal(size=shape) * 0.5
    if d.issubset("simplex"):
        a = softmax_rows(x)
    elif d.issubset("log_simplex"):
        a = np.log(softmax_rows(x))
    elif d.issubset("unit_interval"):
        a = rng.uniform(0.05, 0.95, size=shape)
    elif d.issubset("signed_unit_interval"):
        a = rng.uniform(-0.9, 0.9, size=shape)
    elif d.issubset("nonnegative"):
        a = rng.uniform(0.1, 2.0, size=shape)
    elif d.issubset("nonpositive"):
        a = -rng.uniform(0.1, 2.0, size=shape)
    else:
        a = rng.normal(size=shape)
    return a.astype(dtype)


def fit_shape(shape, *objs) -> tuple:
    """``shape`` with its last axis rounded up to the multiple that every one of ``objs``
    needs: its ``width_multiple`` (an activation, a loss, their classes, or a Head: both of
    its parts), e.g. 2 for an input ``[means | variances]`` (MeanVariance, GaussianNLL).
    Objects that declare nothing take any width."""
    m = 1
    for obj in objs:
        parts = (obj.activation, obj.loss_fn) if isinstance(obj, jac.Head) else (obj,)
        for part in parts:
            m = math.lcm(m, int(getattr(part, "width_multiple", 1)))
    shape = tuple(shape)
    return shape[:-1] + (-(-shape[-1] // m) * m,)


def make_head_logits(head, rng, shape, *, scale: float = 1.0, dtype=np.float64) -> np.ndarray:
    """Logits ``z`` for ``head``: where its activation is the identity, ``z`` is the loss's
    own input, so a loss with an ``example_input`` draws it (a positive variance half for
    GaussianNLL); else normal logits times ``scale``."""
    own = getattr(head.loss_fn, "example_input", None)
    if own is not None and isinstance(head.activation, jac.Identity):
        return np.asarray(own(tuple(shape), rng), dtype=np.float64).astype(dtype)
    return make_logits(rng, shape, scale=scale, dtype=dtype)


def widen(z, obj) -> np.ndarray:
    """An array ``z`` (hypothesis' logits) widened to the width ``obj`` needs (its
    ``width_multiple``, :func:`fit_shape`) by repeating each row's first entries: its own
    values; ``z`` itself where it fits."""
    extra = fit_shape(z.shape, obj)[-1] - z.shape[-1]
    return z if extra == 0 else np.concatenate([z, z[..., :extra]], axis=-1)


def head_input_like(head, z, seed) -> np.ndarray:
    """Logits for ``head`` from drawn logits ``z`` (any width and magnitude): ``z`` widened to
    the head's width; where z is the loss's own input (an Identity head of a loss with an
    ``example_input``: [μ | σ²] with σ² > 0) the loss's own draw scaled to z's magnitude
    (so up to ±1e4 as z), in z's dtype."""
    z = widen(z, head)
    own = getattr(head.loss_fn, "example_input", None)
    if own is None or not isinstance(head.activation, jac.Identity):
        return z
    scale = max(1.0, float(np.abs(z).max(initial=0.0)))
    return (np.asarray(own(z.shape, np.random.default_rng(seed))) * scale).astype(z.dtype)


def loss_hessian_indefinite(head, z, y, *, tol: float | None = None, scaled: bool = False) -> bool:
    """Whether the head's loss is not convex in its input at ``(z, y)``: its own dense
    Hessian in its input ``x`` (the activation's output, or z itself for a loss of the
    logits), computed here in float64, has a row with an eigenvalue below −``tol`` × that
    row's largest (default 1e3·eps of z's dtype, the round-off a factor allows). That Hessian is
    checked against central differences of the loss's gradient for every registered loss
    (test_second_order), and the decision reads none of the GGN or ``sqrt_ggn`` code it
    judges: where it holds, ``sqrt_ggn`` must refuse ("indefinite": Gaussian NLL in
    (μ, σ²)); where it does not, the GGN is PSD and ``sqrt_ggn`` factors it. ``head`` may
    be a loss alone: ``z`` is then its input. ``scaled``: judge each row after the congruence
    ``D^{-1/2} H D^{-1/2}``, D = |diag H| (same signs of eigenvalues, Sylvester), so that a
    negative eigenvalue tiny beside a huge one (Gaussian NLL at σ² ≈ 1e-3, a GGN the
    activation's Jacobian rescales) still counts: whether the loss is convex there, not
    whether a factor's round-off allowance hides it (``scaled=False``, ``sqrt_ggn``'s own rule)."""
    dtype = np.asarray(z).dtype if np.asarray(z).dtype.kind == "f" else np.dtype(np.float64)
    tol = 1e3 * float(np.finfo(dtype).eps) if tol is None else tol
    z = np.asarray(z, dtype=np.float64)
    if isinstance(head, jac.Head):
        loss = head.loss_fn
        x = z if head.logits_loss else np.asarray(head.activation(z), dtype=np.float64)
    else:  # a loss and its input
        loss, x = head, z
    y = np.asarray(y).astype(np.float64) if np.asarray(y).dtype.kind == "f" else y
    W = x.shape[-1]
    with np.errstate(all="ignore"):  # a row whose Hessian overflows (KL at p ≈ 0) cannot be judged: left out
        H = np.asarray(loss.with_reduction("sum").hessian(x, y), dtype=np.float64).reshape(-1, W, W)
        H = H[np.isfinite(H).all(axis=(-2, -1))]
        if scaled:
            d = np.sqrt(np.abs(np.einsum("nii->ni", H)))
            d = np.where(d > 0, d, 1.0)
            H = H / d[:, :, None] / d[:, None, :]
        H = H / np.maximum(np.abs(H).max(axis=(-2, -1), keepdims=True, initial=0.0), 1e-300)
    lam = np.linalg.eigvalsh((H + np.swapaxes(H, -1, -2)) / 2)
    scale = np.maximum(np.abs(lam).max(axis=-1, initial=0.0), 1e-300)
    return bool(np.any(lam.min(axis=-1, initial=0.0) < -tol * scale))


#: a loss's ``values_layout`` -> the shape of its 'none' values for an input of ``shape``
VALUES_LAYOUTS = {
    "same": lambda shape: tuple(shape),  # one value per entry (an ElementwiseLoss)
    "rows": lambda shape: tuple(shape[:-1]),  # one value per row
    "half": lambda shape: tuple(shape[:-1]) + (shape[-1] // 2,),  # one per pair [means | variances]
}


def values_shape(loss, shape) -> tuple:
    """The shape of ``loss``'s 'none' values for an input ``a`` of ``shape``: as its declared
    ``values_layout`` says, else one per entry (an ElementwiseLoss) or one per row."""
    layout = getattr(loss, "values_layout", None) or ("same" if isinstance(loss, jac.ElementwiseLoss) else "rows")
    return VALUES_LAYOUTS[layout](shape)


def target_forms(loss) -> list[str]:
    """The target forms a loss takes: class losses 'index', 'onehot', 'soft' (no one-hot
    rows when an ignore_index is set); 'binary'/'soft' for probabilities; 'real'."""
    if getattr(loss, "example_targets", None) is not None:
        return ["example"]
    kind = getattr(loss, "target_kind", "real")
    if kind == "class":
        if getattr(loss, "ignore_index", None) is not None:
            return ["index", "soft"]
        return ["index", "onehot", "soft"]
    if kind == "probability":
        return ["binary", "soft"]
    return ["real"]


def make_targets(loss, rng, shape, form: str, dtype=np.float64):
    """Targets of ``form`` for ``a`` of ``shape``; index targets hit ``ignore_index`` on some
    samples when the loss has one (but never on all of them)."""
    if form == "example":  # the loss's own draw (targets shaped unlike its input)
        y = loss.example_targets(tuple(shape), rng)
        return y.astype(dtype) if y.dtype.kind == "f" else y
    K = shape[-1]
    batch = shape[:-1]
    if form in ("index", "onehot"):
        idx = rng.integers(0, K, size=batch)
        ignore = getattr(loss, "ignore_index", None)
        if form == "index" and ignore is not None and idx.size > 1:
            flat = idx.reshape(-1)
            flat[1::3] = ignore
            idx = flat.reshape(batch)
        return idx if form == "index" else np.eye(K, dtype=dtype)[idx]
    if form == "soft":
        if getattr(loss, "target_kind", None) == "class":
            return rng.dirichlet(np.ones(K), size=batch).astype(dtype)
        return rng.uniform(0, 1, size=shape).astype(dtype)
    if form == "binary":
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def head_targets(head, rng, shape, dtype=np.float64):
    """Targets for a head's loss: the first form it takes (indices for class losses)."""
    return make_targets(head.loss_fn, rng, shape, target_forms(head.loss_fn)[0], dtype)


def head_methods(head) -> list[str]:
    """Every method that applies to ``head``: 'fused' where a rule exists, 'vjp' and
    'jacobian' unless the loss is a Fenchel–Young loss of its own mapping's logits."""
    methods = ["fused"] if head.fused_rule is not None else []
    if not head.logits_loss:
        methods += ["vjp", "jacobian"]
    return methods


def readonly(x):
    """A read-only copy of ``x`` (arrays only)."""
    if not isinstance(x, np.ndarray):
        return x
    y = x.copy()
    y.flags.writeable = False
    return y


# -- a non-symmetric custom activation, and its layout bug (shared by test_checks, test_cli,
# -- test_edges, test_references and test_second_order) --


class ScaledTanh(jac.Activation):
    """``a_i = tanh(z_i) · z_0``: J = diag((1 − t²) z_0) + t e_0ᵀ, not symmetric."""

    def forward(self, z):
        return np.tanh(z) * z[..., :1]

    def jacobian(self, z, *, out=None, workers=None):
        t = np.tanh(z)
        J = np.zeros(z.shape + z.shape[-1:], dtype=z.dtype)
        jac.diagonal(J)[...] = (1 - t**2) * z[..., :1]
        J[..., :, 0] += t
        return J


class TransposedJacobian(ScaledTanh):
    def jacobian(self, z, *, out=None, workers=None):
        return np.swapaxes(super().jacobian(z), -1, -2)


# -- a user's loss in two methods, and in three (shared by test_checks, test_custom, test_references,
# -- test_rules and test_second_order) --


class Brier(jac.Loss):
    """Σ_k (a_k − y_k)² per sample; does not call ``super().__init__`` (class default reduction)."""

    input_domain = "simplex"
    target_kind = "probability"

    def per_sample(self, a, y):
        return ((a - y) ** 2).sum(axis=-1)

    def per_sample_grad(self, a, y):
        return 2 * (a - y)


class BrierWithHessian(Brier):
    """:class:`Brier` with its second derivative written out: ``2 I`` per sample."""

    def per_sample_hessian(self, a, y):
        return 2 * np.broadcast_to(np.eye(a.shape[-1]), a.shape + a.shape[-1:])


# -- peak memory of a fresh process ----------------------------------------------------------------

_VMHWM = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jacobians as jac

    def vmhwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    """
)


def peak_rss(script: str, *args) -> dict:
    """Run ``script`` in a fresh Python process (with ``vmhwm()``, the peak RSS in bytes so
    far, ``json``, ``sys``, ``np`` and ``jac`` defined) and return the JSON object it prints last."""
    code = _VMHWM + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the generic (array API) path's namespaces: test_xp_foundation and test_arrays_* -----------


def array_namespace_named(name: str):
    """The namespace a generic-path test runs on (``'numpy'`` is array_api_compat's wrapper),
    skipped, naming what is missing, where it is not installed."""
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp
    if name == "array_api_strict":
        return pytest.importorskip(
            "array_api_strict", reason="array-api-strict (the arrays tests' reference namespace) is not installed"
        )
    if name == "torch":
        pytest.importorskip("torch", reason="the test extra's torch (CPU build) is not installed")
        import array_api_compat.torch as xp

        return xp
    jax = pytest.importorskip("jax", reason="the test extra's jax is not installed")
    return jax.numpy


def to_numpy(x) -> np.ndarray:
    """A generic array (detached from autograd) as a float64 numpy array, through DLPack."""
    if hasattr(x, "detach"):
        x = x.detach()
    return np.asarray(np.from_dlpack(x), dtype=np.float64)


def normwise(got, ref) -> float:
    """``max |got − ref| / max |ref|`` over the whole result (a row whose exact value is 0,
    say an MAE gradient that cancels, is measured against the batch's largest entry)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max(initial=0.0)), np.finfo(np.float64).tiny)
    return float(np.abs(got - ref).max(initial=0.0)) / scale


@contextlib.contextmanager
def jax_x64(name: str, dtype_name: str):
    """JAX runs float32 with x64 off and float64 with it on; other namespaces as they are."""
    if name != "jax":
        yield
        return
    import jax

    with jax.enable_x64(dtype_name == "float64"):
        yield


def walk_params(params, is_default):
    """``(xp_name, *values)`` parameters of a registry walk on the generic path: every
    instance on array-api-strict, the defaults on torch and JAX (the same code on every
    namespace: the representative slice that keeps CI's time)."""
    out = []
    for name in ("array_api_strict", "torch", "jax"):
        for p in params:
            if name == "array_api_strict" or is_default(p):
                out.append(pytest.param(name, *p.values, id=f"{name}-{p.id}"))
    return out


@pytest.fixture(params=["float32", "float64"])
def dtype_name(request):
    return request.param


@pytest.fixture
def xp(xp_name, dtype_name):
    """The namespace named by the test module's ``xp_name`` fixture, in ``dtype_name``'s x64 mode."""
    ns = array_namespace_named(xp_name)
    with jax_x64(xp_name, dtype_name):
        yield ns


@pytest.fixture(autouse=True)
def _mpmath_precision_restored():
    """A test that sets mpmath's global precision (``mp.dps = ...``) leaves it as it found it:
    the modules that compare with mpmath set their own at import and rely on it."""
    mpmath = sys.modules.get("mpmath")
    saved = None if mpmath is None else mpmath.mp.prec
    yield
    if saved is not None:
        mpmath.mp.prec = saved
