"""A head's second order from its pair rule: Hessian, HVP, GGN and its square root.

``E`` is the reduced loss that ``head.loss(z, y)`` returns. Rows of the batch do not
interact, so ``∂²E/∂z∂z`` is block diagonal; everything here returns the stack of its
diagonal blocks, shape ``(..., K, K)``, block n = ``∂²E/∂z_n∂z_n`` with the reduction's
factor inside. ``method`` (:data:`jacobians.rules.vocabulary.METHODS`): ``'fused'`` the
pair's :class:`~jacobians.PairRule`, whose left-out closed forms fall back to the generic
rule, ``'chain'`` the generic rule (:mod:`jacobians.rules.chain`), ``'auto'`` the rule
where the pair has one.
"""

from __future__ import annotations

import numpy as np

from .numerics.validation import as_float_array
from .operators import DenseJacobian, JacobianOperator
from .rules import GENERIC, get_rule
from .rules.vocabulary import check_method

__all__ = ["resolve", "require_chain", "hessian_operator", "hvp", "ggn_operator", "sqrt_ggn"]


def require_chain(head, what: str) -> None:
    """``ValueError`` for a Fenchel–Young loss of the logits, which has no chain rule."""
    if head.logits_loss:
        raise ValueError(
            f"{type(head.loss_fn).__name__} is a Fenchel–Young loss of the logits: its curvature is fused-only "
            f"({what} by the chain rule would need it as a function of {type(head.activation).__name__}'s output); "
            f"use method='fused', or Head(Identity(), {type(head.loss_fn).__name__}()) for the chain rule"
        )


def resolve(head, method) -> str:
    """``'fused'`` or ``'chain'``: what ``method`` means for this head's second order."""
    check_method(method, 2)
    rule = get_rule(head.activation, head.loss_fn)
    if method == "auto":
        return "fused" if rule is not None and rule.hessian is not None else "chain"
    if method == "fused" and rule is None:
        raise ValueError(
            f"no Hessian rule is registered for ({type(head.activation).__name__}, {type(head.loss_fn).__name__}); "
            "use method='chain', or register one with jacobians.register_rule (or register_hessian)"
        )
    if method == "chain" or rule.hessian is None:
        require_chain(head, "the Hessian")
    return method


def _as_operator(op) -> JacobianOperator:
    return op if isinstance(op, JacobianOperator) else DenseJacobian(op)


def hessian_operator(head, z, y, method: str = "auto") -> JacobianOperator:
    """The blocks ``∂²E/∂z_n∂z_n`` as a :class:`~jacobians.JacobianOperator`; see
    :meth:`jacobians.Head.hessian`."""
    method = resolve(head, method)
    z = as_float_array(z, "z")
    rule = get_rule(head.activation, head.loss_fn)
    if method == "fused" and rule.hessian is not None:
        return _as_operator(rule.hessian(head.activation, head.loss_fn, z, y))
    return GENERIC.hessian(head.activation, head.loss_fn, z, y)


def hvp(head, z, y, v, method: str = "auto") -> np.ndarray:
    """``H_n v_n`` per row; see :meth:`jacobians.Head.hvp`."""
    resolved = resolve(head, method)
    z = as_float_array(z, "z")
    v = as_float_array(v, "v")
    if v.shape != z.shape:
        raise ValueError(f"v must have the shape of z, {z.shape}; got shape {v.shape}")
    v = v.astype(z.dtype, copy=False)
    rule = get_rule(head.activation, head.loss_fn)
    if resolved == "fused" and rule.hvp is not None:
        return rule.hvp(head.activation, head.loss_fn, z, y, v)
    return hessian_operator(head, z, y, resolved) @ v


def ggn_operator(head, z, y) -> JacobianOperator:
    """The GGN blocks: the Hessian for a canonical pair, ``Jᵀ H_E J`` otherwise."""
    z = as_float_array(z, "z")
    if head.ggn_is_hessian:
        return hessian_operator(head, z, y, "auto")
    require_chain(head, "ggn")
    return GENERIC.ggn(head.activation, head.loss_fn, z, y)


def sqrt_ggn(head, z, y) -> np.ndarray:
    """``S`` of shape ``(..., K, C)`` with ``S Sᵀ`` the GGN blocks."""
    z = as_float_array(z, "z")
    rule = get_rule(head.activation, head.loss_fn)
    if head.ggn_is_hessian:
        if rule.sqrt_hessian is not None:
            return rule.sqrt_hessian(head.activation, head.loss_fn, z, y)
        return hessian_operator(head, z, y, "auto").sqrt()
    require_chain(head, "sqrt_ggn")
    return GENERIC.sqrt_ggn(head.activation, head.loss_fn, z, y)
