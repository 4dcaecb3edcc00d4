"""check_extreme: logits of ±1e4, where finite differences say nothing."""

from __future__ import annotations

import numpy as np

from ..activations import Activation
from ..head import Head
from ..numerics.validation import as_float_array
from .head import method_results
from .inputs import extreme_inputs, prepare_targets
from .report import CheckReport, _batched_jvp, _batched_vjp, _Failed, _readonly, _require, _Rows, _run, _subject


def check_extreme(obj, z=None, y=None, *, shape=(2, 3, 5), dtype=np.float64, seed=0) -> CheckReport:
    """Check an activation or head at logits of ±1e4 (:func:`extreme_inputs`).

    Finite differences say nothing there, so: every method's output must be finite
    (and keep the dtype), an activation's VJP/JVP must agree with its Jacobian, and a
    fused rule must match the pair's closed form (its rule's ``extreme_value_and_grad``;
    :data:`~jacobians.rules.EXTREME_CLOSED_FORMS` is a read-only view of them) in value
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
    rule = head.rule
    closed = None if rule is None else rule.extreme_value_and_grad
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
