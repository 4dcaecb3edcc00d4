"""Small array helpers every generic formula shares: an array's device, the identity of its
dtype and device, and per-row diagonal blocks.

Imports no array library at module level (``array_api_compat`` is imported by
:func:`device_of` when called), so the activations and losses can import it on
``import jacobians``.
"""

from __future__ import annotations

__all__ = ["device_of", "eye_like", "diagonal_blocks"]


def device_of(x):
    """``array_api_compat.device(x)``: the device new arrays for ``x`` go on."""
    import array_api_compat

    return array_api_compat.device(x)


def eye_like(xp, x):
    """The identity ``(K, K)`` in ``x``'s dtype and on its device, ``K = x.shape[-1]``."""
    return xp.eye(x.shape[-1], dtype=x.dtype, device=device_of(x))


def diagonal_blocks(xp, d):
    """``diag(d)`` per row: ``(..., K) -> (..., K, K)``, zeros off the diagonal (chosen by
    ``where``, so an infinite diagonal entry never meets ``0 · inf``)."""
    eye = xp.eye(d.shape[-1], dtype=xp.bool, device=device_of(d))
    return xp.where(eye, d[..., None], xp.zeros_like(d)[..., None])
