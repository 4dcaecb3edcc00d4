"""Class targets: integer indices ``(...,)`` or probabilities ``(..., K)``, one form inside.

Class losses (cross-entropy, NLL, KL, the Fenchel–Young losses) are all linear in the
target: per sample they are ``−Σ_k c_k log a_k`` (plus a constant) for a coefficient row
``c``. :func:`class_coefficients` builds ``c`` from either target form, with label
smoothing, class weights and ignored targets folded in, and the denominator that
``'mean'`` divides by (torch's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..numerics.validation import as_array, as_float_array

__all__ = [
    "ClassTargets",
    "check_class_targets",
    "class_coefficients",
    "class_denominator",
    "check_weight",
    "check_ignore_index",
    "IGNORE_INDEX",
]

#: the ``ignore_index`` of the loss variants the checks run (torch's default value)
IGNORE_INDEX = -100


def check_ignore_index(ignore_index) -> int | None:
    """``ignore_index`` as an int, or None."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an int or None; got {ignore_index!r}")
    return int(ignore_index)


@dataclass(frozen=True)
class ClassTargets:
    """Validated class targets.

    Exactly one of ``indices`` (int array ``(...,)``) and ``probs`` (float ``(..., K)``)
    is set; ``valid`` is a bool mask ``(...,)`` of the samples not ignored, or None.
    """

    indices: np.ndarray | None
    probs: np.ndarray | None
    valid: np.ndarray | None
    n_classes: int

    @property
    def is_index(self) -> bool:
        return self.indices is not None

    def safe_indices(self) -> np.ndarray:
        """Indices with ignored entries replaced by 0 (safe to gather with)."""
        if self.valid is None:
            return self.indices
        return np.where(self.valid, self.indices, 0)

    def dense(self, dtype) -> np.ndarray:
        """The targets as rows of probabilities ``(..., K)`` (one-hot for indices; zero rows
        where ignored)."""
        if not self.is_index:
            return self.probs
        out = np.zeros(self.indices.shape + (self.n_classes,), dtype=dtype)
        np.put_along_axis(out, self.safe_indices()[..., None], 1, axis=-1)
        if self.valid is not None:
            out *= self.valid[..., None]
        return out


def check_class_targets(a: np.ndarray, y, *, ignore_index: int | None = None, name: str = "y") -> ClassTargets:
    """Validate ``y`` as class indices of shape ``a.shape[:-1]`` or probabilities of ``a``'s shape."""
    K = a.shape[-1]
    y = as_array(y, name)
    if y.shape == a.shape[:-1]:
        if y.dtype.kind not in "iu":
            raise TypeError(
                f"{name}: class indices of shape {a.shape[:-1]} must have an integer dtype; got dtype "
                f"{y.dtype} (pass probabilities/one-hot rows with the shape of a, {a.shape}, instead)"
            )
        valid = None
        checked = y
        if ignore_index is not None:
            valid = y != ignore_index
            checked = y[valid]
        if checked.size and (np.minimum.reduce(checked, axis=None) < 0 or np.maximum.reduce(checked, axis=None) >= K):
            raise ValueError(
                f"{name}: class indices must be in [0, {K}) for K = {K} classes"
                + (f" (or equal ignore_index={ignore_index})" if ignore_index is not None else "")
                + f"; got values in [{checked.min()}, {checked.max()}]"
            )
        return ClassTargets(indices=y, probs=None, valid=valid, n_classes=K)
    if y.shape == a.shape:
        probs = as_float_array(y, name, min_ndim=1, like=a)
        if probs.size:
            mn, mx = np.minimum.reduce(probs, axis=None), np.maximum.reduce(probs, axis=None)
            if not (mn >= 0 and mx <= 1):
                raise ValueError(f"{name}: target probabilities must be in [0, 1]; got values in [{mn}, {mx}]")
        return ClassTargets(indices=None, probs=probs, valid=None, n_classes=K)
    raise ValueError(
        f"{name} must be class indices of shape {a.shape[:-1]} or probabilities of shape {a.shape} "
        f"(a has shape {a.shape}); got shape {y.shape}"
    )


def check_weight(weight, name: str = "weight") -> np.ndarray | None:
    """Validate class weights: a finite, non-negative 1-d array (or None)."""
    if weight is None:
        return None
    w = as_float_array(weight, name)
    if w.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array of shape (K,); got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must be finite and >= 0; got {w}")
    w = w.copy()
    w.flags.writeable = False
    return w


