"""Finite-difference references: the independent referee of every closed form.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> z = np.random.default_rng(0).normal(size=(3, 4))
>>> J = jac.numerical_jacobian(jac.Softmax(), z)
>>> np.allclose(J, jac.Softmax().jacobian(z), atol=1e-9)
True
>>> g = jac.numerical_grad(lambda x: float((x ** 2).sum()), z)
>>> np.allclose(g, 2 * z, atol=1e-8)
True
"""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np

from .numerics.validation import as_float_array

__all__ = ["numerical_jacobian", "numerical_grad", "default_step", "FD_METHODS"]

FD_METHODS = ("central", "forward", "richardson")

# power of the machine epsilon that balances truncation and round-off error
_STEP_POWER = {"central": 1 / 3, "forward": 1 / 2, "richardson": 1 / 5}


def default_step(dtype, method: str = "central") -> float:
    """The relative step for ``method`` in ``dtype``: ``eps_machine ** p`` with p = 1/3
    (central), 1/2 (forward), 1/5 (Richardson)."""
    _check_method(method)
    return float(np.finfo(dtype).eps) ** _STEP_POWER[method]


def _check_method(method):
    if method not in FD_METHODS:
        raise ValueError(f"method must be one of {FD_METHODS}; got {method!r}")


def _resolve_eps(eps, dtype, method: str) -> float:
    """``eps`` as a float, or the default step; a finite number > 0 (not a bool)."""
    if eps is None:
        return default_step(dtype, method)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a positive real number or None; got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0; got {eps!r}")
    return eps


