"""One small function per gap in the array API standard, each stable and exact to a few ulp.

Every shim takes the namespace ``xp`` first (from :func:`jacobians.xp.namespace.namespace_of`),
keeps the input's dtype (float32 stays float32) and device, writes nothing in place (JAX
arrays are immutable) and has no data-dependent Python control flow, so it traces under
``jax.jit``. Branches are ``xp.where`` of two finite computations: no branch evaluates
``exp`` of a large positive number or ``log`` of zero (numpy would warn).

Examples
--------
>>> import array_api_compat.numpy as xp
>>> from jacobians.xp.shims import logsumexp, softplus
>>> round(float(logsumexp(xp, xp.asarray([1e4, 1e4, -1e4]))) - 1e4, 9)   # log 2
0.693147181
>>> float(softplus(xp, xp.asarray(-800.0)))
0.0
"""

from __future__ import annotations

import math

import array_api_compat

__all__ = [
    "logsumexp",
    "expit",
    "log_sigmoid",
    "softplus",
    "log1mexp",
    "take_along_axis",
    "put_along_axis",
]

#: where log1mexp changes branch (see there)
_SPLIT = -1.1


def _full_like(xp, x, value):
    return xp.full(x.shape, value, dtype=x.dtype, device=array_api_compat.device(x))


def logsumexp(xp, x, axis: int = -1, keepdims: bool = False):
    """``log Σ_k exp(x_k)`` along ``axis``, shifted by the max.

    With ``m = max_k x_k`` and ``t = Σ_{k: x_k < m} exp(x_k − m) + (#{k: x_k = m} − 1)``,
    the result is ``m + log1p(t)``: the max's own term (exactly 1) is kept out of the sum,
    so a row dominated by its max (``x = (0, −30)``: ``log1p(e⁻³⁰)``) stays exact to the
    last bit instead of losing it in ``log(1 + tiny)``. Exact for logits of ±1e4 in
    float32 too (nothing is exponentiated above 0).

    Parameters
    ----------
    xp : namespace
    x : array, shape ``(..., K, ...)``, real floating
    axis : int
        The axis summed over (one axis).
    keepdims : bool
        Keep ``axis`` with length 1.

    Returns
    -------
    array, ``x``'s shape without ``axis`` (or with length 1 there), ``x.dtype``
        ``-inf`` for a row of all ``-inf``; ``+inf`` where a row holds ``+inf``; NaN where
        it holds NaN.
    """
    m = xp.max(x, axis=axis, keepdims=True)
    finite = xp.isfinite(m)
    m0 = xp.where(finite, m, xp.zeros_like(m))
    at_max = x == m
    e = xp.exp(xp.where(at_max, xp.zeros_like(x), x - m0))  # exp(0) at the max: never used
    others = xp.sum(xp.where(at_max, xp.zeros_like(x), e), axis=axis, keepdims=True)
    ties = xp.astype(xp.sum(xp.astype(at_max, x.dtype), axis=axis, keepdims=True), x.dtype)
    t = others + (ties - 1)
    # a row of all -inf has m = -inf (t = #ties − 1 ≥ 0, harmless): m + log1p(t) = -inf;
    # +inf: m + ... = +inf; NaN: m is NaN (x == m nowhere, t = NaN)
    out = xp.where(finite, m + xp.log1p(xp.where(finite, t, xp.zeros_like(t))), m)
    return out if keepdims else xp.squeeze(out, axis=axis)


def expit(xp, x):
    """The logistic sigmoid ``σ(x) = 1 / (1 + e^{−x})``, elementwise.

    With ``e = exp(−|x|) ∈ (0, 1]``: ``1 / (1 + e)`` for ``x ≥ 0`` and ``e / (1 + e)`` for
    ``x < 0``, so no ``exp`` of a large positive number is taken and the lower tail keeps
    its relative precision (``σ(−100) = 3.7e−44`` in float64, not 0). The numerator is
    ``exp(min(x, 0))`` (exactly 1 or e), not a ``where`` on the sign: torch's CPU ``where``
    branches per entry and costs about four exp passes on signs that change at random.

    Parameters
    ----------
    xp : namespace
    x : array, any shape, real floating

    Returns
    -------
    array, ``x``'s shape and dtype, in ``[0, 1]``
    """
    return xp.exp(xp.minimum(x, xp.zeros_like(x))) / (1 + xp.exp(-xp.abs(x)))


