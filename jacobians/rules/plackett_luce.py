"""Identity + Plackett–Luce: a loss of the scores themselves, so everything is the loss's own
in ``a = z``: gradient ``Σ_i (p⁽ⁱ⁾ − e_{π_i})``, Hessian (= GGN, PSD) ``Σ_i (diag p⁽ⁱ⁾ −
p⁽ⁱ⁾ p⁽ⁱ⁾ᵀ)`` held as R simplex blocks, its exact factor the R simplex factors side by side,
and the exact Fisher of one step, ``diag(p) − p pᵀ`` (times the reduction's factor,
``1/N`` for ``'mean'``)."""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from ..activations import Identity
from ..losses import PlackettLuce
from ..numerics import buffers
from ..numerics.validation import as_float_array
from .base import PairRule, register_rule
from .common import reduce_plainly, reduced

__all__ = ["IdentityPlackettLuce"]


def _extreme_steps(z, y):
    """Each row's loss, gradient and Hessian at logits whose distinct values lie 1e4 or more
    apart (float64): a step's softmax is uniform over its remaining set's tied maxima, zero
    elsewhere, so ``lse = m + log(#ties)``. Plain loops (the checks' closed form)."""
    M = z.shape[-1]
    z2 = np.asarray(z, np.float64).reshape(-1, M)
    y2 = np.asarray(y).reshape(z2.shape[0], -1)
    values, grads = np.zeros(z2.shape[0]), np.zeros_like(z2)
    H = np.zeros((z2.shape[0], M, M))
    for n in range(z2.shape[0]):
        left = list(range(M))
        for c in y2[n]:
            if c < 0:
                break
            m = max(z2[n, k] for k in left)
            ties = [k for k in left if z2[n, k] == m]
            p = np.zeros(M)
            p[ties] = 1.0 / len(ties)
            values[n] += m + np.log(len(ties)) - z2[n, c]
            grads[n] += p
            grads[n, c] -= 1.0
            H[n] += np.diag(p) - np.outer(p, p)
            left.remove(int(c))
    return values, grads, H


@register_rule
class IdentityPlackettLuce(PairRule):
    """Identity + PlackettLuce."""

    pairs = ((Identity, PlackettLuce),)
    canonical = True

    def value_and_grad(self, activation, loss, z, y):
        """The kernel's values and gradient, the reduction's factor applied in its pass."""
        z = as_float_array(z, "z")
        t = loss.check_targets(z, y)
        scale = loss.reduction_scale(z, t)
        values, grads = loss.fused_terms(z, t, scale)
        return reduced(loss.reduction, values, buffers.total(values), scale, grads)

    def hessian(self, activation, loss, z, y):
        return loss.hessian_operator(z, y)

    def hvp(self, activation, loss, z, y, v):
        """``c Σ_i p⁽ⁱ⁾ ⊙ (v − p⁽ⁱ⁾·v)``, O(R·M) a row, without the operator's blocks
        (:func:`jacobians._kernels.plackett_luce_hvp`)."""
        z = as_float_array(z, "z")
        t = loss.check_targets(z, y)
        M = z.shape[-1]
        n = math.prod(z.shape[:-1])
        out = _kernels.plackett_luce_hvp(z.reshape(n, M), t.reshape(n, t.shape[-1]), np.asarray(v, z.dtype).reshape(n, M),
                                         loss.reduction_scale(z, t))
        return out.reshape(z.shape)

    def sqrt_hessian(self, activation, loss, z, y):
        """The R steps' simplex factors side by side, ``(..., M, R·M)``: ``S Sᵀ = H``, with
        ``√p⁽ⁱ⁾`` from the shifted scores."""
        z = as_float_array(z, "z")
        t = loss.check_targets(z, y)
        return loss.steps_operator(z, t, root=True).scaled(loss.reduction_scale(z, t)).sqrt()

    def fisher(self, activation, loss, z, y=None):
        return loss.fisher_blocks(as_float_array(z, "z"), y)

    def extreme_value_and_grad(self, activation, loss, z, y):
        values, grads, _ = _extreme_steps(z, y)
        values, grads = values.reshape(z.shape[:-1]), grads.reshape(z.shape)
        return reduce_plainly(loss, values, grads, values.size)

    def extreme_hessian(self, activation, loss, z, y):
        _, _, H = _extreme_steps(z, y)
        c = 1.0 / max(H.shape[0], 1) if loss.reduction == "mean" else 1.0
        return c * H.reshape(z.shape + z.shape[-1:])

    # -- the generic (array API) forms: the loss's own, in a = z -------------------------------
    def xp_value_and_grad(self, xp, activation, loss, z, y):
        return loss.xp_value_and_grad(xp, z, loss.xp_check_targets(xp, z, y))

    def xp_hessian(self, xp, activation, loss, z, y):
        return loss.xp_hessian(xp, z, loss.xp_check_targets(xp, z, y))

    def xp_hvp(self, xp, activation, loss, z, y, v):
        return loss.xp_hvp(xp, z, loss.xp_check_targets(xp, z, y), v)

    def xp_sqrt_hessian(self, xp, activation, loss, z, y):
        return loss.xp_sqrt_hessian(xp, z, loss.xp_check_targets(xp, z, y))

    def xp_fisher(self, xp, activation, loss, z, y=None):
        return loss.xp_fisher_blocks(xp, z, None if y is None else loss.xp_check_targets(xp, z, y))