def _steps(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x + h, x − h)`` with ``h = eps · max(1, |x|)`` and the steps actually taken."""
    h = eps * np.maximum(1.0, np.abs(x))
    return x + h, x - h


def numerical_jacobian(
    f: Callable[[np.ndarray], np.ndarray],
    z,
    *,
    eps: float | None = None,
    method: str = "central",
    stack: bool = False,
) -> np.ndarray:
    """Finite-difference Jacobian of a batched function ``f: (..., K) -> (..., M)``.

    Column ``j`` of every sample's Jacobian comes from perturbing ``z[..., j]`` in all
    rows at once, so ``f`` is called 2K times on whole batches (K + 1 for
    ``'forward'``, 4K for ``'richardson'``), never N·K times. Rows must be independent
    (``f`` acts on each sample separately), as activations do.

    With ``stack=True`` the perturbed copies are stacked along a new leading axis and
    ``f`` is called once (twice for ``'forward'``) on an array of shape ``(2K, ..., K)``
    (``(K, ..., K)`` for ``'forward'``, ``(4K, ..., K)`` for ``'richardson'``): the same
    points, the same steps and the same differences, in one call instead of 2K. ``f``
    must then accept extra leading batch axes and treat them as more rows (every
    :class:`~jacobians.Activation` does; a function that reduces over the batch, or
    closes over targets of the batch's shape, does not).

    Parameters
    ----------
    f : callable
        Maps an array ``(..., K)`` to ``(..., M)``, e.g. an :class:`~jacobians.Activation`.
    z : array_like, shape (..., K)
    eps : float, optional
        Relative step: each entry moves by ``eps · max(1, |z|)``. Default:
        :func:`~jacobians.numerical.default_step` for ``z``'s dtype and ``method``.
    method : {'central', 'forward', 'richardson'}
        ``'richardson'`` combines central differences at h and h/2, error O(h⁴).
    stack : bool
        Call ``f`` once on all the perturbed copies stacked along a new leading axis
        (default False: one call per copy).

    Returns
    -------
    ndarray, shape (..., M, K)
        ``J[..., i, j] ≈ ∂f_i/∂z_j``, in ``z``'s dtype.
    """
    _check_method(method)
    z = as_float_array(z, "z")
    eps = _resolve_eps(eps, z.dtype, method)
    if not isinstance(stack, bool):
        raise TypeError(f"stack must be True or False; got {type(stack).__name__} {stack!r}")
    if stack:
        return _stacked_jacobian(f, z, eps, method).astype(z.dtype, copy=False)
    f0 = _call(f, z, z) if method == "forward" else None
    columns = []
    for j in range(z.shape[-1]):
        if method == "richardson":
            coarse = _central_column(f, z, j, eps)
            fine = _central_column(f, z, j, eps / 2)
            columns.append(fine + (fine - coarse) / 3)
        elif method == "central":
            columns.append(_central_column(f, z, j, eps))
        else:
            zp = z.copy()
            zp[..., j] = _steps(z[..., j], eps)[0]
            h = (zp[..., j] - z[..., j])[..., None]
            columns.append((_call(f, zp, z) - f0) / h)
    return np.stack(columns, axis=-1).astype(z.dtype, copy=False)


def _call(f, x, z):
    out = np.asarray(f(x))
    if out.shape[:-1] != z.shape[:-1]:
        raise ValueError(
            f"f must map (..., K) to (..., M) with the same batch axes; z has shape {z.shape}, "
            f"f(z) has shape {out.shape}"
        )
    return out


def _perturbed(z: np.ndarray, eps: float, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """``(X, x_j)``: K copies of ``z`` stacked on a new leading axis, copy ``j`` with
    ``z[..., j]`` moved by ``sign · h`` (h as in :func:`_steps`), and the moved entries."""
    K = z.shape[-1]
    X = np.broadcast_to(z, (K,) + z.shape).copy()
    idx = np.arange(K)
    plus, minus = _steps(z, eps)
    moved = np.moveaxis(plus if sign > 0 else minus, -1, 0)  # (K, ...): entry j of every row
    X[idx, ..., idx] = moved
    return X, moved


def _stacked_call(f, X):
    out = np.asarray(f(X))
    if out.shape[: X.ndim - 1] != X.shape[:-1]:
        raise ValueError(
            f"with stack=True, f must map (S, ..., K) to (S, ..., M); it was given shape {X.shape} and "
            f"returned shape {out.shape}"
        )
    return out


def _central_copies(z, eps):
    """``(X, h)``: the 2K copies of :func:`_perturbed` (K moved up, then K down) and the steps
    actually taken, exactly, shape (K, ..., 1)."""
    Xp, xp = _perturbed(z, eps, 1.0)
    Xm, xm = _perturbed(z, eps, -1.0)
    return np.concatenate([Xp, Xm]), (xp - xm)[..., None]


def _stacked_jacobian(f, z, eps, method):
    """Every column at once: ``(K, ..., M)`` differences from one call of ``f``, then moved
    to the last axis."""
    K = z.shape[-1]
    if method == "forward":
        f0 = _call(f, z, z)
        Xp, xp = _perturbed(z, eps, 1.0)
        h = (xp - np.moveaxis(z, -1, 0))[..., None]
        return np.moveaxis((_stacked_call(f, Xp) - f0) / h, 0, -1)
    parts = [_central_copies(z, e) for e in ((eps,) if method == "central" else (eps, eps / 2))]
    out = _stacked_call(f, np.concatenate([X for X, _ in parts]))
    cols = [(out[2 * K * i: 2 * K * i + K] - out[2 * K * i + K: 2 * K * (i + 1)]) / h for i, (_, h) in enumerate(parts)]
    J = cols[0] if method == "central" else cols[1] + (cols[1] - cols[0]) / 3  # Richardson: h and h/2
    return np.moveaxis(J, 0, -1)


def _central_column(f, z, j, eps):
    zp, zm = z.copy(), z.copy()
    zp[..., j], zm[..., j] = _steps(z[..., j], eps)
    h = (zp[..., j] - zm[..., j])[..., None]  # the step actually taken, exactly
    return (_call(f, zp, z) - _call(f, zm, z)) / h


def numerical_grad(
    fun: Callable[[np.ndarray], float],
    z,
    *,
    eps: float | None = None,
    method: str = "central",
) -> np.ndarray:
    """Finite-difference gradient of a scalar function of an array.

    ``fun`` may couple all entries (a mean over the batch, say), so each entry is moved
    on its own: 2·z.size calls for ``'central'`` (z.size + 1 for ``'forward'``, 4·z.size
    for ``'richardson'``). Keep ``z`` small.

    Parameters
    ----------
    fun : callable
        ``fun(z) -> scalar``.
    z : array_like
    eps, method
        As in :func:`numerical_jacobian`.

    Returns
    -------
    ndarray
        Shape and dtype of ``z``.
    """
    _check_method(method)
    z = as_float_array(z, "z", min_ndim=0)
    eps = _resolve_eps(eps, z.dtype, method)
    flat = z.reshape(-1)

    def value(x):
        out = np.asarray(fun(x.reshape(z.shape)))
        if out.size != 1:
            raise ValueError(f"fun must return a scalar; got an array of shape {out.shape}")
        return float(out.reshape(()))

    def central(i, step):
        xp, xm = flat.copy(), flat.copy()
        xp[i], xm[i] = _steps(flat[i], step)
        return (value(xp) - value(xm)) / float(xp[i] - xm[i])

    grad = np.empty(flat.shape, dtype=np.float64)
    f0 = value(flat) if method == "forward" else None
    for i in range(flat.size):
        if method == "central":
            grad[i] = central(i, eps)
        elif method == "richardson":
            coarse, fine = central(i, eps), central(i, eps / 2)
            grad[i] = fine + (fine - coarse) / 3
        else:
            xp = flat.copy()
            xp[i] = _steps(flat[i], eps)[0]
            grad[i] = (value(xp) - f0) / float(xp[i] - flat[i])
    return grad.reshape(z.shape).astype(z.dtype, copy=False)
