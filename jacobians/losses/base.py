"""The :class:`Loss` base class, its reductions, and the loss registry."""

from __future__ import annotations

import copy
import math
from typing import Callable, ClassVar

import numpy as np

from ..backend import backend_aware
from ..domains import Domain, domain
from ..numerics import buffers
from ..numerics.empty import mean_scale, mean_value, mean_value_of_scale
from ..numerics.sampling import Predictive, predictive_of
from ..numerics.validation import as_array, as_float_array, check_reduction
from ..operators import DenseJacobian, DiagonalJacobian, DiagonalPlusLowRank, JacobianOperator
from ..registry import register_class
from .generic import GenericElementwise, GenericLoss, mark_generic

__all__ = ["Loss", "ElementwiseLoss", "LOSSES", "register_loss", "get_loss"]

#: name -> loss class, in registration order
LOSSES: dict[str, type] = {}


def register_loss(cls=None, *, name: str | None = None, replace: bool = False):
    """Add a :class:`Loss` subclass to the registry (usable as a decorator).

    Registered losses are covered by :func:`jacobians.pairs`, the ``check`` command and
    every test that walks the registry. See :func:`jacobians.register_activation`.
    """
    return register_class(LOSSES, "loss", Loss, cls, name, replace)


def get_loss(name: str) -> type:
    """The loss class registered as ``name``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"loss {name!r} not found; valid names are {sorted(LOSSES)}") from None


class Loss(GenericLoss):
    """A loss ``E(a, y)`` of activations ``a`` (..., K) and targets ``y``.

    Subclass it and write two methods:

    * ``per_sample(a, y)`` → ``(...,)``: the loss of each sample;
    * ``per_sample_grad(a, y)`` → ``(..., K)``: the gradient of each sample's loss with
      respect to its own row of ``a``.

    The base class then gives :meth:`value`, :meth:`grad`, :meth:`value_and_grad` and
    every reduction: ``'mean'`` (default) divides by the number of samples N, ``'sum'``
    adds, ``'none'`` returns per-sample values and per-row gradients. The gradient
    returned is always the gradient of the reduced value.

    torch, JAX, CuPy and array-api-strict arrays take the generic path
    (``jacobians.losses.generic``): the twins ``xp_per_sample(xp, a, y)`` and
    ``xp_per_sample_grad(xp, a, y)`` (``xp_per_element...`` for an :class:`ElementwiseLoss`,
    ``..._hessian`` for second order), written with the array API standard only, give the
    same reductions there; a class with numpy math but no twins raises a clear
    NotImplementedError for such arrays.

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
    example_targets : callable, optional
        ``example_targets(shape, rng) -> y``: a loss whose targets are not shaped like its
        input ``a`` of ``shape`` (rankings, a mean's targets for a mean and variance input,
        counts) draws its own example targets; checks and the test walks then use it in
        place of ``target_kind``.
    example_input : callable, optional
        ``example_input(shape, rng) -> a``: the loss's own draw of an input ``a`` inside its
        domain (e.g. a positive variance half), used by the test walks.
    loop_reference : callable or None
        ``loop_reference(self, a, y) -> (values, grads, denominator)``: the plain
        reference, one sample at a time in float64, sharing no code with the loss's own
        methods. ``a`` is float64 ``(..., K)``, ``y`` the targets as given; ``values`` the
        loss of each sample ``(N,)`` (of each entry ``(N, K)`` for an elementwise loss),
        ``grads`` each row's gradient ``(N, K)``, ``denominator`` what ``'mean'`` divides
        by. :func:`jacobians.testing.loop_loss` applies the reduction;
        :func:`~jacobians.check_head` compares with it; a class without one (None, the
        default) is listed in the checks' ``report.missing``. Not inherited: a subclass
        may change the math, so it starts with None (write
        ``loop_reference = Parent.loop_reference`` in its body to keep its parent's).
    kinks : callable or None
        ``kinks(self, a, y) -> (..., K)``: each entry's distance, in ``a``, to the nearest
        point where the loss is not differentiable. The checks' generated inputs keep
        :data:`~jacobians.checks.KINK_MARGIN` away from them. None (the default): smooth
        everywhere. Inherited.

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
    #: what ``'mean'`` divides by instead of the batch's own denominator (None: the batch's);
    #: see :meth:`with_denominator`
    denominator: float | None = None
    #: True: :meth:`mean_denominator` reads only the targets and the shape and dtype of
    #: ``a``, never its values (the built-ins); a batch split into pieces (Dask chunks) then
    #: gets it from the targets without computing ``a``. A subclass whose denominator reads
    #: the values of ``a`` sets it False.
    denominator_from_targets: ClassVar[bool] = True
    #: the model's own distribution of targets given ``a``, for the Fisher: a name of
    #: ``jacobians.sampling.PREDICTIVES`` (``'categorical'``, ``'categorical_log'``,
    #: ``'bernoulli'``, ``'gaussian'``) or a :class:`jacobians.sampling.Predictive` of the
    #: loss's own; None: the loss is no negative log-likelihood
    predictive: ClassVar[str | Predictive | None] = None
    loop_reference: ClassVar[Callable | None] = None
    kinks: ClassVar[Callable | None] = None

    def __init__(self, reduction: str = "mean"):
        self.reduction = check_reduction(reduction)

    def __init_subclass__(cls, **kwargs):
        # every subclass's value/grad/curvature take Dask arrays too (jacobians._dask)
        super().__init_subclass__(**kwargs)
        _make_dask_aware(cls)
        mark_generic(cls)  # a class with numpy math but no generic math has no generic path
        if "loop_reference" not in vars(cls):  # a subclass may change the math
            cls.loop_reference = None

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

    def per_sample_hessian(self, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Hessian of each sample's loss w.r.t. its own row of ``a``, shape ``(..., K, K)``.

        Write it to get :meth:`hessian`, :meth:`hvp` and every second-order method of a
        :class:`~jacobians.Head` (every reduction follows, as for the gradient).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no second derivative: write per_sample_hessian(a, y) -> (..., K, K) "
            "(or, for an ElementwiseLoss, per_element_hessian(a, y) -> (..., K)) to use second-order methods"
        )

    def check_targets(self, a: np.ndarray, y) -> np.ndarray:
        """Validate ``y`` against ``a``; default: shape ``a.shape`` or ``a.shape[:-1]``."""
        y = as_array(y, "y")
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

    def _hessian_terms(self, a: np.ndarray, y):
        """``(blocks, denominator)``: the unreduced per-sample Hessians as a
        :class:`~jacobians.JacobianOperator`, and what ``'mean'`` divides by."""
        H = np.asarray(self.per_sample_hessian(a, y))
        if H.shape != a.shape + a.shape[-1:]:
            raise ValueError(
                f"{type(self).__name__}.per_sample_hessian must return shape {a.shape + a.shape[-1:]} (..., K, K); "
                f"got shape {H.shape}"
            )
        return DenseJacobian(H.astype(a.dtype, copy=False)), math.prod(a.shape[:-1])

    def _reduction_scale(self, denom, dtype):
        """The factor the reduction puts on every per-sample term, from the batch's own
        ``'mean'`` denominator ``denom``: see :meth:`reduction_scale`."""
        if self.reduction != "mean":
            return np.dtype(dtype).type(1.0)
        if self.denominator is not None:
            denom = self.denominator
        return mean_scale(denom, dtype)  # 0 for a denominator of 0 (see jacobians.numerics.empty)

    def mean_denominator(self, a, y=None):
        """What ``'mean'`` divides by for this batch: the number of rows N by default.

        ``a`` (..., K) is the loss's input (only its shape is read by the built-ins) and
        ``y`` its targets (raw or validated; None: no targets, N rows). A subclass whose
        ``'mean'`` divides by something else overrides this (the class losses: the summed
        weights of the targets not ignored; an :class:`ElementwiseLoss`: N·K). It ignores
        :meth:`with_denominator`; :meth:`reduction_scale` honours it.
        """
        return math.prod(np.shape(a)[:-1])

    def reduction_scale(self, a, y=None, *, dtype=None):
        """``c`` with the reduced loss ``E = c · Σ_n ℓ_n`` (ℓ_n the per-sample losses).

        ``1/N`` for a class loss's ``'mean'`` (N the rows not ignored), ``1/(N·K)`` for an
        elementwise loss's, ``1/Σ w_{y_n}`` where class weights apply, and 1 for ``'sum'``
        and ``'none'``; a loss made by :meth:`with_denominator` divides by its own
        denominator. A denominator of 0 (an empty batch, every target ignored) gives
        ``c = 0`` with an :class:`~jacobians.EmptyMeanWarning` (see ``jacobians.numerics.empty``).

        Parameters
        ----------
        a : array_like (..., K)
            The loss's input (only its shape and dtype are read).
        y : array_like or None
            The targets (None: no targets, ``'mean'`` divides by the rows, or entries).
        dtype : numpy dtype, optional
            The dtype of ``c``; default ``a``'s float dtype.

        Returns
        -------
        numpy scalar of ``dtype``

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> a = np.full((4, 3), 1 / 3)
        >>> float(jac.CrossEntropy(ignore_index=-100).reduction_scale(a, [0, 1, -100, 2]))
        0.3333333333333333
        >>> float(jac.MeanSquaredError().reduction_scale(a, np.zeros((4, 3))))  # 1/(N·K)
        0.08333333333333333
        >>> float(jac.CrossEntropy(reduction="sum").reduction_scale(a, [0, 1, 1, 2]))
        1.0
        """
        if not hasattr(a, "shape"):
            a = as_float_array(a, "a")
        if dtype is None:  # a's float dtype (float16 computes in float32, the rest in float64)
            dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float32 if a.dtype == np.float16 else np.float64
        dtype = np.dtype(dtype)
        if self.reduction != "mean" or self.denominator is not None:
            return self._reduction_scale(None, dtype)
        return self._reduction_scale(self.mean_denominator(a, y), dtype)

    def hessian_operator(self, a, y):
        """The Hessian blocks of the reduced loss, ``∂²E/∂a_n∂a_n``, as a structured
        :class:`~jacobians.JacobianOperator` (diagonal for the built-ins except the
        Fenchel–Young losses; O(N·K) memory).

        Each block carries the reduction's factor (1/N for ``'mean'``, 1/(N·K) for an
        elementwise loss, the summed class weights, zero for ignored samples); with
        ``'none'`` block n is the Hessian of sample n's own loss.
        """
        a, y = self._prepare(a, y)
        blocks, denom = self._hessian_terms(a, y)
        scale = self._reduction_scale(denom, a.dtype)
        return blocks if scale == 1 else blocks.scaled(scale)

    def hessian(self, a, y) -> np.ndarray:
        """``∂²E/∂a_n∂a_n``, shape ``(..., K, K)``: see :meth:`hessian_operator`."""
        return self.hessian_operator(a, y).dense()

    def hvp(self, a, y, v) -> np.ndarray:
        """``(∂²E/∂a_n∂a_n) v_n`` per sample, shape ``(..., K)``, without the dense blocks."""
        op = self.hessian_operator(a, y)
        v = as_float_array(v, "v")
        if v.shape != op.batch_shape + (op.size,):
            raise ValueError(f"v must have the shape of a, {op.batch_shape + (op.size,)}; got shape {v.shape}")
        return op @ v.astype(op.dtype, copy=False)

    def fisher_blocks(self, a: np.ndarray) -> JacobianOperator:
        """``E_ŷ[∇ℓ(ŷ) ∇ℓ(ŷ)ᵀ]`` per sample, unreduced, with ``∇`` taken with respect to ``a``
        and ``ŷ`` drawn from :attr:`predictive` at ``a``: the exact (type-2) Fisher in the
        loss's input space, shape ``(..., K, K)`` as an operator.

        The default enumerates the outcomes with :meth:`per_sample_grad`: the K classes of a
        categorical (O(K³) a sample), the two values of each independent Bernoulli entry (an
        elementwise loss: ``diag(a(1 − a)(g₁ − g₀)²) + m mᵀ`` with ``m`` the mean gradient).
        A Gaussian predictive has no finite enumeration: write this method, or use the
        Monte-Carlo Fisher.
        """
        kind = self.predictive
        K = a.shape[-1]
        if kind in ("categorical", "categorical_log"):
            p = np.exp(a) if kind == "categorical_log" else a
            grads = np.stack([np.asarray(self.per_sample_grad(a, np.full(a.shape[:-1], k))) for k in range(K)], axis=-2)
            return DenseJacobian(np.einsum("...k,...ki,...kj->...ij", p, grads, grads))
        if kind == "bernoulli" and isinstance(self, ElementwiseLoss):
            g0 = self.per_element_grad(a, np.zeros_like(a))
            g1 = self.per_element_grad(a, np.ones_like(a))
            m = a * g1 + (1 - a) * g0
            return DiagonalPlusLowRank(a * (1 - a) * (g1 - g0) ** 2, m[..., None], -m[..., None])
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form Fisher for its predictive {kind!r}: write "
            "fisher_blocks(a), or use the Monte-Carlo Fisher (kind='mc')"
        )

    def predictive_uniforms(self, K: int) -> int:
        """How many uniforms :meth:`sample_targets` takes for a row of ``K`` entries."""
        return predictive_of(self).per_row(K)

    def sample_targets(self, a: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Targets drawn from :attr:`predictive` at ``a`` (..., K) from uniforms ``u`` in
        [0, 1), shape ``(N, predictive_uniforms(K))`` for the N rows of ``a``: class
        indices ``(...,)`` or an array of a's shape."""
        entry = predictive_of(self)
        out = entry.draw(a.reshape(-1, a.shape[-1]), u)
        return out.reshape(a.shape[:-1] if entry.indices else a.shape)

    def _prepare(self, a, y):
        a = as_float_array(a, "a")
        d = domain(self.input_domain)
        d.check_values(a, "a", type(self).__name__)
        return a, self.check_targets(a, y)

    def reduce(self, values, grads, denom):
        """``(E, dE/da)`` from per-sample ``values`` and per-sample ``grads`` by this loss's
        reduction: ``'none'`` returns both as they are, ``'sum'`` sums the values, ``'mean'``
        divides the sum by ``denom`` (or by :attr:`denominator` when it is set) and scales
        ``grads`` by :meth:`reduction_scale`'s factor. ``grads`` may be None (value only).
        The pair rules call it after their own per-sample terms."""
        red = self.reduction
        if red == "none":
            return values, grads
        total = buffers.total(values)
        if red == "sum":
            return total, grads
        d = denom if self.denominator is None else self.denominator
        if grads is None:
            return mean_value(total, d, values.dtype), None
        scale = mean_scale(d, values.dtype)  # 0, with the one EmptyMeanWarning, when d is 0
        return mean_value_of_scale(total, scale, values.dtype, warn=False), grads * scale

    def value(self, a, y):
        """The reduced loss: a scalar (``'mean'``, ``'sum'``) or an array (``'none'``)."""
        a, y = self._prepare(a, y)
        return self.reduce(*self._terms(a, y, need_grad=False))[0]

    def grad(self, a, y) -> np.ndarray:
        """``dE/da`` of the reduced loss, shape of ``a``."""
        a, y = self._prepare(a, y)
        return self.reduce(*self._terms(a, y, need_grad=True))[1]

    def value_and_grad(self, a, y):
        """``(value, dE/da)`` sharing the work."""
        a, y = self._prepare(a, y)
        return self.reduce(*self._terms(a, y, need_grad=True))

    def __call__(self, a, y):
        return self.value(a, y)

    def with_reduction(self, reduction: str) -> Loss:
        """A copy of this loss with another reduction."""
        new = copy.copy(self)
        new.reduction = check_reduction(reduction)
        return new

    def with_denominator(self, denominator) -> Loss:
        """A copy of this loss whose ``'mean'`` divides by ``denominator`` whatever the batch.

        For a batch split into pieces (chunks of a Dask array, a data set that does not fit
        at once): with the whole batch's denominator — N, N·K for an elementwise loss, the
        summed weights of the targets not ignored — each piece gives its rows' exact share
        of the whole batch's value, gradient and curvature, and the shares add up.

        Examples
        --------
        >>> import numpy as np
        >>> import jacobians as jac
        >>> a = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
        >>> y = np.array([1, 0, 1])
        >>> loss = jac.CrossEntropy()
        >>> whole = loss.grad(a, y)
        >>> piece = loss.with_denominator(3).grad(a[:1], y[:1])
        >>> bool(np.array_equal(piece, whole[:1]))
        True
        """
        if denominator is not None:
            denominator = float(denominator)
        new = copy.copy(self)
        new.denominator = denominator
        return new

    @property
    def domain(self) -> Domain:
        """The input domain as a :class:`~jacobians.domains.Domain`."""
        return domain(self.input_domain)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


#: the methods of a loss that run on Dask arrays chunk by chunk
DASK_METHODS = ("value", "grad", "value_and_grad", "hessian", "hvp")


def _make_dask_aware(cls) -> None:
    for name in DASK_METHODS:
        if name in cls.__dict__:
            setattr(cls, name, backend_aware("loss." + name)(cls.__dict__[name]))


_make_dask_aware(Loss)


class ElementwiseLoss(GenericElementwise, Loss):
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

    def per_element_hessian(self, a, y) -> np.ndarray:
        """``∂²e(a_k, y_k)/∂a_k²``, shape ``(..., K)``: the diagonal of each sample's Hessian."""
        raise NotImplementedError(
            f"{type(self).__name__} has no second derivative: write per_element_hessian(a, y) -> (..., K) "
            "to use second-order methods"
        )

    def per_sample(self, a, y):
        return self.per_element(a, y).sum(axis=-1)

    def per_sample_grad(self, a, y):
        return self.per_element_grad(a, y)

    def per_sample_hessian(self, a, y):
        return DiagonalJacobian(self.per_element_hessian(a, y)).dense()

    def _hessian_terms(self, a, y):
        h = np.asarray(self.per_element_hessian(a, y))
        if h.shape != a.shape:
            raise ValueError(
                f"{type(self).__name__}.per_element_hessian must return the shape of a, {a.shape}; got shape {h.shape}"
            )
        return DiagonalJacobian(h.astype(a.dtype, copy=False)), a.size

    def mean_denominator(self, a, y=None):
        """N·K: every entry counts."""
        return math.prod(np.shape(a))

    def check_targets(self, a, y):
        y = as_float_array(y, "y", min_ndim=0, like=a)
        if y.shape != a.shape:
            raise ValueError(f"y must have the shape of a, {a.shape}; got shape {y.shape}")
        return y

    def _terms(self, a, y, need_grad):
        values = self.per_element(a, y)
        return values, (self.per_element_grad(a, y) if need_grad else None), values.size
