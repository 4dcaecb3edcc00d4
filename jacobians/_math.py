"""Numerically stable kernels, pure functions of arrays along the last axis.

No function here writes into its arguments. Every kernel keeps the input's float dtype.
"""

from __future__ import annotations

import threading

import numpy as np

from .numerics.memo import memoized

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
    "simplex_vjp",
    "diag_minus_rank_one",
    "rowdot",
    "log_softmax",
    "sigmoid",
    "sigmoid_derivative",
    "log_sigmoid",
    "softplus",
    "sparsemax",
    "entmax15",
    "entmax",
    "entmax_vjp",
    "entmax_weights",
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

    One output buffer: ``s`` is built in it chunk by chunk (see :func:`row_chunks`), and
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


def simplex_vjp(w: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w ⊙ (x − v·x)`` per row (``(diag(w) − w vᵀ) x`` for ``Σv = 1``, the product of
    every simplex map's Jacobian, ``v = w/Σw``), with ``x`` centred first on the entry of
    the largest ``w`` (the same product: the rows of ``I − 1 vᵀ`` sum to 0): no cancellation
    on a confident row (see :func:`softmax_vjp`). One allocation, chunk by chunk.
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


@memoized
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


@memoized
def entmax15(z: np.ndarray) -> np.ndarray:
    """1.5-entmax (Peters, Niculae & Martins, 2019), exact sort-based algorithm.

    ``p = [(z/2 − τ)_+]²`` with ``τ`` chosen so that ``Σ p = 1``: the support and τ from the
    sorted row's running moments, then one Newton step on τ (to about 1 ulp).
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
    # one Newton step on Σ (x − τ)² = 1 over the support: the closed form's τ carries the
    # cancellation of Σx² − (Σx)²/k (a few ulp), the step leaves round-off
    u = np.maximum(x - tau_star, 0)
    tau_star += (rowsum(u * u) - 1) / (2 * rowsum(u))
    p = np.maximum(x - tau_star, 0)
    return p * p


# -- α-entmax ----------------------------------------------------------------------------------
#
# With x = (α − 1)(z − max z) (every entry <= 0, the maximum exactly 0), a = −x >= 0 and
# β = 1/(α − 1),
#
#     p_i = u_i^β,   u_i = [x_i − τ]_+ = [1 − (a_i + δ)]_+,   δ = 1 + τ in [0, 1),   Σ p = 1.
#
# Where the digits go — three forms, by α (:func:`_entmax_form`):
#
# * α < 5/4 (NEAR_ONE, β > 4): the unknown is δ, and log u_i = log1p(−(a_i + δ)). As α → 1, β
#   is large and τ sits near −1: 1 + τ would round away the digits of δ that β amplifies. Kept
#   as δ, the result is as accurate as softmax's (eps·|z − max| relative) for any α. Near the
#   support's edge 1 − (a_i + δ) carries an absolute error of eps, but there p_i = u_i^β and
#   u_i^{β−1} are below u_i³.
# * 5/4 <= α <= 2 (FLAT): the unknown is δ, and u_i = (1 − a_i) − δ, with 1 − a_i exact near
#   the edge (where the Jacobian's weights u^{β−1} — √p for 1.5-entmax — would carry an
#   error of eps in u_i); near the top (u_i > 1/2) log u_i is log1p(−(a_i + δ)) as above,
#   unless β is 1 or 2, where u_i's error of eps costs p_i at most β·eps/2 and u^β is a
#   product.
# * α > 2 (STEEP, β < 1): p_i = u_i^β rises steeply from the support's edge (a visible
#   p_k = 1e-4 at α = 4 is u_k = 1e-12). The unknown is u_k, the support's smallest u, and
#   u_i = (a_k − a_i) + u_k, exact near the edge, where δ would put an error of eps in u_i.
#
# A row's unknown is ``q`` (δ, or −u_k: Σp decreases as q grows in both) and ``ref`` the a it
# is measured from: u = (ref − a) − q with ref = 1 (FLAT) or a_k (STEEP). :func:`entmax`
# solves the rows of each form in separate calls.

NEAR_ONE, FLAT, STEEP = 0, 1, 2


def _entmax_form(alpha):
    """:data:`NEAR_ONE`, :data:`FLAT` or :data:`STEEP` for each α (see the section's comment)."""
    if not isinstance(alpha, np.ndarray):
        return NEAR_ONE if alpha < 1.25 else FLAT if alpha <= 2 else STEEP
    return np.where(alpha < 1.25, NEAR_ONE, np.where(alpha <= 2, FLAT, STEEP))


#: iterations of the τ solve on the support before giving up on a row (Newton converges
#: in 2 to 7; the bracket's bisection is the fallback)
ENTMAX_MAX_ITER = 100


def _is(beta, value) -> bool:
    return not isinstance(beta, np.ndarray) and beta == value


#: exponents below this are raised to it inside the τ solve: numpy's float64 ``exp`` takes ~5×
#: longer where it underflows, and terms below e^-300 (float32: e^-80) change no sum there
EXP_FLOOR = {np.dtype(np.float64): -300.0, np.dtype(np.float32): -80.0}


def _sign(u):
    """``sign(u)`` for ``u >= 0`` (0 or 1) in a scratch buffer: numpy's log and exp take 2–3 times
    longer over arrays holding 0 and -inf, so logs are taken of clipped values and the entries
    off the support are zeroed after, by this factor."""
    sign = scratch(u.size, u.dtype, 3).reshape(u.shape)
    return np.sign(u, out=sign)


def _exp_of(L, factor, out, sign, floor=None):
    """``exp(factor·L)`` (raised to ``exp(floor)`` first, if given) times ``sign``, into ``out``."""
    np.multiply(L, factor, out=out)
    if floor is not None:
        np.maximum(out, floor, out=out)
    np.exp(out, out=out)
    out *= sign
    return out


def _power(d, beta, out, floor=None):
    """``d^β`` for ``d >= 0`` into ``out`` (which may be ``d``): a product for β = 1 and 2,
    else ``exp(β log d)`` (numpy's float32 ``power`` takes ~100× longer where its result is
    subnormal; ``exp`` does not). ``floor``: see :data:`EXP_FLOOR`."""
    if _is(beta, 1.0):
        np.copyto(out, d)
    elif _is(beta, 2.0):
        np.multiply(d, d, out=out)
    else:
        sign = _sign(d)
        np.maximum(d, np.finfo(d.dtype).tiny, out=out)
        np.log(out, out=out)
        _exp_of(out, beta, out, sign, floor)
    return out


def _is_product(beta, form) -> bool:
    """True where ``u^β`` is a product (β = 1 or 2) of the FLAT or STEEP form's ``u``."""
    return form != NEAR_ONE and (_is(beta, 1.0) or _is(beta, 2.0))


def _u_and_log(a, ref, q, form, u, L):
    """``u`` (clipped at 0) into ``u`` and ``log max(u, tiny)`` into ``L`` (which may be ``a``) of
    a row's entries ``a``, in the row's ``form`` (see the section's comment)."""
    if form == NEAR_ONE:
        np.add(a, q, out=u)
        np.minimum(u, 1, out=u)
        np.minimum(u, np.nextafter(u.dtype.type(1), u.dtype.type(0)), out=L)
        np.negative(L, out=L)
        np.log1p(L, out=L)
        np.subtract(1, u, out=u)
        return
    if form == FLAT:  # near the top (u > 1/2) log1p(−(a + δ)): u itself would carry eps·β into p
        top = scratch(u.size, u.dtype, 2).reshape(u.shape)
        np.add(a, q, out=top)
        np.minimum(top, 0.5, out=top)
        np.negative(top, out=top)
        np.log1p(top, out=top)
    np.subtract(ref, a, out=u)
    u -= q
    np.maximum(u, 0, out=u)
    np.maximum(u, np.finfo(u.dtype).tiny, out=L)
    np.log(L, out=L)
    if form == FLAT:
        np.copyto(L, top, where=u > 0.5)


def _entmax_terms(a, ref, q, beta, form, p, u):
    """``u`` (clipped at 0) and ``p = u^β`` of a row's entries ``a`` into ``u`` and ``p`` (which
    may be ``a``), in the row's ``form`` (see the section's comment)."""
    if _is_product(beta, form):
        np.subtract(ref, a, out=u)
        u -= q
        np.maximum(u, 0, out=u)
        return _power(u, beta, p), u
    _u_and_log(a, ref, q, form, u, p)
    return _exp_of(p, beta, p, _sign(u)), u


def _support_size(a, beta):
    """Support size k of each row from its sorted ``a = sort(−x)`` (ascending, ``a[:, 0] = 0``).

    Entry j is in the support iff ``F_j = Σ_i [a_j − a_i]_+^β < 1`` (the mass left at
    τ = x_j), and F is non-decreasing along the sorted row; only entries with ``a < 1`` can
    be in it (τ >= −1). For short rows every F_j at once (O(K²) a row, a few calls); for
    long ones by bisection over the candidates (O(K log K)). Returns ``(k, count)``: the
    support size and the number of candidates, both (n,) ints.
    """
    n = a.shape[0]
    count = np.maximum(np.count_nonzero(a < 1, axis=-1), 1)
    C = int(count.max())
    if n * C * C <= CHUNK_ENTRIES // 4:
        with np.errstate(invalid="ignore"):  # masked logits: a = +inf past the candidates
            d = a[:, :C, None] - a[:, None, :C]  # d[j, i] = a_j − a_i
        np.clip(d, 0, 1, out=d)  # a term of 1 already puts j out (and d^β cannot overflow)
        F = _power(d, beta if not isinstance(beta, np.ndarray) else beta[:, :, None], d, EXP_FLOOR[a.dtype]).sum(axis=-1)
        return np.maximum(np.count_nonzero((F < 1) & (np.arange(C) < count[:, None]), axis=-1), 1), count
    lo, hi = np.zeros(n, dtype=np.intp), count - 1
    rows = np.arange(n)
    while np.any(lo < hi):
        C = int(hi.max()) + 1
        mid = (lo + hi + 1) >> 1
        d = scratch(n * C, a.dtype, 7).reshape(n, C)
        np.subtract(a[rows, mid][:, None], a[:, :C], out=d)
        np.maximum(d, 0, out=d)
        inside = rowsum(_power(d, beta, d, EXP_FLOOR[a.dtype]))[:, 0] < 1
        active = lo < hi
        lo = np.where(active & inside, mid, lo)
        hi = np.where(active & ~inside, mid - 1, hi)
    return lo + 1, count


def _mass(a, ref, q, beta, form, buf):
    """``S = Σ u^β`` and ``W = Σ u^{β−1}`` per row (n, 1) (terms below ``exp(EXP_FLOOR)`` raised)."""
    L, u, p = (b[: a.size].reshape(a.shape) for b in buf)
    if _is_product(beta, form):
        _entmax_terms(a, ref, q, beta, form, p, u)
        S = rowsum(p)
        return S, rowsum(_sign(u) if _is(beta, 1.0) else u)  # u^0 on the support, or u
    floor = EXP_FLOOR[a.dtype]
    _u_and_log(a, ref, q, form, u, L)
    sign = _sign(u)
    S = rowsum(_exp_of(L, beta, p, sign, floor))
    return S, rowsum(_exp_of(L, beta - 1, p, sign, floor))


def _newton(q, S, W, alpha, beta, form):
    """The Newton iterate from ``q``, given ``S = Σ u^β`` and ``W = Σ u^{β−1}`` there.

    NEAR_ONE and FLAT rows (q = δ): Newton on ``h(δ) = S^{1/β} − 1``, convex and nearly
    linear (exact in one step for a single entry or α = 2): ``δ + (S − S^{2−α})/W``, the
    numerator as
    ``−S·expm1((1 − α) log1p(S − 1))``. STEEP rows (q = −u_k): ``dS/du_k = βW`` is
    unbounded as u_k → 0, so Newton runs on ``S − 1`` in ``t = p_k = u_k^β``, where
    ``dS/dt = W u_k^{1−β}`` stays bounded: ``t − (S − 1)/(W u_k^{1−β})``, then ``u_k = t^{α−1}``
    (a t <= 0 gives NaN: the caller bisects).
    """
    if form != STEEP:
        return q - S * np.expm1((1 - alpha) * np.log1p(S - 1)) / W
    uk = -q
    t = np.power(uk, beta) - (S - 1) / (W * np.power(uk, 1 - beta))
    return -np.power(np.where(t > 0, t, np.nan), alpha - 1)


def _entmax_solve(a, alpha, beta, form):
    """``(ref, q)`` per row of ``a = −x`` (n, K), ``x`` shifted and scaled (row max 0), each
    (n, 1): what the row's u is measured from (:func:`_entmax_terms`).

    The support is found first, by bisection over the sorted entries
    (:func:`_support_size`); q is then solved on it by Newton's method (:func:`_newton`)
    from the left end of the bracket the support gives (:func:`_newton_convex`,
    :func:`_newton_safeguarded`), until ``|Σp − 1|`` is small enough that one last step, free
    (no evaluation; Newton squares the error), leaves round-off.
    """
    n, K = a.shape
    dt = a.dtype
    srt = scratch(n * K, dt, 4).reshape(n, K)
    np.copyto(srt, a)
    srt.sort(axis=-1)
    a = srt
    k, count = _support_size(a, beta)
    rows = np.arange(n)
    last = a[rows, k - 1][:, None]  # the support's smallest u sits at this a
    nxt = np.where(k < count, a[rows, np.minimum(k, int(count.max()) - 1)], 1)[:, None]  # the first left out
    if form == STEEP:  # −u_k in [−(next − last), 0)
        lo, hi, ref = (last - nxt).astype(dt), np.zeros((n, 1), dt), last.astype(dt)
    else:  # δ in [1 − next, 1 − last)
        lo, hi, ref = (1 - nxt).astype(dt), (1 - last).astype(dt), np.ones((n, 1), dt)
    q = lo.copy()
    solve = _newton_safeguarded if form == STEEP else _newton_convex
    # rows are solved in groups of one width, the power of two at or above their support
    # size (at least 16, at most K): a row's sums then never depend on the other rows of the batch (row
    # sums over more entries, even zeros, may associate differently), so chunks give the
    # same bits as the whole batch
    width = np.minimum(1 << np.ceil(np.log2(np.maximum(k, 16))).astype(np.intp), K)
    per_row = isinstance(alpha, np.ndarray)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for w in [width[0]] if (width == width[0]).all() else np.unique(width):
            idx = np.flatnonzero(width == w)
            if idx.size == n:
                solve(np.ascontiguousarray(a[:, :w]), ref, q, lo, hi, alpha, beta, form)
                continue
            al, be = (alpha[idx], beta[idx]) if per_row else (alpha, beta)
            qw = q[idx]
            solve(np.ascontiguousarray(a[idx, :w]), ref[idx], qw, lo[idx], hi[idx], al, be, form)
            q[idx] = qw
    return ref, q


def _pack(done, rows, q, q_l, arrays, alpha, beta):
    """Write the converged rows' q back; return the rows left and their ``arrays``, α and β."""
    d, keep = done[:, 0], ~done[:, 0]
    q[rows[d]] = q_l[d]
    per_row = isinstance(alpha, np.ndarray)
    return rows[keep], [x[keep] for x in arrays], (alpha[keep], beta[keep]) if per_row else (alpha, beta)


def _newton_convex(A, ref, q, lo, hi, alpha, beta, form):
    """NEAR_ONE and FLAT rows: solve q = δ in place, starting from ``q = lo``.

    ``h(δ) = S^{1/β} − 1 = ‖u(δ)‖_β − 1`` is convex and decreasing (β >= 1, u affine in δ on
    the support), so Newton from the bracket's left end climbs monotonically to the root: no
    safeguard, only a clip to the bracket against round-off. The error |Σp − 1| after a step
    was at most 15 times the square of the error before it (measured over α in (1.01, 2],
    higher near the support's edge), so a row steps until ``|Σp − 1| <= eps^{2/3}``, takes its
    last, free step and stops (its q never depends on the other rows); once half the rows
    have stopped, the rest are packed.
    """
    close = np.finfo(A.dtype).eps ** (2 / 3)  # |Σp − 1| after which one more (free) step leaves round-off
    rows = np.arange(A.shape[0])
    q_l, lo_l, hi_l, ref_l = q, lo, hi, ref
    frozen = np.zeros((A.shape[0], 1), dtype=bool)  # done and stepped once: a row's q is its own
    bufs = [scratch(A.size, A.dtype, slot) for slot in (8, 9, 10)]
    for _ in range(ENTMAX_MAX_ITER):
        S, W = _mass(A, ref_l, q_l, beta, form, bufs)
        done = (np.abs(S - 1) <= close) | ~np.isfinite(S)  # NaN logits: NaN out, no iterations
        step = np.minimum(np.maximum(_newton(q_l, S, W, alpha, beta, form), lo_l), hi_l)
        # a row stops after its own last step, whatever the other rows of the batch need:
        # the result does not depend on which rows are computed together (chunks, dask)
        q_l = np.where(frozen, q_l, step)
        frozen |= done
        if frozen.all():
            break
        if 2 * np.count_nonzero(frozen) >= frozen.size:
            rows, (A, ref_l, q_l, lo_l, hi_l, frozen), (alpha, beta) = _pack(
                frozen, rows, q, q_l, (A, ref_l, q_l, lo_l, hi_l, frozen), alpha, beta)
    q[rows] = q_l


def _newton_safeguarded(A, ref, q, lo, hi, alpha, beta, form):
    """STEEP rows: solve q = −u_k in place, starting from ``q = lo``.

    Newton in ``t = p_k`` (:func:`_newton`) has no convexity to lean on, so each step is
    kept inside the bracket (updated from the sign of Σp − 1) and bisects it when it would
    leave; a row stops at ``|Σp − 1| <= eps^{3/4}`` (then takes its last step), or when
    Newton's correction is below q's resolution, or the bracket is narrower than what Σp
    resolves. Converged rows leave the pack of those still iterating.
    """
    eps = A.dtype.type(np.finfo(A.dtype).eps)
    close = eps**0.75
    rows = np.arange(A.shape[0])
    q_l, lo_l, hi_l, ref_l = q, lo.copy(), hi.copy(), ref
    bufs = [scratch(A.size, A.dtype, slot) for slot in (8, 9, 10)]
    for _ in range(ENTMAX_MAX_ITER):
        S, W = _mass(A, ref_l, q_l, beta, form, bufs)
        above = S >= 1
        lo_l = np.where(above, q_l, lo_l)
        hi_l = np.where(above, hi_l, q_l)
        new = _newton(q_l, S, W, alpha, beta, form)
        inside = (new > lo_l) & (new < hi_l)
        off = np.abs(S - 1)
        done = off <= close
        if done.all():
            # a converged row still takes its last Newton step (it costs no evaluation):
            # Newton squares the error, so what is left of |Σp − 1| after it is round-off
            q[rows] = np.where(inside, new, q_l)
            return
        done |= (np.abs(new - q_l) <= eps * np.abs(q_l)) & (off <= np.sqrt(eps))
        done |= (hi_l - lo_l <= np.maximum(4 * eps / (beta * W), 2 * eps * np.abs(q_l))) | ~np.isfinite(S)
        q_l = np.where(inside, new, np.where(done, q_l, (lo_l + hi_l) / 2))  # out of the bracket: bisect
        if done.any():
            rows, (A, ref_l, q_l, lo_l, hi_l), (alpha, beta) = _pack(done, rows, q, q_l, (A, ref_l, q_l, lo_l, hi_l), alpha, beta)
    q[rows] = q_l


def _shift_scale(z, am1, out):
    """``a = −x = (α − 1)(max z − z)`` into ``out``."""
    np.subtract(z.max(axis=-1, keepdims=True), z, out=out)
    out *= am1
    return out


def _entmax_rows(z, alpha, form, g=None, out=None):
    """α-entmax (or its VJP with ``g``, before the temperature) of rows ``z`` (n, K), all of
    one ``form``, into ``out``; ``alpha`` a float or (n, 1) float64."""
    K = z.shape[-1]
    dt = z.dtype
    for rows in row_chunks(z.shape[0], K):
        al = alpha if not isinstance(alpha, np.ndarray) else alpha[rows]
        am1, beta = al - 1.0, 1.0 / (al - 1.0)
        if isinstance(al, np.ndarray):
            al, am1, beta = al.astype(dt), am1.astype(dt), beta.astype(dt)
        o = out[rows]
        a = _shift_scale(z[rows], am1, scratch(o.size, dt, 5).reshape(o.shape))
        ref, q = _entmax_solve(a, al, beta, form)
        u = scratch(o.size, dt, 6).reshape(o.shape)
        if g is None:
            _entmax_terms(a, ref, q, beta, form, o, u)
            continue
        w, u = _entmax_terms(a, ref, q, beta, form, a, u)  # p, in a's buffer
        np.maximum(u, np.finfo(dt).tiny, out=u)
        w /= u  # u^{β−1} = p^{2−α}: the Jacobian's weights
        # w ⊙ (g − (w·g)/Σw) of g centred on its entry of largest w (the product is the
        # same, J 1 = 0; round-off then scales with g's spread, not its size)
        gc = g[rows]
        np.subtract(gc, np.take_along_axis(gc, w.argmax(axis=-1)[:, None], axis=-1), out=o)
        o *= w
        w *= rowsum(o) / rowsum(w)
        o -= w
    return out


def _entmax_chunks(z, alpha, g=None, temperature=1.0):
    """α-entmax of each row of ``z`` (..., K), or its VJP with ``g`` (then divided by T)."""
    K = z.shape[-1]
    z2 = z.reshape(-1, K)
    g2 = None if g is None else g.reshape(-1, K)
    out = np.empty(z2.shape, dtype=z.dtype)
    if z2.size == 0:  # no rows (or K = 0): nothing to solve
        return out.reshape(z.shape)
    if not isinstance(alpha, np.ndarray):
        _entmax_rows(z2, alpha, int(_entmax_form(alpha)), g2, out)
    else:
        al = alpha.reshape(-1, 1)
        forms = _entmax_form(al[:, 0])
        for form in (NEAR_ONE, FLAT, STEEP):
            idx = np.flatnonzero(forms == form)
            if idx.size == al.shape[0]:
                _entmax_rows(z2, al, form, g2, out)
            elif idx.size:
                part = np.empty((idx.size, K), dtype=z.dtype)
                out[idx] = _entmax_rows(z2[idx], al[idx], form, None if g2 is None else g2[idx], part)
    if g2 is not None and temperature != 1.0:
        out /= out.dtype.type(temperature)
    return out.reshape(z.shape)


@memoized
def entmax(z: np.ndarray, alpha) -> np.ndarray:
    """α-entmax of each row (Peters, Niculae & Martins, 2019), exact.

    ``p_i = [(α − 1) z_i − τ]_+^{1/(α − 1)}`` with τ such that ``Σ p = 1``: the support
    found by bisection over the sorted entries, τ solved on it by Newton's method to the
    dtype's precision (``|Σp − 1|`` within a few ulp; see the section's comment and
    :func:`_entmax_solve`). ``alpha`` is a float > 1 or a float64 array ``(..., 1)`` (one per
    row). Shift-invariant: exact for huge logits.
    """
    return _entmax_chunks(z, alpha)


def entmax_vjp(z: np.ndarray, alpha, g: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``w ⊙ (g − (w·g)/Σw) / T`` with ``w = p^{2−α}`` on the support of ``p = entmax(z)``:
    forward and VJP in one pass over each chunk of rows."""
    return _entmax_chunks(z, alpha, g, temperature)


def entmax_weights(p: np.ndarray, alpha) -> np.ndarray:
    """``p^{2−α}`` where ``p > 0``, else 0: the vector ``g`` of α-entmax's Jacobian
    ``diag(g) − g gᵀ/Σg`` (``α = 2``: the support indicator; ``1.5``: ``√p``)."""
    if not isinstance(alpha, np.ndarray):
        if alpha == 2.0:
            return (p > 0).astype(p.dtype)
        if alpha == 1.5:
            return np.sqrt(p)
    e = 2.0 - alpha if not isinstance(alpha, np.ndarray) else (2.0 - alpha).astype(p.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = np.log(p)
        w *= e
        np.exp(w, out=w)  # exp(e log p): see _power
    w[p <= 0] = 0
    return w
