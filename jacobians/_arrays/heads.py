"""A head's entry points and ``contract`` on generic arrays.

Every method computes in the logits' namespace and on their device, with the classes'
generic methods (:mod:`jacobians._arrays`):

* ``'fused'``: the pair rule's generic closed form (``xp_value_and_grad``, ``xp_hessian``,
  ``xp_hvp`` on the :class:`~jacobians.PairRule`) where it has one; where it has not,
  the chain rule below gives the same quantity (to round-off);
* ``'vjp'`` (the chain rule): ``Jᵀ ∂E/∂a`` from the activation's generic VJP;
* ``'jacobian'``: the dense Jacobian ``(..., K, K)``, contracted with ``∂E/∂a`` by
  ``matmul``, in row blocks of about ``max_bytes``;
* second order: ``Jᵀ H_E J + Σ_i (∂E/∂a_i) ∇²a_i`` (Hessian), ``Jᵀ H_E J`` (GGN), and its
  product with ``v`` without the blocks (``hvp``).

A torch tensor that requires grad gives plain tensors (the inputs are detached first):
the closed forms are the derivatives; autograd through them is what
:func:`jacobians.torch.loss` provides.
"""

from __future__ import annotations

import math

import array_api_compat

from ..second_order import resolve
from .inputs import float_input, namespace_of, same_shape, targets_like, unsupported

__all__ = ["head_loss", "head_value_and_grad", "head_blocks", "head_hvp", "contract"]  # the rest: .curvature, .last_layer, .operators

#: row blocks of the generic 'jacobian' method hold about this many bytes of J by default
DEFAULT_MAX_BYTES = 256 << 20


def _plain(x):
    """``x`` without autograd history (torch), else itself."""
    return x.detach() if array_api_compat.is_torch_array(x) else x


def _inputs(head, z, y, *others, need_y=True):
    """``(xp, z, y, *others)``: one namespace, z a detached float array with a class axis,
    y on z's namespace and device (validated by the loss where it is used; required unless
    ``need_y`` is false), others (same shape as z) cast to z's dtype."""
    if need_y and y is None:
        raise ValueError(f"y (the targets of {head.loss_fn!r}) is required here; got None")
    xp = namespace_of(z, *others, targets=(y,))
    z = _plain(float_input(xp, z, "z"))
    if z.ndim < 1:
        raise ValueError("z must have a last axis of K classes, (..., K); got a 0-d array")
    out = [_plain(same_shape(xp, z, o, name)) for o, name in zip(others, ("v",))]
    return (xp, z, None if y is None else _plain(targets_like(y, z)), *out)


def _rowvec_mat(xp, g, J):
    """``g @ J`` per row: ``(..., M) × (..., M, K) -> (..., K)``."""
    return xp.matmul(g[..., None, :], J)[..., 0, :]


def _mat_rowvec(xp, J, v):
    """``J @ v`` per row: ``(..., M, K) × (..., K) -> (..., M)``."""
    return xp.matmul(J, v[..., None])[..., 0]


def _generic_part(rule, name):
    """The rule's generic closed form ``xp_<name>``, or None."""
    return None if rule is None else getattr(rule, "xp_" + name, None)


def _forward_and_loss(xp, head, z, y):
    """``(a, E, ∂E/∂a)`` through the activation's and the loss's generic methods."""
    a = head.activation.xp_forward(xp, z)
    yl = head.loss_fn.xp_check_targets(xp, a, y)
    value, g = head.loss_fn.xp_value_and_grad(xp, a, yl)
    return a, yl, value, g


def _temperature(head) -> float:
    """The temperature of a Fenchel–Young head's own mapping (1 where it has none)."""
    return getattr(head.activation, "temperature", 1.0)


def _logits_value_and_grad(xp, head, z, y):
    """A Fenchel–Young loss of the logits its own mapping sees: ``L(z/T, y)``, gradient
    ``(p − y)/T`` with ``p = map(z/T)`` (the loss's generic terms, as the numpy rule)."""
    loss = head.loss_fn
    return loss.xp_tempered_value_and_grad(xp, z, loss.xp_check_targets(xp, z, y), _temperature(head))


def _logits_curvature(xp, head, z, y, v=None, *, factor=False):
    """The Hessian blocks (``v`` None), their product with ``v``, or their factor
    (``factor``) of a Fenchel–Young head: the loss's own at the scaled logits ``z/T``, over
    T² (the numpy rule's; the factor over T)."""
    loss, T = head.loss_fn, _temperature(head)
    x = head.activation.xp_scaled_logits(xp, z) if T != 1.0 else z
    yl = loss.xp_check_targets(xp, x, y)
    if factor:
        S = loss.xp_sqrt_hessian(xp, x, yl)
        return S if T == 1.0 else S / T
    out = loss.xp_hessian(xp, x, yl) if v is None else loss.xp_hvp(xp, x, yl, v)
    return out if T == 1.0 else out / T**2


