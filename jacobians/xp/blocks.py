"""Small array helpers every generic formula shares: an array's device, the identity of its
dtype and device, per-row diagonal blocks, complement sums and the simplex blocks' factor.

Imports no array library at module level (``array_api_compat`` is imported by
:func:`device_of` when called), so the activations and losses can import it on
``import jacobians``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["device_of", "eye_like", "diagonal_blocks", "with_diagonal", "complement_sums", "centred_product", "simplex_sqrt"]


def device_of(x):
    """``array_api_compat.device(x)``: the device new arrays for ``x`` go on (``'cpu'`` for
    numpy arrays, without importing array_api_compat: the numpy path does not need it)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return "cpu"
    import array_api_compat

    return array_api_compat.device(x)


def eye_like(xp, x):
    """The identity ``(K, K)`` in ``x``'s dtype and on its device, ``K = x.shape[-1]``."""
    return xp.eye(x.shape[-1], dtype=x.dtype, device=device_of(x))


def diagonal_blocks(xp, d):
    """``diag(d)`` per row: ``(..., K) -> (..., K, K)``, zeros off the diagonal (chosen by
    ``where``, so an infinite diagonal entry never meets ``0 · inf``)."""
    eye = xp.eye(d.shape[-1], dtype=xp.bool, device=device_of(d))
    return xp.where(eye, d[..., None], xp.zeros_like(d)[..., None])


def with_diagonal(xp, H, d):
    """``H`` with each block's diagonal replaced by ``d``: ``(..., K, K), (..., K) ->
    (..., K, K)``.

    One strided write through ``array_api_extra.at`` on the ``(..., K·K)`` view: **in place**
    where ``H`` is writable (numpy, torch, CuPy, array-api-strict), so pass only a temporary
    of the caller's own; a new array on JAX (``.at[].set``, in place under ``jit``). A dense
    block built this way costs one ``(..., K, K)`` array, where ``where(eye, ...)`` costs two
    (on a CPU the fresh pages of each cost about as much as the arithmetic).
    """
    K = H.shape[-1]
    shape = tuple(H.shape)
    if isinstance(H, np.ndarray) and H.flags.writeable:  # numpy's path: no array_api_extra needed
        flat = np.reshape(H, shape[:-2] + (K * K,))  # a view of a fresh H; a copy serves as well
        flat[..., :: K + 1] = d
        return np.reshape(flat, shape)
    import array_api_extra as xpx

    flat = xpx.at(xp.reshape(H, shape[:-2] + (K * K,)))[..., :: K + 1].set(d)
    return xp.reshape(flat, shape)


def complement_sums(xp, x):
    """``Σ_{i≠j} x_i`` for every j along the last axis (``x >= 0``): ``total − x_j``, and at
    each row's largest entries (ties included) ``Σ_{x_i < max} x_i`` summed directly where
    ``total < 2 max`` (one top entry: no cancellation for a confident row, ``1 − p_max``),
    else ``total − max >= total/2`` (a mask, not ``argmax``; no count of the ties)."""
    big = xp.max(x, axis=-1, keepdims=True)
    top = x == big
    total = xp.sum(x, axis=-1, keepdims=True)
    rest = xp.sum(xp.where(top, xp.zeros((), dtype=x.dtype, device=device_of(x)), x), axis=-1, keepdims=True)
    others = xp.where((total >= 2 * big) & (big < xp.inf), total - big, rest)
    return xp.where(top, others, total - x)


def centred_product(xp, w, p, v):
    """``w ⊙ (v − p·v)`` per row for ``Σp = 1``: the product of ``diag(w) − w pᵀ`` with ``v``
    (``(..., K)`` each), ``v`` first centred on its value at an entry of largest ``w`` (the
    product is unchanged, as ``p·1 = 1``): round-off then scales with v's spread around
    that entry, not with its size, and a confident row keeps its digits. A mask of the
    row's largest entries, not ``argmax`` (XLA's CPU argmax costs many ``max``); with ties
    the mean of their v (any constant serves). Linear in ``v`` (sums, no ``max`` of v), so
    JAX can transpose it: reverse mode through an HVP works."""
    top = w == xp.max(w, axis=-1, keepdims=True)
    zero = xp.zeros_like(v)
    at_top = xp.sum(xp.where(top, v, zero), axis=-1, keepdims=True)
    c = at_top / xp.sum(xp.where(top, xp.ones_like(v), zero), axis=-1, keepdims=True)
    vc = v - c
    return w * (vc - xp.sum(p * vc, axis=-1, keepdims=True))


def simplex_sqrt(xp, d, root, c=None):
    """The exact factor of the blocks ``c (diag(d) − d dᵀ/Σd)`` (``d >= 0``, ``root = √d``
    given by the caller: exact where d underflows), ``(..., K, K)``, numpy's
    ``SimplexBlock.sqrt``: ``√c (diag(root ⊙ comp) − (d/Σd) rootᵀ off the diagonal)`` with
    ``comp = Σ_{i≠k} d_i / Σd`` summed directly (no cancellation on a confident row); zero
    rows where ``Σd = 0``. ``c``: None (1) or ``(..., 1)``."""
    D = xp.sum(d, axis=-1, keepdims=True)
    pos = D > 0
    safe = xp.where(pos, D, xp.ones_like(D))
    zero = xp.zeros_like(d)
    ratio = xp.where(pos, d / safe, zero)
    comp = xp.where(pos, complement_sums(xp, d) / safe, zero)
    off = -(ratio[..., :, None] * root[..., None, :])
    S = diagonal_blocks(xp, root * comp) + off * (1 - diagonal_blocks(xp, xp.ones_like(root)))
    return S if c is None else xp.sqrt(c)[..., None] * S
