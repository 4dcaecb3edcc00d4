"""The reduction's factor over the whole batch: what ``'mean'`` divides by, summed over the
chunks when the shapes alone do not give it, and the factor every chunk computes with."""

from __future__ import annotations

import numpy as np

from .._empty import mean_scale, mean_value
from ..losses import ElementwiseLoss
from .arrays import chunk_sum, da, exact_total, float_dtype, indices, is_dask

__all__ = ["denominator", "scale_of", "reduction_factor", "loss_input", "batch_denominator", "piece"]


def _targets_only(loss) -> bool:
    """True for a class loss whose denominator is :func:`class_coefficients`' (CE, NLL, KL):
    a function of the targets, K and the dtype only, never of the values of ``a``."""
    from ..losses.classification import _ClassLoss

    cls = type(loss)
    return (isinstance(loss, _ClassLoss) and cls._mean_denominator is _ClassLoss._mean_denominator
            and cls.coefficients is _ClassLoss.coefficients and cls.check_targets is _ClassLoss.check_targets)


def denominator(loss, x, y):
    """What ``'mean'`` divides by for the whole batch: an int when the shapes give it, else a
    0-d dask array summed over the chunks.

    A loss made by :meth:`~jacobians.Loss.with_denominator` keeps its own. A class loss's
    denominator is N for probability targets, and for index targets without
    class weights or ``ignore_index``; otherwise (summed weights, targets not ignored) it
    is summed from ``y`` alone, each chunk's targets checked against a zero-stride stand-in
    for ``a`` (its shape and dtype: ``a`` itself, the activation's output, is never
    computed for it). Other losses sum ``loss._mean_denominator`` over the chunks of
    ``x`` and ``y``.
    """
    if loss.denominator is not None:  # with_denominator: the caller's, whatever the batch
        return loss.denominator
    n = int(np.prod(x.shape[:-1]))
    if y is None or isinstance(loss, ElementwiseLoss):
        return x.shape[-1] * n if isinstance(loss, ElementwiseLoss) else n
    if _targets_only(loss):
        by_index = y.ndim == x.ndim - 1
        if not by_index or (getattr(loss, "weight", None) is None and loss.ignore_index is None):
            return n
        K, dt = x.shape[-1], float_dtype(x.dtype)

        def one(yc):
            stand_in = np.broadcast_to(np.zeros((), dtype=dt), yc.shape + (K,))
            return np.asarray(loss._mean_denominator(stand_in, yc), dtype=np.float64).reshape((1,) * yc.ndim)

        b = indices(y.ndim)
        parts = da.blockwise(one, b, y, b, dtype=np.float64, adjust_chunks={i: 1 for i in b})
        return exact_total(parts, np.float64)
    return chunk_sum(lambda xc, yc: loss._mean_denominator(xc, loss.check_targets(xc, yc)), x, y, dtype=np.float64)


def scale_of(loss, x, y, dtype):
    """The factor ``'mean'`` puts on every term (1 for the others), as numpy computes it:
    ``dtype(1) / dtype(denominator)``."""
    if loss.reduction != "mean":
        return 1
    d = denominator(loss, x, y)
    one = np.dtype(dtype).type(1)
    if is_dask(d):  # known at compute time: 1/0 = inf makes the value NaN, without the warning
        return one / d.astype(dtype)
    if d == 0:  # the value of 'mean' over nothing: NaN, with numpy's warning (jacobians._empty)
        return mean_value(0, 0, dtype)
    return one / np.dtype(dtype).type(d)


def reduction_factor(head, z, y, dtype, *, value: bool = True):
    """The whole batch's factor on a head's ``'sum'`` value (``value=True``) or blocks (see
    :func:`curvature.reduction_factor`): for derivatives, 0 where the denominator is 0."""
    loss = head.loss_fn
    if loss.reduction != "mean":
        return 1
    if not value:
        d = denominator(loss, loss_input(head, z, y), y)
        return mean_scale(d, dtype) if not is_dask(d) else da.where(d == 0, 0, 1 / da.where(d == 0, 1, d)).astype(dtype)
    return scale_of(loss, loss_input(head, z, y), y, dtype)


def loss_input(head, z, y):
    """What a head's loss sees, for its denominator: the activation's output (lazily), or z
    where only the shape and dtype matter (no targets, a loss of the logits, a class loss
    whose denominator comes from the targets): the activation's graph is then not built."""
    if y is None or head.logits_loss or _targets_only(head.loss_fn):
        dt = float_dtype(z.dtype)
        return z if z.dtype == dt else z.astype(dt)
    return head.activation(z)


def batch_denominator(loss, x, y):
    """The whole batch's denominator for ``'mean'`` (an int, or a 0-d dask array summed over
    the chunks), or None for the other reductions."""
    return denominator(loss, x, y) if loss.reduction == "mean" else None


def piece(loss, d):
    """The loss for one chunk: the whole batch's ``'mean'`` denominator, or as it is."""
    return loss if d is None else loss.with_denominator(float(d))
