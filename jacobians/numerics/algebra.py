"""Cancellation-free algebra of the simplex maps' Jacobians, along the last axis.

Complements ``Σ_{i≠j} x_i`` summed directly where ``total − x_j`` would cancel
(:func:`complement_sums`), the projections ``I − v 1ᵀ`` and ``I − 1 vᵀ`` built on them,
and the products ``(diag(d) − a bᵀ) x``. No function here writes into its arguments. Every
kernel keeps the input's float dtype.
"""

from __future__ import annotations

import numpy as np

from .buffers import row_chunks, rowdot, scratch

__all__ = [
    "complement_sums",
    "project_columns",
    "project_rows",
    "simplex_vjp",
    "diag_minus_rank_one",
]


def complement_sums(x: np.ndarray) -> np.ndarray:
    """``Σ_{i≠j} x_i`` for every j along the last axis, for ``x >= 0``.

    ``total − x_j``, except at each row's largest entry, where the sum of the others is
    taken directly: there ``total − x_j`` would subtract two nearly equal numbers (a
    confident probability: ``1 − p_max``). Every other entry is at most half the total,
    so its subtraction loses nothing.
    """
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    total = x2.sum(axis=-1)
    out = total[:, None] - x2
    top = x2.argmax(axis=-1)
    # only a row whose largest entry is over half its total can cancel: redo those
    bad = np.flatnonzero(x2[np.arange(x2.shape[0]), top] > 0.5 * total)
    if bad.size:
        others = x2[bad]
        others[np.arange(bad.size), top[bad]] = 0
        out[bad, top[bad]] = others.sum(axis=-1)
    return out.reshape(x.shape)


def project_columns(X: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(I − v 1ᵀ) X`` per sample for ``X`` (..., K, C) and ``v`` (..., K) with ``Σv = 1``, ``v >= 0``.

    Row j is ``X_j − v_j Σ_i X_i = X_j (1 − v_j) − v_j Σ_{i≠j} X_i``; at the largest entry
    of v (where ``1 − v_j`` cancels) it is computed that way, with both complements summed
    directly (:func:`complement_sums`), elsewhere as the plain difference.
    """
    colsum = X.sum(axis=-2, keepdims=True)
    out = X - v[..., :, None] * colsum
    top = v.argmax(axis=-1)[..., None]
    comp = np.take_along_axis(complement_sums(v), top, axis=-1)[..., None]  # 1 − v_top, (..., 1, 1)
    X_top = np.take_along_axis(X, top[..., None], axis=-2)  # (..., 1, C)
    rows = X_top * comp - np.take_along_axis(v, top, axis=-1)[..., None] * _others_sum(X, top)
    np.put_along_axis(out, top[..., None], rows, axis=-2)
    return out


def project_rows(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``x − (v·x) 1`` along the last axis (``P x`` with ``P = I − 1 vᵀ``, ``Σv = 1``,
    ``v >= 0``; ``v`` broadcasts against ``x``).

    At v's largest entry t it is ``x_t (1 − v_t) − Σ_{i≠t} v_i x_i`` with both sums taken
    directly; elsewhere the plain difference.
    """
    v = np.broadcast_to(v, x.shape)
    dot = np.einsum("...k,...k->...", v, x)[..., None]
    out = x - dot
    t = v.argmax(axis=-1)[..., None]
    comp = np.take_along_axis(complement_sums(v), t, axis=-1)
    x_t = np.take_along_axis(x, t, axis=-1)
    vx = v * x
    np.put_along_axis(vx, t, 0, axis=-1)
    np.put_along_axis(out, t, x_t * comp - vx.sum(axis=-1, keepdims=True), axis=-1)
    return out


def _others_sum(X: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``Σ_{i≠top} X_i`` over the rows of X (..., K, C), taken directly."""
    masked = np.array(X, copy=True)
    np.put_along_axis(masked, top[..., None], 0, axis=-2)
    return masked.sum(axis=-2, keepdims=True)


def simplex_vjp(w: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w ⊙ (x − v·x)`` per row (``(diag(w) − w vᵀ) x`` for ``Σv = 1``, the product of
    every simplex map's Jacobian, ``v = w/Σw``), with ``x`` centred first on the entry of
    the largest ``w`` (the same product: the rows of ``I − 1 vᵀ`` sum to 0): no cancellation
    on a confident row (see :func:`~jacobians.numerics.softmax.softmax_vjp`). One allocation,
    chunk by chunk.
    """
    K = x.shape[-1]
    w2, v2, x2 = (y.reshape(-1, K) for y in (w, v, x))
    out = np.empty(x2.shape, dtype=np.result_type(w2, x2))
    for rows in row_chunks(x2.shape[0], K):
        o, xc, wc = out[rows], x2[rows], w2[rows]
        np.subtract(xc, xc[np.arange(len(xc)), wc.argmax(axis=-1)][:, None], out=o)
        o -= rowdot(v2[rows], o)[:, None]
        o *= wc
    return out.reshape(x.shape)


def diag_minus_rank_one(d: np.ndarray, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``d ⊙ x − a (b·x)`` per row: ``(diag(d) − a bᵀ) x`` with one allocation.

    When ``a`` is ``d`` (softmax: ``d = a = s``) it is ``d ⊙ (x − b·x)``: three passes.
    """
    K = x.shape[-1]
    d2, a2, b2, x2 = (y.reshape(-1, K) for y in (d, a, b, x))
    out = np.empty(x2.shape, dtype=np.result_type(d2, x2))
    for rows in row_chunks(x2.shape[0], K):
        o, xc = out[rows], x2[rows]
        dot = rowdot(b2[rows], xc)
        if a is d:
            np.subtract(xc, dot[:, None], out=o)
            o *= d2[rows]
        else:
            np.multiply(xc, d2[rows], out=o)
            w = scratch(o.size, out.dtype).reshape(o.shape)
            np.multiply(a2[rows], dot[:, None], out=w)
            o -= w
    return out.reshape(x.shape)
