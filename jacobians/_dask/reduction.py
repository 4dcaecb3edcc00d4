"""The reduction's factor over the whole batch: what ``'mean'`` divides by (the loss's
own :meth:`~jacobians.Loss.mean_denominator`, summed over the chunks when the targets
are a dask array), and the factor every chunk computes with."""

from __future__ import annotations

import numpy as np

from ..numerics.empty import mean_scale, mean_value
from .arrays import (
    align,
    chunk_sum,
    da,
    exact_total,
    float_dtype,
    indices,
    is_dask,
    once,
)

__all__ = [
    "denominator",
    "checked",
    "value_scale",
    "reduction_factor",
    "loss_input",
    "batch_denominator",
    "on_piece",
]


def _stand_in(shape, dtype) -> np.ndarray:
    """A zero-stride array of ``shape``: ``a`` where only its shape and dtype are
    read."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def denominator(loss, x, y):
    """What ``'mean'`` divides by for the whole batch, ``loss.mean_denominator(x, y)``:
    a number when the targets ``y`` are numpy (or None), else a 0-d dask array summed
    over the chunks (``y`` dask: aligned with x's rows, see
    :func:`~.arrays.align_targets`).

    A loss made by :meth:`~jacobians.Loss.with_denominator` keeps its own. With
    ``loss.denominator_from_targets`` (the built-ins) it is computed from ``y`` alone
    and a zero-stride stand-in for ``x`` (its shape and dtype: ``x``, the activation's
    output, is never computed for it): at once for numpy targets, chunk by chunk for
    dask ones. Otherwise it is summed over the chunks of ``x`` and ``y``.
    """
    if loss.denominator is not None:  # with_denominator: the caller's, for any batch
        return loss.denominator
    dt = float_dtype(x.dtype)
    if y is not None and not loss.denominator_from_targets:
        y = align(y, x, "y")
        return chunk_sum(
            lambda xc, yc: loss.mean_denominator(xc, yc), x, y, dtype=np.float64
        )
    if y is None or not is_dask(y):
        return loss.mean_denominator(_stand_in(x.shape, dt), y)
    rows, K = x.ndim - 1, x.shape[-1]

    def one(yc):
        d = loss.mean_denominator(_stand_in(yc.shape[:rows] + (K,), dt), yc)
        return np.asarray(d, dtype=np.float64).reshape((1,) * yc.ndim)

    b = indices(y.ndim)
    parts = da.blockwise(
        one, b, y, b, dtype=np.float64, adjust_chunks={i: 1 for i in b}
    )
    return exact_total(parts, np.float64)


def _over_nothing(d, dtype) -> bool:
    """Whether ``'mean'`` with the denominator ``d`` is over nothing, as numpy decides
    it: ``d`` is 0 in the dtype the loss computes in (jacobians.numerics.empty)."""
    return np.dtype(dtype).type(d) == 0


def checked(d, dtype):
    """The whole batch's ``'mean'`` denominator ``d`` (None: another reduction), having
    said once for the call that ``'mean'`` is over nothing where ``d`` is 0: numpy's
    :class:`~jacobians.EmptyMeanWarning`, at once for a number (pointing at the caller's
    line), else from the one task that computes the 0-d dask array, which the value's
    factor and every chunk's task then depend on. Nothing downstream warns again: the
    chunks compute with :func:`on_piece` and the value with :func:`value_scale`."""
    if d is None:
        return None

    def check(dd):
        if _over_nothing(dd, dtype):
            mean_scale(dd, dtype)  # for its EmptyMeanWarning
        return dd

    return once(check, d, d.dtype) if is_dask(d) else check(d)


def _value_factor(d, dtype):
    """``dtype(1) / dtype(d)``, as numpy's ``'mean'`` value divides; NaN for ``'mean'``
    over nothing, silently (:func:`checked` has warned)."""
    if _over_nothing(d, dtype):
        return np.dtype(dtype).type(np.nan)
    return mean_value(np.dtype(dtype).type(1), d, dtype)


def value_scale(d, dtype):
    """The factor on the value's total for the whole batch's denominator ``d`` (from
    :func:`checked`; None: not ``'mean'``, 1), as numpy computes it: ``dtype(1) /
    dtype(d)``, NaN for ``d = 0`` (jacobians.numerics.empty; when ``d`` is a dask array,
    at compute time)."""
    if d is None:
        return 1
    if is_dask(d):
        return d.map_blocks(
            lambda dd: np.asarray(_value_factor(dd, dtype), dtype=dtype), dtype=dtype
        )
    return _value_factor(d, dtype)


def reduction_factor(head, z, y, dtype):
    """The whole batch's factor on a head's ``'sum'`` blocks (see
    :func:`jacobians.fisher.reduction_factor`), read through
    :meth:`~jacobians.Loss.reduction_scale`: 0 where the denominator is 0 (warned once,
    :func:`checked`)."""
    loss = head.loss_fn
    if loss.reduction != "mean":
        return 1
    x = loss_input(head, z, y)
    d = checked(denominator(loss, x, y), dtype)
    row = _stand_in((1, x.shape[-1]), dtype)  # its shape and dtype are read

    def factor(dd):
        if _over_nothing(dd, dtype):
            return np.dtype(dtype).type(0)
        return loss.with_denominator(float(dd)).reduction_scale(row, dtype=dtype)

    if not is_dask(d):
        return factor(d)
    return d.map_blocks(lambda dd: np.asarray(factor(dd), dtype=dtype), dtype=dtype)


def loss_input(head, z, y):
    """What a head's loss sees, for its denominator: the activation's output (lazily),
    or z where only the shape and dtype matter (no targets, a loss of the logits, a
    denominator from the targets): the activation's graph is then not built."""
    if y is None or head.logits_loss or head.loss_fn.denominator_from_targets:
        dt = float_dtype(z.dtype)
        return z if z.dtype == dt else z.astype(dt)
    return head.activation(z)


def batch_denominator(loss, x, y):
    """The whole batch's denominator for ``'mean'`` (a number, or a 0-d dask array
    summed over the chunks; :func:`checked`), or None for the other reductions."""
    if loss.reduction != "mean":
        return None
    return checked(denominator(loss, x, y), float_dtype(x.dtype))


def on_piece(loss, d, dtype, fn):
    """``fn(loss)`` for one chunk with the whole batch's ``'mean'`` denominator ``d``
    (``loss.with_denominator(d)``), or of ``loss`` as it is (``d`` None). For ``'mean'``
    over nothing (``d`` 0), ``fn`` of the ``'sum'`` loss times 0: numpy's derivatives
    with the factor 0, without each chunk warning again (:func:`checked` has, once for
    the call); ``fn`` gives an array of derivatives."""
    if d is None:
        return fn(loss)
    if _over_nothing(d, dtype):
        return fn(loss.with_reduction("sum")) * np.dtype(dtype).type(0)
    return fn(loss.with_denominator(float(d)))
