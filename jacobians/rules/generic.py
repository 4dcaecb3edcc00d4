"""What the built-in rules' generic (array API) forms share: the shifted softmax's parts,
the centred simplex product, complement sums and the transposed Jacobian applied to columns."""

from __future__ import annotations

from ..xp.blocks import device_of

__all__ = ["softmax_parts", "centred_simplex_product", "transposed_columns", "gram_columns"]


def softmax_parts(xp, x):
    """``(d, e, t, top)`` of rows ``x`` (..., K): ``d = x − max`` (≤ 0), ``e = exp(d)``,
    ``t = Σ_{k≠top} e_k`` (the row's first largest entry left out, shape (..., 1)) and
    ``top`` the mask of that entry. Then ``softmax = e/(1 + t)``, ``log softmax = d −
    log1p(t)`` and ``1 − softmax_top = t/(1 + t)``, each without cancellation."""
    K = x.shape[-1]
    d = x - xp.max(x, axis=-1, keepdims=True)
    e = xp.exp(d)
    idx = xp.arange(K, device=device_of(x))
    top = idx == xp.argmax(x, axis=-1, keepdims=True)
    t = xp.sum(xp.where(top, xp.zeros_like(e), e), axis=-1, keepdims=True)
    return d, e, t, top


def transposed_columns(xp, activation, z, a, S):
    """``Jᵀ S`` per row for ``S`` (..., K, C): the activation's generic VJP
    (``xp_vjp_from_output``) of each column, the C columns as a batch axis."""
    shape = tuple(z.shape[:-1]) + (S.shape[-1], z.shape[-1])
    zb = xp.broadcast_to(z[..., None, :], shape)
    ab = xp.broadcast_to(a[..., None, :], shape)
    return xp.matrix_transpose(activation.xp_vjp_from_output(xp, zb, ab, xp.matrix_transpose(S)))


def gram_columns(xp, activation, z, a, F):
    """``Jᵀ F J`` per row for symmetric ``F`` (..., K, K): ``Jᵀ (Jᵀ F)ᵀ``, two passes of
    :func:`transposed_columns`."""
    return transposed_columns(xp, activation, z, a, xp.matrix_transpose(transposed_columns(xp, activation, z, a, F)))


def centred_simplex_product(xp, w, p, v):
    """``w ⊙ (v − p·v)`` per row (``Σp = 1``), ``v`` first centred on the entry of largest
    ``w`` (the product is unchanged, as ``p·1 = 1``): round-off then scales with v's spread
    around that entry, not with its size, and a confident row keeps its digits."""
    top = xp.argmax(w, axis=-1, keepdims=True)
    K = v.shape[-1]
    at_top = xp.arange(K, device=device_of(v)) == top
    vc = v - xp.sum(xp.where(at_top, v, xp.zeros_like(v)), axis=-1, keepdims=True)
    return w * (vc - xp.sum(p * vc, axis=-1, keepdims=True))
