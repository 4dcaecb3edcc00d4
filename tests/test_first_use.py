"""What a new user meets first: public signatures, registry names of custom classes, inputs
of the wrong kind (dtypes, ragged lists) and NaN in the inputs.

Each part walks the registries (or ``jacobians.__all__``), so that a class added later is
covered here too.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import jacobians as jac
from jacobians.registry import registry_name

# -- public signatures ----------------------------------------------------------------------------


def _public_callables():
    for name in jac.__all__:
        obj = getattr(jac, name)
        if inspect.isclass(obj):
            for attr, member in inspect.getmembers(obj):
                if callable(member) and (not attr.startswith("_") or attr in ("__init__", "__call__")):
                    yield f"{name}.{attr}", member
        elif callable(obj):
            yield name, obj


def test_no_public_signature_shows_a_private_parameter():
    """A parameter starting with '_' is an internal switch: it must not show in the API docs."""
    seen, private = 0, []
    for where, fn in _public_callables():
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature
            continue
        seen += 1
        private += [f"{where}({p})" for p in sig.parameters if p.startswith("_")]
    assert seen > 100  # the walk reached the classes' methods
    assert not private, f"private parameters in public signatures: {private}"


def test_value_and_grad_and_grad_and_loss_agree_after_the_split(rng):
    """``grad`` and ``loss`` share ``value_and_grad``'s code path: same numbers."""
    z = rng.normal(size=(6, 4))
    y = rng.integers(0, 4, size=6)
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    for method in ("fused", "vjp", "jacobian"):
        value, g = head.value_and_grad(z, y, method)
        np.testing.assert_array_equal(g, head.grad(z, y, method))
        np.testing.assert_allclose(value, head.loss(z, y), rtol=1e-14)


# -- registry names of custom classes ---------------------------------------------------------------

SNAKE = {
    "GCE": "gce",
    "BCE": "bce",
    "MSELoss": "mse_loss",
    "HTTPResponse": "http_response",
    "CrossEntropy": "cross_entropy",
    "KLDivergence": "kl_divergence",
    "BinaryCrossEntropy": "binary_cross_entropy",
    "LogSoftmax": "log_softmax",
    "Entmax15": "entmax15",
    "Entmax15Loss": "entmax15_loss",
    "SparsemaxLoss": "sparsemax_loss",
    "L2Loss": "l2_loss",
    "Softmax": "softmax",
    "focal": "focal",
}


@pytest.mark.parametrize(("cls_name", "expected"), SNAKE.items(), ids=list(SNAKE))
def test_class_names_become_snake_case_with_acronyms_kept_together(cls_name, expected):
    cls = type(cls_name, (jac.Loss,), {})
    assert registry_name(cls) == expected


def test_a_registered_custom_loss_named_with_an_acronym(restore_registries):
    class GCE(jac.Loss):
        def per_sample(self, a, y):
            return (a - y).sum(axis=-1)

        def per_sample_grad(self, a, y):
            return np.ones_like(a)

    jac.register_loss(GCE)
    assert jac.LOSSES["gce"] is GCE and "g_c_e" not in jac.LOSSES


def test_every_built_in_keeps_its_registry_name():
    """The names users pass to ``get_activation``/``get_loss`` and the CLI: unchanged."""
    for registry in (jac.ACTIVATIONS, jac.LOSSES):
        for key, cls in registry.items():
            assert registry_name(cls) == key, (key, cls)
    assert list(jac.ACTIVATIONS) == [
        "softmax", "log_softmax", "sigmoid", "tanh", "relu", "leaky_relu", "identity", "softplus",
        "sparsemax", "entmax15", "entmax", "mean_variance", "exp",
    ]
    assert list(jac.LOSSES) == [
        "cross_entropy", "nll", "binary_cross_entropy", "mse", "mae", "huber", "kl_divergence",
        "sparsemax_loss", "entmax15_loss", "entmax_loss", "plackett_luce", "gaussian_nll",
        "focal", "binary_focal", "poly1", "poisson_nll", "multi_margin",
    ]


# -- ragged lists ---------------------------------------------------------------------------------


def _ragged(x):
    """``x`` as a nested list with one entry of the wrong length."""
    rows = np.asarray(x).tolist()
    if np.ndim(x) >= 2:
        rows[-1] = rows[-1][:-1]
    else:
        rows[0] = [rows[0], rows[0]]
    return rows


