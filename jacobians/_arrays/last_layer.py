"""A linear last layer's gradient and curvature on generic arrays.

The twins of :func:`jacobians.linear_gradient` and :func:`jacobians.linear_curvature`,
with their semantics: θ the C-order vector of ``[W | b]`` (K, D+1), every kind of
:data:`~jacobians.rules.vocabulary.KINDS`, the structures ``'full'`` (P, P), ``'kron'`` (a
:class:`~jacobians.last_layer.Kron` of two arrays of the namespace) and ``'diag'``
(K, D+1), the options checked by :func:`jacobians.last_layer.check_options`, the whole
batch's reduction factor (:meth:`~jacobians.Loss.xp_reduction_scale`, the numpy path's
``reduction_factor`` in z's dtype).

The per-sample blocks come from :func:`.curvature.row_blocks` (dense ``(n, K, K)``, or a
factor ``S (n, K, C)`` with blocks ``S Sᵀ``) a row block at a time, rows of about
``max_bytes`` of intermediates: ``'full'`` sums ``Σ_n B_n ⊗ φ̃_n φ̃_nᵀ`` by batched
``matmul`` (``(K, D+1) × n`` by ``n × K(D+1)`` a block; a factor as ``Uᵀ U`` with rows
``S_n[:, c] ⊗ φ̃_n``), never an N×P×P array. Partial sums are added, not written in place,
and the loop's length depends only on the shapes: it runs under ``jax.jit``.
"""

from __future__ import annotations

import math

import numpy as np

from ..head import Head
from ..last_layer import KINDS, Kron, check_options
from ..rules.vocabulary import check_kind
from ..xp.blocks import device_of
from . import curvature
from .heads import _plain
from .inputs import float_input, namespace_of, targets_like
from .operators import block_diagonal

__all__ = ["linear_gradient", "linear_curvature"]


def _features(xp, X, z):
    """The features in z's dtype (integers and booleans promoted, as numpy's path does)."""
    if xp.isdtype(X.dtype, ("integral", "bool")):
        return xp.astype(X, z.dtype)
    X = float_input(xp, X, "features")
    return X if X.dtype == z.dtype else xp.astype(X, z.dtype)


def _rows(features, head, z, y):
    """``(xp, X, z, y)`` with the batch flattened: X (N, D), z (N, K), y (N,) or (N, K) or
    None, all on z's namespace and device, without autograd history."""
    if not isinstance(head, Head):
        raise TypeError(f"head must be a jacobians.Head; got {type(head).__name__}")
    xp = namespace_of(features, z, targets=(y,))
    z = _plain(float_input(xp, z, "z"))
    if z.ndim < 1:
        raise ValueError("z must have a last axis of K classes, (..., K); got a 0-d array")
    batch, K = tuple(z.shape[:-1]), z.shape[-1]
    if features.ndim < 1 or tuple(features.shape[:-1]) != batch:
        raise ValueError(
            f"features must have the batch shape of z, {batch} (features (..., D), z (..., K)); "
            f"got features of shape {tuple(features.shape)}"
        )
    X = _plain(_features(xp, features, z))
    n = math.prod(batch)
    X2, z2 = xp.reshape(X, (n, X.shape[-1])), xp.reshape(z, (n, K))
    if y is None:
        return xp, X2, z2, None
    y = _plain(targets_like(y, z))
    if tuple(y.shape) == tuple(z.shape):
        return xp, X2, z2, xp.reshape(y, (n, K))
    if tuple(y.shape) == batch:
        return xp, X2, z2, xp.reshape(y, (n,))
    if y.ndim == z.ndim and tuple(y.shape[:-1]) == batch:  # a trailing axis of the loss's own (rankings; GaussianNLL: K/2)
        return xp, X2, z2, xp.reshape(y, (n, y.shape[-1]))
    raise ValueError(
        f"y must have shape {batch} or {tuple(z.shape)} to match z of shape {tuple(z.shape)}; got shape {tuple(y.shape)}"
    )


def _with_bias(xp, X, bias):
    if not bias:
        return X
    return xp.concat([X, xp.ones((X.shape[0], 1), dtype=X.dtype, device=device_of(X))], axis=1)


