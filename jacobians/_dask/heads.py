"""A head's entry points, ``contract`` and the last layer on dask arrays: each chunk of
rows runs the numpy method with the whole batch's ``'mean'`` denominator; Monte-Carlo
draws come from (seed, global row index); the last layer sums its chunks' partials."""

from __future__ import annotations

import numpy as np

from .. import fisher, last_layer
from ..backend import ENTRY_POINTS
from ..contract import contract as contract_numpy
from ..head import Head
from ..losses import ElementwiseLoss
from ..numerics.sampling import check_mc_samples, predictive_of, seed_key
from ..rules.vocabulary import FISHER_KINDS, check_kind
from .arrays import (
    align,
    align_targets,
    check_known,
    da,
    flat_rows,
    float_dtype,
    indices,
    is_dask,
    prepare_z,
    reduced_total,
    row_ids,
    rowwise,
    times,
    with_axes,
)
from .reduction import (
    checked,
    denominator,
    loss_input,
    on_piece,
    reduction_factor,
    value_scale,
)

#: the backend's entry points (:data:`jacobians.backend.ENTRY_POINTS`), all defined here
__all__ = list(ENTRY_POINTS)


def _on_head_piece(head, d, dtype, fn):
    """``fn(head)`` for one chunk: the head's loss with the whole batch's ``'mean'``
    denominator (see :func:`~.reduction.on_piece`), or as it is."""
    return on_piece(
        head.loss_fn, d, dtype, lambda loss: fn(Head(head.activation, loss))
    )


def _head_denominator(head, z, y):
    """The whole batch's ``'mean'`` denominator of a head's loss (None for the
    others), warned about once if it is 0 (:func:`~.reduction.checked`)."""
    loss = head.loss_fn
    if loss.reduction != "mean":
        return None
    return checked(denominator(loss, loss_input(head, z, y), y), float_dtype(z.dtype))


def head_value_and_grad(
    head, z, y, method="auto", *, max_bytes=None, workers=None, need="both"
):
    """``(value, dE/dz)`` on dask logits (see :func:`jacobians._dask.rows._loss_terms`
    for how each is reduced)."""
    z = prepare_z(z)
    y, yt = align_targets(y, z)
    dt = float_dtype(z.dtype)
    loss = head.loss_fn
    d = _head_denominator(head, z, yt)
    value = grad = None
    if need in ("value", "both"):
        # head.loss (need='value') is the fused rule's value; value_and_grad's is the
        # method's own
        per = Head(head.activation, loss.with_reduction("none"))

        def value_of(zc, yc):
            if need == "value":
                return per.loss(zc, yc)
            return per.value_and_grad(
                zc, yc, method, max_bytes=max_bytes, workers=workers
            )[0]

        out = getattr(loss, "values_layout", None) or ("same" if isinstance(loss, ElementwiseLoss) else "rows")
        value = rowwise(value_of, z, y, dtype=dt, out=out)
        if loss.reduction != "none":  # the per-row values added up as numpy adds them
            value = times(reduced_total(value, dt), value_scale(d, dt))
    if need in ("grad", "both"):

        def grad_of(zc, yc, dc=None):
            return _on_head_piece(
                head,
                dc,
                dt,
                lambda h: h.value_and_grad(
                    zc, yc, method, max_bytes=max_bytes, workers=workers
                )[1],
            )

        grad = rowwise(grad_of, z, y, d, dtype=dt)
    return value, grad


def head_loss(head, z, y):
    return head_value_and_grad(head, z, y, need="value")[0]


def head_blocks(head, name, z, y, *args, sizes=None):
    """A head's per-row second-order method on dask logits (each chunk with the whole
    batch's denominator); ``sizes``: the new trailing axes (None: shape of z)."""
    z = prepare_z(z)
    y, yt = align_targets(y, z)
    dt = float_dtype(z.dtype)
    d = _head_denominator(head, z, yt)
    extras = [a for a in args if is_dask(a)]
    plain = [a for a in args if not is_dask(a)]

    def call(zc, yc, *rest):
        arrays, dc = (
            rest[: len(extras)],
            (rest[len(extras)] if len(rest) > len(extras) else None),
        )
        return _on_head_piece(
            head, dc, dt, lambda h: getattr(h, name)(zc, yc, *arrays, *plain)
        )

    if sizes is None:
        return rowwise(call, z, y, *extras, d, dtype=dt)
    return with_axes(
        call,
        z,
        y,
        *extras,
        d,
        dtype=dt,
        sizes=(z.shape[-1],) if sizes == "K" else sizes,
    )


def head_hvp(head, z, y, v, method):
    """``H_n v_n`` per row on dask logits (v aligned to z's row chunks)."""
    z = prepare_z(z)
    return head_blocks(head, "hvp", z, y, align(v, z, "v", rechunk_last=True), method)


def head_sqrt_ggn_sampled(head, z, mc_samples, seed, y=None):
    """Monte-Carlo columns on dask logits: each row's draws from (seed, its global
    index)."""
    z = prepare_z(z)
    y, yt = align_targets(y, z)
    M = check_mc_samples(mc_samples)
    predictive_of(head.loss_fn)
    key = seed_key(seed)
    dt = float_dtype(z.dtype)
    batch = z.shape[:-1]
    d = _head_denominator(head, z, yt)
    d_value = None if d is None else (d if not is_dask(d) else None)
    target = None if y is None else (y[..., None] if y.ndim == z.ndim - 1 else y)

    def columns(zc, yc=None, dc=None, block_info=None):
        ids = row_ids(block_info, batch)
        yv = None if yc is None else (yc[..., 0] if y.ndim == z.ndim - 1 else yc)
        dd = d_value if dc is None else dc
        return _on_head_piece(
            head,
            dd,
            dt,
            lambda h: fisher.sqrt_ggn_sampled(h, zc, M, key, y=yv, row_ids=ids),
        )

    arrays = [z] + ([] if target is None else [target])
    kwargs = {"dc": d} if is_dask(d) else {}
    if target is None:
        fn = columns
    else:

        def fn(zc, yc, dc=None, block_info=None):
            return columns(zc, yc, dc, block_info)

    return da.map_blocks(
        fn, *arrays, **kwargs, dtype=dt, new_axis=[z.ndim], chunks=z.chunks + ((M,),)
    )


