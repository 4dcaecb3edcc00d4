"""Numerically stable kernels, pure functions of arrays along the last axis.

No function here writes into its arguments. Every kernel keeps the input's float dtype.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = [
    "exp_is_safe",
    "rowsum",
    "total",
    "row_chunks",
    "scratch",
    "shifted_exp",
    "complement_sums",
    "project_columns",
    "project_rows",
    "logsumexp",
    "log1p_ratio",
    "RATIO_MAX_EXP",
    "softmax",
    "softmax_vjp",
    "diag_minus_rank_one",
    "rowdot",
    "log_softmax",
    "sigmoid",
    "sigmoid_derivative",
    "log_sigmoid",
    "softplus",
    "sparsemax",
    "entmax15",
    "tanh_derivative",
]


def _shifted(z: np.ndarray) -> np.ndarray:
    """``z − max(z)`` along the last axis, as a new array (every entry <= 0)."""
    return np.subtract(z, z.max(axis=-1, keepdims=True))


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


def total(values: np.ndarray):
    """``Σ values`` as a scalar of their dtype, in one fixed order: the flattened values in
    consecutive pieces of :data:`CHUNK_ENTRIES` (as :func:`row_chunks` cuts them), each
    summed in float64 (numpy's pairwise sum), the pieces added in float64, the total rounded
    once. float32 values thus lose nothing to float32 accumulation, and any caller that
    holds the same values — a kernel that never materialises them all, a Dask graph that
    gathers them — gets the same number to the bit."""
    flat = values.reshape(-1)
    acc = np.float64(0.0)
    for piece in row_chunks(flat.size, 1):
        acc += flat[piece].sum(dtype=np.float64)
    return values.dtype.type(acc)


def rowsum(x: np.ndarray) -> np.ndarray:
    """``Σ_k x_k`` along the last axis, shape ``(..., 1)``.

    numpy's einsum loop: it adds each row's entries in the same order however many rows
    come with it, so a row's sum does not depend on the batch it is in (a BLAS
    matrix–vector product, faster for short rows, picks its kernel by the number of rows:
    chunks of a batch would differ in the last bit). Much faster than ``x.sum(axis=-1)``
    for short rows (numpy reduces each row in its own inner loop).
    """
    return np.einsum("...k->...", x)[..., None]


#: rows of (..., K) work are processed in chunks of about this many entries, so that the
#: few passes over each chunk stay in the core's cache
CHUNK_ENTRIES = 1 << 16

_SCRATCH = threading.local()


def scratch(n: int, dtype, slot: int = 0) -> np.ndarray:
    """A 1-d work buffer of ``n`` entries, reused by this thread (never return it).

    Reusing a buffer instead of allocating a temporary per call keeps the allocator
    from handing back fresh pages (a page fault each 4 KiB) on every call. Distinct
    ``slot`` values give distinct buffers. Callers ask for at most a chunk of
    :data:`CHUNK_ENTRIES` entries (or one row), so the buffers stay small.
    """
    key = (np.dtype(dtype), slot)
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.size < n:
        buf = bufs[key] = np.empty(max(n, 1), dtype=key[0])
    return buf[:n]


def row_chunks(n_rows: int, K: int):
    """Slices covering ``range(n_rows)`` with about :data:`CHUNK_ENTRIES` entries each."""
    step = max(1, CHUNK_ENTRIES // max(K, 1))
    return [slice(a, min(n_rows, a + step)) for a in range(0, n_rows, step)] or [slice(0, 0)]


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


def softmax(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(z − m) / Σ exp(z − m)`` with ``m = max(z)``: never overflows.

    The shift is skipped when :func:`exp_is_safe` (same result to round-off). ``out``
    (same shape and dtype as ``z``, not ``z`` itself) receives the result.
    """
    e = np.empty_like(z) if out is None else out
    if exp_is_safe(z):
        np.exp(z, out=e)
    else:
        np.subtract(z, z.max(axis=-1, keepdims=True), out=e)
        np.exp(e, out=e)
    e /= rowsum(e)  # a division, not a reciprocal: a row of one entry gives exactly 1
    return e


