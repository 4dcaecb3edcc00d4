"""Assertions and plain loop references for your own test suite.

Two kinds of tools, usable from any pytest suite:

* :func:`assert_jacobian_close` and :func:`assert_grad_close` compare arrays with
  tolerances chosen from their dtype and, on failure, say where and by how much they
  differ;
* loop references — :func:`loop_forward`, :func:`loop_jacobian`, :func:`loop_vjp`,
  :func:`loop_jvp`, :func:`loop_loss` and :func:`loop_head` — compute what the toolkit
  computes the obvious way: one sample at a time, in float64, with ``np.diag`` and
  ``np.outer``, from the textbook definition of each built-in activation and loss
  (torch's definitions for the losses). They share no code with the library's kernels,
  so they are an independent referee, and slow: keep the batches small.

Each class carries its own reference, ``loop_reference`` (see
:class:`~jacobians.Activation` and :class:`~jacobians.Loss`), which a subclass does not
inherit (it may change the math); a class without one raises ``TypeError``. Give your
own classes one, or check them against :func:`jacobians.numerical_jacobian` /
:func:`jacobians.numerical_grad`.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> from jacobians import testing
>>> z = np.random.default_rng(0).normal(size=(4, 3))
>>> testing.assert_jacobian_close(jac.Softmax().jacobian(z), testing.loop_jacobian(jac.Softmax(), z))
>>> y = np.array([0, 2, 1, 1])
>>> head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1))
>>> value, grad = testing.loop_head(head, z, y)
>>> testing.assert_grad_close(head.grad(z, y), grad)
"""

from __future__ import annotations

from .assertions import assert_grad_close, assert_jacobian_close, default_tolerances
from .loops import (
    ACTIVATION_REFERENCES,
    LOSS_REFERENCES,
    loop_forward,
    loop_head,
    loop_jacobian,
    loop_jvp,
    loop_loss,
    loop_vjp,
)

__all__ = [
    "assert_jacobian_close",
    "assert_grad_close",
    "default_tolerances",
    "loop_forward",
    "loop_jacobian",
    "loop_vjp",
    "loop_jvp",
    "loop_loss",
    "loop_head",
    "ACTIVATION_REFERENCES",
    "LOSS_REFERENCES",
]
