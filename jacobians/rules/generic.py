"""What the built-in rules' generic (array API) forms share: the shifted softmax's parts,
the centred simplex product, complement sums and the transposed Jacobian applied to columns."""

from __future__ import annotations

from ..xp.blocks import device_of

__all__ = ["softmax_parts", "transposed_columns", "gram_columns"]


def softmax_parts(xp, x, m=None):
    """``(d, e, t, top)`` of rows ``x`` (..., K): ``d = x − max`` (≤ 0), ``e = exp(d)``,
    ``top = (d == 0)`` the mask of the row's largest entries (ties included: each has
    ``e = 1``) and ``t = Σ_{k∉top} e_k + (n_top − 1)`` (shape (..., 1)), the sum of e with
    one largest entry left out. Then ``softmax = e/(1 + t)``, ``log softmax = d −
    log1p(t)`` and, at every top entry, ``1 − softmax = t/(1 + t)``, each without
    cancellation. No ``argmax`` (XLA's CPU argmax costs many ``max``) and no count of the
    ties: with one top entry ``t`` is the others summed; with ties ``Σe >= 2`` and ``t =
    Σe − 1 >= Σe/2`` loses nothing (that branch also takes a lone top's row with ``Σe >= 2``).
    ``m``: the rows' max (..., 1) if the caller has it."""
    d = x - (xp.max(x, axis=-1, keepdims=True) if m is None else m)
    e = xp.exp(d)
    top = d == 0
    total = xp.sum(e, axis=-1, keepdims=True)
    rest = xp.sum(xp.where(top, xp.zeros((), dtype=e.dtype, device=device_of(e)), e), axis=-1, keepdims=True)
    return d, e, xp.where(total >= 2, total - 1, rest), top


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


