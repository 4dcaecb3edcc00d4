"""Row buffers, chunks and row reductions: what the kernels along the last axis walk with.

Rows of ``(..., K)`` work are cut into chunks of about :data:`CHUNK_ENTRIES` entries
(:func:`row_chunks`) that stay in the core's cache, each thread reuses its own work
buffers (:func:`scratch`), row sums and row dots are taken so that a row's result does
not depend on the batch it sits in (:func:`rowsum`, :func:`rowdot`), and a total is
added in one fixed order (:func:`total`). No function here writes into its arguments.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = [
    "rowsum",
    "total",
    "row_chunks",
    "scratch",
    "rowdot",
]


def total(values: np.ndarray):
    """``Σ values`` as a scalar of their dtype, in one fixed order: the flattened values in
    consecutive pieces of :data:`CHUNK_ENTRIES` (as :func:`row_chunks` cuts them), each
    summed in float64 (numpy's pairwise sum), the pieces added in float64, the total rounded
    once. float32 values thus lose nothing to float32 accumulation, and any caller that
    holds the same values — a kernel that never materialises them all, a Dask graph that
    gathers them — gets the same number to the bit."""
    flat = values.reshape(-1)
    if flat.size <= CHUNK_ENTRIES:  # one piece: 0.0 + its sum, without the loop
        return values.dtype.type(np.add.reduce(flat, dtype=np.float64))  # (what .sum runs, without its wrappers)
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


def rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Σ_k x_k y_k`` per row of two (n, K) arrays, shape (n,).

    einsum for short rows; a batched BLAS dot (``matmul``) for long ones, where it is
    about twice as fast.
    """
    if x.shape[-1] >= 64:
        return np.matmul(x[:, None, :], y[:, :, None])[:, 0, 0]
    return np.einsum("ij,ij->i", x, y)
