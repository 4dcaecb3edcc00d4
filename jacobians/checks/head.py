"""check_head: dE/dz of every method of a head against the others and a float64 reference."""

from __future__ import annotations

import numpy as np

from ..activations import Activation
from ..head import Head
from ..losses import FenchelYoungLoss, Loss
from ..numerical import numerical_grad, numerical_jacobian
from ..testing import loop_head
from .inputs import DEFAULT_SHAPE, _head_inputs
from .report import CheckReport, _batched_vjp, _Failed, _readonly, _require, _Rows, _run, _safe_call, _subject

# above this many entries the gradient reference is taken along random directions
_FULL_GRAD_MAX = 2048
_N_DIRECTIONS = 4




def _head_methods(head: Head) -> list[str]:
    if head.logits_loss:
        return ["fused"]
    return ["jacobian", "vjp", "operator"] + (["fused"] if head.fused_rule is not None else [])


def check_head(head: Head, z=None, y=None, *, shape=DEFAULT_SHAPE, dtype=None, seed=0) -> CheckReport:
    """Check dE/dz of every method of a head against the others and a float64 reference.

    The reference is central differences of ``head.loss`` (the fused value where the pair
    has a rule) at ``z`` promoted to float64 — along a few random directions when ``z``
    has more than 2048 entries. The rows' losses are independent, so it is taken in one
    call of the unreduced loss on every row's 2K perturbed copies, times the reduction
    factor (``jacobians.checks.head.stacked_grad_reference``); where that factor is
    unknown (the losses add up to 0), :func:`~jacobians.numerical_grad` moves one entry
    at a time. The methods are ``jacobian``,
    ``vjp``, ``operator`` (``dE/da @ act.jacobian_operator(z)``) and ``fused`` where a
    rule exists; a Fenchel–Young loss with its own mapping (``Sparsemax`` +
    ``SparsemaxLoss``) has only ``fused``. Rows::

        dE/dz:   <method> vs numerical,  <method> vs jacobian
        dE/dz·v: jvp vs numerical        (Σ dE/da · act.jvp(z, v) = Σ dE/dz · v)
        value:   <method> vs fused       (when there is a fused rule)

    Results must keep the dtype of ``z``; exceptions become failed rows.

    Parameters
    ----------
    head : Head
    z : array_like, shape (..., K), optional
        Logits; default: generated (:func:`~jacobians.checks.example_inputs`).
    y : array_like, optional
        Targets in the loss's form; default: generated from ``loss.target_kind``.
    shape, dtype, seed
        As in :func:`check_activation`.

    Returns
    -------
    CheckReport

    Examples
    --------
    A loss whose gradient is off by a factor is caught:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Off(jac.Loss):
    ...     def per_sample(self, a, y):
    ...         return ((a - y) ** 2).sum(axis=-1)
    ...     def per_sample_grad(self, a, y):
    ...         return 3 * (a - y)                           # should be 2 (a − y)
    >>> report = jac.check_head(jac.Head(jac.Tanh(), Off()))
    >>> report.passed, report.failures[0].compared
    (False, 'dE/dz: jacobian vs numerical')
    """
    _require(head, Head, "head")
    rng = np.random.default_rng(seed)
    z, y, kink, x64 = _head_inputs(head, z, y, shape=shape, dtype=dtype, rng=rng)
    dt = z.dtype
    rows = _Rows(_subject(head), dt, z.shape, kink)

    z64 = z.astype(np.float64)
    y64 = y.astype(np.float64) if y.dtype.kind == "f" else y
    v = _readonly(rng.normal(size=z.shape).astype(dt))
    full = z.size <= _FULL_GRAD_MAX

    def ref_loss(x):
        return np.sum(head.loss(x, y64))  # reduction 'none': each row's gradient is that of the sum

    # round-off of the finite differences scales with the loss: atol is relative to the
    # largest per-sample (or per-entry) loss
    # x64: what the loss sees at z64, computed once (by head_inputs) for the sizes below
    per_sample = None if x64 is None else _safe_call(head.loss_fn.with_reduction("none"), x64, y64)
    value64 = _safe_call(lambda: np.sum(loss_values(head, z64, y64, x64)))
    sizes = [abs(float(value64))] if value64 is not None else []
    if per_sample is not None and np.size(per_sample) and np.isfinite(per_sample).all():
        sizes.append(float(np.abs(per_sample).max()))
    if sizes:
        rows.floors["numerical"] = max(sizes)
    if not head.logits_loss:
        rows.floors["methods"] = _chain_rule_scale(head, z64, y64, x64)
    # the values' round-off scales with the terms they add up (the loss itself, or more)
    value_floor = max(rows.floors["numerical"], _value_terms(head, z64, y64, x64))

    if full:
        row = row_loss_head(head)
        known = per_sample if x64 is not None and row.fused_rule is None and not row.logits_loss else None
        c = _safe_call(lambda: reduction_factor(head, z64, y64, value64, x=x64, rows=known))
        ref = _run(stacked_grad_reference, head, z64, y64, c)
        if ref is None or isinstance(ref, _Failed):  # not separable by rows: each entry on its own
            ref = _run(lambda: numerical_grad(ref_loss, z64))
        directions = None
    else:
        directions = rng.normal(size=(_N_DIRECTIONS,) + z.shape)
        ref = _run(lambda: np.array([numerical_grad(lambda t, d=d: ref_loss(z64 + t[0] * d), np.zeros(1))[0]
                                     for d in directions]))

    def project(grad):
        if directions is None or isinstance(grad, _Failed):
            return grad
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != z.shape:
            return _Failed(ValueError(f"dE/dz has shape {grad.shape}, expected {z.shape}"))
        return directions.reshape(len(directions), -1) @ grad.reshape(-1)

    what = "dE/dz" if full else f"dE/dz·v ({_N_DIRECTIONS} directions)"
    # (value, dE/da) at a = act(z): the 'operator' method and the JVP row start from it
    at_output = None if head.logits_loss or not _shares_grad(head.loss_fn) else _run(_loss_at_output, head, z, y)
    results = method_results(head, z, y, at_output)
    grads = {m: (r if isinstance(r, _Failed) else r[1]) for m, r in results.items()}

    for method, grad in grads.items():
        rows.compare(what, method, "numerical", project(grad), ref, "numerical", dtype_of=grad)
    first = next(iter(grads))
    for method, grad in grads.items():
        if method != first:
            rows.compare("dE/dz", method, first, grad, grads[first], "methods")

    if not head.logits_loss and full:
        # the JVP in the chain rule: Σ dE/da · (J v) = Σ dE/dz · v
        jvp_proj = _run(_jvp_projection, head, z, y, v, at_output)
        if isinstance(ref, _Failed):
            rows.compare("dE/dz·v", "jvp", "numerical", jvp_proj, ref, "numerical", dtype_of=None)
        else:
            prod = ref * v.astype(np.float64)
            rows.compare("dE/dz·v", "jvp", "numerical", jvp_proj, np.array(prod.sum()), "numerical",
                         dtype_of=None, scale=float(np.abs(prod).sum()))

    if "fused" in results and len(results) > 1:
        fused = results["fused"]
        for method, r in results.items():
            if method == "fused":
                continue
            val = r if isinstance(r, _Failed) else np.asarray(r[0])
            ref_val = fused if isinstance(fused, _Failed) else np.asarray(fused[0])
            rows.compare("value", method, "fused", val, ref_val, "methods", dtype_of=None,
                         floor=value_floor)

    if has_loop_reference(head):
        # the textbook definition, one sample at a time in float64 (jacobians.testing): a
        # bug shared by every method (a wrong 'mean' denominator, say) shows here
        loop = _run(loop_head, head, z64, y64)
        loop_value = loop if isinstance(loop, _Failed) else np.asarray(loop[0])
        loop_grad = loop if isinstance(loop, _Failed) else loop[1]
        for method, r in results.items():
            grad = r if isinstance(r, _Failed) else r[1]
            val = r if isinstance(r, _Failed) else np.asarray(r[0])
            rows.compare("dE/dz", method, "loop", grad, loop_grad, "methods")
            rows.compare("value", method, "loop", val, loop_value, "methods", dtype_of=None,
                         floor=value_floor)
    return CheckReport(rows.rows, missing_references(head))


