"""Dask arrays in, Dask arrays out: every row-wise entry point, chunk by chunk.

Imported only when a Dask array reaches one of the entry points (``import jacobians``
never imports dask). Rows of a batch do not interact, so each chunk of rows runs the
numpy code that exists; only the reductions cross chunks:

* the row axes may be chunked any way; the class axis K is rechunked to one chunk;
* targets ``y`` (numpy or dask) are aligned to z's row chunks;
* ``'mean'`` divides by the whole batch's denominator (N, N·K, or the summed class weights
  of the targets not ignored): an int when the shapes give it (no graph), else a 0-d dask
  array summed over the chunks (from the targets alone for a class loss); every chunk
  computes with it (``loss.with_denominator``);
* a reduced loss value is a 0-d dask array; ``linear_curvature`` sums its per-chunk
  partials in a tree;
* Monte-Carlo draws are a function of (seed, global row index, sample), so they do not
  depend on the chunking.
"""

from __future__ import annotations

import math
import string

import numpy as np

try:
    import dask.array as da
except ImportError as exc:  # pragma: no cover - only reached with a dask array in hand
    raise ImportError(
        "jacobians' Dask support needs dask: pip install 'jacobians[dask]' (dask[array] and distributed)"
    ) from exc

from . import _math, curvature
from ._empty import mean_scale, mean_value

__all__ = ["is_dask", "any_dask"]


def is_dask(x) -> bool:
    """True for a ``dask.array.Array`` (by its type's module: dask is not imported here)."""
    return type(x).__module__.split(".")[0] == "dask"


def any_dask(*xs) -> bool:
    return any(is_dask(x) for x in xs)


# -- preparing the arrays ---------------------------------------------------------------------


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "iub" or dtype.kind == "f":
        return np.dtype(np.float64)
    raise TypeError(f"z must be a real numeric array (float32/float64, or int/bool promoted to float64); got dtype {dtype}")


def _check_known(x, name: str) -> None:
    if any(np.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError(
            f"{name} has unknown chunk sizes (NaN), e.g. after boolean indexing; call "
            f"{name}.compute_chunk_sizes() (or give the chunks) before passing it"
        )


def prepare_z(z, name: str = "z"):
    """``z`` as a dask array with known chunks and one chunk along its last axis (K)."""
    z = z if is_dask(z) else da.from_array(np.asarray(z))
    if z.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension, shape (..., K); got a 0-d array")
    _check_known(z, name)
    if len(z.chunks[-1]) > 1:
        z = z.rechunk({z.ndim - 1: -1})  # chunks run along the batch axes only
    return z


def align(x, z, name: str, *, rechunk_last: bool = False):
    """``x`` (numpy or dask) with the row chunks of z: shape ``z.shape[:-1]`` (one per row) or
    ``z.shape`` / ``z.shape[:-1] + (M,)`` (a trailing axis, which must be one chunk)."""
    if x is None:
        return None
    batch = z.shape[:-1]
    if is_dask(x):
        _check_known(x, name)
    else:
        x = np.asarray(x)
    if x.shape[: len(batch)] != batch or x.ndim not in (len(batch), len(batch) + 1):
        raise ValueError(
            f"{name} must have shape {batch} (one per row) or {batch + ('…',)} to be aligned with z of "
            f"shape {z.shape}; got shape {x.shape}"
        )
    if is_dask(x) and x.ndim == len(batch) + 1 and len(x.chunks[-1]) > 1 and not rechunk_last:
        raise ValueError(
            f"{name} is split across chunks along its last axis ({len(x.chunks[-1])} chunks of "
            f"{x.chunks[-1]}): rows must be whole in every chunk; rechunk it with {name}.rechunk({{-1: -1}})"
        )
    chunks = z.chunks[:-1] + ((x.shape[-1],) if x.ndim > len(batch) else ())
    if not is_dask(x):
        return da.from_array(x, chunks=chunks)
    return x if x.chunks == chunks else x.rechunk(chunks)


# -- running a function chunk by chunk ----------------------------------------------------------


def _indices(ndim_batch: int) -> str:
    return string.ascii_lowercase[:ndim_batch]


def _operands(z, others):
    """blockwise operands: z indexed (batch…, K); each other array by its own shape (a row
    axis set, plus K, or a trailing axis L of its own); numpy values and None as they are."""
    b = _indices(z.ndim - 1)
    args = [z, b + "K"]
    for o in others:
        if o is None or not is_dask(o):
            args += [o, None]
        elif o.ndim == 0:  # a scalar the chunks all need (the whole batch's denominator)
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
    ``'rows'`` (…)."""
    b, args = _operands(z, others)
    return da.blockwise(fn, b + "K" if out == "same" else b, *args, dtype=dtype, concatenate=True)


def with_axes(fn, z, *others, dtype, sizes: tuple[int, ...]):
    """``fn`` maps a row chunk (…, K) to (…, K, *sizes): new trailing axes."""
    b, args = _operands(z, others)
    names = "MNOP"[: len(sizes)]
    return da.blockwise(fn, b + "K" + names, *args, dtype=dtype, new_axes=dict(zip(names, sizes)), concatenate=True)


def chunk_sum(fn, z, *others, dtype):
    """``Σ_chunks fn(z_chunk, *other_chunks)`` for an ``fn`` that gives a scalar per row
    chunk: a 0-d dask array. The chunks' scalars are added with ``math.fsum`` (exactly
    rounded, in float64) and the total rounded once to ``dtype``, so the result does not
    depend on the chunking and lies within round-off of numpy's own sum of the whole batch."""
    b, args = _operands(z, others)

    def one(*chunks):
        return np.asarray(fn(*chunks), dtype=np.float64).reshape((1,) * len(b))

    parts = da.blockwise(one, b, *args, dtype=np.float64, adjust_chunks={i: 1 for i in b}, concatenate=True)
    return exact_total(parts, dtype)