def softmax_vjp(x: np.ndarray, g: np.ndarray, temperature: float = 1.0, factor=None) -> np.ndarray:
    """``f · s ⊙ (g − s·g) / T`` with ``s = softmax(x)``: the softmax VJP from the (scaled)
    logits, times an optional ``factor`` f (a scalar, or one per row, shape ``(...)``).

    One output buffer: ``s`` is built in it chunk by chunk (see :func:`row_chunks`), and
    ``g − s·g`` goes to a reused scratch buffer, so a call allocates only its result.
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
        if safe:
            np.exp(xc, out=o)
        else:
            np.subtract(xc, xc.max(axis=-1, keepdims=True), out=o)
            np.exp(o, out=o)
        o /= rowsum(o)
        dot = rowdot(o, gc)
        w = scratch(o.size, x.dtype).reshape(o.shape)
        np.subtract(gc, dot[:, None], out=w)
        if f is not None:  # in cache: cheaper than a pass over the result
            w *= f[rows] if f.ndim else f
        o *= w
    return out.reshape(x.shape)


def rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Σ_k x_k y_k`` per row of two (n, K) arrays, shape (n,).

    einsum for short rows; a batched BLAS dot (``matmul``) for long ones, where it is
    about twice as fast.
    """
    if x.shape[-1] >= 64:
        return np.matmul(x[:, None, :], y[:, :, None])[:, 0, 0]
    return np.einsum("ij,ij->i", x, y)


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


def log_softmax(z: np.ndarray) -> np.ndarray:
    """``(z − m) − log1p(Σ_{k ≠ argmax} exp(z_k − m))``: a few ulp from the exact value in
    every entry, including the largest (``−log1p`` of a tiny sum, where ``log Σ`` would
    give 0), and finite where ``log(softmax(z))`` would give -inf."""
    shifted, _, rest, _ = shifted_exp(z)
    shifted -= np.log1p(rest)
    return shifted


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(−z))`` computed from ``exp(−|z|)``, so exp never overflows."""
    e = np.exp(-np.abs(z))
    out = 1.0 / (1.0 + e)
    return np.where(z >= 0, out, e * out).astype(z.dtype, copy=False)


def sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    """``σ(z) σ(−z) = exp(−|z|) / (1 + exp(−|z|))²``; no cancellation in ``1 − σ``."""
    e = np.exp(-np.abs(z))
    return e / (1.0 + e) ** 2


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    """``log σ(z) = −softplus(−z)``, exact for large ``|z|``."""
    return -softplus(-z)


def softplus(z: np.ndarray) -> np.ndarray:
    """``log(1 + exp(z)) = max(z, 0) + log1p(exp(−|z|))``."""
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def tanh_derivative(z: np.ndarray) -> np.ndarray:
    """``1 − tanh²(z) = 4 e^{−2|z|} / (1 + e^{−2|z|})²``: accurate where tanh(z) rounds to ±1."""
    e = np.exp(-2.0 * np.abs(z))
    return 4.0 * e / (1.0 + e) ** 2


def sparsemax(z: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the simplex (Martins & Astudillo, 2016).

    ``p = max(z − τ, 0)`` with ``τ`` chosen so that ``Σ p = 1``; sort-based, O(K log K).
    """
    shifted = _shifted(z)  # shift-invariant; keeps cumulative sums small
    K = z.shape[-1]
    srt = -np.sort(-shifted, axis=-1)
    cumsum = np.cumsum(srt, axis=-1)
    ks = np.arange(1, K + 1, dtype=z.dtype)
    in_support = 1 + ks * srt > cumsum
    k = in_support.sum(axis=-1, keepdims=True)  # >= 1 always
    tau = (np.take_along_axis(cumsum, k - 1, axis=-1) - 1) / k.astype(z.dtype)
    return np.maximum(shifted - tau, 0)


def entmax15(z: np.ndarray) -> np.ndarray:
    """1.5-entmax (Peters, Niculae & Martins, 2019), exact sort-based algorithm.

    ``p = [(z/2 − τ)_+]²`` with ``τ`` chosen so that ``Σ p = 1``.
    """
    x = _shifted(z) / 2
    K = z.shape[-1]
    srt = -np.sort(-x, axis=-1)
    rho = np.arange(1, K + 1, dtype=z.dtype)
    mean = np.cumsum(srt, axis=-1) / rho
    mean_sq = np.cumsum(srt * srt, axis=-1) / rho
    ss = rho * (mean_sq - mean * mean)
    delta = np.maximum((1 - ss) / rho, 0)
    tau = mean - np.sqrt(delta)
    support = (tau <= srt).sum(axis=-1, keepdims=True)
    tau_star = np.take_along_axis(tau, support - 1, axis=-1)
    p = np.maximum(x - tau_star, 0)
    return p * p
