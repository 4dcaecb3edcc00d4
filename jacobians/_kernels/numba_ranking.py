"""The numba kernel of the Plackett–Luce ranking loss: value and gradient of every row, one
row at a time, its R steps in a few passes over the row each.

Compiled loops behind :func:`.numba_impl.plackett_luce`; the math is its numpy twin's,
:func:`.numpy_ranking.ranking_steps` (the formula, the order of the operations and the
handling of NaN and infinite scores are the same): step i takes ``m_i`` the largest score
still in the set (the placed ones are −inf in a work row), ``top`` its first index, ``e =
exp(a − m_i)`` (1 at the top), ``t`` the sum without the top, adds ``log1p(t) + (m_i −
a_{π_i})`` to the value and ``p⁽ⁱ⁾ = e/(1 + t)`` to the gradient, with ``p_π − 1`` at the
placed candidate as ``−t/(1 + t)`` where it is the top (no cancellation). The work is in
float64 (float32 scores too, rounded once when stored).
"""

from __future__ import annotations

import numpy as np

from .numba_math import jit, log1p64
from .numba_rows import EXACT, SUMS, _argmax, _exp_row, _first, _max_no_nan, _nan_count, _rowmax, _sum_except


@jit(**EXACT)
def _flush(acc, e, C):
    """``acc += C e``: the steps of a segment, ``C = Σ 1/(1 + t_i)``, for every candidate still in."""
    for k in range(acc.size):
        acc[k] += e[k] * C


@jit(**EXACT)
def _store(acc, scale, out):
    for k in range(acc.size):
        out[k] = acc[k] * scale


@jit(**EXACT)
def _pl_row(ar, yr, scale, like, w, e, acc, gr):
    """One row: its value (returned) and ``scale ·`` its gradient into ``gr``."""
    M = ar.size
    for k in range(M):
        w[k] = ar[k]
        acc[k] = 0.0
    if yr.size == 0 or yr[0] < 0:
        _store(acc, scale, gr)
        return 0.0
    nan = _nan_count(ar) > 0  # numpy's max and argmax then: NaN, at the first NaN
    m = _rowmax(w) if nan else _max_no_nan(w)
    top = _argmax(w) if nan else _first(w, m)
    _exp_row(w, m, like, e)
    C = 0.0  # Σ 1/(1 + t_i) over the steps since the exps were taken
    stale = False  # the maximum moved: the exps are taken anew at the next step
    total = 0.0
    for s in range(yr.size):
        c = yr[s]
        if c < 0:
            break
        if stale:
            _flush(acc, e, C)
            C = 0.0
            _exp_row(w, m, like, e)
            stale = False
        e[top] = 1.0
        t = _sum_except(e, top)
        inv = 1.0 / (1.0 + t)
        total += log1p64(t) + (m - w[c])
        own = -t * inv if c == top else e[c] * inv - 1.0
        acc[c] += e[c] * C + own
        C += inv
        e[c] = 0.0
        w[c] = -np.inf
        if c == top:  # the next maximum: the same (a tie) keeps the exps, another one makes them stale
            mn = _rowmax(w) if nan else _max_no_nan(w)
            top = _argmax(w) if nan else _first(w, mn)
            stale = mn != m
            m = mn
    _flush(acc, e, C)
    _store(acc, scale, gr)
    return total


@jit(**EXACT)
def _plackett_luce(a, y, scale, like, values, g):
    M = a.shape[1]
    w, e, acc = np.empty(M), np.empty(M), np.empty(M)
    for i in range(a.shape[0]):
        values[i] = _pl_row(a[i], y[i], scale, like, w, e, acc, g[i])


@jit(**EXACT)
def _ranking_flaw(y, M):
    """True when a row of ``y`` (n, R) has an entry outside [−1, M), a candidate after a −1,
    or a candidate twice (a stamp per candidate: the last row that named it)."""
    seen = np.full(M, -1, dtype=np.int64)
    for i in range(y.shape[0]):
        padded = False
        for s in range(y.shape[1]):
            c = y[i, s]
            if c < -1 or c >= M:
                return True
            if c < 0:
                padded = True
            elif padded or seen[c] == i:
                return True
            else:
                seen[c] = i
    return False


@jit(**SUMS)
def _centred_dot(e, v, vt):
    """``Σ_k e_k (v_k − vt)``."""
    d = 0.0
    for k in range(e.size):
        d += e[k] * (v[k] - vt)
    return d


@jit(**EXACT)
def _hvp_accumulate(out, e, v, vt, s, inv):
    """``out += p ⊙ ((v − v_top) − s)``, ``p = e/(1 + t)``."""
    for k in range(out.size):
        out[k] += (e[k] * inv) * ((v[k] - vt) - s)


@jit(**EXACT)
def _pl_hvp_row(ar, yr, vr, scale, like, w, e, acc, orow):
    """One row of ``scale · Σ_i p⁽ⁱ⁾ ⊙ (v' − p⁽ⁱ⁾·v'/Σp⁽ⁱ⁾)``, ``v'`` centred on the step's top
    (:func:`jacobians.operators.ranking.simplex_sum_product`), the exps kept while the maximum stays."""
    M = ar.size
    for k in range(M):
        w[k] = ar[k]
        acc[k] = 0.0
    if yr.size and yr[0] >= 0:
        nan = _nan_count(ar) > 0
        m = _rowmax(w) if nan else _max_no_nan(w)
        top = _argmax(w) if nan else _first(w, m)
        stale = True
        for s in range(yr.size):
            c = yr[s]
            if c < 0:
                break
            if stale:
                _exp_row(w, m, like, e)
                stale = False
            e[top] = 1.0
            t = _sum_except(e, top)
            inv = 1.0 / (1.0 + t)
            vt = np.float64(vr[top])
            tot = (1.0 + t) * inv
            mean = (_centred_dot(e, vr, vt) * inv) / tot if tot > 0 else 0.0
            _hvp_accumulate(acc, e, vr, vt, mean, inv)
            e[c] = 0.0
            w[c] = -np.inf
            if c == top:
                mn = _rowmax(w) if nan else _max_no_nan(w)
                top = _argmax(w) if nan else _first(w, mn)
                stale = mn != m
                m = mn
    _store(acc, scale, orow)


@jit(**EXACT)
def _plackett_luce_hvp(a, y, v, scale, like, out):
    M = a.shape[1]
    w, e, acc = np.empty(M), np.empty(M), np.empty(M)
    for i in range(a.shape[0]):
        _pl_hvp_row(a[i], y[i], v[i], scale, like, w, e, acc, out[i])
