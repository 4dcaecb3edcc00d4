"""α-entmax for any α > 1: its exact solver, its VJP and its Jacobian's weights, along
the last axis.

No function here writes into its arguments. Every kernel keeps the input's float dtype.
"""

from __future__ import annotations

import numpy as np

from . import buffers  # buffers.CHUNK_ENTRIES read at each call (a test shrinks it)
from .buffers import row_chunks, rowsum, scratch
from .memo import memoized

__all__ = [
    "entmax",
    "entmax_vjp",
    "entmax_weights",
]


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
    if n * C * C <= buffers.CHUNK_ENTRIES // 4:
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
