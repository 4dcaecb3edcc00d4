"""The package's counter-based uniforms on any array API namespace, bitwise numpy's.

:func:`jacobians.numerics.sampling.uniforms_for_rows` computes, for the entry
``i = row·per_row + column``, SplitMix64 of the Weyl sequence ``x = i·γ + key (mod 2⁶⁴)``::

    x ^= x >> 30;  x *= 0xBF58476D1CE4E5B9
    x ^= x >> 27;  x *= 0x94D049BB133111EB
    x ^= x >> 31;  u = (x >> 11) · 2⁻⁵³

Not every namespace has 64-bit unsigned arithmetic: JAX without ``jax_enable_x64`` has no
64-bit integers at all, and torch's ``uint64``/``uint32`` lack shifts and products. So the
64-bit words are held here as 8 little-endian limbs of 8 bits, each in an ``int32`` (a
leading axis of length 8), and every step is emulated with ``int32`` ops of the standard
(``&``, ``|``, ``^``, ``<<``, ``>>``, ``*``, ``+``, ``sum``) that never leave ``[0, 2³¹)``:

* a product by a 64-bit constant ``c`` (limbs ``c_j``) mod 2⁶⁴ sums, for output limb k,
  ``Σ_{i+j=k} x_i·c_j`` (at most 8·255² < 2²⁰), then carries 8 bits at a time;
* a shift right by ``s = 8q + r`` gives limb k as ``(x_{k+q} >> r) | (x_{k+q+1} << (8−r)) & 255``;
* xor is limb by limb.

The result is the same integers as numpy's on every namespace and device, so a seed draws
the same Monte-Carlo columns everywhere.

Examples
--------
>>> import array_api_compat.numpy as xp
>>> from jacobians.numerics import sampling
>>> from jacobians.xp.random import uniforms_for_rows
>>> u = uniforms_for_rows(xp, 7, [0, 5, 2**40], 3)
>>> bool((u == sampling.uniforms_for_rows(7, [0, 5, 2**40], 3)).all())
True
"""

from __future__ import annotations

import array_api_compat
import numpy as np

__all__ = ["uniforms_for_rows", "float64_available"]

_LIMBS, _BITS, _MASK = 8, 8, 255
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1, _MUL2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _limbs_of(value: int) -> list[int]:
    """The 8 little-endian 8-bit limbs of ``value mod 2⁶⁴``."""
    value %= 1 << 64
    return [(value >> (_BITS * k)) & _MASK for k in range(_LIMBS)]


def _carry(xp, acc):
    """Limbs ``(8, ...)`` from per-limb sums ``acc`` (non-negative, < 2³¹ − 2²³): carries
    propagated, the carry out of the top limb dropped (mod 2⁶⁴)."""
    out, carry = [], None
    for k in range(_LIMBS):
        v = acc[k, ...] if carry is None else acc[k, ...] + carry
        out.append(v & _MASK)
        carry = v >> _BITS
    return xp.stack(out, axis=0)


def _mul_const(xp, x, c: int):
    """``x · c mod 2⁶⁴`` for limbs ``x`` ``(8, n)`` and a Python int ``c``."""
    cl = _limbs_of(c)
    # T[k, i] = c_{k−i}: output limb k gathers x_i · c_{k−i}
    table = [[cl[k - i] if k >= i else 0 for i in range(_LIMBS)] for k in range(_LIMBS)]
    T = xp.asarray(table, dtype=xp.int32, device=array_api_compat.device(x))
    acc = xp.sum(T[:, :, None] * x[None, :, :], axis=1, dtype=xp.int32)
    return _carry(xp, acc)


def _add(xp, x, y):
    """``x + y mod 2⁶⁴`` for limbs ``(8, ...)`` (broadcasting)."""
    return _carry(xp, x + y)


def _shift_right(xp, x, s: int):
    """``x >> s`` for limbs ``x`` ``(8, n)`` and ``0 < s < 64``."""
    q, r = divmod(s, _BITS)
    zeros = xp.zeros((q + 1,) + tuple(x.shape[1:]), dtype=x.dtype, device=array_api_compat.device(x))
    lo = xp.concat([x[q:, ...], zeros[:q, ...]], axis=0)
    if r == 0:
        return lo
    hi = xp.concat([x[q + 1 :, ...], zeros], axis=0)
    return (lo >> r) | ((hi << (_BITS - r)) & _MASK)


def _row_limbs(xp, row_ids, device):
    """The limbs ``(8, n)`` of the global row ids (host ids split exactly in numpy)."""
    if isinstance(row_ids, (range, list, tuple, np.ndarray, np.generic, int)):
        rows = np.asarray(row_ids).reshape(-1)
        if rows.size and rows.dtype.kind not in "iu":
            raise TypeError(f"row_ids must be integers; got dtype {rows.dtype}")
        if rows.size and int(rows.min()) < 0:
            raise ValueError(f"row_ids must be non-negative; got a minimum of {int(rows.min())}")
        rows = rows.astype(np.uint64)
        limbs = np.stack([(rows >> np.uint64(_BITS * k)) & np.uint64(_MASK) for k in range(_LIMBS)])
        return xp.asarray(limbs.astype(np.int32), device=device)
    rows = xp.reshape(row_ids, (-1,))
    if not xp.isdtype(rows.dtype, "integral"):
        raise TypeError(f"row_ids must be integers; got dtype {rows.dtype}")
    width = xp.iinfo(rows.dtype).bits
    zero = xp.zeros(rows.shape, dtype=xp.int32, device=device)
    limbs = [
        xp.astype((rows >> (_BITS * k)) & _MASK, xp.int32) if _BITS * k < width else zero for k in range(_LIMBS)
    ]
    return array_api_compat.to_device(xp.stack(limbs, axis=0), device)


