"""Plain loop references: what the toolkit computes, the plain way, a sample at a time.

The drivers — :func:`loop_forward`, :func:`loop_jacobian`, :func:`loop_vjp`,
:func:`loop_jvp`, :func:`loop_loss` and :func:`loop_head` — run the ``loop_reference`` a
class carries (:class:`~jacobians.Activation`, :class:`~jacobians.Loss`; the built-ins'
are in :mod:`jacobians.activations.references` and :mod:`jacobians.losses.references`)
on each sample in float64, and apply the batch shape and the loss's reduction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Callable

import numpy as np

from ..activations.base import ACTIVATIONS
from ..activations.references import row_objects
from ..losses.base import LOSSES

__all__ = [
    "loop_forward",
    "loop_jacobian",
    "loop_vjp",
    "loop_jvp",
    "loop_loss",
    "loop_head",
    "ACTIVATION_REFERENCES",
    "LOSS_REFERENCES",
    "ClassView",
]


class ClassView(MutableMapping):
    """A ``{class: class.<attr>}`` over the registered classes whose ``attr`` is not
    None, read from the registries at each access (a class registered later shows).

    It keeps the old tables' writes working: ``view[cls] = fn`` sets ``cls.<attr>``
    (through ``adapt(cls, fn)``, which turns an old table entry into the method), and
    ``del view[cls]`` / ``view.pop(cls)`` remove what ``cls`` itself defines (with
    ``inherit``, ``cls`` then falls back to its parent's, as the old lookups along the
    class's bases did; without, it has none).

    Examples
    --------
    >>> import jacobians as jac
    >>> view = ClassView("kinks", jac.ACTIVATIONS)
    >>> jac.ReLU in view, jac.Softmax in view
    (True, False)
    """

    def __init__(
        self,
        attr: str,
        *registries: dict,
        name: str = "",
        adapt: Callable | None = None,
        inherit: bool = True,
    ):
        self._attr, self._registries, self._name = attr, registries, name or attr
        self._adapt, self._inherit = adapt, inherit

    def _table(self) -> dict:
        out = {}
        for registry in self._registries:
            for cls in registry.values():
                fn = getattr(cls, self._attr, None)
                if fn is not None:
                    out[cls] = fn
        return out

    def _own(self, cls):
        return vars(cls).get(self._attr) if isinstance(cls, type) else None

    def __getitem__(self, cls):
        table = self._table()
        if cls in table:
            return table[cls]
        if self._own(cls) is None:  # an unregistered class answers for what it defines
            raise KeyError(cls)
        return self._own(cls)

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __setitem__(self, cls, value):
        if not isinstance(cls, type):
            raise TypeError(f"{self._name} is keyed by class; got {cls!r}")
        if value is not None and not callable(value):
            raise TypeError(f"{self._name}[{cls.__name__}] must be callable; got {value!r}")
        if value is not None and self._adapt is not None:
            value = self._adapt(cls, value)
        setattr(cls, self._attr, value)

    def __delitem__(self, cls):
        if self._own(cls) is None:
            raise KeyError(cls)
        delattr(cls, self._attr)
        if not self._inherit:
            setattr(cls, self._attr, None)

    def __repr__(self) -> str:
        names = ", ".join(cls.__name__ for cls in self._table())
        return f"<{self._name}: {{{names}}}>"


#: registered activation class -> its ``loop_reference(activation, z_1d) -> (a, J)``
#: (float64), a view of the classes (see :class:`~jacobians.Activation`;
#: ``ACTIVATION_REFERENCES[cls] = sample`` sets ``cls.loop_reference``)
ACTIVATION_REFERENCES: Mapping = ClassView(
    "loop_reference", ACTIVATIONS, name="ACTIVATION_REFERENCES", inherit=False
)

#: registered loss class -> its ``loop_reference(loss, a, y) -> (values, per-row grads,
#: denominator of 'mean')``, a view of the classes (see :class:`~jacobians.Loss`;
#: ``LOSS_REFERENCES[cls] = rows`` sets ``cls.loop_reference``)
LOSS_REFERENCES: Mapping = ClassView(
    "loop_reference", LOSSES, name="LOSS_REFERENCES", inherit=False
)


def _reference(obj, kind: str) -> Callable:
    """``type(obj).loop_reference``, or a TypeError that says how to give one."""
    ref = getattr(type(obj), "loop_reference", None)
    if ref is None:
        table = ACTIVATION_REFERENCES if kind == "activation" else LOSS_REFERENCES
        known = ", ".join(sorted(cls.__name__ for cls in table))
        name = type(obj).__name__
        raise TypeError(
            f"no loop reference for the {kind} {name}; references exist for: {known}. "
            "Check your own classes against jacobians.numerical_jacobian / "
            f"numerical_grad, or give {name} a loop_reference "
            f"(see jacobians.{kind.capitalize()})."
        )
    return ref


def _as_rows(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise ValueError(f"{name} must have shape (..., K); got a 0-d array")
    return arr.astype(np.float64)


def _per_sample(activation, z):
    ref = _reference(activation, "activation")
    z = _as_rows(z, "z")
    K = z.shape[-1]
    rows = z.reshape(-1, K)
    a = np.empty_like(rows)
    J = np.empty((rows.shape[0], K, K))
    for n, act in enumerate(row_objects(activation, z)):
        a[n], J[n] = ref(act, rows[n])
    return z, a.reshape(z.shape), J.reshape(z.shape + (K,))


def loop_forward(activation, z) -> np.ndarray:
    """The activation's output, one sample at a time, in float64.

    Parameters
    ----------
    activation : Activation
        An activation with a ``loop_reference`` (see :data:`ACTIVATION_REFERENCES`).
    z : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K), float64

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_forward
    >>> loop_forward(jac.Sparsemax(), np.array([0.5, 0.2, -2.0]))
    array([0.65, 0.35, 0.  ])
    """
    return _per_sample(activation, z)[1]


def loop_jacobian(activation, z) -> np.ndarray:
    """The dense Jacobian ``J[..., i, j] = ∂a_i/∂z_j``, one sample at a time, in float64.

    softmax ``(diag(s) − s sᵀ)/T``; log-softmax ``I − 1 sᵀ``; elementwise activations
    ``diag(f'(z))``; sparsemax, 1.5-entmax and α-entmax ``(diag(g) − g gᵀ/Σg)/T`` with the
    mapping of ``z/T`` found by bisection on its threshold τ and then solved exactly on its
    support (in closed form, or by Newton's method for α-entmax).

    Parameters
    ----------
    activation : Activation
        An activation with a ``loop_reference``.
    z : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K, K), float64

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_jacobian
    >>> loop_jacobian(jac.LogSoftmax(), np.log([0.25, 0.75]))   # not symmetric
    array([[ 0.75, -0.75],
           [-0.25,  0.25]])
    """
    return _per_sample(activation, z)[2]


def _check_like(x, name: str, z: np.ndarray) -> np.ndarray:
    x = _as_rows(x, name)
    if x.shape != z.shape:
        raise ValueError(
            f"{name} must have the shape of z, {z.shape}; got shape {x.shape}"
        )
    return x


def loop_vjp(activation, z, g) -> np.ndarray:
    """``g_n @ J_n`` for each sample n (dE/dz from ``g = dE/da``), in float64.

    Parameters
    ----------
    activation : Activation
    z, g : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K)

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_vjp
    >>> loop_vjp(jac.Softmax(), np.zeros(2), np.array([1.0, 0.0]))
    array([ 0.25, -0.25])
    """
    z, _, J = _per_sample(activation, z)
    return _vjp_rows(z, J, g)


def _vjp_rows(z, J, g, name: str = "g") -> np.ndarray:
    """``g_n @ J_n`` for each sample n, given the samples' Jacobians ``J`` of ``z`` (float64
    rows); ``name``: what ``g`` is called in an error (a JVP passes the transposes)."""
    g = _check_like(g, name, z).reshape(-1, z.shape[-1])
    J = J.reshape(-1, z.shape[-1], z.shape[-1])
    return np.array([g[n] @ J[n] for n in range(g.shape[0])]).reshape(z.shape)


def loop_jvp(activation, z, v) -> np.ndarray:
    """``J_n @ v_n`` for each sample n (the directional derivative along ``v``), in float64.

    Parameters
    ----------
    activation : Activation
    z, v : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K)

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_jvp
    >>> loop_jvp(jac.LogSoftmax(), np.log([0.25, 0.75]), np.array([1.0, 0.0]))
    array([ 0.75, -0.25])
    """
    z, _, J = _per_sample(activation, z)
    return _vjp_rows(z, np.swapaxes(J, -1, -2), v, "v")  # J_n v_n = v_n J_nᵀ


def loop_loss(loss, a, y):
    """``(value, dE/da)`` of a loss from its ``loop_reference``, a sample at a time.

    Implements torch's definitions: ``cross_entropy`` (label smoothing, class weights,
    ``ignore_index``; with index targets ``'mean'`` divides by the summed weights of the
    non-ignored targets, with probability targets by N), ``nll_loss``,
    ``binary_cross_entropy`` (with its clamps; Keras smoothing; ``pos_weight``),
    ``mse_loss``, ``l1_loss``, ``huber_loss``, ``kl_div(..., 'batchmean')`` (over all
    samples), and the Fenchel–Young losses ``⟨z, p − y⟩ + H(p) − H(y)`` (Tsallis H) of the
    logits (``ignore_index`` as for cross-entropy; α per row where the loss has an array).
    The loss's ``reduction`` is applied; ``'none'`` gives ``(...,)`` for class losses and
    ``(..., K)`` for elementwise ones.

    Parameters
    ----------
    loss : Loss
        A loss with a ``loop_reference`` (see :data:`LOSS_REFERENCES`).
    a : array_like, shape (..., K)
        The loss's input (probabilities, log-probabilities, or logits for the
        Fenchel–Young losses). Logs are taken as they are: use ``a > 0``.
    y : array_like
        Integer indices ``(...,)`` or rows ``(..., K)``.

    Returns
    -------
    value : float or ndarray
    grad : ndarray, shape (..., K), float64
        The gradient of ``value`` (of each entry of it for ``'none'``).

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_loss
    >>> a = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4]])
    >>> value, grad = loop_loss(jac.CrossEntropy(), a, np.array([0, 1]))
    >>> round(value, 6)             # (−log 0.7 − log 0.5) / 2
    0.524911
    >>> grad
    array([[-0.71428571,  0.        ,  0.        ],
           [ 0.        , -1.        ,  0.        ]])
    """
    rows = _reference(loss, "loss")
    a = _as_rows(a, "a")
    values, grads, denom = rows(loss, a, y)
    grads = grads.reshape(a.shape)
    elementwise = values.ndim == 2
    reduction = loss.reduction
    if reduction == "none":
        return values.reshape(a.shape[:-1] + values.shape[-1:] if elementwise else a.shape[:-1]), grads
    total = float(np.sum(values))  # a Python float, as torch's .item()
    if reduction == "sum":
        return total, grads
    if reduction != "mean":
        raise ValueError(
            f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}"
        )
    if (
        denom == 0
    ):  # 'mean' over nothing: torch's value is nan and its autograd's gradient 0
        return math.nan, np.zeros(a.shape)
    return float(total / denom), grads / denom


def loop_head(head, z, y):
    """``(value, dE/dz)`` of a :class:`~jacobians.Head`, from the loop references.

    The loss's gradient with respect to the activation's output, pushed back through
    each sample's Jacobian (:func:`loop_vjp`); a Fenchel–Young loss paired with its own
    mapping is a loss of the logits that mapping sees, ``z / T``: dE/dz is its own gradient
    over T.

    Parameters
    ----------
    head : Head
        Its activation and its loss have a ``loop_reference``.
    z : array_like, shape (..., K)
        Logits.
    y : array_like
        Targets in the loss's form.

    Returns
    -------
    value : float or ndarray
        The loss with its reduction applied.
    grad : ndarray, shape (..., K), float64
        dE/dz.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_head
    >>> value, grad = loop_head(jac.Head(jac.Softmax(), jac.CrossEntropy()), np.zeros((1, 2)), np.array([0]))
    >>> grad                        # s − y
    array([[-0.5,  0.5]])
    """
    if getattr(
        head, "logits_loss", False
    ):  # the loss of the logits its own map sees, z/T
        T = float(getattr(head.activation, "temperature", 1.0))
        value, grad = loop_loss(head.loss_fn, _as_rows(z, "z") / T, y)
        return value, grad / T
    z, a, J = _per_sample(head.activation, z)  # each sample's output and Jacobian, once
    value, g = loop_loss(head.loss_fn, a, y)
    return value, _vjp_rows(z, J, g)
