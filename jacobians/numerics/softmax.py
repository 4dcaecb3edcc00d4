"""Softmax, log-sum-exp and their relatives, exact for huge logits, along the last axis.

No function here writes into its arguments. Every kernel keeps the input's float dtype.
"""

from __future__ import annotations

import numpy as np

from .buffers import row_chunks, rowdot, rowsum, scratch

__all__ = [
    "exp_is_safe",
    "shifted_exp",
    "logsumexp",
    "log1p_ratio",
    "RATIO_MAX_EXP",
    "softmax",
    "softmax_vjp",
    "log_softmax",
]


#: ``|z|`` bound under which ``exp(z)`` is taken without the max shift: ``exp(±B)`` is a
#: normal number and a row sum of ``K·exp(B)`` cannot overflow for any realistic K
#: (float64: e^600 ≈ 4e260; float32: e^60 ≈ 1e26, so K < 3e12).
EXP_SAFE_BOUND = {np.dtype(np.float64): 600.0, np.dtype(np.float32): 60.0}


def exp_is_safe(z: np.ndarray) -> bool:
    """True when ``exp(z)`` can be taken without shifting by the row max.

    Shifting by the max changes nothing mathematically in softmax or log-sum-exp; it
    only keeps ``exp`` from overflowing (or underflowing). When every entry lies in
    ``[−B, B]`` (see :data:`EXP_SAFE_BOUND`) no entry of ``exp(z)`` overflows or loses
    bits to subnormals, and the unshifted result is as accurate as the shifted one. Two
    global reductions are much cheaper than a row-wise max and a subtraction pass.
    NaN and ±inf make it False (the shifted path then handles them).
    """
    bound = EXP_SAFE_BOUND.get(z.dtype)
    if bound is None or z.size == 0:
        return False
    return bool(z.max() <= bound) and bool(z.min() >= -bound)


