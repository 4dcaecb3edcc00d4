"""A head as a JAX function whose derivatives are the head's closed forms.

``import jacobians.jax`` imports jax (``import jacobians`` does not).

Examples
--------
>>> import jax, jax.numpy as jnp
>>> import jacobians as jac
>>> import jacobians.jax
>>> f = jacobians.jax.loss(jac.Head(jac.Softmax(), jac.CrossEntropy()))
>>> z, y = jnp.array([[2.0, 1.0, 0.1]]), jnp.array([0])
>>> g = jax.jit(jax.grad(f))(z, y)                     # (s − e_y) / N
>>> bool(jnp.allclose(g, jax.nn.softmax(z) - jnp.array([[1.0, 0, 0]]), atol=1e-6))
True
>>> H = jax.hessian(f)(z, y)                           # the head's Hessian, (1, 3, 1, 3)
>>> H.shape
(1, 3, 1, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["loss"]


def loss(head):
    """``f(z, y)``: ``head.loss(z, y)`` with a ``jax.custom_jvp`` in ``z``.

    Its tangent is ``⟨head.grad(z, y), dz⟩`` (per row for ``'none'``), and the gradient's
    own tangent is ``head.hvp(z, y, dz)``: ``jax.grad``, ``jax.hessian`` and ``jax.jvp``
    of ``f`` give the closed forms, under ``jit`` too. ``y`` gets no derivative.

    Parameters
    ----------
    head : jacobians.Head

    Returns
    -------
    callable
        ``f(z, y)``: z ``(..., K)`` a floating JAX array, y the head's targets.
    """
    from .head import Head

    if not isinstance(head, Head):
        raise TypeError(f"head must be a jacobians.Head; got {type(head).__name__}")

    @jax.custom_jvp
    def grad(z, y):
        return head.grad(z, y)

    @grad.defjvp
    def grad_jvp(primals, tangents):
        z, y = primals
        dz = tangents[0]
        return grad(z, y), head.hvp(z, y, dz)

    @jax.custom_jvp
    def f(z, y):
        return head.loss(z, y)

    @f.defjvp
    def f_jvp(primals, tangents):
        z, y = primals
        dz = tangents[0]
        value = f(z, y)
        g = grad(z, y)
        inner = g * dz
        if value.ndim == 0:
            return value, jnp.sum(inner)
        return value, inner if value.shape == inner.shape else jnp.sum(inner, axis=-1)

    f.head = head
    return f
