"""Fused rules: the closed-form gradient of an (activation, loss) pair from the logits.

A rule is called as ``rule(activation, loss, z, y)`` and returns ``(value, dE/dz)`` with
the loss's reduction applied: the ``value_and_grad`` of the pair's
:class:`~jacobians.PairRule` (:mod:`jacobians.rules`; :data:`FUSED` is a view of
:data:`~jacobians.RULES`). ``Head(...).grad(z, y, method='fused')`` uses it, and
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

from .rules import FUSED, get_rule, register_fused
from .rules.base import check_rule_classes

__all__ = ["FUSED", "register_fused", "get_fused"]

_ = check_rule_classes  # (kept importable here)


def get_fused(activation, loss):
    """The fused rule (``value_and_grad``) registered for ``(type(activation), type(loss))``,
    or None."""
    rule = get_rule(activation, loss)
    return None if rule is None else rule.fused_function()
