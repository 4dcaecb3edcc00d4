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
Sparsemax + SparsemaxLoss          ``(sparsemax(z) − y)/N``
Entmax15 + Entmax15Loss            ``(entmax15(z) − y)/N``
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

from . import _math
from ._validation import as_float_array
from .activations import Entmax15, Identity, LogSoftmax, Sigmoid, Softmax, Sparsemax
from .losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    Entmax15Loss,
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
    from .activations import Activation
    from .losses import Loss

    if not (isinstance(activation_cls, type) and issubclass(activation_cls, Activation)):
        raise TypeError(f"activation_cls must be an Activation subclass; got {activation_cls!r}")
    if not (isinstance(loss_cls, type) and issubclass(loss_cls, Loss)):
        raise TypeError(f"loss_cls must be a Loss subclass; got {loss_cls!r}")

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


def get_fused(activation, loss) -> Rule | None:
    """The rule registered for ``(type(activation), type(loss))``, or None."""
    return FUSED.get((type(activation), type(loss)))


# -- built-in rules -----------------------------------------------------------------------


@register_fused(Softmax, CrossEntropy)
@register_fused(Softmax, KLDivergence)
@register_fused(LogSoftmax, NLLLoss)
def log_softmax_rule(activation, loss, z, y):
    """Softmax/log-softmax with a loss ``const − Σ c log p``: grad ``(s Σc − c)/T``.

    ``log p = (z/T − m) − lse`` is never formed from ``log s``, so nothing underflows.
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
    if plain and t.valid is None and type(loss)._reduce is Loss._reduce:
        return _plain_index_rule(x, t.indices, loss.reduction, T)
    shifted = x - x.max(axis=-1, keepdims=True)
    s = np.exp(shifted)
    total = s.sum(axis=-1, keepdims=True)
    lse = np.log(total)[..., 0]
    if plain:
        # c is one-hot: value lse − shifted_y, gradient s − e_y
        idx = t.safe_indices()[..., None]
        values = lse - np.take_along_axis(shifted, idx, axis=-1)[..., 0]
        s /= total
        np.put_along_axis(s, idx, np.take_along_axis(s, idx, axis=-1) - 1, axis=-1)
        if t.valid is not None:
            values *= t.valid
            s *= t.valid[..., None]
        denom = float(t.indices.size if t.valid is None else t.valid.sum())
        grad = s
    else:
        c, denom = loss.coefficients(t, z.dtype)
        csum = c.sum(axis=-1)
        values = lse * csum - np.einsum("...k,...k->...", c, shifted)
        if isinstance(loss, KLDivergence):
            values += loss.entropy_term(t, z.dtype)
        s /= total
        s *= csum[..., None]
        s -= c
        grad = s
    if T != 1.0:
        grad /= grad.dtype.type(T)
    return loss._reduce(values, grad, denom)


def _plain_index_rule(x, indices, reduction, T):
    """Index targets, no weights, smoothing or ignored samples: value ``lse − x_y``,
    gradient ``(s − e_y)/T`` (over N for ``'mean'``), written in one buffer.

    When :func:`~jacobians._math.exp_is_safe`, ``exp`` is taken of ``x`` itself and the
    value is ``log(Σ e / e_y)`` (a ratio ≥ 1 of two normal numbers: no cancellation);
    otherwise of ``x − max`` with value ``log Σ e − (x_y − max)``.
    """
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    n = x2.shape[0]
    flat = np.arange(n) * K + indices.reshape(-1)  # positions of the targets in g.ravel()
    g = np.empty_like(x2)
    gflat = g.reshape(-1)
    if _math.exp_is_safe(x2):
        np.exp(x2, out=g)
        total = np.matmul(g, np.ones(K, dtype=g.dtype))
        values = np.log(total / gflat[flat])
    else:
        np.subtract(x2, x2.max(axis=-1, keepdims=True), out=g)
        x_y = gflat[flat]
        np.exp(g, out=g)
        total = np.matmul(g, np.ones(K, dtype=g.dtype))
        values = np.log(total)
        values -= x_y
    dtype = g.dtype.type
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty batch: 'mean' is nan, as torch
        mean = dtype(1.0) / dtype(n)
    scale = mean if reduction == "mean" else dtype(1.0)
    if T != 1.0:
        scale = scale / dtype(T)
    g *= (scale / total)[:, None]
    gflat[flat] -= scale
    g = g.reshape(x.shape)
    if reduction == "none":
        return values.reshape(x.shape[:-1]), g
    value = values.sum(dtype=values.dtype)
    if reduction == "sum":
        return value, g
    with np.errstate(invalid="ignore"):
        return value * mean, g


@register_fused(Sigmoid, BinaryCrossEntropy)
def sigmoid_bce_rule(activation, loss, z, y):
    """Sigmoid + BCE from the logits (torch's ``binary_cross_entropy_with_logits``).

    value ``softplus(z)(1 − y + p y) − p y z``, grad ``σ(z)(1 − y + p y) − p y``.
    """
    z = as_float_array(z, "z")
    y = loss.smoothed(loss.check_targets(z, y))
    pw = loss._pos_weight(z.dtype)
    if pw is None and type(loss)._reduce is Loss._reduce:
        return _sigmoid_bce_plain(z, y, loss.reduction)
    e = np.exp(-np.abs(z))
    inv = 1 / (1 + e)
    sig = np.where(z >= 0, inv, e * inv)
    softplus = np.maximum(z, 0) + np.log1p(e)
    if pw is None:
        values = softplus - y * z
        grad = sig - y
    else:
        py = pw * y
        scale = 1 - y + py
        values = softplus * scale - py * z
        grad = sig * scale - py
    return loss._reduce(values, grad, values.size)


def _sigmoid_bce_plain(z, y, reduction):
    """Sigmoid + BCE without ``pos_weight``: ``softplus(z) − y z`` and ``σ(z) − y``.

    Chunk by chunk in reused scratch buffers, so a call allocates only its results.
    """
    zf, yf = z.reshape(-1), np.broadcast_to(y, z.shape).reshape(-1)
    n = zf.size
    dtype = z.dtype.type
    grad = np.empty_like(zf)
    values = np.empty_like(zf) if reduction == "none" else None
    with np.errstate(divide="ignore"):  # an empty batch: 'mean' is nan, as torch
        scale = dtype(1.0) / dtype(n) if reduction == "mean" else dtype(1.0)
    total = dtype(0.0)
    for c in _math.row_chunks(n, 1):
        zc, yc, gc = zf[c], yf[c], grad[c]
        m = zc.size
        e = _math.scratch(m, z.dtype, 1)
        v = values[c] if values is not None else _math.scratch(m, z.dtype, 3)
        w = _math.scratch(m, z.dtype, 4)
        np.abs(zc, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)  # e = exp(−|z|) <= 1: never overflows
        np.add(e, 1, out=gc)
        np.divide(1, gc, out=gc)  # σ(|z|)
        # σ(z) = σ(|z|) · f with f = 1 for z >= 0 and e for z < 0: f = max(e, sign(z)),
        # branch-free (a where= on random signs is ~10x slower)
        np.sign(zc, out=w)
        np.maximum(e, w, out=w)
        gc *= w
        gc -= yc
        np.log1p(e, out=v)
        # value softplus(z) − y z = (max(z, 0) − y z) + log1p(e): the bracket first, so
        # that a well-classified entry (z = 40, y = 1) keeps its tiny loss
        np.maximum(zc, 0, out=e)
        np.multiply(yc, zc, out=w)
        e -= w
        v += e
        if scale != 1:
            gc *= scale
        if values is None:
            total += v.sum(dtype=v.dtype)
    grad = grad.reshape(z.shape)
    if values is not None:
        return values.reshape(z.shape), grad
    if reduction == "sum":
        return total, grad
    with np.errstate(invalid="ignore"):
        return total * scale, grad


@register_fused(Identity, MeanSquaredError)
def identity_rule(activation, loss, z, y):
    """The identity's Jacobian is I: dE/dz is the loss's own gradient at ``a = z``."""
    return loss.value_and_grad(z, y)


@register_fused(Sparsemax, SparsemaxLoss)
@register_fused(Entmax15, Entmax15Loss)
def fenchel_young_rule(activation, loss, z, y):
    """A Fenchel–Young loss with its own mapping: ``(p − y)/N`` from the logits."""
    return loss.value_and_grad(z, y)
