"""The :class:`Loss` base class, its reductions, and the loss registry."""

from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np

from .._validation import as_float_array, check_reduction
from ..activations.base import _register
from ..domains import Domain, domain

__all__ = ["Loss", "ElementwiseLoss", "LOSSES", "register_loss", "get_loss"]

#: name -> loss class, in registration order
LOSSES: dict[str, type] = {}


def register_loss(cls=None, *, name: str | None = None, replace: bool = False):
    """Add a :class:`Loss` subclass to the registry (usable as a decorator).

    Registered losses are covered by :func:`jacobians.pairs`, the ``check`` command and
    every test that walks the registry. See :func:`jacobians.register_activation`.
    """
    return _register(LOSSES, "loss", Loss, cls, name, replace)


def get_loss(name: str) -> type:
    """The loss class registered as ``name``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"loss {name!r} not found; valid names are {sorted(LOSSES)}") from None


class Loss:
    """A loss ``E(a, y)`` of activations ``a`` (..., K) and targets ``y``.

    Subclass it and write two methods:

    * ``per_sample(a, y)`` → ``(...,)``: the loss of each sample;
    * ``per_sample_grad(a, y)`` → ``(..., K)``: the gradient of each sample's loss with
      respect to its own row of ``a``.

    The base class then gives :meth:`value`, :meth:`grad`, :meth:`value_and_grad` and
    every reduction: ``'mean'`` (default) divides by the number of samples N, ``'sum'``
    adds, ``'none'`` returns per-sample values and per-row gradients. The gradient
    returned is always the gradient of the reduced value.

    Attributes
    ----------
    name : str
        Registry name (default: the class name in snake_case).
    input_domain : str
        What the loss accepts, e.g. ``'simplex'``; default ``'real'`` (any real input).
    target_kind : str
        ``'real'`` (targets like ``a``), ``'probability'`` (like ``a``, in [0, 1]) or
        ``'class'`` (indices ``(...,)`` or probabilities ``(..., K)``); used to make
        example targets in checks.

    Examples
    --------
    A Brier score, ``Σ_k (a_k − y_k)²`` per sample:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Brier(jac.Loss):
    ...     input_domain = "simplex"
    ...     target_kind = "probability"
    ...     def per_sample(self, a, y):
    ...         return ((a - y) ** 2).sum(axis=-1)
    ...     def per_sample_grad(self, a, y):
    ...         return 2 * (a - y)
    >>> a = np.array([[0.5, 0.5], [1.0, 0.0]])
    >>> y = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> float(Brier()(a, y)), Brier(reduction="none")(a, y)
    (0.25, array([0.5, 0. ]))
    >>> Brier().grad(a, y)
    array([[-0.5,  0.5],
           [ 0. ,  0. ]])
    """

    name: ClassVar[str | None] = None
    input_domain: ClassVar[str | Domain] = "real"
    target_kind: ClassVar[str] = "real"
    #: set by Fenchel–Young losses: the activation whose logits the loss consumes
    logits_of: ClassVar[type | None] = None
    #: instance attribute set by ``__init__``; the class default serves subclasses whose
    #: ``__init__`` does not call ``super().__init__()``
    reduction: str = "mean"

    def __init__(self, reduction: str = "mean"):
        self.reduction = check_reduction(reduction)

    @classmethod
    def variants(cls, K: int) -> list[dict]:
        """Parameter sets besides the defaults that the checks and the tests also run.

        A list of keyword-argument dicts for ``cls(**kw)`` (empty by default; the
        reduction is varied separately): the ``check`` command and the test suite walk
        them with every activation the loss pairs with, so that label smoothing, class
        weights or an ignored index are checked, not only the defaults. ``K`` is the
        number of classes, for parameters of shape (K,).
        """
        return []

    # -- what a subclass writes ----------------------------------------------------------
    def per_sample(self, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Loss of each sample, shape ``(...,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement per_sample(a, y)")

    def per_sample_grad(self, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Gradient of each sample's loss w.r.t. its own row of ``a``, shape ``(..., K)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement per_sample_grad(a, y)")

    def check_targets(self, a: np.ndarray, y) -> np.ndarray:
        """Validate ``y`` against ``a``; default: shape ``a.shape`` or ``a.shape[:-1]``."""
        y = np.asarray(y)
        if y.shape not in (a.shape, a.shape[:-1]):
            raise ValueError(
                f"y must have shape {a.shape} (like a) or {a.shape[:-1]} (one per sample); got shape {y.shape}"
            )
        if y.dtype.kind in "fiub" and y.shape == a.shape:
            y = y.astype(a.dtype, copy=False)
        return y

    # -- the one reduction mechanism ----------------------------------------------------
    def _terms(self, a: np.ndarray, y, need_grad: bool):
        """``(values, grads, denominator)``: unreduced values (the ``'none'`` output),
        their gradients (or None), and what ``'mean'`` divides by."""
        values = np.asarray(self.per_sample(a, y))
        grads = np.asarray(self.per_sample_grad(a, y)) if need_grad else None
        return values, grads, values.size

    def _prepare(self, a, y):
        a = as_float_array(a, "a")
        d = domain(self.input_domain)
        d.check_values(a, "a", type(self).__name__)
        return a, self.check_targets(a, y)

    def _reduce(self, values, grads, denom):
        red = self.reduction
        if red == "none":
            return values, grads
        total = values.sum(dtype=values.dtype)
        if red == "sum":
            return total, grads
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = values.dtype.type(1.0) / values.dtype.type(denom)
            return total * scale, (None if grads is None else grads * scale)

    def value(self, a, y):
        """The reduced loss: a scalar (``'mean'``, ``'sum'``) or an array (``'none'``)."""
        a, y = self._prepare(a, y)
        return self._reduce(*self._terms(a, y, need_grad=False))[0]

    def grad(self, a, y) -> np.ndarray:
        """``dE/da`` of the reduced loss, shape of ``a``."""
        a, y = self._prepare(a, y)
        return self._reduce(*self._terms(a, y, need_grad=True))[1]

    def value_and_grad(self, a, y):
        """``(value, dE/da)`` sharing the work."""
        a, y = self._prepare(a, y)
        return self._reduce(*self._terms(a, y, need_grad=True))

    def __call__(self, a, y):
        return self.value(a, y)

    def with_reduction(self, reduction: str) -> Loss:
        """A copy of this loss with another reduction."""
        new = copy.copy(self)
        new.reduction = check_reduction(reduction)
        return new

    @property
    def domain(self) -> Domain:
        """The input domain as a :class:`~jacobians.domains.Domain`."""
        return domain(self.input_domain)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class ElementwiseLoss(Loss):
    """A loss that is a sum of per-entry terms ``e(a_k, y_k)``, with torch's reductions.

    Subclasses write ``per_element(a, y)`` and ``per_element_grad(a, y)``, both
    ``(..., K)``. ``'mean'`` divides by all N·K entries and ``'none'`` returns ``(..., K)``
    (torch's ``mse_loss`` convention); ``per_sample`` sums over K.
    """

    target_kind = "real"

    def per_element(self, a, y) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement per_element(a, y)")

    def per_element_grad(self, a, y) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement per_element_grad(a, y)")

    def per_sample(self, a, y):
        return self.per_element(a, y).sum(axis=-1)

    def per_sample_grad(self, a, y):
        return self.per_element_grad(a, y)

    def check_targets(self, a, y):
        y = as_float_array(y, "y", min_ndim=0, like=a)
        if y.shape != a.shape:
            raise ValueError(f"y must have the shape of a, {a.shape}; got shape {y.shape}")
        return y

    def _terms(self, a, y, need_grad):
        values = self.per_element(a, y)
        return values, (self.per_element_grad(a, y) if need_grad else None), values.size
