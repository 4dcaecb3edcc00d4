"""The numba kernels of the focal losses from the logits: softmax + focal (index targets and
coefficient rows) and sigmoid + binary focal.

Compiled loops behind the wrappers of :mod:`.numba_impl`; the math is in :mod:`.numpy_impl`'s
twins (``focal_index``, ``focal_coefficients``, ``binary_focal``) and in
:mod:`jacobians.rules.focal`. Each row (each entry for the binary loss) is done in one visit,
in float64 (float32 inputs too, rounded once when stored). Coefficient rows come two ways:
short ones (K < 128) a chunk of rows at a time (:func:`_focal_coefficient_chunks`: the
exps over the whole chunk, unshifted when every logit is in bounds, and each pass over the
chunk's entries a loop of its own), long ones a row at a time (:func:`_focal_coefficients`).
"""

from __future__ import annotations

import numpy as np

from .numba_losses import _index_chunk, _scale_rows
from .numba_math import expw, jit, log1p64, log1p_unit
from .numba_rows import ENTRY, EXACT, NO_WEIGHTS, _argmax, _exp_chunk, _exp_row, _row_sums, _sum, _sum_except


@jit(**ENTRY)
def _powg(m, gamma, gi):
    """``m**γ``; ``gi`` = γ when γ is 0, 1, 2 or 3 (products: exact, and the loops vectorize), else −1."""
    if gi == 2:
        return m * m
    if gi == 1:
        return m
    if gi == 0:
        return 1.0
    if gi == 3:
        return m * m * m
    return m**gamma


@jit(**ENTRY)
def _focal_u(c, p, q, logp, gamma, gi):
    """``(c q^γ log p, u = −c q^γ (1 − γ p L))`` with ``L = log p / q`` (−1 at q = 0)."""
    qg = _powg(q, gamma, gi)
    L = logp / q if q > 0 else -1.0
    cq = c * qg
    return cq * logp, -cq * (1.0 - gamma * (p * L))


@jit(**EXACT)
def _focal_rows(o, ey, lv, w, gamma, gi, scale, values, f):
    """Per row of a chunk, from cross-entropy's pieces (``o`` the others' exps, ``e_y`` the
    target's, ``lv = −log p_y``): the value ``w q^γ lv`` and ``f = −u·scale/S``, the factor of
    every exp in the gradient (:func:`.numba_losses._scale_rows` writes ``−o f = q u·scale``
    at the target)."""
    for i in range(o.size):
        S = o[i] + ey[i]
        v, u = _focal_u(w[i], ey[i] / S, o[i] / S, -lv[i], gamma, gi)
        values[i] = -v
        f[i] = -(u * scale) / S


@jit(**EXACT)
def _focal_index(x, shift, bound, idx, w, gamma, gi, scale, limit, R, like, g, values):
    """Cross-entropy's loop (:func:`.numba_losses._ce_index`: exps of a chunk of rows,
    unshifted when every logit is within ``bound``, ``−log p_y = log1p(o/e_y)`` or the far
    row's sum) with the focal value and the row's factor in place of CE's."""
    K = x.shape[1]
    e = np.empty((R, K))
    o, f, lv, ey, wc = np.empty(R), np.empty(R), np.empty(R), np.empty(R), np.ones(R)
    far = np.zeros(R, dtype=np.bool_)
    ework = np.empty(K)
    for a in range(0, x.shape[0], R):
        ec, ic, bad = _index_chunk(x, a, shift, bound, idx, limit, 1.0, like, e, o, ey, lv, far, f, ework)
        if bad:
            return False
        r = ec.shape[0]
        if w.size:
            wc[:r] = w[a : a + r]
        _focal_rows(o[:r], ey[:r], lv[:r], wc[:r], gamma, gi, scale, values[a : a + r], f)
        _scale_rows(ec, f, ic, o, g[a : a + r])
    return True


