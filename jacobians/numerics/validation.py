"""Input checks shared by every module.

Every public entry point turns its array arguments into read-only-safe numpy arrays
here, so that a bad input fails early with an error that names the argument, what was
expected and what came.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "as_array",
    "as_float_array",
    "check_reduction",
    "check_same_shape",
    "check_nonnegative_scalar",
    "check_positive_scalar",
    "check_alpha",
    "alpha_rows",
    "REDUCTIONS",
]

REDUCTIONS = ("mean", "sum", "none")


def _ragged_depth(x) -> tuple[int, list[int]]:
    """``(depth, lengths)``: the first level of a nested sequence whose entries differ in
    length (a scalar among sequences counts as length None)."""
    level, items = 0, [x]
    while True:
        seqs = [isinstance(i, (list, tuple)) or (isinstance(i, np.ndarray) and i.ndim > 0) for i in items]
        if not any(seqs):
            return level, []
        lengths = [len(i) if s else None for i, s in zip(items, seqs)]
        if not all(seqs) or len(set(lengths)) > 1:
            return level, lengths
        items = [j for i in items for j in i]
        level += 1


def as_array(x, name: str) -> np.ndarray:
    """``np.asarray(x)``, with a ``ValueError`` naming ``x`` when it is a ragged nested list.

    numpy's own message ("inhomogeneous shape after 1 dimensions") names neither the
    argument nor which rows differ.
    """
    try:
        return np.asarray(x)
    except ValueError as err:
        if "inhomogeneous" not in str(err):
            raise
        depth, lengths = _ragged_depth(x)
        shown = ", ".join("a scalar" if n is None else str(n) for n in lengths[:8])
        more = ", ..." if len(lengths) > 8 else ""
        raise ValueError(
            f"{name} must be a rectangular array, shape (..., K): a nested list whose rows all have the "
            f"same length; got a ragged sequence, whose entries at depth {depth} have lengths "
            f"[{shown}{more}]"
        ) from None


_FLOAT64, _FLOAT32 = np.dtype(np.float64), np.dtype(np.float32)


def as_float_array(x, name: str, *, min_ndim: int = 1, like: np.ndarray | None = None) -> np.ndarray:
    """Return ``x`` as a float32 or float64 array without copying when possible.

    float32 and float64 stay as they are; integer and bool inputs are promoted to
    float64; float16 is computed in float32 and long double in float64 (docs/concepts.md,
    dtypes); anything else (complex, object, strings, bfloat16) is a ``TypeError``. A
    ragged nested list is a ``ValueError`` (see :func:`as_array`). When
    ``like`` is given, the result takes ``like``'s dtype (used for targets and upstream
    gradients, so that they never upcast float32 work).

    The array returned may be the caller's own: callers never write into it.
    """
    if (type(x) is np.ndarray and (x.dtype is _FLOAT64 or x.dtype is _FLOAT32) and x.ndim >= max(min_ndim, 1)
            and x.shape[-1] and (like is None or like.dtype == x.dtype)):
        return x  # what the checks below return for it, without them (a hot path)
    arr = as_array(x, name)
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        elif arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    elif kind in "iub":
        arr = arr.astype(np.float64)
    else:
        raise TypeError(
            f"{name} must be a real numeric array (float32/float64, or int/bool promoted "
            f"to float64); got dtype {arr.dtype}"
        )
    if like is not None and arr.dtype != like.dtype:
        arr = arr.astype(like.dtype)
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), shape (..., K); "
            f"got a {arr.ndim}-d array of shape {arr.shape}"
        )
    if min_ndim >= 1 and arr.shape[-1] == 0:
        raise ValueError(f"{name} must have K >= 1 entries on its last axis; got shape {arr.shape}")
    return arr


def check_same_shape(x: np.ndarray, name: str, ref: np.ndarray, ref_name: str) -> None:
    """Raise ``ValueError`` unless ``x.shape == ref.shape``."""
    if x.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name}, {ref.shape}; got shape {x.shape}"
        )


def check_reduction(reduction) -> str:
    """Return ``reduction`` if it is one of ``'mean'``, ``'sum'``, ``'none'``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    return reduction


def _check_real_scalar(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def check_positive_scalar(value, name: str) -> float:
    """Return ``float(value)`` if it is a finite number > 0."""
    value = _check_real_scalar(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return value


def check_nonnegative_scalar(value, name: str, *, upper: float | None = None) -> float:
    """Return ``float(value)`` if it is a finite number >= 0 (and <= ``upper``)."""
    value = _check_real_scalar(value, name)
    if value < 0 or (upper is not None and value > upper):
        bound = f"in [0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be {bound}; got {value}")
    return value


def _alpha_error(value, what: str) -> ValueError:
    hint = " (α = 1 is softmax: use jacobians.Softmax(), or α slightly above 1)" if np.any(value == 1) else ""
    return ValueError(f"alpha must be {what}; got {value}{hint}")


def check_alpha(alpha, name: str = "alpha"):
    """α of the entmax family: a float > 1, or a read-only float64 array of them (one per row).

    Returns a Python float for a scalar (0-d arrays included), else a float64 copy that
    cannot be written to; :func:`alpha_rows` broadcasts it against a batch when used.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (numbers.Real, np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a real number > 1 or an array of them; got {type(alpha).__name__} {alpha!r}")
    arr = np.asarray(alpha)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real number > 1 or an array of them; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got {alpha!r}")
    if not np.all(arr > 1):
        bad = arr if arr.ndim == 0 else arr[~(arr > 1)]
        raise _alpha_error(float(bad) if bad.ndim == 0 else bad, "> 1")
    if arr.ndim == 0:
        return float(arr)
    arr.flags.writeable = False
    return arr


def alpha_rows(alpha, z: np.ndarray, name: str = "alpha"):
    """α for the rows of ``z`` (..., K): a float stays a float, an array becomes ``(..., 1)``.

    An array α gives each row its own value. It broadcasts against the batch axes
    ``z.shape[:-1]``, or (the entmax package's form) against ``z.shape[:-1] + (1,)``; a
    shape that both readings accept but give different rows (``(T, 1)`` for ``z`` of
    shape ``(T, T, K)``) is refused as ambiguous. The batch itself is never broadcast.
    The result is float64: callers derive ``α − 1`` and ``1/(α − 1)`` from it.
    """
    if not isinstance(alpha, np.ndarray):
        return alpha
    batch = z.shape[:-1]
    readings = []
    for target in (batch, batch + (1,)):
        try:
            shape = np.broadcast_shapes(alpha.shape, target)
        except ValueError:
            continue
        if shape == target:
            readings.append(np.broadcast_to(alpha, target).reshape(batch))
    if not readings:
        raise ValueError(
            f"{name} of shape {alpha.shape} must broadcast against the batch axes of z, {batch} "
            f"(or {batch + (1,)}); z has shape {z.shape}"
        )
    if len(readings) == 2 and not np.array_equal(readings[0], readings[1]):
        raise ValueError(
            f"{name} of shape {alpha.shape} is ambiguous for z of shape {z.shape}: it broadcasts against the "
            f"batch axes {batch} and against {batch + (1,)} with different rows; give it the shape "
            f"{batch} or {batch + (1,)}"
        )
    return readings[0][..., None]
