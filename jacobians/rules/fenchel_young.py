"""Fenchel–Young losses with their own mapping: sparsemax, 1.5-entmax, α-entmax.

``Head(Sparsemax(T), SparsemaxLoss())`` is the loss of the logits the mapping sees,
``L(z/T, y)``: gradient ``(p − y)/T`` with ``p = map(z/T)``, Hessian the mapping's Jacobian
``diag(d) − d dᵀ/Σd`` at ``z/T`` over T², each times the reduction's factor (1/N for
``'mean'``; see :mod:`jacobians.losses.fenchel_young`).
"""

from __future__ import annotations

import numpy as np

from ..activations import Entmax, Entmax15, Sparsemax
from ..losses import Entmax15Loss, EntmaxLoss, SparsemaxLoss
from ..numerics.validation import alpha_rows, as_float_array
from .base import PairRule, register_rule
from .common import onehot, reduce_plainly

__all__ = ["FenchelYoungFamily"]


def _one_hot(activation, loss, z) -> bool:
    """Whether the map of ``z/T`` is one-hot on every row: the top two logits are
    ``T/(α − 1)`` or more apart."""
    T = float(getattr(activation, "temperature", 1.0))
    alpha = np.asarray(alpha_rows(loss.alpha, z))[..., 0] if isinstance(loss.alpha, np.ndarray) else loss.alpha
    top2 = np.sort(z, axis=-1)[..., -2:]
    return not np.any((top2[..., 1] - top2[..., 0]) * (alpha - 1) < T)


@register_rule
class FenchelYoungFamily(PairRule):
    """Sparsemax(T) + SparsemaxLoss, Entmax15(T) + Entmax15Loss, Entmax(α, T) + EntmaxLoss(α)."""

    # (the order of earlier versions' registry)
    pairs = ((Entmax, EntmaxLoss), (Entmax15, Entmax15Loss), (Sparsemax, SparsemaxLoss))
    canonical = True

    def value_and_grad(self, activation, loss, z, y):
        """``L(z/T, y)``, gradient ``(p − y)/(N·T)`` with ``p = map(z/T)``."""
        return loss.tempered_value_and_grad(z, y, getattr(activation, "temperature", 1.0))

    def hessian(self, activation, loss, z, y):
        """``E = L(z/T, y)``: the mapping's Jacobian ``diag(d) − d dᵀ/Σd`` at ``z/T``, over T²
        (and over N for ``'mean'``)."""
        T = getattr(activation, "temperature", 1.0)
        if T == 1.0:
            return loss.hessian_operator(z, y)
        z = as_float_array(z, "z")
        return loss.hessian_operator(activation.scaled_logits(z), y).scaled(z.dtype.type(T) ** -2)

    def extreme_value_and_grad(self, activation, loss, z, y):
        """One-hot where the top two logits are ``T/(α − 1)`` or more apart: value
        ``(z_max − z_y)/T``, grad ``(e_max − e_y)/T``; ignored rows add nothing."""
        y = np.asarray(y)
        if y.shape != z.shape[:-1] or not _one_hot(activation, loss, z):
            return None
        K = z.shape[-1]
        T = float(getattr(activation, "temperature", 1.0))
        ignore = getattr(loss, "ignore_index", None)
        valid = np.ones(y.shape, dtype=bool) if ignore is None else y != ignore
        c = onehot(np.where(valid, y, 0), K) * valid[..., None]
        values = (c * (z.max(axis=-1, keepdims=True) - z)).sum(axis=-1) / T
        grads = (onehot(z.argmax(axis=-1), K) * valid[..., None] - c) / T
        return reduce_plainly(loss, values, grads, int(valid.sum()))

    def extreme_hessian(self, activation, loss, z, y):
        """A one-hot map (sparsemax, 1.5-entmax at gaps of 1e4): ``diag(d) − d dᵀ/Σd = 0``
        (None for α-entmax, which the checks of earlier versions left out here too)."""
        if isinstance(loss, EntmaxLoss) or not _one_hot(activation, loss, z):
            return None
        return np.zeros(z.shape + z.shape[-1:])