#: up to this many values a reduced loss gathers them and adds them up as numpy does
#: (:func:`jacobians._math.total`: the same number to the bit); beyond, the chunks' sums are
#: added exactly (an exactly rounded total, within numpy's round-off of it)
GATHER_VALUES = 1 << 24


def reduced_total(values, dtype):
    """``Σ values`` of a dask array of per-row (or per-entry) loss values: a 0-d dask array."""
    if values.size <= GATHER_VALUES:
        flat = values.reshape(-1).rechunk(-1)
        return flat.map_blocks(lambda v: np.asarray(_math.total(v), dtype=dtype), drop_axis=0, dtype=dtype)
    b = _indices(values.ndim)
    parts = da.blockwise(lambda v: np.asarray(v.sum(dtype=np.float64)).reshape((1,) * len(b)), b, values, b,
                         dtype=np.float64, adjust_chunks={i: 1 for i in b})
    return exact_total(parts, dtype)


def exact_total(parts, dtype):
    """The exactly rounded sum of a dask array's entries, rounded once to ``dtype``: a 0-d
    dask array (the parts, one per chunk, are few)."""
    flat = parts.reshape(-1).rechunk(-1) if parts.ndim else parts.reshape(1)

    def fsum(x):
        return np.asarray(math.fsum(np.asarray(x, dtype=np.float64).ravel().tolist()), dtype=dtype)

    return flat.map_blocks(fsum, drop_axis=0, dtype=dtype)


def row_ids(block_info, batch_shape: tuple[int, ...]) -> np.ndarray:
    """Flat (C-order) indices in the whole batch of a chunk's rows, from dask's ``block_info``."""
    location = block_info[0]["array-location"][: len(batch_shape)]
    if not batch_shape:
        return np.zeros(1, dtype=np.int64)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in location], indexing="ij")
    return np.ravel_multi_index(tuple(g.reshape(-1) for g in grids), batch_shape).astype(np.int64)


# -- the reduction's factor over the whole batch ----------------------------------------------------


def _as_class_or_rows(loss, x, y):
    return loss.check_targets(x, y)


def _targets_only(loss) -> bool:
    """True for a class loss whose denominator is :func:`class_coefficients`' (CE, NLL, KL):
    a function of the targets, K and the dtype only, never of the values of ``a``."""
    from .losses.classification import _ClassLoss

    cls = type(loss)
    return (isinstance(loss, _ClassLoss) and cls._mean_denominator is _ClassLoss._mean_denominator
            and cls.coefficients is _ClassLoss.coefficients and cls.check_targets is _ClassLoss.check_targets)


