"""Fused rules: the closed-form gradient of an (activation, loss) pair from the logits.

A rule is called as ``rule(activation, loss, z, y)`` and returns ``(value, dE/dz)`` with
the loss's reduction applied. ``Head(...).grad(z, y, method='fused')`` uses it, and
``method='auto'`` picks it when one is registered for the exact pair of classes.

Built-in rules (all exact for logits of ±1e4, in float32 too: they work with the
shifted logits ``z − max`` and log-sum-exp, and never clip):

================================  =====================================================
Softmax(T) + CrossEntropy          ``(s Σc − c) / T`` (``(s − y)/N`` plainly)
Softmax(T) + KLDivergence          same, ``c = y``
LogSoftmax + NLLLoss               same, ``T = 1``
Sigmoid + BinaryCrossEntropy       ``σ(z)(p y + 1 − y) − p y`` (``(σ − y)/(N·K)``)
Identity + MeanSquaredError        ``2(z − y)/(N·K)``
Sparsemax(T) + SparsemaxLoss      ``(sparsemax(z/T) − y)/(N·T)``
Entmax15(T) + Entmax15Loss         ``(entmax15(z/T) − y)/(N·T)``
Entmax(α, T) + EntmaxLoss(α)       ``(entmax_α(z/T) − y)/(N·T)``
================================  =====================================================

Examples
--------
Register a rule for your own pair:

>>> import numpy as np
>>> import jacobians as jac
>>> class Half(jac.MeanSquaredError):
...     name = "half_mse"
>>> @jac.register_fused(jac.Identity, Half)
... def _identity_half(act, loss, z, y):
...     return loss.value_and_grad(z, y)
>>> jac.Head(jac.Identity(), Half()).method
'fused'
>>> _ = jac.fused.FUSED.pop((jac.Identity, Half))    # (tidy up after the example)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import _kernels, _math
from ._empty import mean_value_of_scale
from ._validation import as_float_array
from .activations import Entmax, Entmax15, Identity, LogSoftmax, Sigmoid, Softmax, Sparsemax
from .losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    Entmax15Loss,
    EntmaxLoss,
    KLDivergence,
    Loss,
    MeanSquaredError,
    NLLLoss,
    SparsemaxLoss,
)

__all__ = ["FUSED", "register_fused", "get_fused"]

Rule = Callable[..., tuple]

#: (activation class, loss class) -> rule
FUSED: dict[tuple[type, type], Rule] = {}


def register_fused(activation_cls: type, loss_cls: type, *, replace: bool = False):
    """Decorator: register ``rule(activation, loss, z, y) -> (value, dE_dz)`` for a pair.

    The rule is looked up by the exact classes of the head's activation and loss (a
    subclass needs its own rule, since it may change the math). The rule must apply
    the loss's reduction (``loss.reduction``).

    Parameters
    ----------
    activation_cls, loss_cls : type
        :class:`~jacobians.Activation` and :class:`~jacobians.Loss` subclasses.
    replace : bool
        Allow replacing an existing rule for the pair.
    """
    check_rule_classes(activation_cls, loss_cls)

    def add(rule: Rule) -> Rule:
        key = (activation_cls, loss_cls)
        if key in FUSED and FUSED[key] is not rule and not replace:
            raise ValueError(
                f"a fused rule for ({activation_cls.__name__}, {loss_cls.__name__}) is already registered; "
                "pass replace=True to replace it"
            )
        FUSED[key] = rule
        return rule

    return add


def check_rule_classes(activation_cls, loss_cls) -> None:
    """``TypeError`` unless a rule's pair is an Activation subclass and a Loss subclass."""
    from .activations import Activation

    if not (isinstance(activation_cls, type) and issubclass(activation_cls, Activation)):
        raise TypeError(f"activation_cls must be an Activation subclass; got {activation_cls!r}")
    if not (isinstance(loss_cls, type) and issubclass(loss_cls, Loss)):
        raise TypeError(f"loss_cls must be a Loss subclass; got {loss_cls!r}")


def get_fused(activation, loss) -> Rule | None:
    """The rule registered for ``(type(activation), type(loss))``, or None."""
    return FUSED.get((type(activation), type(loss)))


# -- built-in rules -----------------------------------------------------------------------


