"""The numpy recipes of the seed question (shared/seeds/003: "Vectorizing softmax
cross-entropy gradient"), copied as they were written, and plain per-sample loops.

They are the "before" of this project: what people write today without it.
"""

from __future__ import annotations

import numpy as np


def softmax(x):
    # the seed's softmax (note: it shifts by the global max, not each row's)
    exp = np.exp(x - np.max(x))
    return exp / np.sum(exp, axis=1)[:, None]


def cross_entropy_derivative(y_true, y_pred):
    # dE/da, N x K
    N = len(y_true)
    return -(y_true / y_pred) / N


def softmax_derivative(Z):
    """The question's vectorized da/dz: tensordot, repeated identity, swapaxes."""
    N, K = Z.shape
    s = softmax(Z)[:, :, np.newaxis]
    a = np.tensordot(s, np.ones((1, K), dtype=Z.dtype), axes=([-1], [0]))
    I = np.repeat(np.eye(K, K, dtype=Z.dtype)[np.newaxis, :, :], N, axis=0)  # noqa: E741
    b = I - np.tensordot(np.ones((K, 1), dtype=Z.dtype), s.T, axes=([-1], [0])).T
    return a * np.swapaxes(b, 1, 2)


def da_dz_pp(z, sm=None):
    """The answer's recipe: einsum outer product plus the writable diagonal view."""
    if sm is None:
        sm = softmax(z)
    res = np.einsum("ij,ik->ijk", sm, -sm)
    np.einsum("ijj->ij", res)[...] += sm
    return res


def dE_dz_pp(y, z, sm=None):
    """The answer's dE/dz: softmax, dE/da, the full Jacobian, einsum."""
    if sm is None:
        sm = softmax(z)
    dE_da = cross_entropy_derivative(y, sm)
    da_dz = da_dz_pp(z, sm)
    return np.einsum("ij,ijk->ik", dE_da, da_dz)


def dE_dz_test2(dE_da, da_dz):
    """The question's per-sample contraction loop."""
    N, K = dE_da.shape
    dE_dz = np.zeros((N, K), dtype=dE_da.dtype)
    for n in range(N):
        dE_dz[n, :] = np.matmul(da_dz[n], dE_da[n, :, np.newaxis]).T
    return dE_dz


# -- per-sample loops -----------------------------------------------------------------------


def _softmax_row(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def loop_jacobian(z):
    """``diagflat(s) − s sᵀ`` one sample at a time."""
    N, K = z.shape
    J = np.empty((N, K, K), dtype=z.dtype)
    for n in range(N):
        s = _softmax_row(z[n])
        J[n] = np.diagflat(s) - np.outer(s, s)
    return J


def loop_vjp(z, g):
    """Per sample: build the Jacobian, multiply."""
    out = np.empty_like(z)
    for n in range(z.shape[0]):
        s = _softmax_row(z[n])
        out[n] = g[n] @ (np.diagflat(s) - np.outer(s, s))
    return out


def loop_softmax_ce(z, y):
    """Per sample: softmax, −log s_y, (s − e_y)/N."""
    N = z.shape[0]
    grad = np.empty_like(z)
    value = 0.0
    for n in range(N):
        s = _softmax_row(z[n])
        value -= np.log(s[y[n]])
        s[y[n]] -= 1
        grad[n] = s / N
    return value / N, grad
