"""The reduction's factor over the whole batch: what ``'mean'`` divides by (the loss's
own :meth:`~jacobians.Loss.mean_denominator`, summed over the chunks when the targets
are a dask array), and the factor every chunk computes with."""

from __future__ import annotations

import numpy as np

from ..numerics.empty import mean_value
from .arrays import align, chunk_sum, da, exact_total, float_dtype, indices, is_dask

__all__ = [
    "denominator",
    "value_scale",
    "reduction_factor",
    "loss_input",
    "batch_denominator",
    "piece",
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


def value_scale(d, dtype):
    """The factor on the value's total for the whole batch's denominator ``d`` (None:
    not ``'mean'``, 1), as numpy computes it: ``dtype(1) / dtype(d)``, NaN with numpy's
    :class:`~jacobians.EmptyMeanWarning` for ``d = 0`` (jacobians.numerics.empty; when ``d`` is
    a dask array, at compute time)."""
    if d is None:
        return 1
    one = np.dtype(dtype).type(1)
    if is_dask(d):
        return d.map_blocks(
            lambda dd: np.asarray(mean_value(one, dd, dtype), dtype=dtype), dtype=dtype
        )
    return mean_value(one, d, dtype)


def reduction_factor(head, z, y, dtype):
    """The whole batch's factor on a head's ``'sum'`` blocks (see
    :func:`jacobians.fisher.reduction_factor`): 0 where the denominator is 0
    (:meth:`~jacobians.Loss.reduction_scale`)."""
    loss = head.loss_fn
    if loss.reduction != "mean":
        return 1
    x = loss_input(head, z, y)
    d = denominator(loss, x, y)
    if not is_dask(d):
        return piece(loss, d).reduction_scale(x, dtype=dtype)
    one = np.dtype(dtype).type(1)
    return da.where(d == 0, 0, one / da.where(d == 0, 1, d).astype(dtype)).astype(dtype)


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
    summed over the chunks), or None for the other reductions."""
    return denominator(loss, x, y) if loss.reduction == "mean" else None


def piece(loss, d):
    """The loss for one chunk: the whole batch's ``'mean'`` denominator, or as it is."""
    return loss if d is None else loss.with_denominator(float(d))