@register_fused(Softmax, CrossEntropy)
@register_fused(Softmax, KLDivergence)
@register_fused(LogSoftmax, NLLLoss)
def log_softmax_rule(activation, loss, z, y):
    """Softmax/log-softmax with a loss ``const − Σ c log p``: grad ``(s Σc − c)/T``.

    ``log p = (z/T − m) − log1p(Σ_{k≠argmax} e^{z_k/T − m})`` is never formed from
    ``log s``, so nothing underflows, and every term of the value is non-negative, so
    nothing cancels (see :func:`~jacobians._math.shifted_exp`).
    """
    z = as_float_array(z, "z")
    t = loss.check_targets(z, y)
    T = getattr(activation, "temperature", 1.0)
    x = z if T == 1.0 else z / z.dtype.type(T)
    plain = (
        t.is_index
        and getattr(loss, "weight", None) is None
        and not getattr(loss, "label_smoothing", 0.0)
    )
    if plain and type(loss)._reduce is Loss._reduce:
        return _plain_index_rule(x, t, loss, T)
    c, denom = loss.coefficients(t, z.dtype)
    values, grad = _kernels.ce_coefficients(x, c)
    if isinstance(loss, KLDivergence):
        values += loss.entropy_term(t, z.dtype)
    if T != 1.0:
        grad /= grad.dtype.type(T)
    return loss._reduce(values, grad, denom)


def _plain_index_rule(x, t, loss, T):
    """Index targets, no weights or smoothing: value ``lse(x) − x_y``, gradient
    ``(s − e_y)/T`` (times :meth:`~jacobians.Loss.reduction_scale`), written in one
    buffer: ``log1p(o / e_y)`` and ``−o / (o + e_y)`` with ``o = Σ_{k≠y} e^{x_k}`` summed
    without the target (see :func:`jacobians._kernels.numpy_impl.ce_index`)."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    idx = t.safe_indices().reshape(-1)
    valid = None if t.valid is None else t.valid.reshape(-1)
    c = loss.reduction_scale(x, t)  # (0 for a denominator of 0: see jacobians._empty)
    scale = c if T == 1.0 else c / x.dtype.type(T)
    values, g = _kernels.ce_index(x2, idx, valid, scale)
    g = g.reshape(x.shape)
    return _reduced(loss.reduction, values.reshape(x.shape[:-1]), _math.total(values), c, g)


def _reduced(reduction, values, total, c, grad):
    """``(value, grad)`` of a rule that applied the factor ``c`` itself: ``values`` for
    ``'none'``, the ``total`` for ``'sum'``, ``total · c`` for ``'mean'``."""
    if reduction == "none":
        return values, grad
    if reduction == "sum":
        return total, grad
    return mean_value_of_scale(total, c, grad.dtype), grad


@register_fused(Sigmoid, BinaryCrossEntropy)
def sigmoid_bce_rule(activation, loss, z, y):
    """Sigmoid + BCE from the logits (torch's ``binary_cross_entropy_with_logits``).

    value ``(1 − y) softplus(z) + p y softplus(−z)``, grad ``(1 − y) σ(z) − p y σ(−z)``
    (``σ(z)(1 − y + p y) − p y``).
    """
    z = as_float_array(z, "z")
    y = loss.smoothed(loss.check_targets(z, y))
    pw = loss._pos_weight(z.dtype)
    if pw is None and type(loss)._reduce is Loss._reduce:
        return _sigmoid_bce_plain(z, y, loss)
    py = y if pw is None else pw * y
    values, grad = _kernels.sigmoid_bce_weighted(z, y, py)
    return loss._reduce(values, grad, values.size)


def _sigmoid_bce_plain(z, y, loss):
    """Sigmoid + BCE without ``pos_weight``: ``softplus(z) − y z`` and ``σ(z) − y``, as
    ``z (h − y) + log1p(e)`` and ``(h − y) + (1 − 2h) q`` with ``h = step(z)``,
    ``e = exp(−|z|)``, ``q = e/(1 + e)`` (see :func:`jacobians._kernels.numpy_impl.sigmoid_bce_plain`):
    nothing rounded against 1, a call allocates only its results. The total of the values
    is :func:`~jacobians._math.total`'s (float64 pieces of CHUNK_ENTRIES, rounded once).
    """
    zf, yf = z.reshape(-1), np.broadcast_to(y, z.shape).reshape(-1)
    c = loss.reduction_scale(z, y)  # (0 for a denominator of 0: see jacobians._empty)
    values, total, grad = _kernels.sigmoid_bce_plain(zf, yf, c, loss.reduction == "none")
    grad = grad.reshape(z.shape)
    return _reduced(loss.reduction, None if values is None else values.reshape(z.shape), total, c, grad)


@register_fused(Identity, MeanSquaredError)
def identity_rule(activation, loss, z, y):
    """The identity's Jacobian is I: dE/dz is the loss's own gradient at ``a = z``."""
    return loss.value_and_grad(z, y)


@register_fused(Sparsemax, SparsemaxLoss)
@register_fused(Entmax15, Entmax15Loss)
@register_fused(Entmax, EntmaxLoss)
def fenchel_young_rule(activation, loss, z, y):
    """A Fenchel–Young loss with its own mapping: ``L(z/T, y)``, gradient ``(p − y)/(N·T)``
    with ``p = map(z/T)`` (see :mod:`jacobians.losses.fenchel_young` for the temperature)."""
    return loss.tempered_value_and_grad(z, y, getattr(activation, "temperature", 1.0))