def denominator(loss, x, y):
    """What ``'mean'`` divides by for the whole batch: an int when the shapes give it, else a
    0-d dask array summed over the chunks.

    A loss made by :meth:`~jacobians.Loss.with_denominator` keeps its own. A class loss's
    denominator is N for probability targets, and for index targets without
    class weights or ``ignore_index``; otherwise (summed weights, targets not ignored) it
    is summed from ``y`` alone, each chunk's targets checked against a zero-stride stand-in
    for ``a`` (its shape and dtype: ``a`` itself, the activation's output, is never
    computed for it). Other losses sum ``loss._mean_denominator`` over the chunks of
    ``x`` and ``y``.
    """
    from .losses import ElementwiseLoss

    if loss.denominator is not None:  # with_denominator: the caller's, whatever the batch
        return loss.denominator
    n = int(np.prod(x.shape[:-1]))
    if y is None or isinstance(loss, ElementwiseLoss):
        return x.shape[-1] * n if isinstance(loss, ElementwiseLoss) else n
    if _targets_only(loss):
        indices = y.ndim == x.ndim - 1
        if not indices or (getattr(loss, "weight", None) is None and loss.ignore_index is None):
            return n
        K, dt = x.shape[-1], _float_dtype(x.dtype)

        def one(yc):
            stand_in = np.broadcast_to(np.zeros((), dtype=dt), yc.shape + (K,))
            return np.asarray(loss._mean_denominator(stand_in, yc), dtype=np.float64).reshape((1,) * yc.ndim)

        b = _indices(y.ndim)
        parts = da.blockwise(one, b, y, b, dtype=np.float64, adjust_chunks={i: 1 for i in b})
        return exact_total(parts, np.float64)
    return chunk_sum(lambda xc, yc: loss._mean_denominator(xc, loss.check_targets(xc, yc)), x, y, dtype=np.float64)


def scale_of(loss, x, y, dtype):
    """The factor ``'mean'`` puts on every term (1 for the others), as numpy computes it:
    ``dtype(1) / dtype(denominator)``."""
    if loss.reduction != "mean":
        return 1
    d = denominator(loss, x, y)
    one = np.dtype(dtype).type(1)
    if is_dask(d):  # known at compute time: 1/0 = inf makes the value NaN, without the warning
        return one / d.astype(dtype)
    if d == 0:  # the value of 'mean' over nothing: NaN, with numpy's warning (jacobians._empty)
        return mean_value(0, 0, dtype)
    return one / np.dtype(dtype).type(d)


def reduction_factor(head, z, y, dtype, *, value: bool = True):
    """The whole batch's factor on a head's ``'sum'`` value (``value=True``) or blocks (see
    :func:`curvature.reduction_factor`): for derivatives, 0 where the denominator is 0."""
    loss = head.loss_fn
    if loss.reduction != "mean":
        return 1
    if not value:
        d = denominator(loss, _loss_input(head, z, y), y)
        return mean_scale(d, dtype) if not is_dask(d) else da.where(d == 0, 0, 1 / da.where(d == 0, 1, d)).astype(dtype)
    return scale_of(loss, _loss_input(head, z, y), y, dtype)


def _loss_input(head, z, y):
    """What a head's loss sees, for its denominator: the activation's output (lazily), or z
    where only the shape and dtype matter (no targets, a loss of the logits, a class loss
    whose denominator comes from the targets): the activation's graph is then not built."""
    if y is None or head.logits_loss or _targets_only(head.loss_fn):
        dt = _float_dtype(z.dtype)
        return z if z.dtype == dt else z.astype(dt)
    return head.activation(z)


def _times(x, c):
    return x if (not is_dask(c) and c == 1) else x * c


# -- activations ----------------------------------------------------------------------------------


def _activation_rows(act, fn, z, *others, out="same"):
    z = prepare_z(z)
    dt = _float_dtype(z.dtype)
    others = [align(o, z, "g", rechunk_last=True) for o in others]
    return rowwise(lambda zc, *oc: fn(act, zc, *oc), z, *others, dtype=dt, out=out)


def _call(act, fn, z):
    return _activation_rows(act, fn, z)


def _jacobian(act, fn, z, *, out=None, workers=None):
    if out is not None:
        raise TypeError("out= is a numpy buffer: a dask z gives a dask Jacobian (leave out=None)")
    z = prepare_z(z)
    return with_axes(lambda zc: fn(act, zc, workers=workers), z, dtype=_float_dtype(z.dtype), sizes=(z.shape[-1],))


def _hessian(act, fn, z):
    z = prepare_z(z)
    K = z.shape[-1]
    return with_axes(lambda zc: fn(act, zc), z, dtype=_float_dtype(z.dtype), sizes=(K, K))


