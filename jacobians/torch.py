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


def loss(head):
    """``f(z, y)``: ``head.loss(z, y)`` as a :class:`torch.autograd.Function` of ``z``.

    Its backward is the exact ``head.grad(z, y)`` (the pair's fused rule where it has one),
    and the backward of that is the exact ``head.hvp(z, y, ·)``: so
    ``torch.autograd.grad(..., create_graph=True)`` and
    ``torch.autograd.functional.hessian`` run through the closed forms. Third derivatives
    are not available (``once_differentiable``). ``y`` gets no gradient.

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
        """``z -> head.grad(z, y)``, whose backward is ``head.hvp`` (the blocks are symmetric)."""

        @staticmethod
        def forward(ctx, z, y):
            ctx.save_for_backward(z)
            ctx.y = y
            return head.grad(z.detach(), y)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, u):
            (z,) = ctx.saved_tensors
            return head.hvp(z.detach(), ctx.y, u.contiguous()), None

    class HeadLoss(torch.autograd.Function):
        """``z -> head.loss(z, y)``, whose backward is ``head.grad``: computed with the value in
        the forward pass, or through HeadGrad (differentiable) under ``create_graph``."""

        @staticmethod
        def forward(ctx, z, y):
            value, g = head.value_and_grad(z.detach(), y)  # one pass: the fused rule's
            ctx.save_for_backward(z, g)
            ctx.y = y
            return value

        @staticmethod
        def backward(ctx, out):
            z, g = ctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph: the gradient must be differentiable
                g = HeadGrad.apply(z, ctx.y)
            # 'none': one loss a row (or an entry), each depending on its own row only
            scale = out if out.ndim == 0 or out.shape == g.shape else out[..., None]
            return scale * g, None

    def f(z, y):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor; got {type(z).__name__}")
        return HeadLoss.apply(z, y)

    f.head = head
    return f