def head_loss(head, z, y):
    xp, z, y = _inputs(head, z, y)
    fused = _generic_part(head.rule, "value_and_grad")
    if fused is not None:
        return fused(xp, head.activation, head.loss_fn, z, y)[0]
    if head.logits_loss:
        return _logits_value_and_grad(xp, head, z, y)[0]
    a = head.activation.xp_forward(xp, z)
    return head.loss_fn.xp_value(xp, a, head.loss_fn.xp_check_targets(xp, a, y))


def _jacobian_product(xp, head, z, a, g, max_bytes):
    """``gᵀ J`` with the dense Jacobian, in row blocks of about ``max_bytes`` of J."""
    K = z.shape[-1]
    batch = tuple(z.shape[:-1])
    n = math.prod(batch)
    per_row = K * K * (4 if z.dtype == xp.float32 else 8)
    rows = max(1, (max_bytes or DEFAULT_MAX_BYTES) // per_row)
    if rows >= n:
        return _rowvec_mat(xp, g, head.activation.xp_jacobian_from_output(xp, z, a))
    z2, a2, g2 = (xp.reshape(x, (n, K)) for x in (z, a, g))
    parts = [
        _rowvec_mat(xp, g2[i : i + rows, ...], head.activation.xp_jacobian_from_output(xp, z2[i : i + rows, ...], a2[i : i + rows, ...]))
        for i in range(0, n, rows)
    ]
    return xp.reshape(xp.concat(parts, axis=0), z.shape)


def head_value_and_grad(head, z, y, method, *, max_bytes, workers, need):
    xp, z, y = _inputs(head, z, y)
    if method == "fused":
        fused = _generic_part(head.rule, "value_and_grad")
        if fused is not None:
            return fused(xp, head.activation, head.loss_fn, z, y)
        if head.logits_loss:  # a Fenchel–Young loss of the logits: the loss's own gradient
            return _logits_value_and_grad(xp, head, z, y)
        method = "vjp"  # the rule has no generic form: the chain rule gives the same
    a, _, value, g = _forward_and_loss(xp, head, z, y)
    if method == "vjp":
        return value, head.activation.xp_vjp_from_output(xp, z, a, g)
    return value, _jacobian_product(xp, head, z, a, g, max_bytes)


def _chain_parts(xp, head, z, y):
    """``(a, y, ∂E/∂a)`` for the chain rule's second order."""
    a, yl, _, g = _forward_and_loss(xp, head, z, y)
    return a, yl, g


def _hessian(xp, head, z, y, method, gauss_newton_only=False):
    rule = head.rule
    if head.logits_loss:
        return _logits_curvature(xp, head, z, y)
    closed = _generic_part(rule, "hessian")
    if closed is not None and (head.ggn_is_hessian if gauss_newton_only else method == "fused"):
        return closed(xp, head.activation, head.loss_fn, z, y)
    a, yl, g = _chain_parts(xp, head, z, y)
    J = head.activation.xp_jacobian_from_output(xp, z, a)
    H = xp.matmul(xp.matmul(xp.matrix_transpose(J), head.loss_fn.xp_hessian(xp, a, yl)), J)
    if gauss_newton_only:
        return H
    return H + head.activation.xp_hessian_vjp(xp, z, g)


def head_blocks(head, name, z, y, *args, sizes=None):
    xp, z, y = _inputs(head, z, y)
    if name == "hessian":
        return _hessian(xp, head, z, y, resolve(head, args[0] if args else "auto"))
    if name == "ggn":
        return _hessian(xp, head, z, y, "fused", gauss_newton_only=True)
    raise unsupported(f"Head.{name}", xp)


def head_hvp(head, z, y, v, method):
    xp, z, y, v = _inputs(head, z, y, v)
    method = resolve(head, method)
    if head.logits_loss:
        return _logits_curvature(xp, head, z, y, v)
    closed = _generic_part(head.rule, "hvp")
    if method == "fused" and closed is not None:
        return closed(xp, head.activation, head.loss_fn, z, y, v)
    if method == "fused" and _generic_part(head.rule, "hessian") is not None:
        return _mat_rowvec(xp, _hessian(xp, head, z, y, "fused"), v)
    a, yl, g = _chain_parts(xp, head, z, y)
    act = head.activation
    outer = act.xp_vjp_from_output(xp, z, a, head.loss_fn.xp_hvp(xp, a, yl, act.xp_jvp(xp, z, v)))
    return outer + _mat_rowvec(xp, act.xp_hessian_vjp(xp, z, g), v)


def contract(g, J):
    xp = namespace_of(g, J)
    J = float_input(xp, J, "J")
    g = float_input(xp, g, "g")
    if J.ndim < 2 or tuple(g.shape[:-1]) != tuple(J.shape[:-2]) or g.shape[-1] != J.shape[-2]:
        raise ValueError(
            f"g must have shape {tuple(J.shape[:-2]) + tuple(J.shape[-2:-1])} to contract with J of shape "
            f"{tuple(J.shape)}; got shape {tuple(g.shape)}"
        )
    dt = xp.result_type(g, J)
    return _rowvec_mat(xp, xp.astype(g, dt), xp.astype(J, dt))
