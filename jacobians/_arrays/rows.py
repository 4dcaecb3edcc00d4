"""Activations' and losses' row-wise methods on generic arrays: the namespace and the
inputs' checks here, then the class's generic method (``xp_forward``, ``xp_vjp``,
``xp_value_and_grad`` ...), which computes in the arrays' own namespace and device."""

from __future__ import annotations

from . import operators
from .inputs import activation_input, float_input, namespace_of, same_shape, targets_like

__all__ = ["METHODS", "activation_input", "loss_inputs"]


def _activation(method):
    def run(act, fn, z):
        xp, z = activation_input(z)
        return getattr(act, method)(xp, z)

    return run


def _activation_with(method, name):
    def run(act, fn, z, x):
        xp = namespace_of(z, x)
        z = float_input(xp, z, "z")
        return getattr(act, method)(xp, z, same_shape(xp, z, x, name))

    return run


def _jacobian(act, fn, z, *, out=None, workers=None):
    if out is not None:
        raise TypeError("out= is a numpy buffer: a generic z gives a Jacobian of its own namespace (leave out=None)")
    xp, z = activation_input(z)
    return act.xp_jacobian(xp, z)


def loss_inputs(loss, a, y):
    """``(xp, a, y)``: a's namespace, a as a float array, y on a's namespace and device,
    validated by the loss (``xp_check_targets``)."""
    xp = namespace_of(a, targets=(y,))
    a = float_input(xp, a, "a")
    return xp, a, loss.xp_check_targets(xp, a, targets_like(y, a))


def _loss(method):
    def run(loss, fn, a, y):
        xp, a, y = loss_inputs(loss, a, y)
        return getattr(loss, method)(xp, a, y)

    return run


def _loss_hvp(loss, fn, a, y, v):
    xp = namespace_of(a, v, targets=(y,))
    a = float_input(xp, a, "a")
    y = loss.xp_check_targets(xp, a, targets_like(y, a))
    return loss.xp_hvp(xp, a, y, same_shape(xp, a, v, "v"))


#: method name -> f(obj, numpy method, *args) (see jacobians.backend.Implementation)
METHODS = {
    "__call__": _activation("xp_forward"),
    "jacobian": _jacobian,
    "vjp": _activation_with("xp_vjp", "g"),
    "jvp": _activation_with("xp_jvp", "v"),
    "hessian": _activation("xp_hessian"),
    "hessian_vjp": _activation_with("xp_hessian_vjp", "g"),
    "alpha_vjp": _activation_with("xp_alpha_vjp", "g"),  # Entmax's gradient of α
    "loss.value": _loss("xp_value"),
    "loss.grad": _loss("xp_grad"),
    "loss.value_and_grad": _loss("xp_value_and_grad"),
    "loss.hessian": _loss("xp_hessian"),
    "loss.hvp": _loss_hvp,
    **operators.METHODS,  # jacobian_operator, jacobian_operator_from_output, hessian_vjp_operator
}
