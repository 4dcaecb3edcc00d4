"""Array plumbing of the Dask backend: dask arrays with known chunks and whole rows,
functions run chunk by chunk, and totals that do not depend on the chunking."""

from __future__ import annotations

import math
import string

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - only reached with a dask array in hand
    raise ImportError(
        "jacobians' Dask support needs dask: pip install 'jacobians[dask]' "
        "(dask[array] and distributed)"
    ) from exc

from ..numerics import buffers
from .detect import is_dask_type

__all__ = [
    "da",
    "is_dask",
    "float_dtype",
    "check_known",
    "prepare_z",
    "align",
    "align_targets",
    "indices",
    "rowwise",
    "with_axes",
    "chunk_sum",
    "GATHER_VALUES",
    "reduced_total",
    "exact_total",
    "row_ids",
    "times",
    "flat_rows",
    "once",
]


def is_dask(x) -> bool:
    """True for a ``dask.array.Array``."""
    return is_dask_type(type(x))


# -- preparing the arrays --------------------------------------------------------------


def float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "iub" or dtype.kind == "f":
        return np.dtype(np.float64)
    raise TypeError(
        "z must be a real numeric array (float32/float64, or int/bool promoted to "
        f"float64); got dtype {dtype}"
    )


def check_known(x, name: str) -> None:
    if any(np.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError(
            f"{name} has unknown chunk sizes (NaN), e.g. after boolean indexing; call "
            f"{name}.compute_chunk_sizes() (or give the chunks) before passing it"
        )


def prepare_z(z, name: str = "z"):
    """``z`` as a dask array with known chunks and one chunk along its last axis (K)."""
    z = z if is_dask(z) else da.from_array(np.asarray(z))
    if z.ndim < 1:
        raise ValueError(
            f"{name} must have at least 1 dimension, shape (..., K); got a 0-d array"
        )
    check_known(z, name)
    if len(z.chunks[-1]) > 1:
        z = z.rechunk({z.ndim - 1: -1})  # chunks run along the batch axes only
    return z


def align(x, z, name: str, *, rechunk_last: bool = False):
    """``x`` (numpy or dask) with the row chunks of z: shape ``z.shape[:-1]`` (one per
    row) or ``z.shape`` / ``z.shape[:-1] + (M,)`` (a trailing axis, which must be one
    chunk)."""
    if x is None:
        return None
    batch = z.shape[:-1]
    if is_dask(x):
        check_known(x, name)
    else:
        x = np.asarray(x)
    if x.shape[: len(batch)] != batch or x.ndim not in (len(batch), len(batch) + 1):
        raise ValueError(
            f"{name} must have shape {batch} (one per row) or {batch + ('…',)} "
            "to be aligned with z of "
            f"shape {z.shape}; got shape {x.shape}"
        )
    if (
        is_dask(x)
        and x.ndim == len(batch) + 1
        and len(x.chunks[-1]) > 1
        and not rechunk_last
    ):
        raise ValueError(
            f"{name} is split across chunks along its last axis "
            f"({len(x.chunks[-1])} chunks of {x.chunks[-1]}): rows must be whole in "
            f"every chunk; rechunk it with {name}.rechunk({{-1: -1}})"
        )
    chunks = z.chunks[:-1] + ((x.shape[-1],) if x.ndim > len(batch) else ())
    if not is_dask(x):
        return da.from_array(x, chunks=chunks)
    return x if x.chunks == chunks else x.rechunk(chunks)


def align_targets(y, z):
    """``(y aligned with z's row chunks, the targets the denominator reads)``: the
    latter is the numpy targets as given (the denominator is then computed at once, no
    graph) or the aligned dask ones."""
    yd = align(y, z, "y")
    return yd, (yd if y is None or is_dask(y) else np.asarray(y))


# -- running a function chunk by chunk -------------------------------------------------


def indices(ndim_batch: int) -> str:
    return string.ascii_lowercase[:ndim_batch]


def _operands(z, others):
    """blockwise operands: z indexed (batch…, K); each other array by its own shape (a
    row axis set, plus K, or a trailing axis L of its own); numpy values and None as
    they are."""
    b = indices(z.ndim - 1)
    args = [z, b + "K"]
    for o in others:
        if o is None or not is_dask(o):
            args += [o, None]
        elif o.ndim == 0:  # a scalar all the chunks need (the batch's denominator)
            args += [o, ""]
        elif o.ndim == z.ndim - 1:
            args += [o, b]
        elif o.shape[-1] == z.shape[-1]:
            args += [o, b + "K"]
        else:
            args += [o, b + "L"]
    return b, args


def rowwise(fn, z, *others, dtype, out: str = "same"):
    """``fn(z_chunk, *other_chunks)`` over the row chunks: ``out='same'`` gives (…, K),
    ``'rows'`` (…), ``'half'`` (…, K/2) (a loss of [means | variances] per element)."""
    b, args = _operands(z, others)
    if out == "half":
        return da.blockwise(fn, b + "K", *args, dtype=dtype, concatenate=True,
                            adjust_chunks={"K": lambda c: c // 2})
    return da.blockwise(
        fn, b + "K" if out == "same" else b, *args, dtype=dtype, concatenate=True
    )


def with_axes(fn, z, *others, dtype, sizes: tuple[int, ...]):
    """``fn`` maps a row chunk (…, K) to (…, K, *sizes): new trailing axes."""
    b, args = _operands(z, others)
    names = "MNOP"[: len(sizes)]
    return da.blockwise(
        fn,
        b + "K" + names,
        *args,
        dtype=dtype,
        new_axes=dict(zip(names, sizes)),
        concatenate=True,
    )


def chunk_sum(fn, z, *others, dtype):
    """``Σ_chunks fn(z_chunk, *other_chunks)`` for an ``fn`` that gives a scalar per row
    chunk: a 0-d dask array. The chunks' scalars are added with ``math.fsum`` (exactly
    rounded, in float64) and the total rounded once to ``dtype``, so the result does not
    depend on the chunking and lies within round-off of numpy's own sum of the whole
    batch."""
    b, args = _operands(z, others)

    def one(*chunks):
        return np.asarray(fn(*chunks), dtype=np.float64).reshape((1,) * len(b))

    parts = da.blockwise(
        one,
        b,
        *args,
        dtype=np.float64,
        adjust_chunks={i: 1 for i in b},
        concatenate=True,
    )
    return exact_total(parts, dtype)


#: up to this many values a reduced loss gathers them and adds them up as numpy does
#: (:func:`jacobians.numerics.buffers.total`: the same number to the bit); beyond, the chunks' sums
#: are added exactly (an exactly rounded total, within numpy's round-off of it)
GATHER_VALUES = 1 << 24


def reduced_total(values, dtype):
    """``Σ values`` of a dask array of per-row (or per-entry) loss values: a 0-d dask
    array."""
    if values.size <= GATHER_VALUES:
        flat = flat_rows(values).rechunk(-1)
        return flat.map_blocks(
            lambda v: np.asarray(buffers.total(v), dtype=dtype), drop_axis=0, dtype=dtype
        )
    b = indices(values.ndim)
    parts = da.blockwise(
        lambda v: np.asarray(v.sum(dtype=np.float64)).reshape((1,) * len(b)),
        b,
        values,
        b,
        dtype=np.float64,
        adjust_chunks={i: 1 for i in b},
    )
    return exact_total(parts, dtype)


def exact_total(parts, dtype):
    """The exactly rounded sum of a dask array's entries, rounded once to ``dtype``: a
    0-d dask array (the parts, one per chunk, are few)."""
    flat = parts.reshape(-1).rechunk(-1) if parts.ndim else parts.reshape(1)

    def fsum(x):
        return np.asarray(
            math.fsum(np.asarray(x, dtype=np.float64).ravel().tolist()), dtype=dtype
        )

    return flat.map_blocks(fsum, drop_axis=0, dtype=dtype)


def row_ids(block_info, batch_shape: tuple[int, ...]) -> np.ndarray:
    """Flat (C-order) indices in the whole batch of a chunk's rows, from dask's
    ``block_info``."""
    location = block_info[0]["array-location"][: len(batch_shape)]
    if not batch_shape:
        return np.zeros(1, dtype=np.int64)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in location], indexing="ij")
    return np.ravel_multi_index(
        tuple(g.reshape(-1) for g in grids), batch_shape
    ).astype(np.int64)


def times(x, c):
    """``x · c``, left as it is for a factor known to be 1."""
    return x if (not is_dask(c) and c == 1) else x * c


def flat_rows(x, trailing: int = 0):
    """``x`` of shape ``(batch…, *rest)`` (``rest`` its last ``trailing`` axes) as
    ``(rows, *rest)``, the rows in C order. A batch with no rows gives an empty array of
    that shape that still depends on x's chunks (dask's reshape does not take an axis of
    length 0 among others: it raised for a batch of shape (2, 0) or (0, 3); and what x's
    tasks say, the one EmptyMeanWarning of 'mean' over nothing, must not be dropped)."""
    batch, rest = x.shape[: x.ndim - trailing], x.shape[x.ndim - trailing :]
    if math.prod(batch) > 0:
        return x.reshape((-1, *rest))
    empty = da.zeros((0, *rest), dtype=x.dtype, chunks=((0,), *((s,) for s in rest)))
    tail = string.ascii_uppercase[:trailing]
    return da.blockwise(
        lambda e, _: e,
        "r" + tail,
        empty,
        "r" + tail,
        x,
        indices(len(batch)) + tail,
        dtype=x.dtype,
        concatenate=True,
    )


def once(fn, x, dtype):
    """``fn(x)`` of a 0-d dask array ``x``, as a 0-d dask array computed by one task: a
    layer of its own, which dask's blockwise optimisation does not fuse into the chunks'
    tasks that use it (a ``map_blocks`` is, and then runs once per chunk)."""
    return da.from_delayed(dask.delayed(fn, pure=True)(x), shape=(), dtype=dtype)