def float64_available(xp, device=None) -> bool:
    """Whether ``xp`` has float64 on ``device`` (False on JAX without ``jax_enable_x64``)."""
    return "float64" in xp.__array_namespace_info__().dtypes(device=device, kind="real floating")


def uniforms_for_rows(xp, key: int, row_ids, per_row: int, *, device=None, dtype=None):
    """Uniforms in ``[0, 1)``, shape ``(len(row_ids), per_row)``, on ``xp``: a function of
    (key, global row, column) only, bitwise :func:`jacobians.numerics.sampling.uniforms_for_rows`.

    Parameters
    ----------
    xp : namespace
    key : int
        The seed's key (:func:`jacobians.numerics.sampling.seed_key`), taken mod 2⁶⁴.
    row_ids : array_like of non-negative integers, shape ``(n,)`` (flattened)
        Global row indices: a numpy array, range or list (split into limbs exactly on the
        host, any value below 2⁶⁴) or an integer array of ``xp`` (its dtype's range: on JAX
        without x64 that is int32).
    per_row : int
        Uniforms a row (columns), ``≥ 1``.
    device : optional
        Where the result lives (default: ``row_ids``' device for an array of ``xp``, else
        the namespace's default).
    dtype : optional
        ``xp.float64`` or ``xp.float32``; default float64 where the namespace has it on the
        device, else float32.

    Returns
    -------
    array, shape ``(n, per_row)``
        float64: ``u = (x >> 11)·2⁻⁵³``, the 53-bit value summed exactly from its limbs —
        the same bits as numpy's. float32 (asked for, or where float64 is missing: JAX
        without x64): ``u₃₂ = (x >> 40)·2⁻²⁴``, the top 24 bits, i.e. numpy's float64 uniform
        truncated (not rounded) to the float32 grid, ``u₃₂ = ⌊u·2²⁴⌋/2²⁴``: exact in float32,
        still in ``[0, 1)`` (rounding could give 1.0) and within 2⁻²⁴ below numpy's ``u``.
    """
    if isinstance(per_row, bool) or not isinstance(per_row, (int, np.integer)) or per_row < 1:
        raise ValueError(f"per_row must be an int >= 1; got {per_row!r}")
    per_row = int(per_row)
    if device is None and not isinstance(row_ids, (range, list, tuple, np.ndarray, np.generic, int)):
        device = array_api_compat.device(row_ids)
    if dtype is None:
        dtype = xp.float64 if float64_available(xp, device) else xp.float32
    if dtype not in (xp.float64, xp.float32):
        raise ValueError(f"dtype must be float64 or float32; got {dtype}")
    if dtype == xp.float64 and not float64_available(xp, device):
        raise TypeError("float64 is not available on this namespace/device (JAX: enable jax_enable_x64); ask float32")
    rows = _row_limbs(xp, row_ids, device)  # (8, n)
    n = rows.shape[1]
    cols = np.arange(per_row, dtype=np.uint64)
    col_limbs = np.stack([(cols >> np.uint64(_BITS * k)) & np.uint64(_MASK) for k in range(_LIMBS)])
    cols = xp.asarray(col_limbs.astype(np.int32), device=device)  # (8, per_row)
    idx = _mul_const(xp, rows, per_row)[:, :, None] + cols[:, None, :]  # (8, n, per_row), sums < 2⁹
    x = xp.reshape(_carry(xp, idx), (_LIMBS, n * per_row))
    key_limbs = xp.reshape(xp.asarray(_limbs_of(key), dtype=xp.int32, device=device), (_LIMBS, 1))
    x = _add(xp, _mul_const(xp, x, _GOLDEN), key_limbs)
    x = x ^ _shift_right(xp, x, 30)
    x = _mul_const(xp, x, _MUL1)
    x = x ^ _shift_right(xp, x, 27)
    x = _mul_const(xp, x, _MUL2)
    x = x ^ _shift_right(xp, x, 31)
    if dtype == xp.float32:
        top = x[5, ...] + (x[6, ...] << 8) + (x[7, ...] << 16)  # x >> 40: 24 bits, exact in float32
        u = xp.astype(top, xp.float32) * 2.0**-24
    else:
        y = _shift_right(xp, x, 11)  # 53 bits: every partial sum below is an exact integer
        u = xp.astype(y[0, ...], xp.float64) * 2.0**-53
        for k in range(1, 7):
            u = u + xp.astype(y[k, ...], xp.float64) * 2.0 ** (8 * k - 53)
    return xp.reshape(u, (n, per_row))
