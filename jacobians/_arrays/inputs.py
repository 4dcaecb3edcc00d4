"""The generic path's inputs: one namespace, floating arrays of one dtype, matching shapes."""

from __future__ import annotations

from ..xp.namespace import as_targets, namespace_name, namespace_of

__all__ = ["namespace_of", "float_input", "activation_input", "same_shape", "targets_like", "unsupported"]

#: floating dtypes that compute in float32 (as numpy's path does with float16)
_LOW = ("float16", "bfloat16")


def _dtype_name(xp, x) -> str:
    for name in ("float64", "float32", *_LOW):
        dt = getattr(xp, name, None)
        if dt is not None and x.dtype == dt:
            return name
    return str(x.dtype)


def float_input(xp, x, name: str):
    """``x`` as a float32 or float64 array of ``xp`` (float16 and bfloat16 become float32,
    as on numpy's path); a ``TypeError`` naming ``name`` for any other dtype."""
    kind = _dtype_name(xp, x)
    if kind in ("float32", "float64"):
        return x
    if kind in _LOW:
        return xp.astype(x, xp.float32)
    raise TypeError(f"{name} must be a floating array (float32 or float64); got a {namespace_name(xp)} array of dtype {x.dtype}")


def activation_input(z):
    """``(xp, z)``: z's namespace and z as a float32/float64 array with a class axis."""
    xp = namespace_of(z)
    z = float_input(xp, z, "z")
    if z.ndim < 1:
        raise ValueError("z must have a last axis of K classes, (..., K); got a 0-d array")
    return xp, z


def same_shape(xp, z, x, name: str):
    """``x`` checked to have z's shape and cast to z's dtype."""
    x = float_input(xp, x, name)
    if tuple(x.shape) != tuple(z.shape):
        raise ValueError(f"{name} must have the shape of z, {tuple(z.shape)}; got shape {tuple(x.shape)}")
    return x if x.dtype == z.dtype else xp.astype(x, z.dtype)


def targets_like(y, like):
    """Targets (numpy, a list, or ``like``'s namespace) on ``like``'s namespace and device."""
    return as_targets(y, like)


def unsupported(what: str, xp) -> NotImplementedError:
    """The error for what the generic path does not compute yet."""
    return NotImplementedError(
        f"{what} is not available for {namespace_name(xp)} arrays yet; "
        "pass numpy arrays (e.g. z.cpu().numpy() for torch) for it"
    )
