"""Activations' and losses' row-wise methods on dask arrays: each chunk of rows runs the
numpy method; a loss's ``'mean'`` divides by the whole batch's denominator."""

from __future__ import annotations

from ..losses import ElementwiseLoss
from .arrays import (
    align,
    align_targets,
    float_dtype,
    prepare_z,
    reduced_total,
    rowwise,
    times,
    with_axes,
)
from .reduction import batch_denominator, on_piece, value_scale

__all__ = ["METHODS"]


# -- activations -----------------------------------------------------------------------


def _activation_rows(act, fn, z, *others, out="same"):
    z = prepare_z(z)
    dt = float_dtype(z.dtype)
    others = [align(o, z, "g", rechunk_last=True) for o in others]
    return rowwise(lambda zc, *oc: fn(act, zc, *oc), z, *others, dtype=dt, out=out)


def _call(act, fn, z):
    return _activation_rows(act, fn, z)


def _jacobian(act, fn, z, *, out=None, workers=None):
    if out is not None:
        raise TypeError(
            "out= is a numpy buffer: a dask z gives a dask Jacobian (leave out=None)"
        )
    z = prepare_z(z)
    return with_axes(
        lambda zc: fn(act, zc, workers=workers),
        z,
        dtype=float_dtype(z.dtype),
        sizes=(z.shape[-1],),
    )


def _hessian(act, fn, z):
    z = prepare_z(z)
    K = z.shape[-1]
    return with_axes(
        lambda zc: fn(act, zc), z, dtype=float_dtype(z.dtype), sizes=(K, K)
    )


def _hessian_vjp(act, fn, z, g):
    z = prepare_z(z)
    g = align(g, z, "g", rechunk_last=True)
    return with_axes(
        lambda zc, gc: fn(act, zc, gc),
        z,
        g,
        dtype=float_dtype(z.dtype),
        sizes=(z.shape[-1],),
    )


def _alpha_vjp(act, fn, z, g):
    """Entmax's ``alpha_vjp``: one entry per row."""
    return _activation_rows(act, fn, z, g, out="rows")


def _vector(act, fn, z, v):
    return _activation_rows(act, fn, z, v)


# -- losses ----------------------------------------------------------------------------


def _loss_terms(loss, a, y, need: str):
    """``(value, grad)`` of a loss on dask ``a`` (either None when not needed).

    The gradient: each chunk with the whole batch's ``'mean'`` denominator (the numbers
    numpy gives for the whole batch, to the bit). The value: each chunk's ``'sum'``,
    added exactly over the chunks, then divided once as numpy does (``total ·
    (1/denominator)``).
    """
    a = prepare_z(a, "a")
    y, yt = align_targets(y, a)
    dt = float_dtype(a.dtype)
    d = batch_denominator(loss, a, yt)
    value = grad = None
    if need in ("value", "both"):
        per_row = loss.with_reduction("none")
        out = getattr(loss, "values_layout", None) or ("same" if isinstance(loss, ElementwiseLoss) else "rows")
        value = rowwise(lambda ac, yc: per_row.value(ac, yc), a, y, dtype=dt, out=out)
        if loss.reduction != "none":  # the per-row values added up as numpy adds them
            value = times(reduced_total(value, dt), value_scale(d, dt))
    if need in ("grad", "both"):
        grad = rowwise(
            lambda ac, yc, dc=None: on_piece(loss, dc, dt, lambda lc: lc.grad(ac, yc)),
            a,
            y,
            d,
            dtype=dt,
        )
    return value, grad


def _loss_value(loss, fn, a, y):
    return _loss_terms(loss, a, y, "value")[0]


def _loss_grad(loss, fn, a, y):
    return _loss_terms(loss, a, y, "grad")[1]


def _loss_value_and_grad(loss, fn, a, y):
    return _loss_terms(loss, a, y, "both")


def _loss_hessian(loss, fn, a, y):
    a = prepare_z(a, "a")
    y, yt = align_targets(y, a)
    d = batch_denominator(loss, a, yt)
    dt = float_dtype(a.dtype)
    return with_axes(
        lambda ac, yc, dc=None: on_piece(loss, dc, dt, lambda lc: lc.hessian(ac, yc)),
        a,
        y,
        d,
        dtype=dt,
        sizes=(a.shape[-1],),
    )


def _loss_hvp(loss, fn, a, y, v):
    a = prepare_z(a, "a")
    (y, yt), v = align_targets(y, a), align(v, a, "v", rechunk_last=True)
    d = batch_denominator(loss, a, yt)
    dt = float_dtype(a.dtype)
    return rowwise(
        lambda ac, yc, vc, dc=None: on_piece(
            loss, dc, dt, lambda lc: lc.hvp(ac, yc, vc)
        ),
        a,
        y,
        v,
        d,
        dtype=dt,
    )


#: name -> implementation, for the methods wrapped by
#: :func:`jacobians.backend.backend_aware`
METHODS = {
    "__call__": _call,
    "jacobian": _jacobian,
    "vjp": _vector,
    "jvp": _vector,
    "hessian": _hessian,
    "hessian_vjp": _hessian_vjp,
    "alpha_vjp": _alpha_vjp,
    "loss.value": _loss_value,
    "loss.grad": _loss_grad,
    "loss.value_and_grad": _loss_value_and_grad,
    "loss.hessian": _loss_hessian,
    "loss.hvp": _loss_hvp,
}
