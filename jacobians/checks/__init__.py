"""Gradient checks: every method against the others and against a float64 reference.

:func:`~jacobians.check_activation` and :func:`~jacobians.check_head` run every way the
toolkit computes a derivative — ``jacobian``, ``operator`` (the structured Jacobian),
``vjp``, ``jvp`` and, for a head, ``fused`` — on given or generated inputs, compare them
with each other and with a finite-difference reference computed in float64, and return a
:class:`~jacobians.CheckReport`: one row per comparison, with the largest absolute and
relative error, the tolerance and pass/fail. :func:`check_extreme` checks logits of ±1e4, where
finite differences say nothing: every method must stay finite and the fused rules must
match their closed forms.

Tolerances
----------
A comparison passes when ``max |x − ref| <= rtol · max |ref| + atol`` (normwise: the
error of the worst entry against the size of the largest reference entry). ``rtol`` and
``atol`` depend on the dtype of the inputs and on what is compared (:data:`TOLERANCES`):

* ``'numerical'`` — a method against the finite-difference reference. The reference is
  always computed in float64 (float32 inputs are promoted exactly), with central
  differences, step ``eps64^(1/3) · max(1, |z|)`` ≈ ``6e-6 · max(1, |z|)``, relative error
  ≈ 1e-10; the tolerance covers that and, for float32 inputs, float32 round-off.
  ``atol`` is relative to the size of the function differenced (``max |act(z)|``, or
  the largest per-sample loss), which the reference's round-off scales with.
* ``'methods'`` — two analytic methods in the inputs' dtype (round-off only: tighter).
  ``atol`` is relative to the terms the product adds up (``max |g|·|J|``); for loss
  values, to the loss, or for a Fenchel–Young loss to the terms its value adds up
  (``Σ |z − max z| (p + y) + 1``, much larger than the loss where p nears y).
* ``'closed_form'`` — a fused rule at ±1e4 logits against its closed form.

The scaled ``atol`` keeps a reference of exact zeros (a gradient that vanishes) from
failing on round-off, without waving through a function that is merely small.

Kinks
-----
Finite differences are wrong within one step of a kink (ReLU at 0, the support
boundaries of sparsemax, 1.5-entmax and α-entmax — which move with the temperature and α,
and are also inside the Fenchel–Young losses —, MAE at ``a = y``, Huber at
``|a − y| = δ``). Generated inputs (:func:`example_inputs`) are resampled row by row until
every entry is at least :data:`KINK_MARGIN` = 1e-2 from a known kink, measured in the
kink's own coordinate (``z`` for an activation, the loss's input for a loss; 1.5-entmax
and α-entmax ask for 10× that, since ``p = u^{1/(α−1)}`` makes log-losses steep near the
support boundary, and beyond α = 2 its slope is unbounded there). Logits are clipped to ``|z| <= 6``, so the largest step
is 6e-6·6 < 4e-5 in ``z``, and at most twice that in ``a`` (every built-in activation is
2-Lipschitz): the margin is over 100 times the step. The kinks are the class's own
``kinks`` method (inherited by subclasses; :data:`KINKS` lists the registered classes'):
give your own class with a kink one (see :class:`~jacobians.Activation`), or pass inputs
yourself. Given inputs are used as they are; a failing row then
notes when they lie within the margin of a kink.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> report = jac.check_activation(jac.Softmax())
>>> report.passed
True
>>> head = jac.Head(jac.Softmax(), jac.CrossEntropy())
>>> z = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
>>> jac.check_head(head, z, np.array([0, 2, 1, 1])).passed
True
"""

from __future__ import annotations

from ..rules import EXTREME_CLOSED_FORMS
from .activation import check_activation
from .extreme import check_extreme
from .head import check_head
from .inputs import DEFAULT_SHAPE, EXTREME, KINK_MARGIN, KINKS, TARGET_KINDS, example_inputs, extreme_inputs
from .report import TOLERANCES, CheckReport, CheckRow, format_rows, format_table, label
from .second_order import (
    EXTREME_HESSIANS,
    check_activation_second_order,
    check_second_order,
    check_second_order_extreme,
)

__all__ = [
    "CheckReport",
    "CheckRow",
    "check_activation",
    "check_head",
    "check_extreme",
    "check_second_order",
    "check_activation_second_order",
    "check_second_order_extreme",
    "EXTREME_HESSIANS",
    "example_inputs",
    "extreme_inputs",
    "TOLERANCES",
    "KINKS",
    "KINK_MARGIN",
    "TARGET_KINDS",
    "DEFAULT_SHAPE",
    "EXTREME",
    "EXTREME_CLOSED_FORMS",
    "format_rows",
    "format_table",
    "label",
]
