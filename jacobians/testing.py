"""Assertions and plain loop references for your own test suite.

Two kinds of tools, usable from any pytest suite:

* :func:`assert_jacobian_close` and :func:`assert_grad_close` compare arrays with
  tolerances chosen from their dtype and, on failure, say where and by how much they
  differ;
* loop references — :func:`loop_forward`, :func:`loop_jacobian`, :func:`loop_vjp`,
  :func:`loop_jvp`, :func:`loop_loss` and :func:`loop_head` — compute what the toolkit
  computes the obvious way: one sample at a time, in float64, with ``np.diag`` and
  ``np.outer``, from the textbook definition of each built-in activation and loss
  (torch's definitions for the losses). They share no code with the library's kernels,
  so they are an independent referee, and slow: keep the batches small.

The references dispatch on the exact class of the activation or loss (a subclass may
change the math); a class without a reference raises ``TypeError``. Use
:func:`jacobians.numerical_jacobian` / :func:`jacobians.numerical_grad` for your own
classes.

Examples
--------
>>> import numpy as np
>>> import jacobians as jac
>>> from jacobians import testing
>>> z = np.random.default_rng(0).normal(size=(4, 3))
>>> testing.assert_jacobian_close(jac.Softmax().jacobian(z), testing.loop_jacobian(jac.Softmax(), z))
>>> y = np.array([0, 2, 1, 1])
>>> head = jac.Head(jac.Softmax(), jac.CrossEntropy(label_smoothing=0.1))
>>> value, grad = testing.loop_head(head, z, y)
>>> testing.assert_grad_close(head.grad(z, y), grad)
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np

from ._validation import alpha_rows
from .activations import (
    Entmax,
    Entmax15,
    Identity,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Sparsemax,
    Tanh,
)
from .losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    Entmax15Loss,
    EntmaxLoss,
    Huber,
    KLDivergence,
    MeanAbsoluteError,
    MeanSquaredError,
    NLLLoss,
    SparsemaxLoss,
)

__all__ = [
    "assert_jacobian_close",
    "assert_grad_close",
    "default_tolerances",
    "loop_forward",
    "loop_jacobian",
    "loop_vjp",
    "loop_jvp",
    "loop_loss",
    "loop_head",
    "ACTIVATION_REFERENCES",
    "LOSS_REFERENCES",
]

# ----------------------------------------------------------------------------------------
# assertions
# ----------------------------------------------------------------------------------------

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


def _assert_close(actual, expected, rtol, atol, what: str, names: tuple[str, str]) -> None:
    a = _as_array(actual, names[0])
    e = _as_array(expected, names[1])
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shapes differ: {names[0]} has shape {a.shape}, {names[1]} has shape {e.shape}")
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
        f"{what} not close (rtol={rtol:g}, atol={atol:g}; dtypes {a.dtype} and {e.dtype}): "
        f"{int(bad.sum())} of {a.size} entries differ",
        f"  max abs error {diff[i_abs]:.6g} at index {idx(i_abs)}",
        f"  max rel error {rel[i_rel]:.6g} at index {idx(i_rel)}",
        f"  worst entry at index {idx(worst)}: {names[0]} = {float(a64[worst])!r}, {names[1]} = {float(e64[worst])!r}",
    ]
    if nan.any():
        lines.append(f"  NaN at {int(nan.sum())} entries")
    raise AssertionError("\n".join(lines))


def assert_jacobian_close(J1, J2, *, rtol: float | None = None, atol: float | None = None) -> None:
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


def assert_grad_close(g1, g2, *, rtol: float | None = None, atol: float | None = None) -> None:
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


# ----------------------------------------------------------------------------------------
# activations, one sample at a time: (a, J) of a 1-d float64 sample
# ----------------------------------------------------------------------------------------


def _softmax_sample(act, z):
    T = float(act.temperature)
    x = z / T
    e = np.exp(x - x.max())
    s = e / e.sum()
    return s, (np.diag(s) - np.outer(s, s)) / T


def _log_softmax_sample(act, z):
    m = z.max()
    lse = m + math.log(np.exp(z - m).sum())
    a = z - lse
    s = np.exp(a)
    K = z.size
    return a, np.eye(K) - np.outer(np.ones(K), s)  # J[i, j] = δ_ij − s_j


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def _elementwise(forward: Callable, derivative: Callable):
    def sample(act, z):
        return forward(act, z), np.diag(derivative(act, z))

    return sample


def _tanh_derivative(act, z):
    with np.errstate(over="ignore"):
        return 1.0 / np.cosh(z) ** 2


_sigmoid_sample = _elementwise(
    lambda act, z: np.exp(_log_sigmoid(z)),
    lambda act, z: np.exp(_log_sigmoid(z) + _log_sigmoid(-z)),  # σ(z) σ(−z)
)
_tanh_sample = _elementwise(lambda act, z: np.tanh(z), _tanh_derivative)
_relu_sample = _elementwise(lambda act, z: np.where(z > 0, z, 0.0), lambda act, z: np.where(z > 0, 1.0, 0.0))
_leaky_relu_sample = _elementwise(
    lambda act, z: np.where(z > 0, z, float(act.slope) * z),
    lambda act, z: np.where(z > 0, 1.0, float(act.slope)),
)
_identity_sample = _elementwise(lambda act, z: z.copy(), lambda act, z: np.ones_like(z))
_softplus_sample = _elementwise(lambda act, z: np.logaddexp(0.0, z), lambda act, z: np.exp(_log_sigmoid(z)))


#: the points a bisection step evaluates the mass at, as fractions of the bracket
_GRID = np.arange(1, 64) / 64.0


def _bisect_threshold(x: np.ndarray, mass: Callable[[np.ndarray], np.ndarray], support_only: bool = False) -> float:
    """τ in [max(x) − 1, max(x)] with ``mass(τ) = 1``, for a decreasing ``mass``.

    Bisection on τ, 63 points a step: ``mass(t)`` takes the points ``t`` (G,) and returns the
    mass at each, (G,); the bracket ``[lo, hi)`` (``mass(lo) >= 1 > mass(hi)``) shrinks 64-fold
    a step until no point lies strictly inside it (about 9 steps instead of 53).
    ``support_only``: stop as soon as no entry of ``x`` lies in ``[lo, hi]``: then ``x > τ``
    is the support for every τ of the bracket, the root's included (usually 1 or 2 steps)."""
    lo, hi = float(x.max()) - 1.0, float(x.max())
    for _ in range(200):
        if support_only and not ((x >= lo) & (x <= hi)).any():
            break
        t = lo + (hi - lo) * _GRID
        t = t[(t > lo) & (t < hi)]
        if not t.size:
            break
        above = np.asarray(mass(t)) >= 1.0
        k = int(np.count_nonzero(above))  # the mass decreases in t: the points with mass >= 1 come first
        if k:
            lo = float(t[k - 1])
        if k < t.size:
            hi = float(t[k])
    return 0.5 * (lo + hi)