@jit(**ENTRY)
def _coefficient_row(xr, cr, gr, e, wn, vals, gamma, gi, scale, like):
    """One row of :func:`_focal_coefficients`; returns its value. ``e``, ``wn``, ``vals``: float64 work rows
    (the terms of the value are stored, then summed: a sum in the loop would keep it scalar)."""
    K = xr.size
    top = _argmax(xr)
    m = np.float64(xr[top])
    _exp_row(xr, m, like, e)
    rest = _sum_except(e, top)
    S = 1.0 + rest
    l1 = log1p64(rest)
    inv = 1.0 / S  # (one division a row: a division an entry costs a third of the kernel at K = 1000)
    for k in range(K):
        p = e[k] * inv
        q = (rest if k == top else S - e[k]) * inv  # 1 − p (>= 1/2 off the top)
        v, u = _focal_u(np.float64(cr[k]), p, q, (np.float64(xr[k]) - m) - l1, gamma, gi)
        vals[k] = v
        e[k] = p
        wn[k] = -u
    # Σ_{k≠j} (−u_k): total − w_j, and at the largest w the others summed directly
    big = _argmax(wn)
    others = _sum_except(wn, big)
    for k in range(K):
        q = rest * inv if k == top else 1.0 - e[k]
        comp = others if k == big else (others - wn[k]) + wn[big]
        gr[k] = (e[k] * comp - q * wn[k]) * scale
    return -_sum(vals)


@jit(**EXACT)
def _focal_coefficients(x, c, gamma, gi, scale, like, values, g):
    e, wn, vals = np.empty(x.shape[1]), np.empty(x.shape[1]), np.empty(x.shape[1])
    for i in range(x.shape[0]):
        values[i] = _coefficient_row(x[i], c[i], g[i], e, wn, vals, gamma, gi, scale, like)


@jit(**EXACT)
def _focal_coefficients_sq(x, c, gamma, gi, scale, like, values, g):
    """:func:`_focal_coefficients` at γ = 2 (the default): ``q²`` a product."""
    e, wn, vals = np.empty(x.shape[1]), np.empty(x.shape[1]), np.empty(x.shape[1])
    for i in range(x.shape[0]):
        values[i] = _coefficient_row(x[i], c[i], g[i], e, wn, vals, 2.0, 2, scale, like)


@jit(**ENTRY)
def _binary_entry(zd, tj, gamma, gi, alpha, like):
    """``(value, gradient)`` of one entry (:func:`.numpy_impl.binary_focal`); ``alpha`` < 0: no α_t."""
    e = expw(-abs(zd), like)
    l1, inv = log1p_unit(e)
    lo = e * inv
    pos = zd >= 0
    s = inv if pos else lo
    sb = inv if zd <= 0 else lo
    omt = 1.0 - tj
    ce = l1 + ((omt if pos else -tj) * zd)
    a = s * omt
    b = tj * sb
    diff = a - b
    v = ce
    d = diff
    if gi != 0:
        mm = a + b
        rho = (s * sb) / (mm if mm > 0 else 1.0)
        rho = rho if mm > 0 else 1.0
        mg = _powg(mm, gamma, gi)
        d = (diff + gamma * ce * rho * (omt - tj)) * mg
        v = ce * mg
    at = tj * (2 * alpha - 1) + (1 - alpha) if alpha >= 0 else 1.0
    return v * at, d * at


@jit(**EXACT)
def _binary_focal(z, t, gamma, gi, alpha, scale, like, values, grad):
    for j in range(z.size):
        v, d = _binary_entry(np.float64(z[j]), np.float64(t[j]), gamma, gi, alpha, like)
        values[j] = v
        grad[j] = d * scale


@jit(**EXACT)
def _binary_focal_sq(z, t, gamma, gi, alpha, scale, like, values, grad):
    """:func:`_binary_focal` at γ = 2 (the default): the branches on γ folded away, ``m²`` a product."""
    for j in range(z.size):
        v, d = _binary_entry(np.float64(z[j]), np.float64(t[j]), 2.0, 2, alpha, like)
        values[j] = v
        grad[j] = d * scale


