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

from . import _math
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
        return _plain_index_rule(x, t, loss.reduction, T, loss.denominator)
    shifted, s, rest, top = _math.shifted_exp(x)
    c, denom = loss.coefficients(t, z.dtype)
    csum = c.sum(axis=-1, keepdims=True)
    # Σ c (lse − x) = Σc · log1p(rest) + Σ c (m − x): both terms >= 0
    values = (np.log1p(rest) * csum)[..., 0] - np.einsum("...k,...k->...", c, shifted)
    if isinstance(loss, KLDivergence):
        values += loss.entropy_term(t, z.dtype)
    total = 1 + rest
    s /= total
    # at the row's maximum s·Σc − c = s (Σc − c) − c (1 − s) with 1 − s = rest/total: a
    # confident prediction (s near 1) keeps the small gradient that s − 1 would round away
    s_top, c_top = np.take_along_axis(s, top, axis=-1), np.take_along_axis(c, top, axis=-1)
    g_top = s_top * (csum - c_top) - c_top * (rest / total)
    s *= csum
    s -= c
    np.put_along_axis(s, top, g_top, axis=-1)
    grad = s
    if T != 1.0:
        grad /= grad.dtype.type(T)
    return loss._reduce(values, grad, denom)


def _plain_index_rule(x, t, reduction, T, denominator=None):
    """Index targets, no weights or smoothing: value ``lse(x) − x_y``, gradient
    ``(s − e_y)/T`` (over the number of samples not ignored for ``'mean'``), written in
    one buffer.

    With ``e = exp(x)`` (unshifted when :func:`~jacobians._math.exp_is_safe`, else
    ``exp(x − max)``) and ``o = Σ_{k≠y} e_k`` summed without the target, the value is
    ``log1p(o / e_y)`` (no cancellation: exact to a few ulp, tiny losses included) and
    the target's gradient entry ``−o / (o + e_y)``. Where ``o / e_y`` would overflow (the
    target far below the row's maximum) the row is redone on shifted logits as
    ``log Σ_{k≠y} e^{x_k − m} + (m − x_y)``, a sum of two positive numbers.
    """
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    n = x2.shape[0]
    idx = t.safe_indices().reshape(-1)
    flat = np.arange(n) * K + idx  # positions of the targets in g.ravel()
    g = np.empty(x2.shape, dtype=x2.dtype)  # C order: gflat below must be a view, whatever x2's layout
    gflat = g.reshape(-1)
    if _math.exp_is_safe(x2):
        np.copyto(g, x2)
    else:
        np.subtract(x2, x2.max(axis=-1, keepdims=True), out=g)
    x_y = gflat[flat]
    np.exp(g, out=g)
    e_y = gflat[flat]
    gflat[flat] = 0
    other = _math.rowsum(g)[:, 0]
    gflat[flat] = e_y
    # float32: the target's exp again in float64 (one per row), so that the value carries
    # the rounding of float32 exp (up to 2.4 ulp in numpy) once, through o, not twice
    exact_e_y = np.exp(x_y.astype(np.float64)) if g.dtype == np.float32 else e_y
    values, far = _math.log1p_ratio(other, exact_e_y)
    if far.any():
        rows = np.flatnonzero(far)
        values[rows] = _far_target_values(x2[rows], idx[rows])
    dtype = g.dtype.type
    valid = None if t.valid is None else t.valid.reshape(-1)
    count = n if valid is None else int(np.count_nonzero(valid))
    if denominator is not None:  # the whole batch's, for a piece of it (Loss.with_denominator)
        count = denominator
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty batch: 'mean' is nan, as torch
        mean = dtype(1.0) / dtype(count)
    scale = mean if reduction == "mean" else dtype(1.0)
    if T != 1.0:
        scale = scale / dtype(T)
    w = scale / (other + e_y)
    if valid is not None:
        w *= valid
        values *= valid
    g *= w[:, None]
    gflat[flat] = -(other * w)  # s_y − 1 = −o/(o + e_y), without the cancellation
    g = g.reshape(x.shape)
    if reduction == "none":
        return values.reshape(x.shape[:-1]), g
    value = _math.total(values)
    if reduction == "sum":
        return value, g
    with np.errstate(invalid="ignore"):
        return value * mean, g