def row_loss_head(head: Head) -> Head:
    """The head with ``'none'``: its gradient is each row's own gradient, its Hessian blocks
    each row's own (the references differentiate it and rescale)."""
    return Head(head.activation, head.loss_fn.with_reduction("none"))


def loss_values(head: Head, z64, y64, x=None):
    """``head.loss(z64, y64)``, from ``x`` — what the loss sees at ``z64``, already computed
    (:func:`~jacobians.checks.inputs._loss_input`) — where the head computes it that way
    (no fused rule): ``loss(x, y)``, the same numbers without a second forward pass."""
    if x is not None and head.fused_rule is None and not head.logits_loss:
        return head.loss_fn.value(x, y64)
    return head.loss(z64, y64)


def reduction_factor(head: Head, z64, y64, value=None, *, x=None, rows=None) -> float | None:
    """``c`` with ``E = c Σ_n ℓ_n``: the reduced loss over the sum of the rows' own losses
    (1 for ``'sum'`` and ``'none'``; for ``'mean'`` read off the values, which also catches
    a denominator that depends on the targets); None when that sum is 0 or not finite.
    ``value``: ``Σ head.loss(z64, y64)`` when already known; ``x``: the loss's input at
    ``z64`` (:func:`loss_values`); ``rows``: the rows' own losses
    ``row_loss_head(head).loss(z64, y64)`` when already known."""
    if head.loss_fn.reduction != "mean":
        return 1.0
    row = row_loss_head(head)
    with np.errstate(all="ignore"):
        value = float(np.sum(loss_values(head, z64, y64, x) if value is None else value))
        if rows is not None:
            total = float(np.sum(rows))
        else:
            total = float(np.sum(loss_values(row, z64, y64, x)))
    if not (np.isfinite(value) and np.isfinite(total)) or total == 0:
        return None
    return value / total