def _sparsemax_probs(z):
    x = z - z.max()
    tau = _bisect_threshold(x, lambda t: np.maximum(x - t[:, None], 0.0).sum(axis=1), support_only=True)
    support = x > tau
    if not support.any():
        support = x == x.max()
    tau = (x[support].sum() - 1.0) / support.sum()  # exact on the support
    return np.maximum(x - tau, 0.0)


def _simplex_sample(probs: Callable, weights: Callable):
    """``sample(act, z)`` of a mapping ``p = probs(act, z/T)`` with Jacobian
    ``(diag(g) − g gᵀ/Σg)/T``, ``g = weights(act, p)``."""

    def sample(act, z):
        T = float(act.temperature)
        p = probs(act, (z - z.max()) / T)
        g = weights(act, p) / T
        return p, np.diag(g) - np.outer(g, g) / g.sum()

    return sample


def _entmax15_probs(z):
    x = (z - z.max()) / 2.0
    tau = _bisect_threshold(x, lambda t: (np.maximum(x - t[:, None], 0.0) ** 2).sum(axis=1), support_only=True)
    support = x > tau
    if not support.any():
        support = x == x.max()
    xs = x[support]
    k = xs.size
    # Σ_S (x_j − τ)² = 1: the smaller root of k τ² − 2τ Σx + Σx² − 1 = 0
    disc = max(xs.sum() ** 2 - k * ((xs * xs).sum() - 1.0), 0.0)
    tau = (xs.sum() - math.sqrt(disc)) / k
    return np.maximum(x - tau, 0.0) ** 2