def shifted_exp(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pieces of an exact log-sum-exp along the last axis.

    Returns ``(shifted, e, rest, top)``: ``shifted = z − m`` with ``m`` the row max
    (entries <= 0), ``e = exp(shifted)``, ``rest = Σ_{k ≠ top} e_k`` shape ``(..., 1)``
    (the sum without the row's first maximum, whose term is exactly 1) and ``top`` the
    index of that maximum, shape ``(..., 1)``. Then::

        lse(z) = m + log1p(rest),      Σ_k e_k = 1 + rest

    ``log1p(rest)`` keeps a tiny ``rest`` (every other entry far below the max), where
    ``log(1 + rest)`` rounds it away: every log-softmax entry ``shifted − log1p(rest)``
    is then a sum of two non-positive numbers, accurate to a few ulp.
    """
    top = z.argmax(axis=-1)[..., None]
    shifted = np.subtract(z, np.take_along_axis(z, top, axis=-1))
    e = np.exp(shifted)
    np.put_along_axis(e, top, 0, axis=-1)
    rest = e.sum(axis=-1, keepdims=True)
    np.put_along_axis(e, top, 1, axis=-1)
    return shifted, e, rest, top


def logsumexp(z: np.ndarray) -> np.ndarray:
    """``log Σ_k exp(z_k)`` along the last axis, shape ``(...,)``; exact for huge logits.

    ``m + log1p(Σ_{k ≠ argmax} exp(z_k − m))`` (see :func:`shifted_exp`).
    """
    shifted, _, rest, top = shifted_exp(z)
    m = np.take_along_axis(z, top, axis=-1)
    return (m + np.log1p(rest))[..., 0]


#: :func:`log1p_ratio` forms ``o / e`` only up to ``2**RATIO_MAX_EXP`` (3/4 of the dtype's
#: exponent range: the quotient stays finite, and ``e`` is a normal number whenever ``o >= 1``)
RATIO_MAX_EXP = {np.dtype(np.float64): 768, np.dtype(np.float32): 96}


def log1p_ratio(other: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log1p(other / e), far)`` for ``other >= 0`` and ``e > 0``, never overflowing.

    The result has ``other``'s dtype; ``e`` may be float64 for a float32 ``other`` (the
    quotient and log1p are then taken in float64 and rounded once).

    ``log1p(o / e) = log((e + o) / e)`` is the log-sum-exp gap of a row whose terms
    are ``e`` and ``o``: exact to a few ulp for any quotient, tiny ones included.
    ``far`` marks the entries where ``o / e`` exceeds ``2**RATIO_MAX_EXP``; their
    values are meaningless and the caller computes them another way (the log of a
    quotient that large is a sum of two positive logs, see the fused rules).
    """
    dtype = other.dtype
    limit = dtype.type(2.0 ** -RATIO_MAX_EXP[dtype])
    floor = other * limit
    far = e < floor
    if dtype == np.float32:
        # one value per row: the quotient and log1p in float64 (rounded once, to float32)
        # add nothing to the error of the float32 exps that o and e come from
        ratio = other.astype(np.float64) / np.maximum(e, floor)
        return np.log1p(ratio).astype(np.float32), far
    return np.log1p(other / np.maximum(e, floor)), far


def _exp_shifted(x: np.ndarray, m: np.ndarray, out: np.ndarray) -> None:
    """``exp(x − m)`` into ``out``. float32: ``x − m`` and its exp in float64, rounded once
    (in float32 the difference of a logit and a far larger maximum is rounded, and its
    exp carries eps·|x − m| of relative error: tens of ulp on the small probabilities of
    a confident row, which are all its softmax Jacobian holds)."""
    if out.dtype == np.float32:
        d = np.subtract(x, m, dtype=np.float64)
        np.exp(d, out=d)
        out[...] = d
    else:
        np.subtract(x, m, out=out)
        np.exp(out, out=out)


def softmax(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(z − m) / Σ exp(z − m)`` with ``m = max(z)``: never overflows.

    The shift is skipped when :func:`exp_is_safe` (same result to round-off). ``out``
    (same shape and dtype as ``z``, not ``z`` itself) receives the result.
    """
    e = np.empty_like(z) if out is None else out
    if exp_is_safe(z):
        np.exp(z, out=e)
    else:
        _exp_shifted(z, z.max(axis=-1, keepdims=True), e)
    e /= rowsum(e)  # a division, not a reciprocal: a row of one entry gives exactly 1
    return e


def softmax_vjp(x: np.ndarray, g: np.ndarray, temperature: float = 1.0, factor=None) -> np.ndarray:
    """``f · s ⊙ (g − s·g) / T`` with ``s = softmax(x)``: the softmax VJP from the (scaled)
    logits, times an optional ``factor`` f (a scalar, or one per row, shape ``(...)``).

    Computed as ``s ⊙ (g' − s·g')`` with ``g' = g − g_t`` centred on the row's largest
    probability ``s_t`` (the same product: ``J 1 = 0``). The plain ``g − s·g`` cancels on a
    confident row (``s_t`` near 1, ``s·g`` near ``g_t``): its round-off, eps·|g|, dwarfs a
    result of size ``(1 − s_t)|g|``. Centred, ``g'_t = 0`` and ``s·g' = Σ_{j≠t} s_j g'_j``
    is as small as the result and as accurate (the complement sums ``1 − s_t = Σ_{j≠t} s_j``
    without forming them); the round-off then scales with g's spread, not its size.

    One output buffer: ``s`` is built in it chunk by chunk (see
    :func:`~jacobians.numerics.buffers.row_chunks`), and
    ``g' − s·g'`` goes to a reused scratch buffer, so a call allocates only its result.
    """
    K = x.shape[-1]
    x2, g2 = x.reshape(-1, K), g.reshape(-1, K)
    out = np.empty(x2.shape, dtype=x.dtype)
    safe = exp_is_safe(x)
    f = None
    if factor is not None or temperature != 1.0:
        f = np.asarray(1.0 if factor is None else factor, dtype=x.dtype) / x.dtype.type(temperature)
        f = f.reshape(-1, 1) if f.ndim else f
    for rows in row_chunks(x2.shape[0], K):
        o, xc, gc = out[rows], x2[rows], g2[rows]
        top = xc.argmax(axis=-1)  # the largest s: the first largest logit
        at = np.arange(len(xc)), top
        if safe:
            np.exp(xc, out=o)
        else:
            _exp_shifted(xc, xc[at][:, None], o)
        w = scratch(o.size, x.dtype).reshape(o.shape)
        np.subtract(gc, gc[at][:, None], out=w)
        total = rowsum(o)
        dot = rowdot(o, w)[:, None]
        dot /= total  # s·g' = (e·g')/Σe
        w -= dot
        if f is not None:  # in cache: cheaper than a pass over the result
            w *= f[rows] if f.ndim else f
        o /= total
        o *= w
    return out.reshape(x.shape)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """``(z − m) − log1p(Σ_{k ≠ argmax} exp(z_k − m))``: a few ulp from the exact value in
    every entry, including the largest (``−log1p`` of a tiny sum, where ``log Σ`` would
    give 0), and finite where ``log(softmax(z))`` would give -inf."""
    shifted, _, rest, _ = shifted_exp(z)
    shifted -= np.log1p(rest)
    return shifted