def stacked(fn, y, z):
    """``X -> fn(X, y)`` for X of shape ``(S,) + z.shape`` (copies of the batch stacked on a
    leading axis): the targets are broadcast to the S copies, without a copy."""
    def call(X):
        lead = X.shape[: X.ndim - z.ndim]
        return fn(X, np.broadcast_to(y, lead + np.shape(y)))

    return call


def stacked_grad_reference(head: Head, z64, y64, c: float | None = None):
    """Central differences of ``Σ head.loss(z, y)``, shape of ``z``, from ONE call of the
    unreduced loss on the 2K perturbed copies of every row stacked on a leading axis.

    The rows' losses are independent (``E = c Σ_n ℓ_n(z_n)``, c from
    :func:`reduction_factor`), so moving entry ``(n, j)`` changes ``ℓ_n`` alone: the
    difference of ``E`` is ``c`` times that of ``ℓ_n`` — the same points and steps as
    :func:`~jacobians.numerical_grad`, with less round-off. None when ``c`` is unknown
    (given, or else read off the values).
    """
    c = reduction_factor(head, z64, y64) if c is None else c
    if c is None:
        return None
    row = row_loss_head(head)

    def rows(X, Y):
        v = np.asarray(row.loss(X, Y))
        return (v if v.ndim == X.ndim - 1 else v.sum(axis=-1))[..., None]  # elementwise losses: (..., K)

    return c * numerical_jacobian(stacked(rows, y64, z64), z64, stack=True)[..., 0, :]


def stack_or_loop(f, z64):
    """:func:`~jacobians.numerical_jacobian` of ``f`` in one call on the 2K perturbed copies
    stacked on a leading axis; 2K calls when ``f`` refuses the extra axis (a custom class's
    own shape checks)."""
    try:
        return numerical_jacobian(f, z64, stack=True)
    except Exception:
        return numerical_jacobian(f, z64)


def has_loop_reference(obj) -> bool:
    """True when ``obj`` (an activation, a loss, or both parts of a head) carries a plain
    loop reference, ``loop_reference``, on its class (not inherited: see
    :class:`~jacobians.Activation`)."""
    if isinstance(obj, Head):
        return has_loop_reference(obj.activation) and has_loop_reference(obj.loss_fn)
    return getattr(type(obj), "loop_reference", None) is not None


#: the signature each kind of class writes its ``loop_reference`` with
_REFERENCE_SIGNATURES = {
    "activation": "loop_reference(self, z) -> (a, J), one sample z (K,) in float64",
    "loss": "loop_reference(self, a, y) -> (values, grads, denominator)",
}


