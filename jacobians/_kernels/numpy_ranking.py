"""The numpy kernel of the Plackett–Luce ranking loss (the reference; its numba twin is in
:mod:`.numba_ranking`): :func:`ranking_steps`, the steps of every ranking at once as
(N, R, M) arrays, and :func:`plackett_luce`, the value and gradient it gives. The math is in
:mod:`jacobians.losses.plackett_luce`'s module doc."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ranking_steps", "plackett_luce", "plackett_luce_hvp", "ranking_flaw"]


def ranking_steps(a: np.ndarray, y: np.ndarray, *, need_grad: bool = True, need_root: bool = False,
                  need_P: bool = True):
    """``(values, grads, P, root)`` of validated rankings ``y`` (..., R) at scores ``a``
    (..., M), flattened to N rows: each row's loss (N,), its gradient (N, M) (None unless
    ``need_grad``), the steps' probabilities ``P`` (N, R, M) over the remaining sets (zero
    rows for the padded steps; None unless ``need_P``: the gradient then takes its buffer)
    and ``√P`` as ``exp(½(a − m_i))/√Σ e^{a − m_i}`` (None unless ``need_root``). The
    (N, R, M) work is done in one buffer, in place."""
    M, R = a.shape[-1], y.shape[-1]
    n = math.prod(a.shape[:-1])
    a2, y2 = a.reshape(n, M), y.reshape(n, R)
    dt = a.dtype
    if R == 0 or n == 0:
        P = np.zeros((n, R, M), dt)
        return np.zeros(n, dt), (np.zeros((n, M), dt) if need_grad else None), P, (P if need_root else None)
    valid = y2 >= 0  # (n, R)
    idx = np.where(valid, y2, 0)
    rows, steps = np.nonzero(valid)
    placed = y2[rows, steps]
    pos = np.full((n, M), R, dtype=np.int64)  # the step at which each candidate is placed (R: never)
    pos[rows, placed] = steps
    remain = (pos[:, None, :] >= np.arange(R)[None, :, None]) & valid[:, :, None]  # k ∈ S_i
    buf = np.where(remain, a2[:, None, :], dt.type(-np.inf))  # the scores over S_i, −inf elsewhere
    m = np.where(valid, buf.max(axis=-1), dt.type(0))  # each step's maximum (a valid step's set is not empty)
    top = buf.argmax(axis=-1)  # (n, R)
    buf -= m[..., None]  # d = a − m_i: <= 0 on S_i, −inf elsewhere
    root = None
    if need_root:
        root = np.exp(buf * dt.type(0.5))
    e = np.exp(buf, out=buf)
    np.put_along_axis(e, top[..., None], dt.type(0), axis=-1)
    t = e.sum(axis=-1)  # Σ_{k ∈ S_i, k ≠ top} e^{a_k − m_i}
    np.put_along_axis(e, top[..., None], valid.astype(dt)[..., None], axis=-1)
    a_pi = np.take_along_axis(a2, idx, axis=-1)
    values = np.where(valid, np.log1p(t) + (m - a_pi), dt.type(0)).sum(axis=-1)
    inv = dt.type(1) / (dt.type(1) + t)
    e_pi = np.take_along_axis(e, idx[..., None], axis=-1)[..., 0] if need_grad else None
    P = e
    P *= inv[..., None]
    grads = None
    if need_grad:
        G = P.copy() if need_P else P
        # p_π − 1 at the placed candidate: −t/(1 + t) where it is the step's top (no cancellation)
        own = np.where(idx == top, -t * inv, e_pi * inv - dt.type(1))
        G[rows, steps, placed] = own[rows, steps]
        grads = G.sum(axis=1)
    if need_root:
        root *= np.sqrt(inv)[..., None]
        root[~remain] = 0
    return values, grads, (P if need_P else None), root


def plackett_luce(a, y, scale):
    """Plackett–Luce of score rows ``a`` (n, M) and validated rankings ``y`` (n, R) (int64,
    −1 as trailing padding): ``(values (n,), scale · grads (n, M))``, each row's
    ``Σ_i [log1p(t_i) + (m_i − a_{π_i})]`` and ``Σ_i (p⁽ⁱ⁾ − e_{π_i})`` (:func:`ranking_steps`)."""
    values, grads, _, _ = ranking_steps(a, y, need_P=False)
    if scale != 1:
        grads *= a.dtype.type(scale)
    return values, grads


def ranking_flaw(y, M):
    """Whether int64 rankings ``y`` (n, R) of M candidates have a flaw: an entry outside
    [−1, M), a candidate after a −1, or a candidate twice in a row (the caller then finds
    and names it)."""
    if not y.size:
        return False
    if int(y.min()) < -1 or int(y.max()) >= M:
        return True
    pad = y < 0
    s = np.sort(y, axis=-1)
    return bool((pad[:, :-1] & ~pad[:, 1:]).any() or ((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any())


def plackett_luce_hvp(a, y, v, scale):
    """``scale · Σ_i p⁽ⁱ⁾ ⊙ (v' − p⁽ⁱ⁾·v'/Σp⁽ⁱ⁾)`` per row of scores ``a`` (n, M), validated
    rankings ``y`` (n, R) and vectors ``v`` (n, M), with ``v'`` centred on step i's top
    candidate (no cancellation on a confident step): the Hessian's product, O(R·M) a row
    (:func:`jacobians.operators.ranking.simplex_sum_product` on :func:`ranking_steps`' P)."""
    _, _, P, _ = ranking_steps(a, y, need_grad=False)
    xc = v[:, None, :] - np.take_along_axis(v[:, None, :], P.argmax(axis=-1)[..., None], axis=-1)
    tot = P.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc -= np.where(tot > 0, np.einsum("nrk,nrk->nr", P, xc)[..., None] / np.where(tot > 0, tot, 1), 0)
    xc *= P
    return xc.sum(axis=-2) * a.dtype.type(scale)
