"""check_extreme: logits of ±1e4, where finite differences say nothing."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .._validation import alpha_rows, as_float_array
from ..activations import Activation, Entmax, Entmax15, Identity, LogSoftmax, Sigmoid, Softmax, Sparsemax
from ..head import Head
from ..losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    Entmax15Loss,
    EntmaxLoss,
    KLDivergence,
    MeanSquaredError,
    NLLLoss,
    SparsemaxLoss,
)
from .head import method_results
from .inputs import extreme_inputs, prepare_targets
from .report import CheckReport, _batched_jvp, _batched_vjp, _Failed, _readonly, _require, _Rows, _run, _subject


def _reduce(loss, values, grads, denom):
    red = loss.reduction
    if red == "none":
        return values, grads
    if red == "sum":
        return values.sum(), grads
    return values.sum() / denom, grads / denom


def _onehot(idx, K):
    return np.eye(K)[idx]


def _class_closed_form(act, loss, z, y):
    """softmax/log-softmax + CE/KL/NLL at one-hot-separated logits: ``Σ c (z_max − z)/T``."""
    if getattr(loss, "weight", None) is not None or getattr(loss, "ignore_index", None) is not None:
        return None
    if getattr(loss, "label_smoothing", 0.0):
        return None
    T = getattr(act, "temperature", 1.0)
    K = z.shape[-1]
    y = np.asarray(y)
    c = _onehot(y, K) if y.shape == z.shape[:-1] else y.astype(np.float64)
    top = _onehot(z.argmax(axis=-1), K)
    zmax = z.max(axis=-1, keepdims=True)
    values = (c * (zmax - z)).sum(axis=-1) / T
    if isinstance(loss, KLDivergence) and y.shape == z.shape:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = values + np.where(c > 0, c * np.log(np.where(c > 0, c, 1)), 0).sum(axis=-1)
    grads = (top * c.sum(axis=-1, keepdims=True) - c) / T
    return _reduce(loss, values, grads, values.size)


def _sigmoid_bce_closed_form(act, loss, z, y):
    """``relu(z) − y z (+ log 2 at z = 0)``, gradient ``step(z) − y`` (step(0) = 1/2)."""
    if loss.label_smoothing or loss.pos_weight is not None:
        return None
    y = np.asarray(y, dtype=np.float64)
    values = np.maximum(z, 0) - y * z + np.where(z == 0, np.log(2.0), 0.0)
    grads = np.where(z > 0, 1.0, np.where(z < 0, 0.0, 0.5)) - y
    return _reduce(loss, values, grads, values.size)


def _identity_mse_closed_form(act, loss, z, y):
    d = z - np.asarray(y, dtype=np.float64)
    return _reduce(loss, d * d, 2 * d, d.size)


def _fenchel_young_closed_form(act, loss, z, y):
    """A Fenchel–Young loss with its own map of ``z/T`` (sparsemax α = 2, 1.5-entmax, α-entmax)
    is one-hot where the top two logits are ``T/(α − 1)`` or more apart: value
    ``(z_max − z_y)/T``, grad ``(e_max − e_y)/T``; ignored rows add nothing."""
    y = np.asarray(y)
    if y.shape != z.shape[:-1]:
        return None
    K = z.shape[-1]
    T = float(getattr(act, "temperature", 1.0))
    alpha = np.asarray(alpha_rows(loss.alpha, z))[..., 0] if isinstance(loss.alpha, np.ndarray) else loss.alpha
    top2 = np.sort(z, axis=-1)[..., -2:]
    if np.any((top2[..., 1] - top2[..., 0]) * (alpha - 1) < T):
        return None
    ignore = getattr(loss, "ignore_index", None)
    valid = np.ones(y.shape, dtype=bool) if ignore is None else y != ignore
    c = _onehot(np.where(valid, y, 0), K) * valid[..., None]
    values = (c * (z.max(axis=-1, keepdims=True) - z)).sum(axis=-1) / T
    grads = (_onehot(z.argmax(axis=-1), K) * valid[..., None] - c) / T
    return _reduce(loss, values, grads, int(valid.sum()))


#: (activation class, loss class) -> closed form ``(value, dE/dz)`` at :func:`extreme_inputs`
#: (None when the loss's parameters leave the closed form)
EXTREME_CLOSED_FORMS: dict[tuple[type, type], Callable] = {
    (Softmax, CrossEntropy): _class_closed_form,
    (Softmax, KLDivergence): _class_closed_form,
    (LogSoftmax, NLLLoss): _class_closed_form,
    (Sigmoid, BinaryCrossEntropy): _sigmoid_bce_closed_form,
    (Identity, MeanSquaredError): _identity_mse_closed_form,
    (Sparsemax, SparsemaxLoss): _fenchel_young_closed_form,
    (Entmax15, Entmax15Loss): _fenchel_young_closed_form,
    (Entmax, EntmaxLoss): _fenchel_young_closed_form,
}


def check_extreme(obj, z=None, y=None, *, shape=(2, 3, 5), dtype=np.float64, seed=0) -> CheckReport:
    """Check an activation or head at logits of ±1e4 (:func:`extreme_inputs`).

    Finite differences say nothing there, so: every method's output must be finite
    (and keep the dtype), an activation's VJP/JVP must agree with its Jacobian, and a
    fused rule must match the pair's closed form (:data:`EXTREME_CLOSED_FORMS`) in value
    and gradient. The separate path (``vjp``/``jacobian``) of a loss of probabilities
    reads an underflowed ``a = 0`` as ``max(a, tiny)``: it is checked for finiteness
    only — the fused rule is the exact one.

    Examples
    --------
    >>> import jacobians as jac
    >>> check_extreme(jac.Head(jac.Softmax(), jac.CrossEntropy()), dtype="float32").passed
    True
    """
    is_head = isinstance(obj, Head)
    if not is_head:
        _require(obj, Activation, "obj")
    if z is None:
        gen = extreme_inputs(obj, shape=shape, dtype=dtype, seed=seed)
        z, y_gen = gen if is_head else (gen, None)
        y = y_gen if y is None else y
    z = _readonly(as_float_array(z, "z"))
    dt = z.dtype
    rows = _Rows(_subject(obj) + " (±1e4)", dt, z.shape)
    rng = np.random.default_rng(seed)
    if not is_head:
        act = obj
        g = rng.normal(size=z.shape).astype(dt)
        v = rng.normal(size=z.shape).astype(dt)
        J = _run(act.jacobian, z)
        rows.finite("a", "forward", _run(act, z))
        rows.finite("J", "jacobian", J)
        op = _run(act.jacobian_operator, z)
        rows.finite("J", "operator", op if isinstance(op, _Failed) else _run(op.dense))
        vjp, jvp = _run(act.vjp, z, g), _run(act.jvp, z, v)
        rows.finite("vjp", "vjp", vjp)
        rows.finite("jvp", "jvp", jvp)
        rows.compare("vjp", "vjp", "jacobian", vjp, J if isinstance(J, _Failed) else _run(_batched_vjp, g, J), "methods")
        rows.compare("jvp", "jvp", "jacobian", jvp, J if isinstance(J, _Failed) else _run(_batched_jvp, J, v), "methods")
        return CheckReport(rows.rows)

    head = obj
    y = prepare_targets(y, z)
    results = method_results(head, z, y)
    for method, r in results.items():
        value, grad = (r, r) if isinstance(r, _Failed) else (np.asarray(r[0]), r[1])
        rows.finite("value", method, value if isinstance(value, _Failed) else value.astype(dt))
        rows.finite("dE/dz", method, grad)
    closed = EXTREME_CLOSED_FORMS.get((type(head.activation), type(head.loss_fn)))
    if closed is not None and "fused" in results:
        yc = y.astype(np.float64) if y.dtype.kind == "f" else y
        expected = _run(closed, head.activation, head.loss_fn, z.astype(np.float64), yc)
        if expected is not None:
            fused = results["fused"]
            exp_val = expected if isinstance(expected, _Failed) else np.asarray(expected[0])
            exp_grad = expected if isinstance(expected, _Failed) else expected[1]
            val = fused if isinstance(fused, _Failed) else np.asarray(fused[0])
            grad = fused if isinstance(fused, _Failed) else fused[1]
            rows.compare("value", "fused", "closed form", val, exp_val, "closed_form", dtype_of=None)
            rows.compare("dE/dz", "fused", "closed form", grad, exp_grad, "closed_form")
    return CheckReport(rows.rows)
