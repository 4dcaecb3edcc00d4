"""The log link of a Poisson rate: Identity + PoissonNLL(log_input=True) and Exp +
PoissonNLL(log_input=False), in closed form from the logits (with ``w = e^z``, ``c`` the
reduction's factor, ``1/(N·K)`` for ``'mean'``).

* Identity + PoissonNLL(log_input=True): value ``w − y z``, gradient ``c (w − y)``, Hessian
  ``diag(c w)`` = the GGN = the exact Fisher (``y ~ Poisson(w)``), factor ``diag(e^{z/2} √c)``.
* Exp + PoissonNLL(log_input=False), torch's ``eps`` kept exactly: value
  ``w − y log(w + eps)``, gradient ``c (w − y s)`` with ``s = w/(w + eps) = 1/(1 + eps/w)``,
  Hessian ``diag(c (w − y s r))`` with ``r = eps/(w + eps)`` (``s r = σ(u)σ(−u)``, u = z − log eps),
  exact Fisher ``diag(w s)`` (``y ~ Poisson(w + eps)``). The rule always applies and is exact
  (it agrees with the chain rule and torch to round-off, eps included). With ``eps = 0`` this
  is the canonical log link, the first pair's forms: Hessian = GGN = Fisher ``diag(c w)``,
  factor ``diag(√c e^{z/2})``. With ``eps > 0`` (torch's default 1e-8) the pair is not
  canonical: the term ``−y s r`` makes the Hessian negative where ``e^z`` falls below about
  ``√(y·eps)`` (z ≲ −9 at 1e-8), so the GGN is the chain rule's ``Jᵀ H_a J = diag(c y s²)``
  and the Fisher ``diag(w s)`` (≈ ``e^z``) is the curvature a Laplace approximation wants.
(Exp + PoissonNLL(log_input=True), a rate of ``e^{e^z}``, is refused by the loss.)

Every form evaluates ``e^z`` once and never squares it (no ``e^z·e^z``, no ``exp(2z)``), so it
is finite for z up to the float's exp limit and overflows where ``torch.exp`` does: beyond it
the gradient and Hessian are ``inf``, and the value is torch's own (``inf``, or ``inf − inf =
NaN`` for the rate with ``y > 0``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from ..activations import Exp, Identity
from ..losses import PoissonNLL
from ..losses.generic import concrete, const
from ..numerics import buffers
from ..numerics.validation import as_float_array
from ..operators import DiagonalJacobian
from ..xp.blocks import diagonal_blocks
from .base import PairRule, register_rule
from .common import entry_factor, reduce_plainly, reduced

__all__ = ["LogLinkPoisson"]

_QUIET = {"over": "ignore", "divide": "ignore", "invalid": "ignore"}


def _const(xp, value, like):
    """``value`` in like's dtype (a numpy scalar on the numpy path, else on like's device)."""
    return like.dtype.type(value) if xp is np else const(xp, value, like)


def _ratios(xp, w, eps):
    """``(s, r) = (w/(w + eps), eps/(w + eps))``, each in [0, 1], finite for w = 0 and w = inf."""
    if eps == 0:
        return xp.ones_like(w), xp.zeros_like(w)
    e = _const(xp, eps, w)
    return 1 / (1 + e / w), 1 / (1 + w / e)


def _kind(activation, loss) -> str:
    """``'log'`` (the log-rate: Identity + log_input) or ``'rate'`` (Exp + the rate; the
    other two combinations are refused by the loss's domain and ``pair_mismatch``)."""
    return "log" if isinstance(activation, Identity) else "rate"


def _terms(xp, kind, loss, z, y):
    """``(values, dℓ/dz, d²ℓ/dz², fisher)`` per entry, unreduced."""
    w = xp.exp(z)
    if kind == "log":
        return w - y * z, w - y, w, w
    s, r = _ratios(xp, w, loss.eps)
    values = w - y * xp.log(w + _const(xp, loss.eps, z))
    return values, w - y * s, w - y * (s * r), w * s


@register_rule
class LogLinkPoisson(PairRule):
    """Identity + PoissonNLL(log_input=True) and Exp + PoissonNLL(log_input=False): the
    canonical log link (Exp + the rate exactly so with ``eps = 0``)."""

    pairs = ((Identity, PoissonNLL), (Exp, PoissonNLL))
    canonical = True

    def canonical_for(self, activation, loss) -> bool:
        """The GGN is the Hessian for the exact log link: Identity + the log-rate, and Exp + the
        rate with ``eps = 0`` (with ``eps > 0`` the pair is not convex in z: its GGN is the chain
        rule's ``Jᵀ H_a J``)."""
        return _kind(activation, loss) == "log" or loss.eps == 0

    def _prepared(self, activation, loss, z, y):
        z = as_float_array(z, "z")
        y = loss.check_targets(z, y)
        return z, y, _kind(activation, loss), loss.reduction_scale(z, y)

    def value_and_grad(self, activation, loss, z, y):
        z = as_float_array(z, "z")
        if _kind(activation, loss) == "log":
            return self._log_value_and_grad(loss, z, y)
        y, kind = loss.check_targets(z, y), _kind(activation, loss)  # (reduce applies c, warning once)
        with np.errstate(**_QUIET):
            values, g, _, _ = _terms(np, kind, loss, z, y)
            if loss.full:
                values = values + loss._stirling(np, y)
            return loss.reduce(values, g, values.size)

    @staticmethod
    def _log_value_and_grad(loss, z, y):
        """The log-rate by :func:`jacobians._kernels.poisson_log`: one pass for the values (or
        their total), the gradient with the reduction's factor, and the targets' check."""
        y = loss.check_target_form(z, y)
        c = loss.reduction_scale(z, y)
        need = loss.reduction == "none" or loss.full
        values, total, g, bad = _kernels.poisson_log(z.reshape(-1), y.reshape(-1), c, need)
        if bad:
            loss.check_targets(z, y)  # the refusal, naming the first target that is not a count
        if values is not None:
            values = values.reshape(z.shape)
            with np.errstate(**_QUIET):
                if loss.full:
                    values = values + loss._stirling(np, y)
                total = buffers.total(values)
        return reduced(loss.reduction, values, total, c, g.reshape(z.shape))

    def _curvature(self, activation, loss, z, y):
        z, y, kind, c = self._prepared(activation, loss, z, y)
        with np.errstate(**_QUIET):
            return _terms(np, kind, loss, z, y)[2] * c

    def hessian(self, activation, loss, z, y):
        return DiagonalJacobian(self._curvature(activation, loss, z, y))

    def hvp(self, activation, loss, z, y, v):
        return self._curvature(activation, loss, z, y) * v

    def sqrt_hessian(self, activation, loss, z, y):
        """``diag(√c e^{z/2})`` for the log-rate (and the rate with ``eps = 0``); for the rate
        with ``eps > 0``, ``diag(√c e^{z/2} √(1 − y r/(w + eps)))`` (``w − y s r = w (1 − y
        r/(w + eps))``), a ValueError where that is negative. ``e^{z/2}``: no square of ``e^z``."""
        z, y, kind, c = self._prepared(activation, loss, z, y)
        with np.errstate(**_QUIET):
            root = np.exp(z / 2) * np.sqrt(c)
            if kind == "rate" and loss.eps > 0:
                w = np.exp(z)
                s, r = _ratios(np, w, loss.eps)
                q = 1 - y * (r / (w + z.dtype.type(loss.eps)))  # w − y s r = w (1 − y r/(w + eps))
                if np.any(q < 0):
                    raise ValueError(
                        "the Hessian of Exp + PoissonNLL(log_input=False) is negative where e^z < ~√(y·eps) "
                        f"(here down to {float((w * q).min()):.3g} before the factor): it has no real square root; "
                        "use eps=0 or the exact Fisher (kind='exact'), which is positive"
                    )
                root = root * np.sqrt(q)
            return DiagonalJacobian(root).dense()

    def fisher(self, activation, loss, z, y=None):
        z = as_float_array(z, "z")
        with np.errstate(**_QUIET):
            return DiagonalJacobian(_terms(np, _kind(activation, loss), loss, z, np.zeros_like(z))[3])

    def extreme_value_and_grad(self, activation, loss, z, y):
        """At the extreme logits (±the magnitude the classes set, in float64): plain float64 math."""
        z = np.asarray(z, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        w = np.exp(z)
        kind = _kind(activation, loss)
        if kind == "log":
            values, grads = w - y * z, w - y
        else:
            values, grads = w - y * np.log(w + loss.eps), w * (1 - y / (w + loss.eps))
        if loss.full:
            big = y > 1
            ys = np.where(big, y, 1.0)
            values = values + np.where(big, ys * np.log(ys) - ys + 0.5 * np.log(2 * math.pi * ys), 0.0)
        return reduce_plainly(loss, values, grads, values.size)

    def extreme_hessian(self, activation, loss, z, y):
        z = np.asarray(z, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        w = np.exp(z)
        kind = _kind(activation, loss)
        h = w if kind == "log" else w - y * w * loss.eps / (w + loss.eps) ** 2
        return (h * entry_factor(loss, z))[..., None] * np.eye(z.shape[-1])

    # -- the generic (array API) forms: torch, JAX, CuPy, array-api-strict arrays ----------
    def _xp_prepared(self, xp, activation, loss, z, y):
        y = loss.xp_check_targets(xp, z, y)
        return y, _kind(activation, loss), loss.xp_reduction_scale(xp, z, y)

    def xp_value_and_grad(self, xp, activation, loss, z, y):
        y, kind = loss.xp_check_targets(xp, z, y), _kind(activation, loss)  # (xp_reduce applies c)
        values, g, _, _ = _terms(xp, kind, loss, z, y)
        if loss.full:
            values = values + loss._stirling(xp, y)
        return loss.xp_reduce(xp, values, g, math.prod(z.shape))

    def xp_hessian(self, xp, activation, loss, z, y):
        y, kind, c = self._xp_prepared(xp, activation, loss, z, y)
        return diagonal_blocks(xp, _terms(xp, kind, loss, z, y)[2] * c)

    def xp_hvp(self, xp, activation, loss, z, y, v):
        y, kind, c = self._xp_prepared(xp, activation, loss, z, y)
        return _terms(xp, kind, loss, z, y)[2] * c * v

    def xp_sqrt_hessian(self, xp, activation, loss, z, y):
        """Generic :meth:`sqrt_hessian` (negative entries, on concrete arrays: ValueError)."""
        y, kind, c = self._xp_prepared(xp, activation, loss, z, y)
        root = xp.exp(z / 2) * xp.sqrt(c)
        if kind == "rate" and loss.eps > 0:
            w = xp.exp(z)
            _, r = _ratios(xp, w, loss.eps)
            q = 1 - y * (r / (w + _const(xp, loss.eps, z)))
            if concrete(q) and math.prod(q.shape) and bool(xp.any(q < 0)):
                raise ValueError(
                    "the Hessian of Exp + PoissonNLL(log_input=False) is negative where e^z < ~√(y·eps): it has no "
                    "real square root; use eps=0 or the exact Fisher (kind='exact'), which is positive"
                )
            root = root * xp.sqrt(q)
        return diagonal_blocks(xp, root)

    def xp_fisher(self, xp, activation, loss, z, y=None):
        return diagonal_blocks(xp, _terms(xp, _kind(activation, loss), loss, z, xp.zeros_like(z))[3])