def missing_references(obj) -> list[str]:
    """One line for each class of ``obj`` (an activation, a loss, or both of a head) that
    has no ``loop_reference``: which class, and how to give it one."""
    out = []
    for part in (obj.activation, obj.loss_fn) if isinstance(obj, Head) else (obj,):
        if has_loop_reference(part):
            continue
        kind = "activation" if isinstance(part, Activation) else "loss"
        name = type(part).__name__
        out.append(
            f"the {kind} {name} has no loop_reference, so nothing compares it with a plain "
            f"loop (jacobians.testing); give the class one: {_REFERENCE_SIGNATURES[kind]} "
            f"(see jacobians.{'Activation' if kind == 'activation' else 'Loss'})"
        )
    return out


def method_results(head: Head, z, y, at_output=None) -> dict:
    """``{method: (value, dE/dz) or _Failed}`` for every method of the head (the
    ``'operator'`` one: dE/da pushed through the activation's Jacobian operator;
    ``at_output``: :func:`_loss_at_output` when already computed)."""
    results = {}
    for method in _head_methods(head):
        if method == "operator":
            results[method] = _run(_operator_value_and_grad, head, z, y, at_output)
        else:
            results[method] = _run(head.value_and_grad, z, y, method)
    return results
def _value_terms(head: Head, z64, y64, x64=None) -> float:
    """Size of the terms a Fenchel–Young loss's value adds up: the largest row's
    ``Σ |x − max x| (p + y) + 1`` (``x`` the logits the loss sees, ``p`` its mapping).

    ``⟨x, p − y⟩ + H(p) − H(y)`` is a difference of such terms, and its round-off scales with
    them — not with the loss, which is much smaller where ``p`` nears ``y``. 0 for other losses.
    """
    loss = head.loss_fn
    if not isinstance(loss, FenchelYoungLoss):
        return 0.0
    with np.errstate(all="ignore"):
        x = _safe_call(lambda: z64 / float(getattr(head.activation, "temperature", 1.0))
                       if head.logits_loss else (head.activation(z64) if x64 is None else x64))
        if x is None or not np.all(np.isfinite(x)):
            return 0.0
        x = x - x.max(axis=-1, keepdims=True)
        p = _safe_call(loss.mapping, x)
        t = _safe_call(lambda: loss.check_targets(x, y64).dense(x.dtype))
        if p is None or t is None:
            return 0.0
        return float((np.abs(x) * (p + t)).sum(axis=-1).max() + 1.0)


def _chain_rule_scale(head: Head, z64, y64, a64=None) -> float:
    """Size of the terms the chain rule adds up, ``max |dE/da| @ |J|`` (what round-off
    scales with); ``max |dE/da|`` when the dense Jacobian would be large. ``a64``: the
    activation's output at ``z64`` when already computed."""
    with np.errstate(all="ignore"):
        dE_da = _safe_call(lambda: head.loss_fn.grad(head.activation(z64) if a64 is None else a64, y64))
        if dE_da is None or not np.size(dE_da) or not np.isfinite(dE_da).all():
            return 1.0
        dE_da = np.abs(np.asarray(dE_da, dtype=np.float64))
        if z64.size * z64.shape[-1] <= 4_000_000:
            J = _safe_call(head.activation.jacobian, z64)
            if J is not None and np.shape(J) == z64.shape + z64.shape[-1:] and np.isfinite(J).all():
                return float(_batched_vjp(dE_da, np.abs(J)).max())
        return float(dE_da.max())


def _shares_grad(loss) -> bool:
    """True when ``loss.grad`` is ``loss.value_and_grad``'s gradient by construction (neither
    overridden): one call then serves both."""
    return type(loss).grad is Loss.grad and type(loss).value_and_grad is Loss.value_and_grad


def _loss_at_output(head: Head, z, y):
    """``(value, dE/da)`` at ``a = act(z)``."""
    return head.loss_fn.value_and_grad(head.activation(z), y)


def _operator_value_and_grad(head: Head, z, y, at_output=None):
    act = head.activation
    if isinstance(at_output, _Failed):
        return at_output
    value, g = _loss_at_output(head, z, y) if at_output is None else at_output
    return value, act.jacobian_operator(z).vjp(g)


def _jvp_projection(head: Head, z, y, v, at_output=None):
    act, loss = head.activation, head.loss_fn
    if isinstance(at_output, _Failed):
        return at_output
    g = loss.grad(act(z), y) if at_output is None else at_output[1]
    jv = act.jvp(z, v)
    return np.array((np.asarray(g, dtype=np.float64) * np.asarray(jv, dtype=np.float64)).sum())