@jit(**EXACT)
def _poly_rows(o, ey, lv, epsilon, scale, values, f):
    """Poly-1 per row of a chunk (as :func:`_focal_rows`): the value ``−log p_y + ε (1 −
    p_y)`` with ``1 − p_y = o/S``, and ``f = −u·scale/S`` for ``u = −(1 + ε p_y)``."""
    for i in range(o.size):
        S = o[i] + ey[i]
        values[i] = lv[i] + epsilon * (o[i] / S)
        f[i] = ((1.0 + epsilon * (ey[i] / S)) * scale) / S


@jit(**EXACT)
def _poly_index(x, shift, bound, idx, epsilon, scale, limit, R, like, g, values):
    """Softmax + poly-1 with index targets: :func:`_focal_index`'s loop with poly-1's row terms."""
    K = x.shape[1]
    e = np.empty((R, K))
    o, f, lv, ey = np.empty(R), np.empty(R), np.empty(R), np.empty(R)
    far = np.zeros(R, dtype=np.bool_)
    ework = np.empty(K)
    for a in range(0, x.shape[0], R):
        ec, ic, bad = _index_chunk(x, a, shift, bound, idx, limit, 1.0, like, e, o, ey, lv, far, f, ework)
        if bad:
            return False
        r = ec.shape[0]
        _poly_rows(o[:r], ey[:r], lv[:r], epsilon, scale, values[a : a + r], f)
        _scale_rows(ec, f, ic, o, g[a : a + r])
    return True


# -- coefficient rows by chunks: the short rows' path -----------------------------------------

#: rows shorter than this take their per-entry terms two rows at a time: LLVM's vectorized
#: loop runs from 12 iterations on here, and a shorter row went wholly through the scalar
#: remainder loop (the terms alone: 2.2–2.5 ns an entry at K = 10 against 0.7–0.9 at K = 12;
#: paired, 1.3). The whole kernel at K = 10, float32: 7.1 → 6.2 ns an entry (AVX-512),
#: 7.7 → 6.5 (AVX2 build); float64 6.9 → 6.3 / 7.8 → 6.8
PAIRED_BELOW = 12


@jit(**ENTRY)
def _first_max_row(xr):
    """``(index, value)`` of the row's first largest entry (value in float64). A NaN never
    wins: a row holding one is NaN throughout anyway (its exps are)."""
    t = 0
    m = np.float64(xr[0])
    for k in range(1, xr.size):
        v = np.float64(xr[k])
        gt = v > m
        m = v if gt else m
        t = k if gt else t
    return t, m


@jit(**EXACT)
def _first_max_rows(xc, top, m):
    """``top[i]``, ``m[i]``: :func:`_first_max_row` of each row of a chunk."""
    for i in range(xc.shape[0]):
        top[i], m[i] = _first_max_row(xc[i])


@jit(**ENTRY)
def _largest_and_sums(wr, vr):
    """``(b, Σ_{k≠b} w_k, Σ_k v_k)`` of a row, ``b`` the first largest ``w``, in one pass: a new
    largest moves the old one into the others' sum (the ``w`` are ≥ 0: nothing cancels)."""
    b = 0
    wb = wr[0]
    o = 0.0
    t = vr[0]
    for k in range(1, wr.size):
        w = wr[k]
        gt = w > wb
        o += wb if gt else w
        wb = w if gt else wb
        b = k if gt else b
        t += vr[k]
    return b, o, t


@jit(**ENTRY)
def _largest_and_rest(er):
    """``(t, Σ_{k≠t} e_k)`` of a row, ``t`` its first largest entry, in one pass:
    :func:`_largest_and_sums` without its second sum (inlined, the unused sum is compiled away)."""
    t, o, _ = _largest_and_sums(er, er)
    return t, o


@jit(**ENTRY)
def _coefficient_term(e, c, x, at_top, rs, S, iv, xt, ls, gamma, gi):
    """``(p, c q^γ log p, −u)`` of one entry from its exp ``e``, coefficient ``c`` and logit
    ``x``, and its row's numbers: ``q`` is ``rest/S`` at the top, ``(S − e)/S`` elsewhere."""
    p = e * iv
    q = (rs if at_top else S - e) * iv
    v, u = _focal_u(np.float64(c), p, q, (np.float64(x) - xt) - ls, gamma, gi)
    return p, v, -u