def _calls(rng, N=3, K=4):
    """``(label, function, kwargs)``: every public entry point that takes arrays, for every
    registered activation, loss and valid pair, with good inputs."""
    from conftest import default_instance, head_targets, make_loss_input, make_targets, target_forms

    z = rng.normal(size=(N, K))
    v = rng.normal(size=(N, K))
    for name, cls in jac.ACTIVATIONS.items():
        act = default_instance(cls)
        if act is None:
            continue
        for meth in ("forward", "jacobian", "jacobian_operator", "hessian"):
            yield f"{name}.{meth}", getattr(act, meth), {"z": z}
        for meth, other in (("vjp", "g"), ("jvp", "v"), ("hessian_vjp", "g")):
            yield f"{name}.{meth}", getattr(act, meth), {"z": z, other: v}
    for name, cls in jac.LOSSES.items():
        loss = default_instance(cls)
        if loss is None:
            continue
        a = make_loss_input(loss, rng, (N, K))
        for form in target_forms(loss):
            y = make_targets(loss, rng, (N, K), form)
            for meth in ("value", "grad", "value_and_grad", "hessian", "hessian_operator"):
                yield f"{name}.{meth}[{form}]", getattr(loss, meth), {"a": a, "y": y}
            yield f"{name}.hvp[{form}]", loss.hvp, {"a": a, "y": y, "v": v}
    for pair in jac.pairs():
        head = jac.Head(default_instance(jac.ACTIVATIONS[pair.activation]), default_instance(jac.LOSSES[pair.loss]))
        y = head_targets(head, rng, (N, K))
        label = f"Head({pair.activation}, {pair.loss})"
        for meth in ("loss", "grad", "value_and_grad", "hessian", "ggn", "sqrt_ggn", "fisher"):
            yield f"{label}.{meth}", getattr(head, meth), {"z": z, "y": y}
        yield f"{label}.hvp", head.hvp, {"z": z, "y": y, "v": v}
        yield f"{label}.sqrt_ggn_sampled", head.sqrt_ggn_sampled, {"z": z}
    head = jac.Head(jac.Softmax(), jac.CrossEntropy())
    y = rng.integers(0, K, size=N)
    x = rng.normal(size=(N, 5))
    yield "contract", jac.contract, {"dE_da": v, "J": jac.Softmax().jacobian(z)}
    yield "linear_gradient", jac.linear_gradient, {"head": head, "x": x, "z": z, "y": y}
    yield "linear_curvature", jac.linear_curvature, {"head": head, "x": x, "z": z, "y": y}


def test_a_ragged_list_is_a_value_error_naming_the_argument(rng):
    """Every array argument of every entry point: a ragged nested list gets a message of ours
    (the argument, what was expected, what came), not numpy's "inhomogeneous shape"."""
    checked, failures = 0, []
    for label, fn, kwargs in _calls(rng):
        try:
            fn(**kwargs)
        except (NotImplementedError, ValueError, TypeError):
            continue  # this entry point does not apply to this class (e.g. no second derivative)
        for arg, value in kwargs.items():
            if not isinstance(value, np.ndarray) or value.ndim == 0:
                continue
            try:
                fn(**{**kwargs, arg: _ragged(value)})
            except ValueError as err:
                msg = str(err)
                if not (msg.startswith(f"{arg} ") and "ragged" in msg and "inhomogeneous" not in msg):
                    failures.append(f"{label}({arg}=ragged): {msg[:160]}")
            except Exception as err:  # noqa: BLE001 - any other kind is a failure, reported below
                failures.append(f"{label}({arg}=ragged): {type(err).__name__}: {str(err)[:160]}")
            else:
                failures.append(f"{label}({arg}=ragged): no error")
            checked += 1
    assert checked > 300
    assert not failures, f"{len(failures)} of {checked}:\n" + "\n".join(failures[:40])


# -- NaN in the inputs: row by row, as in torch ----------------------------------------------------

BAD = 2  # the row that holds a NaN
#: activations whose derivative is piecewise constant: finite at a NaN, as in torch
PIECEWISE_LINEAR = tuple(jac.ACTIVATIONS[name] for name in ("relu", "leaky_relu", "identity"))


def _rows_match(x, clean, what):
    """Row BAD holds a NaN; every other row equals the clean run's to round-off (a NaN
    anywhere may switch a batch-wide choice such as softmax's max shift)."""
    x, clean = np.asarray(x), np.asarray(clean)
    assert np.isnan(x[BAD]).any(), f"{what}: the NaN row has no NaN: {x[BAD]}"
    others = np.arange(x.shape[0]) != BAD
    eps = np.finfo(x.dtype).eps
    scale = np.abs(clean[others]).max(initial=1.0)
    np.testing.assert_allclose(x[others], clean[others], rtol=16 * eps, atol=16 * eps * scale, err_msg=what)


