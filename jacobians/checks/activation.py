"""check_activation: every derivative of an activation against the others and a float64 reference."""

from __future__ import annotations

import numpy as np

from ..activations import Activation
from ..numerics.validation import as_float_array
from ..testing import loop_jacobian
from .head import has_loop_reference, missing_references, stack_or_loop
from .inputs import DEFAULT_SHAPE, _check_dtype, _kink_note, _row_distance, example_inputs
from .report import (
    CheckReport,
    _batched_jvp,
    _batched_vjp,
    _Failed,
    _readonly,
    _require,
    _Rows,
    _run,
    _safe_call,
    _subject,
)


def check_activation(act: Activation, z=None, *, shape=DEFAULT_SHAPE, dtype=None, seed=0) -> CheckReport:
    """Check every derivative of an activation against the others and a float64 reference.

    The reference ``J_num`` is :func:`~jacobians.numerical_jacobian` (central
    differences) of ``act`` at ``z`` promoted to float64. With random ``g`` and ``v``
    (seeded) the rows are::

        J:   jacobian vs numerical,  operator vs numerical,  operator vs jacobian
        vjp: vjp vs numerical (g·J_num),  operator vs numerical,  vjp vs jacobian
        jvp: jvp vs numerical (J_num·v),  operator vs numerical,  jvp vs jacobian

    where ``operator`` is ``act.jacobian_operator(z)`` (``.dense()``, ``g @ op``,
    ``op @ v``). Every result must also keep the dtype of ``z``. The methods are called
    on read-only arrays; an exception becomes a failed row, not an error.

    Parameters
    ----------
    act : Activation
    z : array_like, shape (..., K), optional
        Logits; default: :func:`~jacobians.checks.example_inputs` (clear of kinks).
    shape : tuple of int
        Shape of generated logits.
    dtype : {None, float64, float32}
        dtype of generated logits (default float64), or to cast given ``z`` to.
    seed : int, SeedSequence or Generator
        Seeds the generated ``z``, ``g`` and ``v``.

    Returns
    -------
    CheckReport

    Examples
    --------
    A Jacobian with its layout transposed is caught:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Transposed(jac.Activation):
    ...     def forward(self, z):
    ...         return z * z[..., :1]                      # a_i = z_i z_0: not symmetric
    ...     def jacobian(self, z):
    ...         J = np.zeros(z.shape + z.shape[-1:])
    ...         jac.diagonal(J)[...] = z[..., :1]
    ...         J[..., :, 0] += z
    ...         return np.swapaxes(J, -1, -2)              # wrong: J[j, i]
    >>> report = jac.check_activation(Transposed())
    >>> report.passed
    False
    >>> [r.compared for r in report.failures][:2]
    ['J: jacobian vs numerical', 'J: operator vs numerical']
    """
    _require(act, Activation, "act")
    rng = np.random.default_rng(seed)
    if z is None:
        z = example_inputs(act, shape=shape, dtype=np.float64 if dtype is None else dtype, seed=rng)
        kink = ""
    else:
        z = as_float_array(z, "z")
        if dtype is not None:
            z = z.astype(_check_dtype(dtype))
        dist, where = _row_distance(act, z.astype(np.float64))
        kink = _kink_note([where], dist)
    z = _readonly(z)
    dt = z.dtype
    g = _readonly(rng.normal(size=z.shape).astype(dt))
    v = _readonly(rng.normal(size=z.shape).astype(dt))
    rows = _Rows(_subject(act), dt, z.shape, kink)

    z64 = z.astype(np.float64)
    Jn = _run(stack_or_loop, act, z64)
    if isinstance(Jn, _Failed):
        rows.compare("J", "numerical", "float64 forward", Jn, None, "numerical")
        return CheckReport(rows.rows, missing_references(act))
    # finite differences of f carry round-off ~ eps·|f|/h: atol is relative to max |f|
    a64 = _safe_call(act, z64)
    if a64 is not None and np.size(a64):
        rows.floors["numerical"] = float(np.nanmax(np.abs(a64)))
    gJn = _batched_vjp(g.astype(np.float64), Jn)
    Jnv = _batched_jvp(Jn, v.astype(np.float64))
    # two methods differ by round-off of the terms they add up: |g|·|J|, |J|·|v|
    absJ = np.abs(Jn)
    rows.floors["methods"] = max(
        float(absJ.max(initial=0.0)),
        float(_batched_vjp(np.abs(g.astype(np.float64)), absJ).max(initial=0.0)),
        float(_batched_jvp(absJ, np.abs(v.astype(np.float64))).max(initial=0.0)),
    )

    J = _run(act.jacobian, z)
    op = _run(act.jacobian_operator, z)

    def from_op(name, *args):
        if isinstance(op, _Failed):
            return op
        return _run(getattr(op, name), *args)

    J_op = from_op("dense")
    rows.compare("J", "jacobian", "numerical", J, Jn, "numerical")
    rows.compare("J", "operator", "numerical", J_op, Jn, "numerical")
    rows.compare("J", "operator", "jacobian", J_op, J, "methods")
    if has_loop_reference(act):
        rows.compare("J", "jacobian", "loop", J, _run(loop_jacobian, act, z64), "methods")

    vjp = _run(act.vjp, z, g)
    vjp_op = from_op("vjp", g)
    vjp_J = J if isinstance(J, _Failed) else _run(_batched_vjp, g, J)
    rows.compare("vjp", "vjp", "numerical", vjp, gJn, "numerical")
    rows.compare("vjp", "operator", "numerical", vjp_op, gJn, "numerical")
    rows.compare("vjp", "vjp", "jacobian", vjp, vjp_J, "methods")

    jvp = _run(act.jvp, z, v)
    jvp_op = from_op("jvp", v)
    jvp_J = J if isinstance(J, _Failed) else _run(_batched_jvp, J, v)
    rows.compare("jvp", "jvp", "numerical", jvp, Jnv, "numerical")
    rows.compare("jvp", "operator", "numerical", jvp_op, Jnv, "numerical")
    rows.compare("jvp", "jvp", "jacobian", jvp, jvp_J, "methods")
    return CheckReport(rows.rows, missing_references(act))
