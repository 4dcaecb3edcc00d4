"""A head as a PyTorch loss whose derivatives are the head's closed forms.

``import jacobians.torch`` imports torch (``import jacobians`` does not).

Examples
--------
>>> import torch
>>> import jacobians as jac
>>> import jacobians.torch
>>> f = jacobians.torch.loss(jac.Head(jac.Softmax(), jac.CrossEntropy()))
>>> z = torch.tensor([[2.0, 1.0, 0.1]], dtype=torch.float64, requires_grad=True)
>>> y = torch.tensor([0])
>>> E = f(z, y)
>>> (g,) = torch.autograd.grad(E, z, create_graph=True)    # (s − e_y) / N
>>> torch.allclose(g, torch.softmax(z, -1) - torch.tensor([[1.0, 0, 0]], dtype=torch.float64))
True
>>> (Hv,) = torch.autograd.grad(g, z, torch.ones_like(z))   # head.hvp: the rows sum to 0
>>> float(Hv.abs().max()) < 1e-15
True
"""

from __future__ import annotations

import torch

__all__ = ["loss"]


def _forward_over_forward() -> bool:
    """True when two ``torch.func`` forward-mode transforms are active (``jacfwd(jacfwd(f))``)."""
    try:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # pragma: no cover - torch without functorch's Python interpreters
        return False
    return sum(i.key().name == "Jvp" for i in retrieve_all_functorch_interpreters()) > 1


def loss(head):
    """``f(z, y)``: ``head.loss(z, y)`` as a ``torch.autograd.Function`` of ``z``.

    Its backward is the exact ``head.grad(z, y)`` (the pair's fused rule where it has one),
    and the backward of that is the exact ``head.hvp(z, y, ·)``: so
    ``torch.autograd.grad(..., create_graph=True)`` and
    ``torch.autograd.functional.hessian`` run through the closed forms. Its forward-mode
    tangent is ``⟨head.grad, dz⟩`` (per row for ``'none'``), whose own tangent is
    ``head.hvp``; with ``setup_context`` and a generated ``vmap`` rule it works under
    ``torch.func``: ``grad``, ``vmap`` (over leading axes: each slice is a batch of its
    own, reduced as the head reduces), ``jacrev``, ``jacfwd``, ``hessian``, ``jvp``, ``vjp``
    and their compositions, except forward-over-forward (``jacfwd(jacfwd(f))``, which raises
    ``NotImplementedError``: torch evaluates a Function's ``jvp`` with forward mode off).
    Third derivatives are not available (``once_differentiable``). ``y`` gets no gradient;
    under ``torch.func`` transforms the targets' values are not range-checked (as under
    ``jax.jit``).

    Parameters
    ----------
    head : jacobians.Head

    Returns
    -------
    callable
        ``f(z, y) -> Tensor``: z ``(..., K)`` a floating tensor (any device), y the head's
        targets (a tensor or numpy); a 0-d tensor for ``'mean'`` and ``'sum'``, the
        per-row (per-entry) losses for ``'none'``.
    """
    from .head import Head

    if not isinstance(head, Head):
        raise TypeError(f"head must be a jacobians.Head; got {type(head).__name__}")

    class HeadGrad(torch.autograd.Function):
        """``z -> head.grad(z, y)``, whose backward and tangent are ``head.hvp`` (the blocks are
        symmetric)."""

        generate_vmap_rule = True

        @staticmethod
        def forward(z, y):
            return head.grad(z.detach(), y)

        @staticmethod
        def setup_context(ctx, inputs, output):
            z, y = inputs
            ctx.save_for_backward(z)
            ctx.save_for_forward(z)
            ctx.y = y

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, u):
            (z,) = ctx.saved_tensors
            return head.hvp(z.detach(), ctx.y, u.contiguous()), None

        @staticmethod
        def jvp(ctx, dz, dy):
            (z,) = ctx.saved_tensors
            return head.hvp(z.detach(), ctx.y, dz.contiguous())

    class HeadLoss(torch.autograd.Function):
        """``z -> head.loss(z, y)``, whose backward is ``head.grad`` and whose tangent is
        ``⟨head.grad, dz⟩``: the gradient computed with the value in the forward pass (one pass
        of the fused rule), or through HeadGrad (differentiable) when a derivative of the
        derivative is asked for (``create_graph``, or under a torch.func transform)."""

        generate_vmap_rule = True

        @staticmethod
        def forward(z, y):
            return head.value_and_grad(z.detach(), y)  # one pass: the fused rule's

        @staticmethod
        def setup_context(ctx, inputs, output):
            z, y = inputs
            ctx.save_for_backward(z, output[1])
            ctx.save_for_forward(z)
            ctx.y, ctx.value_shape = y, tuple(output[0].shape)
            ctx.mark_non_differentiable(output[1])

        @staticmethod
        def backward(ctx, out, _g_out):
            z, g = ctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph: the gradient must be differentiable
                g = HeadGrad.apply(z, ctx.y)
            return _chain(out, g), None

        @staticmethod
        def jvp(ctx, dz, dy):
            if _forward_over_forward():
                raise NotImplementedError(
                    "jacobians.torch.loss: forward-over-forward (torch.func.jacfwd(jacfwd(f))) is not supported: "
                    "torch runs an autograd.Function's jvp with forward-mode AD off, so the second tangent would be "
                    "0; use torch.func.hessian(f) (forward-over-reverse), jacrev(jacfwd(f)) or jacrev(jacrev(f))"
                )
            (z,) = ctx.saved_tensors
            g = HeadGrad.apply(z, ctx.y)  # differentiable: a tangent of the tangent is head.hvp
            inner = g * dz
            if not ctx.value_shape:
                return torch.sum(inner), None
            return (inner if ctx.value_shape == tuple(inner.shape) else torch.sum(inner, dim=-1)), None

    def _chain(out, g):
        """``out`` (the value's cotangent) times ``g``: 'none' gives one loss a row (or an
        entry), each depending on its own row only."""
        return out * g if out.ndim == 0 or out.shape == g.shape else out[..., None] * g

    def f(z, y):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor; got {type(z).__name__}")
        return HeadLoss.apply(z, y)[0]

    f.head = head
    return f