def _entmax_probs(z, alpha: float):
    """α-entmax of one row: bisection on τ, then Newton on the support, all in float64."""
    x = (alpha - 1.0) * (z - z.max())
    beta = 1.0 / (alpha - 1.0)
    tau = _bisect_threshold(x, lambda t: (np.maximum(x - t[:, None], 0.0) ** beta).sum(axis=1))
    support = x > tau
    if not support.any():
        support = x == x.max()
    xs = x[support]
    for _ in range(8):  # exact on the support: Newton on Σ_S (x_j − τ)^β = 1, kept below min x_S
        u = xs - tau
        step = ((u**beta).sum() - 1.0) / (beta * (u ** (beta - 1.0)).sum())
        if not (tau + step < xs.min()) or step == 0:
            break
        tau += step
    return np.maximum(x - tau, 0.0) ** beta


_sparsemax_sample = _simplex_sample(lambda act, x: _sparsemax_probs(x), lambda act, p: (p > 0).astype(np.float64))
_entmax15_sample = _simplex_sample(lambda act, x: _entmax15_probs(x), lambda act, p: np.sqrt(p))
_entmax_sample = _simplex_sample(
    lambda act, x: _entmax_probs(x, float(act.alpha)),
    lambda act, p: np.where(p > 0, np.where(p > 0, p, 1.0) ** (2.0 - float(act.alpha)), 0.0),
)


#: activation class -> ``sample(activation, z_1d) -> (a, J)`` in float64
ACTIVATION_REFERENCES: dict[type, Callable] = {
    Softmax: _softmax_sample,
    LogSoftmax: _log_softmax_sample,
    Sigmoid: _sigmoid_sample,
    Tanh: _tanh_sample,
    ReLU: _relu_sample,
    LeakyReLU: _leaky_relu_sample,
    Identity: _identity_sample,
    Softplus: _softplus_sample,
    Sparsemax: _sparsemax_sample,
    Entmax15: _entmax15_sample,
    Entmax: _entmax_sample,
}


def _reference(table: dict, obj, kind: str) -> Callable:
    ref = table.get(type(obj))
    if ref is None:
        known = ", ".join(sorted(cls.__name__ for cls in table))
        raise TypeError(
            f"no loop reference for the {kind} {type(obj).__name__}; references exist for: {known}. "
            f"Check your own classes against jacobians.numerical_jacobian / numerical_grad."
        )
    return ref