def linear_gradient(features, head, z, y, bias=True):
    xp, X, z2, y2 = _rows(features, head, z, y)
    g = head.grad(z2, y2)
    return xp.matmul(xp.matrix_transpose(g), _with_bias(xp, X, bias))


# -- one row block's contribution to each structure ------------------------------------------


def _full(xp, form, B, X):
    """``Σ_n B_n ⊗ X_n X_nᵀ`` (P, P) for the rows of this block."""
    n, D1 = X.shape
    K = B.shape[1]
    if form == "factor":  # S (n, K, C): Uᵀ U with rows S_n[:, c] ⊗ X_n
        C = B.shape[2]
        U = xp.reshape(xp.permute_dims(B, (0, 2, 1))[:, :, :, None] * X[:, None, None, :], (n * C, K * D1))
        return xp.matmul(xp.matrix_transpose(U), U)
    # F[k, d, (l, e)] = Σ_n X[n, d] · B[n, k, l] X[n, e]: K products (D1 × n)(n × K·D1)
    V = xp.reshape(B[:, :, :, None] * X[:, None, None, :], (n, K, K * D1))
    F = xp.matmul(xp.matrix_transpose(X)[None, ...], xp.permute_dims(V, (1, 0, 2)))
    return xp.reshape(F, (K * D1, K * D1))


def _diag(xp, form, B, X):
    """``Σ_n B_n[k, k] X_n[d]²`` (K, D1)."""
    h = xp.sum(B * B, axis=-1) if form == "factor" else block_diagonal(xp, B)
    return xp.matmul(xp.matrix_transpose(h), X * X)


def _kron(xp, form, B, X):
    """``(Σ_n B_n, Σ_n X_n X_nᵀ)``."""
    if form == "factor":
        n, K, C = B.shape
        S = xp.reshape(xp.permute_dims(B, (1, 0, 2)), (K, n * C))
        A = xp.matmul(S, xp.matrix_transpose(S))
    else:
        A = xp.sum(B, axis=0)
    return A, xp.matmul(xp.matrix_transpose(X), X)


def _zeros(xp, structure, K, D1, like):
    def zeros(shape):
        return xp.zeros(shape, dtype=like.dtype, device=device_of(like))

    if structure == "kron":
        return zeros((K, K)), zeros((D1, D1))
    return zeros((K * D1, K * D1)) if structure == "full" else zeros((K, D1))


_PARTS = {"full": _full, "diag": _diag, "kron": _kron}


def linear_curvature(features, head, z, y, *, kind, structure, bias, max_bytes, mc_samples, seed):
    budget, key = check_options(head, y, kind, structure, max_bytes, mc_samples, seed)
    meaning = check_kind(kind, KINDS)
    xp, X, z2, y2 = _rows(features, head, z, y)
    n, K = z2.shape
    Xt = _with_bias(xp, X, bias)
    D1 = Xt.shape[1]
    per_row = Head(head.activation, head.loss_fn.with_reduction("sum"))
    # a row's blocks: K×C entries (C = K for dense blocks), a few times over while they are
    # made, and for 'full' the product's intermediate K×C×D1
    C = int(mc_samples) if meaning == "fisher_mc" else 1 if meaning == "empirical_fisher" else K
    itemsize = 4 if z2.dtype == xp.float32 else 8
    step = max(1, budget // (itemsize * K * C * (8 + (D1 if structure == "full" else 1))))
    acc = _zeros(xp, structure, K, D1, z2)
    part = _PARTS[structure]
    for start in range(0, n, step):
        stop = min(n, start + step)
        form, blocks = curvature.row_blocks(per_row, meaning, z2[start:stop, ...],
                                            None if y2 is None else y2[start:stop, ...],
                                            key=key, mc_samples=mc_samples, row_ids=np.arange(start, stop))
        got = part(xp, form, blocks, Xt[start:stop, ...])
        acc = (acc[0] + got[0], acc[1] + got[1]) if structure == "kron" else acc + got
    scale = head.loss_fn.xp_reduction_scale(xp, z2, y2)  # the whole batch's factor (0-d, z's dtype)
    if structure == "kron":
        return Kron(acc[0] * scale, acc[1] / max(n, 1))  # no rows: B = 0, as A (jacobians.numerics.empty)
    return acc * scale