def _with_nan(z):
    """``z`` with a NaN in row BAD's last entry (a variance of MeanVariance's [means |
    variances]: a mean's derivative is the identity's, 1 at a NaN as well)."""
    zn = z.copy()
    zn[BAD, -1] = np.nan
    return zn


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_in_the_logits_stays_in_its_row_for_every_activation(dtype, rng):
    from conftest import activation_cases

    z = rng.normal(size=(5, 4)).astype(dtype)
    v = rng.normal(size=(5, 4)).astype(dtype)
    zn = _with_nan(z)
    for case in activation_cases():
        act = case.values[0]
        for what, fn in (
            ("forward", lambda x, act=act: act(x)),
            ("jacobian", lambda x, act=act: act.jacobian(x)),
            ("vjp", lambda x, act=act: act.vjp(x, v)),
            ("jvp", lambda x, act=act: act.jvp(x, v)),
        ):
            if what != "forward" and isinstance(act, PIECEWISE_LINEAR):
                # the derivative at a NaN is the negative side's (relu 0, leaky_relu its slope,
                # identity 1), as torch's leaky_relu (torch's relu takes 1); a head's dE/dz is
                # NaN all the same, as dE/da is
                z_finite = np.where(np.isnan(zn), -1, zn).astype(dtype)
                np.testing.assert_array_equal(fn(zn), fn(z_finite))
                continue
            out = fn(zn)
            assert out.dtype == dtype
            _rows_match(out, fn(z), f"{case.id}.{what}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_in_the_logits_stays_in_its_row_for_every_pair_method_and_reduction(dtype, rng):
    """dE/dz by every method and the 'none' losses: NaN in the NaN row only; 'mean' and
    'sum' are NaN (as torch's)."""
    from conftest import default_instance, head_methods, head_targets, make_head_logits

    checked = 0
    for pair in jac.pairs():
        act = default_instance(jac.ACTIVATIONS[pair.activation])
        loss_cls = jac.LOSSES[pair.loss]
        z = make_head_logits(jac.Head(act, loss_cls()), rng, (5, 4), dtype=dtype)  # σ² > 0 where z is [μ | σ²]
        zn = _with_nan(z)
        y = head_targets(jac.Head(act, loss_cls()), rng, z.shape, dtype)
        for reduction in ("none", "sum", "mean"):
            head = jac.Head(act, loss_cls(reduction=reduction))
            what = f"{head!r} {reduction}"
            for method in head_methods(head):
                value, g = head.value_and_grad(zn, y, method)
                clean_value, clean_g = head.value_and_grad(z, y, method)
                _rows_match(g, clean_g, f"{what} grad {method}")
                if reduction == "none":
                    _rows_match(value, clean_value, f"{what} value {method}")
                else:
                    assert np.isnan(value), f"{what} value {method}: {value}"
                checked += 1
            if reduction == "none":
                _rows_match(head.loss(zn, y), head.loss(z, y), f"{what} loss")
            else:
                assert np.isnan(head.loss(zn, y)), what
    assert checked > 100


# -- dtypes: float16 is computed in float32, long double in float64, the rest is refused ----------


def _arrays_of(out):
    if isinstance(out, np.ndarray):
        return [out]
    if isinstance(out, tuple):
        return [x for o in out for x in _arrays_of(o)]
    if hasattr(out, "dense"):
        return [out.dense()]
    return [np.asarray(out)]


@pytest.mark.parametrize(("given", "computed"), [(np.float16, np.float32), (np.longdouble, np.float64)])
def test_float16_comes_back_float32_and_long_double_float64(given, computed, rng):
    """As documented in docs/concepts.md (dtypes): no float16 or long double arithmetic."""
    checked = 0
    for label, fn, kwargs in _calls(rng):
        try:
            fn(**kwargs)
        except (NotImplementedError, ValueError, TypeError):
            continue
        cast = {k: v.astype(given) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for k, v in kwargs.items()}
        for out in _arrays_of(fn(**cast)):
            assert out.dtype == computed, f"{label}: {out.dtype}"
        checked += 1
    assert checked > 300


def _bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 comes from ml_dtypes (installed with jax)")
    return ml_dtypes.bfloat16


@pytest.mark.parametrize("kind", ["complex", "object", "bfloat16", "str"])
def test_complex_object_bfloat16_and_strings_are_a_type_error_naming_the_argument(kind, rng):
    make = {
        "complex": lambda x: x.astype(np.complex128),
        "object": lambda x: x.astype(object),
        "bfloat16": lambda x: x.astype(_bfloat16()),
        "str": lambda x: x.astype(str),
    }[kind]
    checked, failures = 0, []
    for label, fn, kwargs in _calls(rng):
        try:
            fn(**kwargs)
        except (NotImplementedError, ValueError, TypeError):
            continue
        for arg, value in kwargs.items():
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                continue
            try:
                fn(**{**kwargs, arg: make(value)})
            except TypeError as err:
                if not (str(err).startswith(f"{arg} ") and "dtype" in str(err)):
                    failures.append(f"{label}({arg}): {str(err)[:160]}")
            except Exception as err:  # noqa: BLE001 - any other kind is a failure, reported below
                failures.append(f"{label}({arg}): {type(err).__name__}: {str(err)[:160]}")
            else:
                failures.append(f"{label}({arg}): no error")
            checked += 1
    assert checked > 300
    assert not failures, f"{len(failures)} of {checked}:\n" + "\n".join(failures[:40])