def _hessian_vjp(act, fn, z, g):
    z = prepare_z(z)
    g = align(g, z, "g", rechunk_last=True)
    return with_axes(lambda zc, gc: fn(act, zc, gc), z, g, dtype=_float_dtype(z.dtype), sizes=(z.shape[-1],))


def _vector(act, fn, z, v):
    return _activation_rows(act, fn, z, v)


# -- losses ---------------------------------------------------------------------------------------


def _mean_denominator(loss, x, y):
    """The whole batch's denominator for ``'mean'`` (an int, or a 0-d dask array summed over
    the chunks), or None for the other reductions."""
    return denominator(loss, x, y) if loss.reduction == "mean" else None


def _piece(loss, d):
    """The loss for one chunk: the whole batch's ``'mean'`` denominator, or as it is."""
    return loss if d is None else loss.with_denominator(float(d))


def _loss_terms(loss, a, y, need: str):
    """``(value, grad)`` of a loss on dask ``a`` (either None when not needed).

    The gradient: each chunk with the whole batch's ``'mean'`` denominator (the numbers
    numpy gives for the whole batch, to the bit). The value: each chunk's ``'sum'``, added
    exactly over the chunks, then divided once as numpy does (``total · (1/denominator)``).
    """
    from .losses import ElementwiseLoss

    a = prepare_z(a, "a")
    y = align(y, a, "y")
    dt = _float_dtype(a.dtype)
    value = grad = None
    if need in ("value", "both"):
        per_row = loss.with_reduction("none")
        out = "same" if isinstance(loss, ElementwiseLoss) else "rows"
        value = rowwise(lambda ac, yc: per_row.value(ac, yc), a, y, dtype=dt, out=out)
        if loss.reduction != "none":  # the per-row values added up as numpy adds them
            value = _times(reduced_total(value, dt), scale_of(loss, a, y, dt))
    if need in ("grad", "both"):
        d = _mean_denominator(loss, a, y)
        grad = rowwise(lambda ac, yc, dc=None: _piece(loss, dc).grad(ac, yc), a, y, d, dtype=dt)
    return value, grad


def _loss_value(loss, fn, a, y):
    return _loss_terms(loss, a, y, "value")[0]


def _loss_grad(loss, fn, a, y):
    return _loss_terms(loss, a, y, "grad")[1]


def _loss_value_and_grad(loss, fn, a, y):
    return _loss_terms(loss, a, y, "both")


def _loss_hessian(loss, fn, a, y):
    a = prepare_z(a, "a")
    y = align(y, a, "y")
    d = _mean_denominator(loss, a, y)
    return with_axes(lambda ac, yc, dc=None: _piece(loss, dc).hessian(ac, yc), a, y, d,
                     dtype=_float_dtype(a.dtype), sizes=(a.shape[-1],))


def _loss_hvp(loss, fn, a, y, v):
    a = prepare_z(a, "a")
    y, v = align(y, a, "y"), align(v, a, "v", rechunk_last=True)
    d = _mean_denominator(loss, a, y)
    return rowwise(lambda ac, yc, vc, dc=None: _piece(loss, dc).hvp(ac, yc, vc), a, y, v, d, dtype=_float_dtype(a.dtype))


#: name -> implementation, for the methods wrapped by :func:`jacobians._lazy.dask_aware`
METHODS = {
    "__call__": _call,
    "jacobian": _jacobian,
    "vjp": _vector,
    "jvp": _vector,
    "hessian": _hessian,
    "hessian_vjp": _hessian_vjp,
    "loss.value": _loss_value,
    "loss.grad": _loss_grad,
    "loss.value_and_grad": _loss_value_and_grad,
    "loss.hessian": _loss_hessian,
    "loss.hvp": _loss_hvp,
}


# -- heads ------------------------------------------------------------------------------------------


def _head_piece(head, d):
    """The head for one chunk (the whole batch's ``'mean'`` denominator), or as it is."""
    from .head import Head

    return head if d is None else Head(head.activation, head.loss_fn.with_denominator(float(d)))


def _head_denominator(head, z, y):
    """The whole batch's ``'mean'`` denominator of a head's loss (None for the others)."""
    loss = head.loss_fn
    if loss.reduction != "mean":
        return None
    return denominator(loss, _loss_input(head, z, y), y)