def softplus(xp, x):
    """``softplus(x) = log(1 + e^x) = log1p(exp(−|x|)) + max(x, 0)``, elementwise.

    Parameters
    ----------
    xp : namespace
    x : array, any shape, real floating

    Returns
    -------
    array, ``x``'s shape and dtype, ``≥ 0``
        ``e^x`` to full relative precision in the lower tail, ``x + e^{−x}`` in the upper;
        ``softplus(−inf) = 0``, ``softplus(+inf) = +inf``.
    """
    return xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(x, xp.zeros_like(x))


def log_sigmoid(xp, x):
    """``log σ(x) = −softplus(−x) = min(x, 0) − log1p(exp(−|x|))``, elementwise.

    Both terms are ``≤ 0``: no cancellation in either tail (``log σ(−1e4) = −1e4``,
    ``log σ(40) = −e^{−40}`` to full relative precision).

    Parameters
    ----------
    xp : namespace
    x : array, any shape, real floating

    Returns
    -------
    array, ``x``'s shape and dtype, ``≤ 0``
    """
    return xp.minimum(x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))


def log1mexp(xp, x):
    """``log(1 − e^x)`` for ``x ≤ 0``, elementwise (Mächler's two branches).

    ``log(−expm1(x))`` for ``−1.1 < x ≤ 0`` and ``log1p(−exp(x))`` for ``x ≤ −1.1``:
    each branch where it has no cancellation, so e.g. the log of a complement
    ``log(1 − p)`` from ``log p`` is exact to a few ulp. (Mächler splits at ``−log 2``;
    both branches are accurate between, and ``−1.1`` keeps ``log1p``'s argument above
    ``−e^{−1.1} = −0.333``: XLA's float64 ``log1p`` on CPU is off by up to 121 ulp on
    ``[−0.413, −0.352]`` (JAX 0.10).)

    Parameters
    ----------
    xp : namespace
    x : array, any shape, real floating, ``≤ 0``

    Returns
    -------
    array, ``x``'s shape and dtype, ``≤ 0``
        ``-inf`` at ``x = 0``, ``0`` at ``x = −inf``; NaN for ``x > 0``.
    """
    near = x > _SPLIT
    a = -xp.expm1(xp.where(near, x, _full_like(xp, x, -1.0)))  # in [0, 0.67): 0 only at x = 0
    b = xp.log1p(-xp.exp(xp.where(near, _full_like(xp, x, -1.0), x)))
    pos = a > 0
    la = xp.where(pos, xp.log(xp.where(pos, a, xp.ones_like(a))), _full_like(xp, x, -math.inf))
    out = xp.where(near, la, b)
    return xp.where(x > 0, _full_like(xp, x, math.nan), out)


def _normalized(xp, idx, n: int):
    """Indices with negatives counted from the end (``i + n`` for ``i < 0``)."""
    return xp.where(idx < 0, idx + n, idx)


def _last(xp, x, axis: int):
    """``x`` with ``axis`` moved last, and the permutation to undo it (None: no move)."""
    axis = axis % x.ndim
    if axis == x.ndim - 1:
        return x, None
    perm = [d for d in range(x.ndim) if d != axis] + [axis]
    back = list(range(x.ndim - 1))
    back.insert(axis, x.ndim - 1)
    return xp.permute_dims(x, tuple(perm)), tuple(back)


