"""The hot kernels, in two implementations chosen once, on first use.

* ``numpy`` (:mod:`.numpy_impl`): the reference, always installed;
* ``numba`` (:mod:`.numba_impl`, the optional ``fast`` extra: ``pip install jacobians[fast]``):
  compiled loops with vectorized ``exp``/``log1p`` (:mod:`.numba_math`), the same results
  (float64 within 2 ulp of numpy's; float32 computed in float64, closer to exact).

The first call of any kernel picks the set: numba when it can be imported, unless the
environment variable ``JACOBIANS_KERNELS`` says ``numpy`` (``numba`` insists on it and
fails when it cannot be imported; ``auto``, the default, falls back to numpy).
``import jacobians`` never imports numba. :func:`kernels` tells which set runs; nothing
else in the package knows.

The kernels work on rows of the last axis of C-contiguous float32/float64 arrays and
never write to their inputs; see each function in :mod:`.numpy_impl` for its math.
"""

from __future__ import annotations

import os
import threading
import warnings

from .interface import INTERFACE

__all__ = ["kernels", "ENV", "INTERFACE", *INTERFACE]

#: the environment variable that chooses the kernel set: 'auto' (default), 'numba' or 'numpy'
ENV = "JACOBIANS_KERNELS"
CHOICES = ("auto", "numba", "numpy")

_IMPL = None
_NAME = None
_LOCK = threading.Lock()


def _choose():
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}; got {os.environ[ENV]!r}")
    if want != "numpy":
        try:
            from . import numba_impl
        except ImportError as err:
            if want == "numba":
                raise ImportError(
                    f"{ENV}=numba, but numba cannot be imported ({err}); install the fast extra: "
                    "python -m pip install 'jacobians[fast]'"
                ) from err
        except Exception as err:  # a broken numba install: fall back rather than fail
            if want == "numba":
                raise
            warnings.warn(f"numba failed to load ({err!r}); jacobians uses its numpy kernels", RuntimeWarning, stacklevel=3)
        else:
            return numba_impl, "numba"
    from . import numpy_impl

    return numpy_impl, "numpy"


def _impl():
    global _IMPL, _NAME
    if _IMPL is None:
        with _LOCK:
            if _IMPL is None:
                _IMPL, _NAME = _choose()
    return _IMPL


def kernels() -> str:
    """The kernel set in use, ``'numba'`` or ``'numpy'`` (chosen now if no kernel ran yet).

    numba's compiled kernels run when the ``fast`` extra is installed
    (``pip install 'jacobians[fast]'``) unless ``JACOBIANS_KERNELS=numpy``; numpy's otherwise.

    Examples
    --------
    >>> import jacobians as jac
    >>> jac.kernels() in ("numba", "numpy")
    True
    """
    _impl()
    return _NAME


def describe() -> str:
    """The kernel set in use with its version and, for numba, the CPU it compiles for and
    its vector level, e.g. ``'numba 0.68.1 (LLVM target znver4, AVX-512)'``."""
    return _impl().describe()


def softmax(x, out=None):
    """``softmax(x)`` along the last axis (``out``: a C-contiguous buffer like ``x``)."""
    return _impl().softmax(x, out)


def log_softmax(x):
    """``log softmax(x)`` along the last axis, a few ulp from exact in every entry."""
    return _impl().log_softmax(x)


def softmax_vjp(x, g, temperature=1.0, factor=None):
    """``f · s ⊙ (g − s·g) / T`` with ``s = softmax(x)`` (``x`` the scaled logits), shape of
    ``x``; ``factor`` f a scalar or one per row, shape ``x.shape[:-1]`` (default 1)."""
    return _impl().softmax_vjp(x, g, temperature, factor)


def simplex_vjp(w, v, x):
    """``w ⊙ (x' − v·x')`` with ``x'`` centred on the entry of the largest ``w``:
    ``(diag(w) − w vᵀ) x`` for ``Σv = 1``, rows (..., K) of one dtype."""
    return _impl().simplex_vjp(w, v, x)