def class_coefficients(
    t: ClassTargets,
    dtype,
    *,
    weight: np.ndarray | None = None,
    smoothing: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Coefficients ``c`` (..., K) with per-sample loss ``−Σ_k c_k log p_k``, and the
    denominator of ``'mean'``.

    torch's conventions: label smoothing mixes the target with the uniform distribution,
    ``(1 − ε) y + ε/K``; class weights multiply ``c`` per class; with index targets
    ``'mean'`` divides by the summed weights of the (non-ignored) targets, with
    probability targets by the number of samples N.
    """
    K = t.n_classes
    dtype = np.dtype(dtype)
    denom = class_denominator(t, dtype, weight=weight)
    w = None if weight is None else weight.astype(dtype, copy=False)
    if t.is_index:
        c = t.dense(dtype)
        if smoothing:
            c *= dtype.type(1 - smoothing)
            c += dtype.type(smoothing / K) * (1 if t.valid is None else t.valid[..., None])
        if w is not None:
            c *= w
        return c, denom
    c = t.probs
    if smoothing:
        c = c * dtype.type(1 - smoothing) + dtype.type(smoothing / K)
    if w is not None:
        c = c * w
    return c, denom


def class_denominator(t: ClassTargets, dtype, *, weight: np.ndarray | None = None) -> float:
    """What ``'mean'`` divides by (torch's): with index targets the summed weights of the
    targets not ignored (their number without weights), with probability targets N."""
    K = t.n_classes
    if weight is not None and weight.shape != (K,):
        raise ValueError(f"weight must have shape (K,) = ({K},) to match a; got shape {weight.shape}")
    if not t.is_index:
        return float(math.prod(t.probs.shape[:-1]))
    if weight is None:
        return float(t.indices.size if t.valid is None else t.valid.sum())
    target_w = weight.astype(dtype, copy=False)[t.safe_indices()]  # summed in dtype, as the loss is
    if t.valid is not None:
        target_w = target_w * t.valid
    return float(target_w.sum())


# -- the generic (array API) twins: the same targets, in a's namespace ------------------------
def xp_check_class_targets(xp, a, y, *, ignore_index: int | None = None, name: str = "y") -> ClassTargets:
    """:func:`check_class_targets` on ``a``'s namespace (``y`` already there, on a's device).

    Returns a :class:`ClassTargets` of ``xp`` arrays (``valid`` set whenever ``ignore_index``
    is). Indices in range and probabilities in [0, 1] are checked only on concrete arrays
    (:func:`jacobians.losses.generic.concrete`: not under ``jax.jit``, where values are
    unknown); shapes and dtypes always.
    """
    from .generic import concrete

    shape, K = tuple(a.shape), a.shape[-1]
    ys = tuple(y.shape)
    if ys == shape[:-1]:
        if not xp.isdtype(y.dtype, "integral"):
            raise TypeError(
                f"{name}: class indices of shape {shape[:-1]} must have an integer dtype; got dtype "
                f"{y.dtype} (pass probabilities/one-hot rows with the shape of a, {shape}, instead)"
            )
        valid = None if ignore_index is None else y != ignore_index
        if concrete(y) and math.prod(ys):
            ok = (y >= 0) & (y < K)
            bad = ~ok if valid is None else ~ok & valid
            if bool(xp.any(bad)):
                # the range of the entries not ignored (ignored ones replaced by y's extremes)
                lo = xp.min(y if valid is None else xp.where(valid, y, xp.max(y)))
                hi = xp.max(y if valid is None else xp.where(valid, y, xp.min(y)))
                raise ValueError(
                    f"{name}: class indices must be in [0, {K}) for K = {K} classes"
                    + (f" (or equal ignore_index={ignore_index})" if ignore_index is not None else "")
                    + f"; got values in [{int(lo)}, {int(hi)}]"
                )
        return ClassTargets(indices=y, probs=None, valid=valid, n_classes=K)
    if ys == shape:
        probs = y if y.dtype == a.dtype else xp.astype(y, a.dtype)
        if concrete(probs) and math.prod(ys):
            mn, mx = xp.min(probs), xp.max(probs)
            if not (bool(mn >= 0) and bool(mx <= 1)):
                raise ValueError(f"{name}: target probabilities must be in [0, 1]; got values in [{float(mn)}, {float(mx)}]")
        return ClassTargets(indices=None, probs=probs, valid=None, n_classes=K)
    raise ValueError(
        f"{name} must be class indices of shape {shape[:-1]} or probabilities of shape {shape} "
        f"(a has shape {shape}); got shape {ys}"
    )


def xp_class_coefficients(xp, t: ClassTargets, like, *, weight=None, smoothing: float = 0.0):
    """:func:`class_coefficients` in ``like``'s namespace, dtype and device: ``(c, denominator)``,
    ``c`` (..., K) with per-sample loss ``−Σ_k c_k log p_k`` (zero rows where ignored); the
    denominator a Python int (N, or N without weights and ignored targets) or a 0-d array
    (the summed weights of the targets not ignored, or their number)."""
    from .generic import const, device_of

    K = t.n_classes
    w = None if weight is None else const(xp, weight, like)
    denom = xp_class_denominator(xp, t, like, w)
    if t.is_index:
        safe = t.indices if t.valid is None else xp.where(t.valid, t.indices, xp.zeros_like(t.indices))
        hot = safe[..., None] == xp.arange(K, dtype=safe.dtype, device=device_of(like))
        if t.valid is not None:
            hot = hot & t.valid[..., None]
        c = xp.astype(hot, like.dtype)
        if smoothing:
            share = const(xp, smoothing / K, like)
            if t.valid is not None:
                share = share * xp.astype(t.valid[..., None], like.dtype)
            c = c * const(xp, 1 - smoothing, like) + share
        return (c if w is None else c * w), denom
    c = t.probs
    if smoothing:
        c = c * const(xp, 1 - smoothing, like) + const(xp, smoothing / K, like)
    return (c if w is None else c * w), denom


def xp_class_denominator(xp, t: ClassTargets, like, w=None):
    """What ``'mean'`` divides by (see :func:`class_denominator`), ``w`` the weights as an
    array of like's dtype and device (or None)."""
    K = t.n_classes
    if w is not None and tuple(w.shape) != (K,):
        raise ValueError(f"weight must have shape (K,) = ({K},) to match a; got shape {tuple(w.shape)}")
    if not t.is_index:
        return math.prod(t.probs.shape[:-1])
    if w is None:
        if t.valid is None:
            return math.prod(t.indices.shape)
        return xp.sum(xp.astype(t.valid, like.dtype))
    flat = xp.reshape(t.indices, (-1,))
    if t.valid is not None:
        valid = xp.reshape(t.valid, (-1,))
        flat = xp.where(valid, flat, xp.zeros_like(flat))
    target_w = xp.take(w, flat)
    if t.valid is not None:
        target_w = target_w * xp.astype(valid, like.dtype)
    return xp.sum(target_w)