def _take_last_fallback(xp, x, idx):
    """``take_along_axis`` along the last axis with 1-D ``take``: ``x`` and ``idx`` broadcast
    on the leading axes."""
    lead = tuple(max(a, b) for a, b in zip(x.shape[:-1], idx.shape[:-1]))
    x = xp.broadcast_to(x, lead + (x.shape[-1],))
    idx = xp.broadcast_to(idx, lead + (idx.shape[-1],))
    K, J = x.shape[-1], idx.shape[-1]
    rows = math.prod(lead)
    base = xp.reshape(xp.arange(rows, dtype=idx.dtype, device=array_api_compat.device(idx)) * K, (rows, 1))
    flat = xp.reshape(xp.reshape(idx, (rows, J)) + base, (-1,))
    return xp.reshape(xp.take(xp.reshape(x, (-1,)), flat), lead + (J,))


def take_along_axis(xp, x, idx, axis: int = -1):
    """``out[..., j, ...] = x[..., idx[..., j, ...], ...]`` along ``axis`` (numpy's
    ``take_along_axis``).

    Uses ``xp.take_along_axis`` where the namespace has it (the 2024.12 standard), else
    1-D ``take`` on the flattened array.

    Parameters
    ----------
    xp : namespace
    x : array, shape ``(..., K, ...)``
    idx : array of integers, shape ``(..., J, ...)``
        ``x.ndim`` axes, broadcasting with ``x`` on every axis but ``axis``; negative
        entries count from the end; out-of-range entries give unspecified values.
    axis : int

    Returns
    -------
    array, shape of ``x`` and ``idx`` broadcast, with ``J`` along ``axis``; ``x.dtype``
    """
    if x.ndim != idx.ndim:
        raise ValueError(f"idx must have x's number of axes ({x.ndim}); got shape {tuple(idx.shape)}")
    idx = _normalized(xp, idx, x.shape[axis])
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(x, idx, axis=axis)
    xl, back = _last(xp, x, axis)
    il, _ = _last(xp, idx, axis)
    out = _take_last_fallback(xp, xl, il)
    return out if back is None else xp.permute_dims(out, back)


def put_along_axis(xp, x, idx, values, axis: int = -1):
    """A new array: ``x`` with ``x[..., idx[..., j, ...], ...] = values[..., j, ...]`` along
    ``axis``; ``x`` is not modified (functional: JAX arrays are immutable).

    The one-hot form, jit-traceable and without advanced indexing: for each position k of
    ``axis``, the last j with ``idx_j = k`` (as numpy's in-place ``put_along_axis``, the
    last write wins for repeated indices) is ``max_j where(idx_j = k, j, −1)``; positions
    that no j names keep ``x``. Memory ``O(N·J·K)``: meant for few indices a row (J = 1
    puts a label's entry).

    Parameters
    ----------
    xp : namespace
    x : array, shape ``(..., K, ...)``
    idx : array of integers, shape ``(..., J, ...)``
        ``x.ndim`` axes, broadcasting with ``x`` on every axis but ``axis``; negative
        entries count from the end; entries outside ``[−K, K)`` are ignored.
    values : array or scalar
        Broadcasting to ``idx``'s shape; cast to ``x.dtype``.
    axis : int

    Returns
    -------
    array, ``x``'s shape (broadcast with ``idx`` on the other axes) and dtype
    """
    if x.ndim != idx.ndim:
        raise ValueError(f"idx must have x's number of axes ({x.ndim}); got shape {tuple(idx.shape)}")
    K = x.shape[axis]
    device = array_api_compat.device(x)
    values = xp.asarray(values, dtype=x.dtype, device=device)
    values = xp.broadcast_to(values, tuple(idx.shape))
    xl, back = _last(xp, x, axis)
    il, _ = _last(xp, _normalized(xp, idx, K), axis)
    vl, _ = _last(xp, values, axis)
    J = il.shape[-1]
    hit = il[..., :, None] == xp.arange(K, dtype=il.dtype, device=device)  # (..., J, K)
    j = xp.reshape(xp.arange(J, dtype=il.dtype, device=device), (J, 1))
    last = xp.max(xp.where(hit, j, -xp.ones_like(j)), axis=-2)  # (..., K): -1 where none
    named = last >= 0
    put = take_along_axis(xp, vl, xp.where(named, last, xp.zeros_like(last)), axis=-1)
    out = xp.where(named, put, xl)
    return out if back is None else xp.permute_dims(out, back)