def ce_index(x, idx, valid, scale):
    """Cross-entropy rows ``x`` (n, K), targets ``idx`` (n,): ``(values (n,), scale·(s − e_y) (n, K))``."""
    return _impl().ce_index(x, idx, valid, scale)


def ce_coefficients(x, c):
    """``(Σ_k c_k (lse − x_k), s Σc − c)`` per row of ``x`` and coefficient rows ``c``."""
    return _impl().ce_coefficients(x, c)


def sigmoid_bce_plain(z, y, scale, need_values):
    """Sigmoid + BCE, flat ``z`` and ``y``: ``(values or None, total, scale·(σ(z) − y))``."""
    return _impl().sigmoid_bce_plain(z, y, scale, need_values)


def sigmoid_bce_weighted(z, y, py):
    """Sigmoid + BCE with ``p y`` (pos_weight times targets): ``(values, grad)`` unreduced."""
    return _impl().sigmoid_bce_weighted(z, y, py)


def focal_index(x, idx, w, gamma, scale):
    """Softmax + focal, rows ``x`` (n, K) with target indices ``idx`` (n,), row weights ``w``
    (n,) or None: ``(values (n,), scale·(u − p Σu) (n, K))``."""
    return _impl().focal_index(x, idx, w, gamma, scale)


def focal_coefficients(x, c, gamma, scale):
    """Softmax + focal, rows ``x`` (..., K) with coefficient rows ``c`` (targets times α):
    ``(values (...,), scale·(u − p Σu) (..., K))``."""
    return _impl().focal_coefficients(x, c, gamma, scale)


def poly_index(x, idx, epsilon, scale):
    """Softmax + poly-1, rows ``x`` (n, K) with target indices ``idx`` (n,): ``(values (n,),
    scale·(u − p u_y) (n, K))``, ``u_y = −(1 + ε p_y)`` at the target."""
    return _impl().poly_index(x, idx, epsilon, scale)


def binary_focal(z, t, gamma, alpha, scale):
    """Sigmoid + binary focal per entry (``alpha`` None: no α_t): ``(values, scale·grads)``, shape of ``z``."""
    return _impl().binary_focal(z, t, gamma, alpha, scale)


def plackett_luce(a, y, scale):
    """Plackett–Luce of score rows ``a`` (n, M) and validated rankings ``y`` (n, R), int64
    with −1 as trailing padding: ``(values (n,), scale · grads (n, M))``."""
    return _impl().plackett_luce(a, y, scale)


def plackett_luce_hvp(a, y, v, scale):
    """``scale · Σ_i p⁽ⁱ⁾ ⊙ (v − p⁽ⁱ⁾·v)`` per row (the Hessian's product), ``a``, ``v`` (n, M),
    validated rankings ``y`` (n, R)."""
    return _impl().plackett_luce_hvp(a, y, v, scale)


def ranking_flaw(y, M):
    """Whether int64 rankings ``y`` (n, R) of M candidates have an entry outside [−1, M), a
    candidate after a −1 or one twice in a row (the caller names it)."""
    return _impl().ranking_flaw(y, M)


def poisson_log(z, y, scale, need_values):
    """Identity + PoissonNLL(log_input=True) on flat ``z``, ``y``: ``(values or None, total
    or None, scale · (e^z − y), number of targets that are not counts)``."""
    return _impl().poisson_log(z, y, scale, need_values)


def dense_diag_minus_rank_one(d, u, v, out, exact=None, projector=False):
    """Write ``diag(d_n) − u_n v_nᵀ`` into ``out`` (n, K, K) for rows ``d, u, v`` (n, K); the
    diagonal entries are ``exact`` (rows (n, K)) instead when given, else with ``projector``
    ``d ⊙ complement_sums(v)`` (``v`` a distribution), computed by the kernel."""
    return _impl().dense_diag_minus_rank_one(d, u, v, out, exact, projector)


def dense_diagonal(d, out):
    """Write ``diag(d_n)`` into ``out`` (n, K, K) for rows ``d`` (n, K)."""
    return _impl().dense_diagonal(d, out)