@jit(**ENTRY)
def _coefficient_terms_row(xr, cr, er, t, xt, rs, iv, ls, gamma, gi, vr, wr):
    """One row of :func:`_coefficient_terms`."""
    S = er[t] + rs
    for k in range(xr.size):
        er[k], vr[k], wr[k] = _coefficient_term(er[k], cr[k], xr[k], k == t, rs, S, iv, xt, ls, gamma, gi)


@jit(**ENTRY)
def _coefficient_terms(xc, cc, ec, top, xtop, rest, inv, l1, gamma, gi, vals, wn):
    """Per entry of a chunk: ``p`` (into ``ec``), the value's term ``c q^γ log p`` (``vals``)
    and ``−u`` (``wn``), from the row's ``1/S`` (``inv``), ``l1 = log1p(rest/e_top)`` and
    ``rest`` (the exps but the top one, summed)."""
    for i in range(xc.shape[0]):
        _coefficient_terms_row(xc[i], cc[i], ec[i], top[i], xtop[i], rest[i], inv[i], l1[i], gamma, gi, vals[i], wn[i])


@jit(**ENTRY)
def _coefficient_terms_pair(xf, cf, ef, K, t0, t1, xt0, xt1, rs0, rs1, iv0, iv1, ls0, ls1, gamma, gi, vf, wf):
    """Two rows of :func:`_coefficient_terms` in one loop over their ``2K`` entries (flat
    views), each row's numbers chosen by ``j < K``: :func:`_coefficient_terms_row`'s
    arithmetic, entry for entry."""
    T1 = t1 + K
    S0 = ef[t0] + rs0
    S1 = ef[T1] + rs1
    for j in range(2 * K):
        first = j < K
        iv = iv0 if first else iv1
        rs = rs0 if first else rs1
        S = S0 if first else S1
        xt = xt0 if first else xt1
        ls = ls0 if first else ls1
        at_top = (j == t0) | (j == T1)
        ef[j], vf[j], wf[j] = _coefficient_term(ef[j], cf[j], xf[j], at_top, rs, S, iv, xt, ls, gamma, gi)


@jit(**EXACT)
def _coefficient_terms_pairs(xc, cc, ec, top, xtop, rest, inv, l1, gamma, gi, vals, wn):
    """:func:`_coefficient_terms` for rows shorter than :data:`PAIRED_BELOW`, two rows at a
    time (:func:`_coefficient_terms_pair`; an odd last row alone)."""
    r, K = xc.shape
    xf, cf, ef, vf, wf = xc.reshape(r * K), cc.reshape(r * K), ec.reshape(r * K), vals.reshape(r * K), wn.reshape(r * K)
    for i in range(0, r - 1, 2):
        s = slice(i * K, (i + 2) * K)
        _coefficient_terms_pair(xf[s], cf[s], ef[s], K, top[i], top[i + 1], xtop[i], xtop[i + 1], rest[i],
                                rest[i + 1], inv[i], inv[i + 1], l1[i], l1[i + 1], gamma, gi, vf[s], wf[s])
    if r % 2:
        i = r - 1
        _coefficient_terms_row(xc[i], cc[i], ec[i], top[i], xtop[i], rest[i], inv[i], l1[i], gamma, gi, vals[i], wn[i])


@jit(**ENTRY)
def _coefficient_grads_row(pr, wr, t, b, o, qt, scale, gr):
    """One row of :func:`_coefficient_grads`: one uniform loop, then the two entries whose
    terms differ (the top's ``q``, the largest ``−u``'s complement), rewritten."""
    wb = wr[b]
    for k in range(pr.size):
        gr[k] = (pr[k] * ((o - wr[k]) + wb) - (1.0 - pr[k]) * wr[k]) * scale
    gr[b] = (pr[b] * o - (1.0 - pr[b]) * wb) * scale
    gr[t] = (pr[t] * (o if t == b else (o - wr[t]) + wb) - qt * wr[t]) * scale  # (last: also when t = b)