def head_value_and_grad(head, z, y, method="auto", *, max_bytes=None, workers=None, need="both"):
    """``(value, dE/dz)`` on dask logits (see :func:`_loss_terms` for how each is reduced)."""
    from .head import Head
    from .losses import ElementwiseLoss

    z = prepare_z(z)
    y = align(y, z, "y")
    dt = _float_dtype(z.dtype)
    loss = head.loss_fn
    value = grad = None
    if need in ("value", "both"):
        # head.loss (need='value') is the fused rule's value; value_and_grad's is the method's own
        per = Head(head.activation, loss.with_reduction("none"))

        def value_of(zc, yc):
            if need == "value":
                return per.loss(zc, yc)
            return per.value_and_grad(zc, yc, method, max_bytes=max_bytes, workers=workers)[0]

        out = "same" if isinstance(loss, ElementwiseLoss) else "rows"
        value = rowwise(value_of, z, y, dtype=dt, out=out)
        if loss.reduction != "none":  # the per-row values added up as numpy adds them
            value = _times(reduced_total(value, dt), reduction_factor(head, z, y, dt))
    if need in ("grad", "both"):
        d = _head_denominator(head, z, y)

        def grad_of(zc, yc, dc=None):
            return _head_piece(head, dc).value_and_grad(zc, yc, method, max_bytes=max_bytes, workers=workers)[1]

        grad = rowwise(grad_of, z, y, d, dtype=dt)
    return value, grad


def head_loss(head, z, y):
    return head_value_and_grad(head, z, y, need="value")[0]


def head_blocks(head, name, z, y, *args, sizes=None):
    """A head's per-row second-order method on dask logits (each chunk with the whole
    batch's denominator); ``sizes``: the new trailing axes (None: shape of z)."""
    z = prepare_z(z)
    y = align(y, z, "y")
    dt = _float_dtype(z.dtype)
    d = _head_denominator(head, z, y)
    extras = [a for a in args if is_dask(a)]
    plain = [a for a in args if not is_dask(a)]

    def call(zc, yc, *rest):
        arrays, dc = rest[: len(extras)], (rest[len(extras)] if len(rest) > len(extras) else None)
        return getattr(_head_piece(head, dc), name)(zc, yc, *arrays, *plain)

    if sizes is None:
        return rowwise(call, z, y, *extras, d, dtype=dt)
    return with_axes(call, z, y, *extras, d, dtype=dt, sizes=(z.shape[-1],) if sizes == "K" else sizes)


def head_sqrt_ggn_sampled(head, z, mc_samples, seed, y=None):
    """Monte-Carlo columns on dask logits: each row's draws from (seed, its global index)."""
    z = prepare_z(z)
    y = align(y, z, "y")
    M = curvature._check_mc_samples(mc_samples)
    curvature._predictive(head.loss_fn)
    key = curvature._seed_key(seed)
    dt = _float_dtype(z.dtype)
    batch = z.shape[:-1]
    d = _head_denominator(head, z, y)
    d_value = None if d is None else (d if not is_dask(d) else None)
    target = None if y is None else (y[..., None] if y.ndim == z.ndim - 1 else y)

    def columns(zc, yc=None, dc=None, block_info=None):
        ids = row_ids(block_info, batch)
        yv = None if yc is None else (yc[..., 0] if y.ndim == z.ndim - 1 else yc)
        dd = d_value if dc is None else dc
        return curvature.sqrt_ggn_sampled(_head_piece(head, dd), zc, M, key, y=yv, row_ids=ids)

    arrays = [z] + ([] if target is None else [target])
    kwargs = {"dc": d} if is_dask(d) else {}
    if target is None:
        fn = columns
    else:
        def fn(zc, yc, dc=None, block_info=None):
            return columns(zc, yc, dc, block_info)
    return da.map_blocks(fn, *arrays, **kwargs, dtype=dt, new_axis=[z.ndim], chunks=z.chunks + ((M,),))