def head_fisher(head, z, y, kind, mc_samples, seed):
    meaning = check_kind(kind, FISHER_KINDS)
    if meaning == "fisher_mc":
        S = head_sqrt_ggn_sampled(head, z, mc_samples, seed, y=y)
        K = S.shape[-2]
        # each chunk's S Sᵀ as numpy computes it (the same product per row)
        return S.map_blocks(
            lambda s: s @ np.swapaxes(s, -1, -2),
            chunks=S.chunks[:-1] + ((K,),),
            dtype=S.dtype,
        )
    if meaning == "empirical_fisher" and y is None:
        raise ValueError(
            f"kind={kind!r} needs the true targets y: it is built from the gradients "
            "at them"
        )
    if meaning == "fisher":
        predictive_of(head.loss_fn)
    z = prepare_z(z)
    return head_blocks(head, "fisher", z, y, kind, sizes=(z.shape[-1],))


# -- contract and the last layer -------------------------------------------------------


def contract(g, J):
    J = J if is_dask(J) else da.from_array(np.asarray(J))
    check_known(J, "J")
    if J.ndim < 2:
        raise ValueError(f"J must have shape (..., M, K); got shape {J.shape}")
    J = J.rechunk({J.ndim - 2: -1, J.ndim - 1: -1})
    g_rows = J[..., 0]  # a stand-in with J's row chunks, (…, M)
    g = align(g, g_rows, "g", rechunk_last=True)
    b = indices(J.ndim - 2)
    dt = np.result_type(float_dtype(J.dtype), float_dtype(g.dtype))
    return da.blockwise(
        lambda gc, Jc: contract_numpy(gc, Jc),
        b + "K",
        g,
        b + "M",
        J,
        b + "MK",
        dtype=dt,
        concatenate=True,
    )


def _features(features, z):
    """The features with z's row chunks, in z's float dtype (as numpy's ``like=z``)."""
    X = align(features, z, "features", rechunk_last=True)
    dt = float_dtype(z.dtype)
    return X if X.dtype == dt else X.astype(dt)


def _with_ones(X2):
    """``[X2 | 1]``: the bias column."""
    return da.concatenate(
        [X2, da.ones((X2.shape[0], 1), dtype=X2.dtype, chunks=(X2.chunks[0], 1))],
        axis=1,
    )


def linear_gradient(features, head, z, y, bias=True):
    z = prepare_z(z)
    X = _features(features, z)
    g = head_value_and_grad(head, z, y, need="grad")[1]
    g2, X2 = flat_rows(g, 1), flat_rows(X, 1)
    return g2.T @ (_with_ones(X2) if bias else X2)


def linear_curvature(
    features, head, z, y, *, kind, structure, bias, max_bytes, mc_samples, seed
):
    budget, key = last_layer.check_options(
        head, y, kind, structure, max_bytes, mc_samples, seed
    )
    z = prepare_z(z)
    X = _features(features, z)
    y, yt = align_targets(y, z)
    dt = float_dtype(z.dtype)
    batch = z.shape[:-1]
    K, D = z.shape[-1], X.shape[-1]
    D1 = D + bool(bias)
    target = None if y is None else (y[..., None] if y.ndim == z.ndim - 1 else y)

    def partial(zc, Xc, yc=None, block_info=None):
        ids = row_ids(block_info, batch)
        if yc is None:
            yv = None
        else:
            yv = yc[..., 0].reshape(-1) if y.ndim == z.ndim - 1 else yc.reshape(-1, yc.shape[-1])
        part = last_layer.partial_curvature(
            Xc.reshape(-1, D),
            head,
            zc.reshape(-1, K),
            yv,
            kind=kind,
            structure=structure,
            bias=bias,
            budget=budget,
            key=key,
            mc_samples=mc_samples,
            row_ids=ids,
        )
        part = part[0] if structure == "kron" else part
        return part.reshape((1,) * len(batch) + part.shape)

    shape = {"full": (K * D1, K * D1), "diag": (K, D1), "kron": (K, K)}[structure]
    arrays = [z, X] if target is None else [z, X, target]
    parts = da.map_blocks(
        partial,
        *arrays,
        dtype=dt,
        drop_axis=[z.ndim - 1],
        new_axis=list(range(len(batch), len(batch) + len(shape))),
        chunks=tuple((1,) * len(c) for c in z.chunks[:-1]) + tuple((s,) for s in shape),
    )
    total = parts.sum(axis=tuple(range(len(batch))))
    scale = reduction_factor(head, z, yt, dt)
    n_rows = int(np.prod(batch))
    if structure == "kron":
        X2 = flat_rows(X, 1)
        Xb = _with_ones(X2) if bias else X2
        return last_layer.Kron(
            times(total, scale), (Xb.T @ Xb) / max(n_rows, 1)
        )  # no rows: B = 0
    return times(total, scale)
