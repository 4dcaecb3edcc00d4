"""The chain rule as a contraction: ``dE/dz[..., j] = Σ_i dE/da[..., i] · J[..., i, j]``.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> J = np.zeros((2, 3, 3))
>>> jac.diagonal(J)[...] = 1.0          # a writable view: J is now two identities
>>> jac.contract(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), J)
array([[1., 2., 3.],
       [4., 5., 6.]])
"""

from __future__ import annotations

import functools

import numpy as np
import opt_einsum

from .backend import backend_of
from .numerics.validation import as_float_array

__all__ = ["contract", "contract_kernel", "diagonal", "contraction_expression"]

#: same-dtype contractions use np.einsum when K is below EINSUM_MAX_K and J takes at least
#: EINSUM_MIN_BYTES (out of cache); otherwise np.matmul (BLAS). Measured on the 2-core
#: development machine: einsum 0.5-0.6x matmul's time for J of 20 MiB to 1.4 GiB with
#: K = 100 and 300, but 1.8-2.4x for J of 1-9 MiB.
EINSUM_MAX_K = 512
EINSUM_MIN_BYTES = 16 << 20


def diagonal(J: np.ndarray) -> np.ndarray:
    """Writable view of each Jacobian's diagonal.

    Parameters
    ----------
    J : ndarray, shape (..., K, K)
        A numpy array, or an array of another namespace (torch, JAX, CuPy,
        array-api-strict).

    Returns
    -------
    ndarray, shape (..., K)
        ``einsum('...jj->...j', J)``: a view, so writing to it writes to ``J``. For
        another namespace, the diagonals in J's namespace, dtype and device: a view where
        the namespace gives one (torch, CuPy), a new array for JAX (its arrays are
        immutable: update with ``J.at[...]``).
    """
    if (backend := backend_of(J)) is not None and getattr(backend, "diagonal", None) is not None:
        return backend.diagonal(J)
    if not isinstance(J, np.ndarray):
        raise TypeError(f"J must be a numpy array to take a writable diagonal view; got {type(J).__name__}")
    if J.ndim < 2 or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"J must have shape (..., K, K); got shape {J.shape}")
    return np.einsum("...jj->...j", J)


@functools.lru_cache(maxsize=256)
def contraction_expression(g_shape: tuple[int, ...], J_shape: tuple[int, ...]):
    """The opt_einsum expression ``'...i,...ij->...j'`` for these shapes, built once.

    Cached, so repeated calls with the same shapes reuse the contraction path.
    """
    return opt_einsum.contract_expression("...i,...ij->...j", g_shape, J_shape)


def contract(g, J) -> np.ndarray:
    """Push ``g = dE/da`` back through the Jacobian ``J = da/dz``.

    Parameters
    ----------
    g : array_like, shape (..., M)
        Upstream gradient dE/da.
    J : array_like, shape (..., M, K), or a :class:`~jacobians.JacobianOperator`
        ``J[..., i, j] = ∂a_i/∂z_j``.

    Returns
    -------
    ndarray, shape (..., K)
        ``einsum('...i,...ij->...j', g, J)``.

    Notes
    -----
    For float32/float64 arrays of one dtype the product is a batched vector–matrix
    product: ``np.einsum`` (one streaming pass over J) for a large J with K below
    :data:`~jacobians.contract.EINSUM_MAX_K`, ``np.matmul`` (BLAS) otherwise; other inputs go through
    the opt_einsum expression built once per pair of shapes
    (:func:`~jacobians.contract.contraction_expression`). A structured operator is applied without building
    a dense array.

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import contract
    >>> J = np.array([[[1.0, 2.0], [3.0, 4.0]]])     # one 2x2 Jacobian
    >>> contract(np.array([[1.0, 0.0]]), J)          # row 0 of J
    array([[1., 2.]])
    """
    if (backend := backend_of(g, J)) is not None:
        return backend.contract(g, J)
    if not isinstance(J, np.ndarray) and callable(getattr(J, "vjp", None)):
        return J.vjp(g)  # a JacobianOperator (this module stays below operators.py)
    J = as_float_array(J, "J", min_ndim=2)
    g = as_float_array(g, "g")
    if g.shape[:-1] != J.shape[:-2] or g.shape[-1] != J.shape[-2]:
        raise ValueError(
            f"g must have shape {J.shape[:-2] + J.shape[-2:-1]} to contract with J of shape "
            f"{J.shape} ((..., M) with (..., M, K)); got shape {g.shape}"
        )
    kernel = contract_kernel(g, J)
    if kernel == "einsum":
        # a large J of short rows: numpy's own sum-of-products loop streams it once at
        # memory speed, where BLAS (a threaded call per sample) is about twice as slow
        return np.einsum("...i,...ij->...j", g, J)
    if kernel == "matmul":
        return np.matmul(g[..., None, :], J)[..., 0, :]
    return contraction_expression(g.shape, J.shape)(g, J)


def contract_kernel(g: np.ndarray, J: np.ndarray) -> str:
    """Which kernel :func:`contract` uses for arrays ``g`` and ``J``.

    ``'einsum'`` (numpy's einsum: J of the same float dtype as g, K below
    :data:`EINSUM_MAX_K` and at least :data:`EINSUM_MIN_BYTES`), ``'matmul'`` (BLAS: any
    other J of g's dtype) or ``'opt_einsum'`` (mixed dtypes: the cached expression).

    Examples
    --------
    >>> import numpy as np
    >>> contract_kernel(np.ones((2, 3)), np.ones((2, 3, 3)))
    'matmul'
    >>> contract_kernel(np.ones((2, 3), np.float32), np.ones((2, 3, 3)))
    'opt_einsum'
    """
    if g.dtype != J.dtype:
        return "opt_einsum"
    if J.shape[-1] < EINSUM_MAX_K and J.nbytes >= EINSUM_MIN_BYTES:
        return "einsum"
    return "matmul"