def head_fisher(head, z, y, kind, mc_samples, seed):
    if kind not in curvature.FISHER_KINDS:
        raise ValueError(f"kind must be one of {curvature.FISHER_KINDS}; got {kind!r}")
    if kind == "mc":
        S = head_sqrt_ggn_sampled(head, z, mc_samples, seed, y=y)
        K = S.shape[-2]
        # each chunk's S Sᵀ as numpy computes it (the same product per row)
        return S.map_blocks(lambda s: s @ np.swapaxes(s, -1, -2), chunks=S.chunks[:-1] + ((K,),), dtype=S.dtype)
    if kind == "empirical" and y is None:
        raise ValueError("kind='empirical' needs the true targets y: it is built from the gradients at them")
    if kind == "exact":
        curvature._predictive(head.loss_fn)
    z = prepare_z(z)
    return head_blocks(head, "fisher", z, y, kind, sizes=(z.shape[-1],))


# -- contract and the last layer ------------------------------------------------------------------


def contract(g, J):
    from .contract import contract as contract_numpy

    J = J if is_dask(J) else da.from_array(np.asarray(J))
    _check_known(J, "J")
    if J.ndim < 2:
        raise ValueError(f"J must have shape (..., M, K); got shape {J.shape}")
    J = J.rechunk({J.ndim - 2: -1, J.ndim - 1: -1})
    g_rows = J[..., 0]  # a stand-in with J's row chunks, (…, M)
    g = align(g, g_rows, "g", rechunk_last=True)
    b = _indices(J.ndim - 2)
    dt = np.result_type(_float_dtype(J.dtype), _float_dtype(g.dtype))
    return da.blockwise(lambda gc, Jc: contract_numpy(gc, Jc), b + "K", g, b + "M", J, b + "MK", dtype=dt, concatenate=True)


def _features(features, z):
    """The features with z's row chunks, in z's float dtype (as numpy's ``like=z``)."""
    X = align(features, z, "features", rechunk_last=True)
    dt = _float_dtype(z.dtype)
    return X if X.dtype == dt else X.astype(dt)


def linear_gradient(features, head, z, y, bias=True):
    z = prepare_z(z)
    X = _features(features, z)
    g = head_value_and_grad(head, z, y)[1]
    K, D = z.shape[-1], X.shape[-1]
    g2, X2 = g.reshape(-1, K), X.reshape(-1, D)
    if bias:
        X2 = da.concatenate([X2, da.ones((X2.shape[0], 1), dtype=X2.dtype, chunks=(X2.chunks[0], 1))], axis=1)
    return g2.T @ X2


def linear_curvature(features, head, z, y, *, kind, structure, bias, max_bytes, mc_samples, seed):
    from . import last_layer

    budget, key = last_layer._check_options(head, y, kind, structure, max_bytes, mc_samples, seed)
    z = prepare_z(z)
    X = _features(features, z)
    y = align(y, z, "y")
    dt = _float_dtype(z.dtype)
    batch = z.shape[:-1]
    K, D = z.shape[-1], X.shape[-1]
    D1 = D + bool(bias)
    target = None if y is None else (y[..., None] if y.ndim == z.ndim - 1 else y)

    def partial(zc, Xc, yc=None, block_info=None):
        ids = row_ids(block_info, batch)
        if yc is None:
            yv = None
        else:
            yv = yc[..., 0].reshape(-1) if y.ndim == z.ndim - 1 else yc.reshape(-1, K)
        part = last_layer.partial_curvature(Xc.reshape(-1, D), head, zc.reshape(-1, K), yv, kind=kind,
                                            structure=structure, bias=bias, budget=budget, key=key,
                                            mc_samples=mc_samples, row_ids=ids)
        part = part[0] if structure == "kron" else part
        return part.reshape((1,) * len(batch) + part.shape)

    shape = {"full": (K * D1, K * D1), "diag": (K, D1), "kron": (K, K)}[structure]
    arrays = [z, X] if target is None else [z, X, target]
    parts = da.map_blocks(partial, *arrays, dtype=dt, drop_axis=[z.ndim - 1], new_axis=list(range(len(batch), len(batch) + len(shape))),
                          chunks=tuple((1,) * len(c) for c in z.chunks[:-1]) + tuple((s,) for s in shape))
    total = parts.sum(axis=tuple(range(len(batch))))
    scale = reduction_factor(head, z, y, dt, value=False)
    n_rows = int(np.prod(batch))
    if structure == "kron":
        X2 = X.reshape(-1, D)
        if bias:
            X2 = da.concatenate([X2, da.ones((X2.shape[0], 1), dtype=X2.dtype, chunks=(X2.chunks[0], 1))], axis=1)
        return last_layer.Kron(_times(total, scale), (X2.T @ X2) / max(n_rows, 1))  # no rows: B = 0
    return _times(total, scale)
