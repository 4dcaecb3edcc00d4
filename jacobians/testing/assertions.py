"""Assertions for your own test suite: arrays compared with tolerances chosen from their
dtype, and on failure a message that says where and by how much they differ."""

from __future__ import annotations

import numpy as np

__all__ = ["assert_jacobian_close", "assert_grad_close", "default_tolerances"]

#: (rtol, atol) by the precision of the less precise of the two arrays compared
_TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-3),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float64): (1e-7, 1e-9),
}


def default_tolerances(*arrays) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing ``arrays``, from the least precise float dtype among them.

    float64: ``(1e-7, 1e-9)``; float32: ``(1e-4, 1e-5)``; float16: ``(1e-2, 1e-3)``.
    Integer and bool arrays count as float64. The float64 values leave room for a
    central-difference reference (whose error is about 1e-10 on entries of order one);
    pass tighter tolerances to compare two closed forms to round-off.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians.testing import default_tolerances
    >>> default_tolerances(np.zeros(2, np.float32), np.zeros(2))
    (0.0001, 1e-05)
    """
    worst = np.dtype(np.float64)
    for x in arrays:
        dt = np.asarray(x).dtype
        if dt.kind == "f" and dt in _TOLERANCES and dt.itemsize < worst.itemsize:
            worst = dt
    return _TOLERANCES[worst]


def _as_array(x, name: str) -> np.ndarray:
    dense = getattr(x, "dense", None)
    if callable(dense) and not isinstance(x, np.ndarray):  # a JacobianOperator
        x = dense()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    return arr


def _assert_close(
    actual, expected, rtol, atol, what: str, names: tuple[str, str]
) -> None:
    a = _as_array(actual, names[0])
    e = _as_array(expected, names[1])
    if a.shape != e.shape:
        raise AssertionError(
            f"{what}: shapes differ: {names[0]} has shape {a.shape}, "
            f"{names[1]} has shape {e.shape}"
        )
    d_rtol, d_atol = default_tolerances(a, e)
    rtol = d_rtol if rtol is None else float(rtol)
    atol = d_atol if atol is None else float(atol)
    if a.size == 0:
        return
    a64 = a.astype(np.float64)
    e64 = e.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - e64)
        same_inf = np.isinf(a64) & (a64 == e64)
        diff = np.where(same_inf, 0.0, diff)
        nan = np.isnan(a64) | np.isnan(e64)
        diff = np.where(nan, np.inf, diff)
        allowed = atol + rtol * np.abs(e64)
        bad = ~(diff <= allowed) | ((np.isinf(a64) | np.isinf(e64)) & ~same_inf)
        diff = np.where(bad & np.isinf(e64), np.inf, diff)
    if not bad.any():
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(e64 != 0, diff / np.abs(e64), np.where(diff == 0, 0.0, np.inf))
        rel = np.where(np.isnan(rel), np.inf, rel)
        excess = np.where(bad, diff / allowed, 0.0)
    worst = np.unravel_index(int(np.argmax(excess)), a.shape)
    i_abs = np.unravel_index(int(np.argmax(diff)), a.shape)
    i_rel = np.unravel_index(int(np.argmax(rel)), a.shape)

    def idx(i):
        return tuple(int(k) for k in i)

    lines = [
        f"{what} not close (rtol={rtol:g}, atol={atol:g}; "
        f"dtypes {a.dtype} and {e.dtype}): {int(bad.sum())} of {a.size} entries differ",
        f"  max abs error {diff[i_abs]:.6g} at index {idx(i_abs)}",
        f"  max rel error {rel[i_rel]:.6g} at index {idx(i_rel)}",
        f"  worst entry at index {idx(worst)}: {names[0]} = {float(a64[worst])!r}, "
        f"{names[1]} = {float(e64[worst])!r}",
    ]
    if nan.any():
        lines.append(f"  NaN at {int(nan.sum())} entries")
    raise AssertionError("\n".join(lines))


def assert_jacobian_close(
    J1, J2, *, rtol: float | None = None, atol: float | None = None
) -> None:
    """Assert that two batched Jacobians agree: ``|J1 − J2| <= atol + rtol·|J2|`` everywhere.

    Parameters
    ----------
    J1 : array_like or JacobianOperator, shape (..., K, K)
        The Jacobian under test (an operator is made dense).
    J2 : array_like or JacobianOperator, shape (..., K, K)
        The reference; relative errors are taken with respect to it.
    rtol, atol : float, optional
        Default: :func:`default_tolerances` of the two dtypes (float32 looser).

    Raises
    ------
    AssertionError
        When the shapes differ, or any entry is off (NaN counts as off); the message
        gives the number of entries off, the max absolute and relative errors with their
        indices, and the worst entry's two values.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians.testing import assert_jacobian_close
    >>> J = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    >>> assert_jacobian_close(J, J + 1e-12)
    >>> assert_jacobian_close(J, J.transpose(0, 2, 1))
    Traceback (most recent call last):
        ...
    AssertionError: Jacobians not close (rtol=1e-07, atol=1e-09; dtypes float64 and float64): 2 of 4 entries differ
      max abs error 1 at index (0, 0, 1)
      max rel error 0.5 at index (0, 1, 0)
      worst entry at index (0, 1, 0): actual = 3.0, expected = 2.0
    """
    _assert_close(J1, J2, rtol, atol, "Jacobians", ("actual", "expected"))


def assert_grad_close(
    g1, g2, *, rtol: float | None = None, atol: float | None = None
) -> None:
    """Assert that two gradients (or any arrays) agree: ``|g1 − g2| <= atol + rtol·|g2|``.

    Parameters
    ----------
    g1 : array_like, shape (..., K)
        The gradient under test.
    g2 : array_like, shape (..., K)
        The reference; relative errors are taken with respect to it.
    rtol, atol : float, optional
        Default: :func:`default_tolerances` of the two dtypes (float32 looser).

    Raises
    ------
    AssertionError
        As :func:`assert_jacobian_close`.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians.testing import assert_grad_close
    >>> assert_grad_close(np.float32([0.1, 0.2]), np.array([0.1, 0.2]))
    >>> assert_grad_close(np.array([0.1, 0.2]), np.array([0.1, 0.4]))
    Traceback (most recent call last):
        ...
    AssertionError: gradients not close (rtol=1e-07, atol=1e-09; dtypes float64 and float64): 1 of 2 entries differ
      max abs error 0.2 at index (1,)
      max rel error 0.5 at index (1,)
      worst entry at index (1,): actual = 0.2, expected = 0.4
    """
    _assert_close(g1, g2, rtol, atol, "gradients", ("actual", "expected"))
