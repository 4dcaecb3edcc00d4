"""The numpy kernels: the reference implementation, always available.

Each function has a twin of the same name and signature in :mod:`.numba_impl`; the
selector (:mod:`jacobians._kernels`) picks one set. Rows are the last axis; ``x`` and every
other array are C-contiguous float32 or float64, and no argument is written to except
``out``.
"""

from __future__ import annotations

import numpy as np

from ..numerics import algebra
from ..numerics import softmax as nsoftmax
from ..numerics.buffers import row_chunks, rowsum, scratch
from ..numerics.softmax import exp_is_safe
from .interface import INTERFACE
from .numpy_focal import binary_focal, focal_coefficients, focal_index, poly_index  # noqa: F401 (the interface)
from .numpy_poisson import poisson_log  # noqa: F401 (the interface)
from .numpy_ranking import plackett_luce, plackett_luce_hvp, ranking_flaw  # noqa: F401 (the interface)

__all__ = [*INTERFACE]


def describe() -> str:
    """``'numpy <version>'``."""
    return f"numpy {np.__version__}"


def softmax(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(x − m) / Σ exp(x − m)`` per row: :func:`jacobians.numerics.softmax.softmax` (the shift
    skipped when :func:`~jacobians.numerics.softmax.exp_is_safe`, row sums by einsum)."""
    return nsoftmax.softmax(x, out)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``(x − m) − log1p(Σ_{k ≠ argmax} exp(x_k − m))`` per row: :func:`jacobians.numerics.softmax.log_softmax`."""
    return nsoftmax.log_softmax(x)


def softmax_vjp(x: np.ndarray, g: np.ndarray, temperature: float = 1.0, factor=None) -> np.ndarray:
    """``f · s ⊙ (g − s·g) / T`` with ``s = softmax(x)`` (``x`` the scaled logits) and an
    optional ``factor`` f (a scalar or one per row): :func:`jacobians.numerics.softmax.softmax_vjp`
    (one output buffer, chunk by chunk, a call allocates only its result)."""
    return nsoftmax.softmax_vjp(x, g, temperature, factor)


def simplex_vjp(w: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w ⊙ (x' − v·x')`` per row, ``x' = x − x_c`` centred on the entry ``c`` of the largest
    ``w`` (first of equals): ``(diag(w) − w vᵀ) x`` for ``Σv = 1``, the product of every
    simplex map's Jacobian (:func:`jacobians.numerics.algebra.simplex_vjp`). ``w``, ``v``, ``x`` (n, K)
    of one dtype."""
    return algebra.simplex_vjp(w, v, x)


def ce_index(x: np.ndarray, idx: np.ndarray, valid: np.ndarray | None, scale) -> tuple[np.ndarray, np.ndarray]:
    """Cross-entropy of rows ``x`` (n, K) with target indices ``idx`` (n,): ``(values, g)``.

    ``values[i] = lse(x_i) − x_{i,y}`` (0 where ``valid`` is False) and
    ``g[i] = scale · (softmax(x_i) − e_y)`` (0 where not valid), shape (n, K).

    With ``e = exp(x)`` (unshifted when :func:`~jacobians.numerics.softmax.exp_is_safe`, else
    ``exp(x − max)``) and ``o = Σ_{k≠y} e_k`` summed without the target, the value is
    ``log1p(o / e_y)`` (no cancellation: exact to a few ulp, tiny losses included) and
    the target's gradient entry ``−o / (o + e_y)``. Where ``o / e_y`` would overflow (the
    target far below the row's maximum) the row is redone on shifted logits as
    ``log Σ_{k≠y} e^{x_k − m} + (m − x_y)``, a sum of two positive numbers.
    """
    n, K = x.shape
    flat = np.arange(n) * K + idx  # positions of the targets in g.ravel()
    g = np.empty(x.shape, dtype=x.dtype)  # C order: gflat below must be a view, whatever x's layout
    gflat = g.reshape(-1)
    if exp_is_safe(x):
        np.copyto(g, x)
    else:
        np.subtract(x, x.max(axis=-1, keepdims=True), out=g)
    x_y = gflat[flat]
    np.exp(g, out=g)
    e_y = gflat[flat]
    gflat[flat] = 0
    other = rowsum(g)[:, 0]  # einsum: a row's sum does not depend on the rows with it
    gflat[flat] = e_y
    # float32: the target's exp again in float64 (one per row), so that the value carries
    # the rounding of float32 exp (up to 2.4 ulp in numpy) once, through o, not twice
    exact_e_y = np.exp(x_y.astype(np.float64)) if g.dtype == np.float32 else e_y
    values, far = nsoftmax.log1p_ratio(other, exact_e_y)
    if far.any():
        rows = np.flatnonzero(far)
        values[rows] = _far_target_values(x[rows], idx[rows])
    w = scale / (other + e_y)
    if valid is not None:
        w *= valid
        values *= valid
    g *= w[:, None]
    gflat[flat] = -(other * w)  # s_y − 1 = −o/(o + e_y), without the cancellation
    return values, g


def _far_target_values(x, idx):
    """``lse(x) − x_y`` for rows ``x`` (n, K) whose target lies far below the maximum:
    ``log Σ_{k≠y} e^{x_k − m} + (m − x_y)``, the sum at least 1 (it holds the maximum)."""
    rows = np.arange(x.shape[0])
    shifted = x - x.max(axis=-1, keepdims=True)
    gap = -shifted[rows, idx]
    e = np.exp(shifted)
    e[rows, idx] = 0
    return np.log(e.sum(axis=-1)) + gap


def _sum_except_top(c: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``Σ_{k≠top} c_k`` per row, shape (..., 1), summed directly (``Σc − c_top`` cancels when
    ``c_top`` is most of the row), chunk by chunk in a reused buffer (a fresh full-size copy
    costs its page faults: about 1 ms at 1024×100 float64 on a VM)."""
    K = c.shape[-1]
    c2, t2 = c.reshape(-1, K), top.reshape(-1, 1)
    out = np.empty((c2.shape[0], 1), dtype=c.dtype)
    for rows in row_chunks(c2.shape[0], K):
        m = rows.stop - rows.start
        buf = scratch(m * K, c.dtype, 2).reshape(m, K)
        buf[...] = c2[rows]
        np.put_along_axis(buf, t2[rows], 0, axis=-1)
        out[rows] = rowsum(buf)
    return out.reshape(c.shape[:-1] + (1,))


def ce_coefficients(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, g)`` of ``−Σ_k c_k log softmax(x)_k`` per row: ``values`` shape (...,),
    ``g = softmax(x) Σc − c`` shape (..., K).

    ``Σ c (lse − x) = Σc · log1p(rest) + Σ c (m − x)``: both terms >= 0 (see
    :func:`~jacobians.numerics.softmax.shifted_exp`). At the row's maximum
    ``s·Σc − c = s Σ_{k≠top} c_k − c (1 − s)`` with ``1 − s = rest/total``: a confident
    prediction (s near 1) keeps the small gradient that ``s − 1`` would round away, and the
    others' coefficients are summed directly (``Σc − c`` would cancel for a soft target near 1
    at the top).
    """
    shifted, s, rest, top = nsoftmax.shifted_exp(x)
    csum = c.sum(axis=-1, keepdims=True)
    values = (np.log1p(rest) * csum)[..., 0] - np.einsum("...k,...k->...", c, shifted)
    total = 1 + rest
    s /= total
    s_top, c_top = np.take_along_axis(s, top, axis=-1), np.take_along_axis(c, top, axis=-1)
    g_top = s_top * _sum_except_top(c, top) - c_top * (rest / total)
    s *= csum
    s -= c
    np.put_along_axis(s, top, g_top, axis=-1)
    return values, s


def sigmoid_bce_plain(z: np.ndarray, y: np.ndarray, scale, need_values: bool):
    """Sigmoid + BCE without ``pos_weight`` on flat ``z``, ``y`` (n,): ``(values, total, grad)``.

    ``values`` (n,) only when ``need_values`` (else None); ``total`` their sum (when not
    ``need_values``) as :func:`~jacobians.numerics.buffers.total` adds them (pieces of
    CHUNK_ENTRIES in float64, rounded once); ``grad = scale·(σ(z) − y)``. With ``h = step(z)`` (1 for z > 0, else
    0) and ``q = σ(−|z|) = e/(1 + e)``, ``e = exp(−|z|)``::

        value = z (h − y) + log1p(e)          grad = (h − y) + (1 − 2h) q

    A product and a sum of two non-negative numbers; and ``σ(z) − y`` written so that
    nothing is rounded against 1 first: a well-classified entry (z = 40, y = 1) keeps its
    tiny loss e^{-40} and its gradient −e^{-40}, a soft target near 1 loses nothing to
    cancellation. Branch-free (a ``where=`` on random signs is ~10x slower), chunk by
    chunk in reused scratch buffers, so a call allocates only its results.
    """
    n = z.size
    grad = np.empty_like(z)
    values = np.empty_like(z) if need_values else None
    total = 0.0
    for c in row_chunks(n, 1):
        zc, yc, gc = z[c], y[c], grad[c]
        m = zc.size
        e = scratch(m, z.dtype, 1)
        v = values[c] if values is not None else scratch(m, z.dtype, 3)
        w = scratch(m, z.dtype, 4)
        u = scratch(m, z.dtype, 5)
        np.abs(zc, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)  # e = exp(−|z|) <= 1: never overflows
        np.log1p(e, out=v)
        np.add(e, 1, out=w)
        np.divide(e, w, out=e)  # q = σ(−|z|)
        np.sign(zc, out=w)
        np.maximum(w, 0, out=w)  # h (0 at z = 0, where q = 1/2 = σ(0))
        np.subtract(w, yc, out=gc)  # h − y
        np.multiply(gc, zc, out=u)
        v += u
        np.multiply(w, -2, out=u)
        u += 1
        u *= e
        gc += u
        if scale != 1:
            gc *= scale
        if values is None:
            total += v.sum(dtype=np.float64)  # float32 chunks added in float64, rounded once below
    return values, z.dtype.type(total), grad


def sigmoid_bce_weighted(z: np.ndarray, y: np.ndarray, py: np.ndarray):
    """Sigmoid + BCE with ``p y`` (``pos_weight`` times the targets), all of ``z``'s shape:
    ``(values, grad)`` unreduced.

    value ``(1 − y) softplus(z) + p y softplus(−z)``, grad ``(1 − y) σ(z) − p y σ(−z)``:
    products of non-negative numbers, nothing rounded against 1.
    """
    e = np.exp(-np.abs(z))
    inv = 1 / (1 + e)
    pos = z > 0
    sig, sig_neg = np.where(pos, inv, e * inv), np.where(pos, e * inv, inv)  # σ(z), σ(−z)
    log1p_e = np.log1p(e)
    values = (1 - y) * (np.maximum(z, 0) + log1p_e) + py * (np.maximum(-z, 0) + log1p_e)
    grad = (1 - y) * sig - py * sig_neg
    return values, grad


#: dense Jacobians are written in slabs of about this many bytes: one core's L2 cache on
#: the development machine (1, 2, 4 and 8 MiB measured within noise of each other on two
#: threads; on one thread, bands of rows at K = 1000 beat whole 8 MB Jacobians by ~25%)
DENSE_BLOCK_BYTES = 2 << 20


def _diagonal(J: np.ndarray) -> np.ndarray:
    """The writable view ``einsum('...jj->...j', J)`` of the diagonals of ``J`` (..., K, K)."""
    return np.einsum("...jj->...j", J)


def slabs(out: np.ndarray):
    """Cover ``out`` (shape (n, K, K)) with ``(samples, js)`` slices of ~DENSE_BLOCK_BYTES.

    A slab is ``out[samples, js]``: whole Jacobians when one is smaller than the block,
    otherwise bands of rows ``js`` of one Jacobian. Its diagonal entries are the diagonal
    of the square ``out[samples, js, js]``.
    """
    n, K = out.shape[0], out.shape[-1]
    rows = max(1, DENSE_BLOCK_BYTES // (K * out.itemsize))
    if rows >= K:
        step = rows // K
        for a in range(0, n, step):
            yield slice(a, a + step), slice(None)
    else:
        for i in range(n):
            for j in range(0, K, rows):
                yield slice(i, i + 1), slice(j, j + rows)


def dense_diag_minus_rank_one(d: np.ndarray, u: np.ndarray, v: np.ndarray, out: np.ndarray, exact=None,
                              projector: bool = False) -> None:
    """Write ``diag(d_n) − u_n v_nᵀ`` into ``out[n]`` (shape (n, K, K)) for rows ``d, u, v`` (n, K);
    with ``exact`` (rows (n, K)) the diagonal entries are ``exact`` instead of ``d_j − u_j v_j``;
    with ``projector`` (and no ``exact``) they are ``d ⊙`` :func:`~jacobians.numerics.algebra.complement_sums`
    of ``v`` (a projector's diagonal without cancellation, see :class:`~jacobians.DiagonalPlusRankOne`).

    ``einsum('ij,ik->ijk', u, -v)`` writes the rank-one part, then ``d`` is added onto the
    writable diagonal view ``einsum('ijj->ij', J)``. einsum writes a slab in two passes
    (zeros, then products) and the diagonal is a third: slabs of about
    :data:`DENSE_BLOCK_BYTES` keep all three in the core's cache, so memory sees one write
    of each entry.
    """
    if exact is None and projector:
        exact = algebra.complement_sums(v)
        exact *= d
    nv = np.negative(v)
    for samples, js in slabs(out):
        np.einsum("ij,ik->ijk", u[samples, js], nv[samples], out=out[samples, js])
        if exact is None:
            _diagonal(out[samples, js, js])[...] += d[samples, js]
        else:
            _diagonal(out[samples, js, js])[...] = exact[samples, js]


def dense_diagonal(d: np.ndarray, out: np.ndarray) -> None:
    """Write ``diag(d_n)`` into ``out[n]`` (shape (n, K, K)) for rows ``d`` (n, K), slab by slab."""
    for samples, js in slabs(out):
        out[samples, js].fill(0)
        _diagonal(out[samples, js, js])[...] = d[samples, js]