def _as_rows(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise ValueError(f"{name} must have shape (..., K); got a 0-d array")
    return arr.astype(np.float64)


def _row_objects(obj, z: np.ndarray) -> list:
    """``obj`` for each row of ``z``: copies with a scalar ``alpha`` when it has one per row."""
    n = int(np.prod(z.shape[:-1], dtype=np.int64))
    if not isinstance(getattr(obj, "alpha", None), np.ndarray):
        return [obj] * n
    out = []
    for a in alpha_rows(obj.alpha, z).reshape(-1):
        row = copy.copy(obj)
        row.alpha = float(a)
        out.append(row)
    return out


def _per_sample(activation, z):
    ref = _reference(ACTIVATION_REFERENCES, activation, "activation")
    z = _as_rows(z, "z")
    K = z.shape[-1]
    rows = z.reshape(-1, K)
    a = np.empty_like(rows)
    J = np.empty((rows.shape[0], K, K))
    for n, act in enumerate(_row_objects(activation, z)):
        a[n], J[n] = ref(act, rows[n])
    return z, a.reshape(z.shape), J.reshape(z.shape + (K,))


def loop_forward(activation, z) -> np.ndarray:
    """The activation's output, one sample at a time, in float64.

    Parameters
    ----------
    activation : Activation
        A built-in activation (see :data:`ACTIVATION_REFERENCES`).
    z : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K), float64

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_forward
    >>> loop_forward(jac.Sparsemax(), np.array([0.5, 0.2, -2.0]))
    array([0.65, 0.35, 0.  ])
    """
    return _per_sample(activation, z)[1]


def loop_jacobian(activation, z) -> np.ndarray:
    """The dense Jacobian ``J[..., i, j] = ∂a_i/∂z_j``, one sample at a time, in float64.

    softmax ``(diag(s) − s sᵀ)/T``; log-softmax ``I − 1 sᵀ``; elementwise activations
    ``diag(f'(z))``; sparsemax, 1.5-entmax and α-entmax ``(diag(g) − g gᵀ/Σg)/T`` with the
    mapping of ``z/T`` found by bisection on its threshold τ and then solved exactly on its
    support (in closed form, or by Newton's method for α-entmax).

    Parameters
    ----------
    activation : Activation
        A built-in activation.
    z : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K, K), float64

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_jacobian
    >>> loop_jacobian(jac.LogSoftmax(), np.log([0.25, 0.75]))   # not symmetric
    array([[ 0.75, -0.75],
           [-0.25,  0.25]])
    """
    return _per_sample(activation, z)[2]


def _check_like(x, name: str, z: np.ndarray) -> np.ndarray:
    x = _as_rows(x, name)
    if x.shape != z.shape:
        raise ValueError(f"{name} must have the shape of z, {z.shape}; got shape {x.shape}")
    return x


def loop_vjp(activation, z, g) -> np.ndarray:
    """``g_n @ J_n`` for each sample n (dE/dz from ``g = dE/da``), in float64.

    Parameters
    ----------
    activation : Activation
    z, g : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K)

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_vjp
    >>> loop_vjp(jac.Softmax(), np.zeros(2), np.array([1.0, 0.0]))
    array([ 0.25, -0.25])
    """
    z, _, J = _per_sample(activation, z)
    return _vjp_rows(z, J, g)


def _vjp_rows(z, J, g) -> np.ndarray:
    """``g_n @ J_n`` for each sample n, given the samples' Jacobians ``J`` of ``z`` (float64 rows)."""
    g = _check_like(g, "g", z).reshape(-1, z.shape[-1])
    J = J.reshape(-1, z.shape[-1], z.shape[-1])
    return np.array([g[n] @ J[n] for n in range(g.shape[0])]).reshape(z.shape)


def loop_jvp(activation, z, v) -> np.ndarray:
    """``J_n @ v_n`` for each sample n (the directional derivative along ``v``), in float64.

    Parameters
    ----------
    activation : Activation
    z, v : array_like, shape (..., K)

    Returns
    -------
    ndarray, shape (..., K)

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_jvp
    >>> loop_jvp(jac.LogSoftmax(), np.log([0.25, 0.75]), np.array([1.0, 0.0]))
    array([ 0.75, -0.25])
    """
    z, _, J = _per_sample(activation, z)
    v = _check_like(v, "v", z).reshape(-1, z.shape[-1])
    J = J.reshape(-1, z.shape[-1], z.shape[-1])
    return np.array([J[n] @ v[n] for n in range(v.shape[0])]).reshape(z.shape)


# ----------------------------------------------------------------------------------------
# losses, one sample at a time, torch's definitions
# ----------------------------------------------------------------------------------------


def _class_rows(a: np.ndarray, y, ignore_index=None):
    """Per sample: ``(index or None, target row or None, ignored)`` from index or probability targets."""
    y = np.asarray(y)
    K = a.shape[-1]
    if y.shape == a.shape[:-1] and y.dtype.kind in "iu":
        out = []
        for t in y.reshape(-1):
            t = int(t)
            if ignore_index is not None and t == ignore_index:
                out.append((t, None, True))
                continue
            if not 0 <= t < K:
                raise ValueError(f"y: class index {t} is out of range for K = {K}")
            row = np.zeros(K)
            row[t] = 1.0
            out.append((t, row, False))
        return True, out
    if y.shape == a.shape:
        return False, [(None, row, False) for row in y.astype(np.float64).reshape(-1, K)]
    raise ValueError(f"y must be int indices of shape {a.shape[:-1]} or rows of shape {a.shape}; got {y.shape} {y.dtype}")


def _weights(loss, K: int) -> np.ndarray:
    w = getattr(loss, "weight", None)
    return np.ones(K) if w is None else np.asarray(w, dtype=np.float64)


def _cross_entropy_rows(loss, a, y):
    """torch ``cross_entropy`` (on ``log a``): smoothing, class weights, ignore_index."""
    K = a.shape[-1]
    eps = float(loss.label_smoothing)
    w = _weights(loss, K)
    is_index, targets = _class_rows(a, y, loss.ignore_index)
    values, grads, denom = [], [], 0.0
    for a_n, (t, row, ignored) in zip(a.reshape(-1, K), targets):
        if ignored:
            values.append(0.0)
            grads.append(np.zeros(K))
            continue
        log_a = np.log(a_n)
        if is_index:
            # (1 − ε) · nll term + ε/K · Σ_k w_k (−log a_k)  (aten cross_entropy_loss_label_smoothing)
            value = (1 - eps) * w[t] * -log_a[t] + eps / K * np.sum(w * -log_a)
            grad = np.zeros(K)
            grad -= eps / K * w / a_n
            grad[t] -= (1 - eps) * w[t] / a_n[t]
            denom += w[t]
        else:
            q = row * (1 - eps) + eps / K  # aten cross_entropy_loss_prob_target
            value = -np.sum(w * q * log_a)
            grad = -w * q / a_n
            denom += 1.0
        values.append(value)
        grads.append(grad)
    return np.array(values), np.array(grads), denom


def _nll_rows(loss, a, y):
    """torch ``nll_loss`` on log-probabilities ``a``; probability rows give ``−Σ w y a`` over N."""
    K = a.shape[-1]
    w = _weights(loss, K)
    is_index, targets = _class_rows(a, y, loss.ignore_index)
    values, grads, denom = [], [], 0.0
    for a_n, (t, row, ignored) in zip(a.reshape(-1, K), targets):
        grad = np.zeros(K)
        if ignored:
            values.append(0.0)
        elif is_index:
            values.append(-w[t] * a_n[t])
            grad[t] = -w[t]
            denom += w[t]
        else:
            values.append(-np.sum(w * row * a_n))
            grad = -w * row
            denom += 1.0
        grads.append(grad)
    return np.array(values), np.array(grads), denom


def _kl_rows(loss, a, y):
    """torch ``kl_div(log a, y)`` summed per sample: ``Σ_k y_k (log y_k − log a_k)``, 0 log 0 = 0."""
    K = a.shape[-1]
    _, targets = _class_rows(a, y)
    values, grads = [], []
    for a_n, (_, row, _) in zip(a.reshape(-1, K), targets):
        pos = row > 0
        values.append(np.sum(row[pos] * (np.log(row[pos]) - np.log(a_n[pos]))))
        grads.append(-row / a_n)
    return np.array(values), np.array(grads), float(len(targets))


def _elementwise_rows(per_sample: Callable):
    def rows(loss, a, y):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != a.shape:
            raise ValueError(f"y must have the shape of a, {a.shape}; got {y.shape}")
        K = a.shape[-1]
        pairs = [per_sample(loss, a_n, y_n) for a_n, y_n in zip(a.reshape(-1, K), y.reshape(-1, K))]
        values = np.array([v for v, _ in pairs]).reshape(-1, K)
        grads = np.array([g for _, g in pairs]).reshape(-1, K)
        return values, grads, float(values.size)

    return rows


def _bce_sample(loss, a, y):
    """torch ``binary_cross_entropy`` (logs clamped at −100, gradient's a(1 − a) at 1e-12),
    ``pos_weight`` as in ``binary_cross_entropy_with_logits``, Keras smoothing ``y(1 − ε) + ε/2``."""
    eps = float(loss.label_smoothing)
    y = y * (1 - eps) + eps / 2
    pw = np.ones_like(a) if loss.pos_weight is None else np.broadcast_to(np.asarray(loss.pos_weight, np.float64), a.shape)
    with np.errstate(divide="ignore"):
        log_a = np.maximum(np.log(a), -100.0)
        log_1ma = np.maximum(np.log1p(-a), -100.0)
    value = -(pw * y * log_a + (1 - y) * log_1ma)
    # d/da of −(p y log a + (1 − y) log(1 − a)) = (−p y (1 − a) + (1 − y) a) / (a (1 − a))
    grad = (-pw * y * (1 - a) + (1 - y) * a) / np.maximum(a * (1 - a), float(np.float32(1e-12)))  # torch: 1e-12f
    return value, grad


def _huber_sample(loss, a, y):
    d = float(loss.delta)
    x = a - y
    small = np.abs(x) <= d
    value = np.where(small, 0.5 * x**2, d * (np.abs(x) - 0.5 * d))
    grad = np.where(small, x, d * np.sign(x))
    return value, grad


def _tsallis(p: np.ndarray, alpha: float) -> float:
    return (1.0 - np.sum(p**alpha)) / (alpha * (alpha - 1.0))


def _fenchel_young_rows(probs: Callable):
    """Rows of a Fenchel–Young loss whose mapping of one row is ``probs(z_1d, α)``."""

    def rows(loss, z, y):
        K = z.shape[-1]
        _, targets = _class_rows(z, y, loss.ignore_index)
        values, grads = [], []
        for loss_n, z_n, (_, row, ignored) in zip(_row_objects(loss, z), z.reshape(-1, K), targets):
            if ignored:
                values.append(0.0)
                grads.append(np.zeros(K))
                continue
            alpha = float(loss_n.alpha)
            p = probs(z_n, alpha)
            # ⟨z, p − y⟩ with Σp = 1, written around m = max z so that huge logits stay exact
            m = z_n.max()
            values.append((z_n - m) @ (p - row) + m * (1.0 - row.sum()) + _tsallis(p, alpha) - _tsallis(row, alpha))
            grads.append(p - row)
        return np.array(values), np.array(grads), float(sum(not ignored for *_, ignored in targets))

    return rows


#: loss class -> ``rows(loss, a, y) -> (values, per-row grads, denominator of 'mean')``
LOSS_REFERENCES: dict[type, Callable] = {
    CrossEntropy: _cross_entropy_rows,
    NLLLoss: _nll_rows,
    KLDivergence: _kl_rows,
    BinaryCrossEntropy: _elementwise_rows(_bce_sample),
    MeanSquaredError: _elementwise_rows(lambda loss, a, y: ((a - y) ** 2, 2 * (a - y))),
    MeanAbsoluteError: _elementwise_rows(lambda loss, a, y: (np.abs(a - y), np.sign(a - y))),
    Huber: _elementwise_rows(_huber_sample),
    SparsemaxLoss: _fenchel_young_rows(lambda z, alpha: _sparsemax_probs(z)),
    Entmax15Loss: _fenchel_young_rows(lambda z, alpha: _entmax15_probs(z)),
    EntmaxLoss: _fenchel_young_rows(_entmax_probs),
}


def loop_loss(loss, a, y):
    """``(value, dE/da)`` of a built-in loss, one sample at a time, in float64.

    Implements torch's definitions: ``cross_entropy`` (label smoothing, class weights,
    ``ignore_index``; with index targets ``'mean'`` divides by the summed weights of the
    non-ignored targets, with probability targets by N), ``nll_loss``,
    ``binary_cross_entropy`` (with its clamps; Keras smoothing; ``pos_weight``),
    ``mse_loss``, ``l1_loss``, ``huber_loss``, ``kl_div(..., 'batchmean')`` (over all
    samples), and the Fenchel–Young losses ``⟨z, p − y⟩ + H(p) − H(y)`` (Tsallis H) of the
    logits (``ignore_index`` as for cross-entropy; α per row where the loss has an array).
    The loss's ``reduction`` is applied; ``'none'`` gives ``(...,)`` for class losses and
    ``(..., K)`` for elementwise ones.

    Parameters
    ----------
    loss : Loss
        A built-in loss (see :data:`LOSS_REFERENCES`).
    a : array_like, shape (..., K)
        The loss's input (probabilities, log-probabilities, or logits for the
        Fenchel–Young losses). Logs are taken as they are: use ``a > 0``.
    y : array_like
        Integer indices ``(...,)`` or rows ``(..., K)``.

    Returns
    -------
    value : float or ndarray
    grad : ndarray, shape (..., K), float64
        The gradient of ``value`` (of each entry of it for ``'none'``).

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_loss
    >>> a = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4]])
    >>> value, grad = loop_loss(jac.CrossEntropy(), a, np.array([0, 1]))
    >>> round(value, 6)             # (−log 0.7 − log 0.5) / 2
    0.524911
    >>> grad
    array([[-0.71428571,  0.        ,  0.        ],
           [ 0.        , -1.        ,  0.        ]])
    """
    rows = _reference(LOSS_REFERENCES, loss, "loss")
    a = _as_rows(a, "a")
    values, grads, denom = rows(loss, a, y)
    grads = grads.reshape(a.shape)
    elementwise = values.ndim == 2
    reduction = loss.reduction
    if reduction == "none":
        return values.reshape(a.shape if elementwise else a.shape[:-1]), grads
    total = float(np.sum(values))  # a Python float, as torch's .item()
    if reduction == "sum":
        return total, grads
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    if denom == 0:  # 'mean' over nothing: torch's value is nan and its autograd's gradient 0
        return math.nan, np.zeros(a.shape)
    return float(total / denom), grads / denom


def loop_head(head, z, y):
    """``(value, dE/dz)`` of a :class:`~jacobians.Head`, from the loop references.

    The loss's gradient with respect to the activation's output, pushed back through
    each sample's Jacobian (:func:`loop_vjp`); a Fenchel–Young loss paired with its own
    mapping is a loss of the logits that mapping sees, ``z / T``: dE/dz is its own gradient
    over T.

    Parameters
    ----------
    head : Head
        Built from a built-in activation and a built-in loss.
    z : array_like, shape (..., K)
        Logits.
    y : array_like
        Targets in the loss's form.

    Returns
    -------
    value : float or ndarray
        The loss with its reduction applied.
    grad : ndarray, shape (..., K), float64
        dE/dz.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> from jacobians.testing import loop_head
    >>> value, grad = loop_head(jac.Head(jac.Softmax(), jac.CrossEntropy()), np.zeros((1, 2)), np.array([0]))
    >>> grad                        # s − y
    array([[-0.5,  0.5]])
    """
    if getattr(head, "logits_loss", False):  # the loss of the logits its own map sees, z/T
        T = float(getattr(head.activation, "temperature", 1.0))
        value, grad = loop_loss(head.loss_fn, _as_rows(z, "z") / T, y)
        return value, grad / T
    z, a, J = _per_sample(head.activation, z)  # each sample's output and Jacobian, once
    value, g = loop_loss(head.loss_fn, a, y)
    return value, _vjp_rows(z, J, g)