def _far_target_values(x, idx):
    """``lse(x) − x_y`` for rows ``x`` (n, K) whose target lies far below the maximum:
    ``log Σ_{k≠y} e^{x_k − m} + (m − x_y)``, the sum at least 1 (it holds the maximum)."""
    rows = np.arange(x.shape[0])
    shifted = x - x.max(axis=-1, keepdims=True)
    gap = -shifted[rows, idx]
    e = np.exp(shifted)
    e[rows, idx] = 0
    return np.log(e.sum(axis=-1)) + gap


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
        return _sigmoid_bce_plain(z, y, loss.reduction, loss.denominator)
    e = np.exp(-np.abs(z))
    inv = 1 / (1 + e)
    pos = z > 0
    sig, sig_neg = np.where(pos, inv, e * inv), np.where(pos, e * inv, inv)  # σ(z), σ(−z)
    log1p_e = np.log1p(e)
    py = y if pw is None else pw * y
    # (1 − y) softplus(z) + p y softplus(−z) and (1 − y) σ(z) − p y σ(−z): products of
    # non-negative numbers, nothing rounded against 1
    values = (1 - y) * (np.maximum(z, 0) + log1p_e) + py * (np.maximum(-z, 0) + log1p_e)
    grad = (1 - y) * sig - py * sig_neg
    return loss._reduce(values, grad, values.size)


def _sigmoid_bce_plain(z, y, reduction, denominator=None):
    """Sigmoid + BCE without ``pos_weight``: ``softplus(z) − y z`` and ``σ(z) − y``.

    With ``h = step(z)`` (1 for z > 0, else 0) and ``q = σ(−|z|) = e/(1 + e)``,
    ``e = exp(−|z|)``::

        value = z (h − y) + log1p(e)          grad = (h − y) + (1 − 2h) q

    A product and a sum of two non-negative numbers; and ``σ(z) − y`` written so that
    nothing is rounded against 1 first: a well-classified entry (z = 40, y = 1) keeps its
    tiny loss e^{-40} and its gradient −e^{-40}, a soft target near 1 loses nothing to
    cancellation. Branch-free (a ``where=`` on random signs is ~10x slower), chunk by
    chunk in reused scratch buffers, so a call allocates only its results.
    """
    zf, yf = z.reshape(-1), np.broadcast_to(y, z.shape).reshape(-1)
    n = zf.size
    dtype = z.dtype.type
    grad = np.empty_like(zf)
    values = np.empty_like(zf) if reduction == "none" else None
    count = n if denominator is None else denominator
    with np.errstate(divide="ignore"):  # an empty batch: 'mean' is nan, as torch
        scale = dtype(1.0) / dtype(count) if reduction == "mean" else dtype(1.0)
    total = 0.0
    for c in _math.row_chunks(n, 1):
        zc, yc, gc = zf[c], yf[c], grad[c]
        m = zc.size
        e = _math.scratch(m, z.dtype, 1)
        v = values[c] if values is not None else _math.scratch(m, z.dtype, 3)
        w = _math.scratch(m, z.dtype, 4)
        u = _math.scratch(m, z.dtype, 5)
        np.abs(zc, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)  # e = exp(−|z|) <= 1: never overflows
        np.log1p(e, out=v)
        np.add(e, 1, out=w)
        np.divide(e, w, out=e)  # q = σ(−|z|)
        np.sign(zc, out=w)
        np.maximum(w, 0, out=w)  # h (0 at z = 0, where q = 1/2 = σ(0))
        np.subtract(w, yc, out=gc)  # h − y
        np.multiply(gc, zc, out=u)
        v += u
        np.multiply(w, -2, out=u)
        u += 1
        u *= e
        gc += u
        if scale != 1:
            gc *= scale
        if values is None:
            total += v.sum(dtype=np.float64)  # float32 chunks added in float64, rounded once below
    grad = grad.reshape(z.shape)
    if values is not None:
        return values.reshape(z.shape), grad
    total = dtype(total)
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
@register_fused(Entmax, EntmaxLoss)
def fenchel_young_rule(activation, loss, z, y):
    """A Fenchel–Young loss with its own mapping: ``L(z/T, y)``, gradient ``(p − y)/(N·T)``
    with ``p = map(z/T)`` (see :mod:`jacobians.losses.fenchel_young` for the temperature)."""
    return loss.tempered_value_and_grad(z, y, getattr(activation, "temperature", 1.0))