@jit(**EXACT)
def _coefficient_grads(pc, wn, top, rest, inv, big, others, scale, gc):
    """``g = scale (p comp − q (−u))`` per entry of a chunk, ``q = 1 − p`` (``rest/S`` at the
    top) and ``comp = Σ_{k≠j} (−u_k)`` as the others' sum past the row's largest ``−u``
    (``big``, ``others``): nothing cancels."""
    for i in range(pc.shape[0]):
        _coefficient_grads_row(pc[i], wn[i], top[i], big[i], others[i], rest[i] * inv[i], scale, gc[i])


@jit(**ENTRY)
def _coefficient_chunks(x, shift, bound, c, gamma, gi, scale, R, like, values, g):
    """Softmax + focal with coefficient rows, a chunk of rows at a time (the short rows' path
    of :func:`_focal_coefficients`): exps over the whole chunk (unshifted when every logit is
    within ``bound``, else each row shifted by its maximum; :func:`.numba_rows._exp_chunk`),
    then each further pass over the chunk a loop of its own (the top and the others' exps
    summed — unshifted one pass a row over the exps, :func:`_largest_and_rest`; shifted the
    rows' maxima from the logits first, which the shift needed anyway — the per-entry terms,
    the largest ``−u`` with the sums, the gradient). Unshifted, ``e_top`` is the top's exp
    and ``log p = (x − x_top) − log1p(rest/e_top)``; shifted, ``e_top = 1`` and this is
    :func:`_coefficient_row`'s arithmetic. Returns False at the first unshifted chunk with an
    entry out of bounds (see :func:`.numba_impl._shifted_if_needed`)."""
    K = x.shape[1]
    e, vals, wn = np.empty((R, K)), np.empty((R, K)), np.empty((R, K))
    top, big = np.empty(R, dtype=np.int64), np.empty(R, dtype=np.int64)
    rest, inv, l1, others, xtop, etop = np.empty(R), np.empty(R), np.empty(R), np.empty(R), np.empty(R), np.empty(R)
    for a in range(0, x.shape[0], R):
        ec, bad = _exp_chunk(x, a, shift, bound, like, e)
        if bad:
            return False
        r = ec.shape[0]
        xc, cc = x[a : a + r], c[a : a + r]
        if shift:
            _first_max_rows(xc, top, xtop)
            _row_sums(ec, top[:r], NO_WEIGHTS, rest)
        else:  # the top and the others' sum from the exps, in one pass a row
            for i in range(r):
                top[i], rest[i] = _largest_and_rest(ec[i])
                xtop[i] = np.float64(xc[i, top[i]])
        for i in range(r):
            etop[i] = ec[i, top[i]]
        for i in range(r):  # (a loop of its own: vectorized across the rows)
            l1[i] = log1p64(rest[i] / etop[i])
            inv[i] = 1.0 / (etop[i] + rest[i])
        if K < PAIRED_BELOW:
            _coefficient_terms_pairs(xc, cc, ec, top, xtop, rest, inv, l1, gamma, gi, vals[:r], wn[:r])
        else:
            _coefficient_terms(xc, cc, ec, top, xtop, rest, inv, l1, gamma, gi, vals[:r], wn[:r])
        for i in range(r):
            big[i], others[i], t = _largest_and_sums(wn[i], vals[i])
            values[a + i] = -t
        _coefficient_grads(ec, wn[:r], top, rest, inv, big, others, scale, g[a : a + r])
    return True


@jit(**EXACT)
def _focal_coefficient_chunks(x, shift, bound, c, gamma, gi, scale, R, like, values, g):
    return _coefficient_chunks(x, shift, bound, c, gamma, gi, scale, R, like, values, g)


@jit(**EXACT)
def _focal_coefficient_chunks_sq(x, shift, bound, c, gamma, gi, scale, R, like, values, g):
    """:func:`_focal_coefficient_chunks` at γ = 2 (the default; ``gamma``, ``gi`` unused): ``q²`` a product."""
    return _coefficient_chunks(x, shift, bound, c, 2.0, 2, scale, R, like, values, g)
