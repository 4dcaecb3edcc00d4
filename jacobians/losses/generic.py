"""The losses' generic (array API) path: torch, JAX, CuPy and array-api-strict arrays.

:class:`GenericLoss` (mixed into :class:`~jacobians.Loss`) and :class:`GenericElementwise`
(into :class:`~jacobians.ElementwiseLoss`) mirror the numpy structure with the namespace
``xp`` first: a loss writes ``xp_per_sample`` / ``xp_per_sample_grad`` (an elementwise
loss ``xp_per_element`` / ``xp_per_element_grad``, and ``..._hessian`` for second order),
or ``xp_terms`` for shared work, and one reduction, :meth:`GenericLoss.xp_reduce`, gives
``xp_value``, ``xp_grad``, ``xp_value_and_grad``, ``xp_hessian`` and ``xp_hvp`` for every
reduction and :meth:`~jacobians.Loss.with_denominator`, with numpy's denominators.
:mod:`jacobians._arrays.rows` calls them after the namespace and input checks.

Rules of the generic code: only the standard through ``xp`` and :mod:`jacobians.xp.shims`;
nothing written in place; no Python control flow on array values, so it traces under
``jax.jit``; a's dtype and device kept (constants are made with :func:`const`). The one
exception is validation: checks that need values (class indices in range, probabilities
in [0, 1], an empty weighted ``'mean'``'s warning) run only on concrete arrays
(:func:`concrete`: False for a JAX tracer) and are skipped under ``jax.jit``.

A class that writes its numpy math (``per_sample``, ``per_element``, ``_terms`` ...) but no
generic method has no generic path, even when its parent has one (the parent's formula is
not its formula): :meth:`GenericLoss.xp_check_targets` raises a clear NotImplementedError.
"""

from __future__ import annotations

import math

import numpy as np

from ..numerics.empty import mean_scale
from ..numerics.sampling import predictive_of
from ..xp.blocks import device_of, diagonal_blocks

__all__ = [
    "GenericLoss",
    "GenericElementwise",
    "const",
    "concrete",
    "device_of",
    "diagonal_blocks",
    "mark_generic",
    "xp_eigen_sqrt",
]

#: a class defining one of these (numpy math) ...
NUMPY_MATH = ("per_sample", "per_sample_grad", "per_element", "per_element_grad", "_terms")
#: ... and none of these has no generic path
XP_MATH = ("xp_per_sample", "xp_per_sample_grad", "xp_per_element", "xp_per_element_grad", "xp_terms")


def mark_generic(cls) -> None:
    """Set ``cls.xp_available`` from what the class itself defines (see the module's doc)."""
    own = vars(cls)
    if any(n in own for n in XP_MATH):
        cls.xp_available = True
    elif any(n in own for n in NUMPY_MATH):
        cls.xp_available = False




def const(xp, value, like):
    """``value`` (a Python number, or a numpy array such as class weights) as an array of
    ``like``'s dtype and device (no Python-float promotion)."""
    if isinstance(value, np.ndarray) and not value.flags.writeable:
        value = np.array(value)  # torch warns on read-only numpy arrays
    return xp.asarray(value, dtype=like.dtype, device=device_of(like))


def concrete(*arrays) -> bool:
    """True when no array is a JAX tracer or a tensor of a ``torch.func`` transform (values
    may be read: ``bool(...)``, ``float(...)``).

    Under ``jax.jit`` (or ``vmap``, ``grad``) the arrays are tracers, under ``torch.func``'s
    ``vmap`` (``grad``, ``jacrev`` ...) wrapped tensors, and value checks are skipped; every
    other namespace's arrays are concrete. Decided by type, without trying a concretization
    (no exception swallowed)."""
    if all(x is None or isinstance(x, (np.ndarray, np.generic)) for x in arrays):
        return True  # numpy's: concrete, and no array_api_compat needed
    import array_api_compat

    for x in arrays:
        if x is not None and array_api_compat.is_jax_array(x):
            import jax

            if isinstance(x, jax.core.Tracer):
                return False
        elif x is not None and array_api_compat.is_torch_array(x):
            import torch

            if torch._C._functorch.is_functorch_wrapped_tensor(x):
                return False
    return True


def _warn_empty() -> None:
    """The package's :class:`~jacobians.EmptyMeanWarning` (numpy's own rule, one place)."""
    mean_scale(0, np.float64)


def mean_factor(xp, denom, like):
    """``(scale, empty)`` of ``'mean'``: ``1/denom`` in like's dtype (0 where ``denom`` is
    0, with the warning), and whether it is 0 (a Python bool, or a 0-d bool array for an
    array ``denom``, e.g. summed class weights)."""
    if not hasattr(denom, "shape"):  # a Python number: decided now, as numpy decides
        host = np.float32 if like.dtype == xp.float32 else np.float64  # denom rounded as numpy does
        d = const(xp, denom, like)
        if host(denom) == 0:
            _warn_empty()
            return const(xp, 0.0, like), True
        return const(xp, 1.0, like) / d, False
    empty = denom == 0
    if concrete(denom) and bool(empty):
        _warn_empty()
    one = const(xp, 1.0, like)
    return xp.where(empty, const(xp, 0.0, like), one / xp.where(empty, one, denom)), empty


def xp_eigen_sqrt(xp, M):
    """``V diag(√λ)`` per block of symmetric ``M`` (..., K, K) (``xp.linalg.eigh``): the twin
    of the numpy operators' dense factor. ``ValueError`` for an eigenvalue below
    −1e3·eps·max|λ| (an indefinite block has no real factor), checked on concrete arrays
    only: under ``jax.jit`` the negative eigenvalues are clipped to 0 unchecked."""
    lam, vecs = xp.linalg.eigh(M)
    scale = xp.max(xp.abs(lam), axis=-1, keepdims=True)
    floor = -1e3 * xp.finfo(M.dtype).eps * scale
    if concrete(lam) and math.prod(lam.shape) and bool(xp.any(lam < floor)):
        safe = xp.where(scale > 0, scale, xp.ones_like(scale))
        worst = float(xp.min(lam / safe))
        raise ValueError(
            f"a block is indefinite (smallest eigenvalue {worst:.3g} × the largest in "
            "size): it has no real square root; a GGN of a loss that is convex in its "
            "input is positive semi-definite"
        )
    return vecs * xp.sqrt(xp.maximum(lam, xp.zeros_like(lam)))[..., None, :]


def _no_twin(obj, name: str) -> None:
    """NotImplementedError when ``obj``'s class writes the numpy ``name`` below (more derived
    than) the class that writes ``xp_<name>``: the generic formula would not be its formula.
    The numpy defaults of :mod:`jacobians.losses.base` pair with this module's."""
    mro = type(obj).__mro__
    owner = next((c for c in mro if name in vars(c)), None)
    twin = next((c for c in mro if "xp_" + name in vars(c)), None)
    if owner is None or owner.__module__ == "jacobians.losses.base":
        return
    if twin is None or mro.index(owner) < mro.index(twin):
        cls = type(obj).__name__
        raise NotImplementedError(
            f"{cls} has no array-API path for {name}: it writes {name} (numpy) but no xp_{name}; write "
            f"xp_{name} to use it on torch, JAX, CuPy or array-api-strict arrays, or pass numpy arrays"
        )


class GenericLoss:
    """The generic methods of :class:`~jacobians.Loss` (see the module's doc).

    Every method takes the same first arguments:

    Parameters
    ----------
    xp : namespace
        The arrays' array API namespace (:func:`jacobians.xp.namespace.namespace_of`).
    a : array of ``xp``, shape ``(..., K)``, float32 or float64
        The loss's input; every result has its dtype and device.
    y : array of ``xp`` or :class:`~jacobians.losses._targets.ClassTargets`
        The targets as :meth:`xp_check_targets` returns them (raw targets on a's
        namespace and device for ``xp_check_targets`` itself; the class losses accept
        either).

    Attributes
    ----------
    xp_available : bool
        Whether the class has a generic path (set per class by :func:`mark_generic`).
    """

    xp_available = True

    def xp_require_twin(self, name: str) -> None:
        """NotImplementedError when the class writes the numpy method ``name`` (e.g.
        ``'fisher_blocks'``) below the class that writes ``xp_<name>``: the generic formula
        would not be its formula."""
        _no_twin(self, name)

    def _xp_require(self):
        if not type(self).xp_available:
            name = type(self).__name__
            raise NotImplementedError(
                f"{name} has no array-API path: write xp_per_sample(xp, a, y) and xp_per_sample_grad(xp, a, y) "
                "(for an ElementwiseLoss xp_per_element / xp_per_element_grad; xp_..._hessian for second order) "
                f"to use {name} on torch, JAX, CuPy or array-api-strict arrays, or pass numpy arrays"
            )

    # -- what a subclass writes ----------------------------------------------------------
    def xp_per_sample(self, xp, a, y):
        """Loss of each sample, ``(...,)``, in ``xp`` (the twin of ``per_sample``)."""
        self._xp_require()
        raise NotImplementedError(f"{type(self).__name__} has no array-API path: write xp_per_sample(xp, a, y)")

    def xp_per_sample_grad(self, xp, a, y):
        """Gradient of each sample's loss, ``(..., K)``, in ``xp``."""
        self._xp_require()
        raise NotImplementedError(f"{type(self).__name__} has no array-API path: write xp_per_sample_grad(xp, a, y)")

    def xp_per_sample_hessian(self, xp, a, y):
        """Hessian of each sample's loss, ``(..., K, K)``, in ``xp``."""
        self._xp_require()
        raise NotImplementedError(
            f"{type(self).__name__} has no array-API second derivative: write xp_per_sample_hessian(xp, a, y)"
        )

    def xp_check_targets(self, xp, a, y):
        """``y`` validated for ``a`` (..., K); ``y`` is already on a's namespace and device.

        Default (as ``check_targets``): shape ``a.shape`` (cast to a's dtype) or
        ``a.shape[:-1]``. Raises ``ValueError`` naming ``y``, and NotImplementedError for a
        class without a generic path.
        """
        self._xp_require()
        shape, ys = tuple(a.shape), tuple(y.shape)
        if ys not in (shape, shape[:-1]):
            raise ValueError(f"y must have shape {shape} (like a) or {shape[:-1]} (one per sample); got shape {ys}")
        if ys == shape and y.dtype != a.dtype:
            y = xp.astype(y, a.dtype)
        return y

    # -- the reduction -------------------------------------------------------------------
    def xp_mean_denominator(self, xp, a, y=None):
        """What ``'mean'`` divides by: N rows (a Python int; class losses may give a 0-d array)."""
        return math.prod(a.shape[:-1])

    def xp_terms(self, xp, a, y, need_grad):
        """``(values, grads or None, denominator)``: the unreduced terms (``'none'``'s output)."""
        self._xp_require()
        grads = self.xp_per_sample_grad(xp, a, y) if need_grad else None
        return self.xp_per_sample(xp, a, y), grads, self.xp_mean_denominator(xp, a, y)

    def xp_hessian_terms(self, xp, a, y):
        """``(h, denominator, diagonal)``: unreduced Hessians, ``(..., K)`` diagonals when
        ``diagonal`` else ``(..., K, K)`` blocks."""
        self._xp_require()
        return self.xp_per_sample_hessian(xp, a, y), self.xp_mean_denominator(xp, a, y), False

    def _xp_scale(self, xp, denom, like):
        """The reduction's factor (``(scale, empty)``; ``scale`` None for 1)."""
        if self.reduction != "mean":
            return None, False
        return mean_factor(xp, denom if self.denominator is None else self.denominator, like)

    def xp_reduction_scale(self, xp, a, y=None):
        """``c`` with ``E = c · Σ_n ℓ_n`` as :meth:`~jacobians.Loss.reduction_scale`: a 0-d
        array of a's dtype and device (0 with the warning for a denominator of 0)."""
        if self.reduction != "mean":
            return const(xp, 1.0, a)
        denom = self.denominator if self.denominator is not None else self.xp_mean_denominator(xp, a, y)
        return mean_factor(xp, denom, a)[0]

    def xp_reduce(self, xp, values, grads, denom):
        """``(E, dE/da)`` by the reduction (numpy's :meth:`~jacobians.Loss.reduce`): ``'none'``
        as they are, ``'sum'`` the total, ``'mean'`` ``total · (1/denom)`` and ``grads ·
        (1/denom)``; NaN value and zero gradient over nothing. E is a 0-d array of ``xp``."""
        if self.reduction == "none":
            return values, grads
        total = xp.sum(values)
        if self.reduction == "sum":
            return total, grads
        scale, empty = self._xp_scale(xp, denom, values)
        if hasattr(empty, "shape"):  # an array denominator: decided in the graph (jit)
            value = xp.where(empty, const(xp, math.nan, values), total * scale)
        else:
            value = const(xp, math.nan, values) if empty else total * scale
        return value, (None if grads is None else grads * scale)

    def xp_value(self, xp, a, y):
        """The reduced loss.

        Returns
        -------
        array of ``xp``
            0-d for ``'mean'`` and ``'sum'`` (NaN for ``'mean'`` over nothing); ``(...,)``
            per sample, or ``(..., K)`` per entry for an elementwise loss, for ``'none'``.
        """
        return self.xp_reduce(xp, *self.xp_terms(xp, a, y, need_grad=False))[0]

    def xp_grad(self, xp, a, y):
        """``dE/da`` of the reduced loss.

        Returns
        -------
        array of ``xp``, shape ``(..., K)``
            With the reduction's factor (zero for ignored rows and for ``'mean'`` over
            nothing); row n the gradient of sample n's own loss for ``'none'``.
        """
        return self.xp_reduce(xp, *self.xp_terms(xp, a, y, need_grad=True))[1]

    def xp_value_and_grad(self, xp, a, y):
        """``(value, dE/da)`` sharing the work: see :meth:`xp_value` and :meth:`xp_grad`.

        Returns
        -------
        tuple of arrays of ``xp``: 0-d (or ``(...,)`` / ``(..., K)``) and ``(..., K)``
        """
        return self.xp_reduce(xp, *self.xp_terms(xp, a, y, need_grad=True))

    def _xp_scaled_hessian(self, xp, a, y):
        h, denom, diagonal = self.xp_hessian_terms(xp, a, y)
        scale, _ = self._xp_scale(xp, denom, a)
        return (h if scale is None else h * scale), diagonal

    def xp_hessian(self, xp, a, y):
        """The reduced loss's Hessian blocks ``∂²E/∂a_n∂a_n``.

        Returns
        -------
        array of ``xp``, shape ``(..., K, K)``
            With the reduction's factor inside (1/N, 1/(N·K) for an elementwise loss, the
            summed class weights; zero for ignored rows).
        """
        h, diagonal = self._xp_scaled_hessian(xp, a, y)
        return diagonal_blocks(xp, h) if diagonal else h

    def xp_hvp(self, xp, a, y, v):
        """``(∂²E/∂a_n∂a_n) v_n`` per sample, without the dense blocks where they are diagonal.

        Parameters
        ----------
        v : array of ``xp``, shape ``(..., K)``, a's dtype

        Returns
        -------
        array of ``xp``, shape ``(..., K)``
        """
        h, diagonal = self._xp_scaled_hessian(xp, a, y)
        if diagonal:
            return h * v
        return xp.squeeze(h @ v[..., None], axis=-1)

    # -- curvature: the Hessian's factor, the Fisher, the predictive's draws --------------
    def xp_sqrt_hessian(self, xp, a, y):
        """``S`` (..., K, C) with ``S Sᵀ`` :meth:`xp_hessian`, the twin of
        ``hessian_operator(a, y).sqrt()``: ``diag(√h)`` for a diagonal Hessian (``ValueError``
        for a negative entry, on concrete arrays), else ``xp_eigen_sqrt``."""
        h, diagonal = self._xp_scaled_hessian(xp, a, y)
        if not diagonal:
            return xp_eigen_sqrt(xp, h)
        if concrete(h) and math.prod(h.shape) and bool(xp.any(h < 0)):
            raise ValueError(
                "the blocks have negative diagonal entries (down to "
                f"{float(xp.min(h)):.3g}): they are not positive semi-definite, so they "
                "have no real square root"
            )
        return diagonal_blocks(xp, xp.sqrt(h))

    def xp_fisher_blocks(self, xp, a):
        """The twin of :meth:`~jacobians.Loss.fisher_blocks`, dense ``(..., K, K)``: a
        categorical predictive enumerates the K classes with :meth:`xp_per_sample_grad`."""
        _no_twin(self, "fisher_blocks")
        kind = self.predictive
        if kind in ("categorical", "categorical_log"):
            from ..xp.predictive import integer_dtype

            p = xp.exp(a) if kind == "categorical_log" else a
            idx = integer_dtype(xp, a)
            batch = tuple(a.shape[:-1])
            G = xp.stack(
                [self.xp_per_sample_grad(xp, a, xp.full(batch, k, dtype=idx, device=device_of(a))) for k in range(a.shape[-1])],
                axis=-2,
            )  # row k: the gradient at class k
            return xp.matmul(xp.matrix_transpose(G) * p[..., None, :], G)
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form Fisher for its predictive {kind!r}: write "
            "fisher_blocks(a), or use the Monte-Carlo Fisher (kind='mc')"
        )

    def xp_sample_targets(self, xp, a, u):
        """The twin of :meth:`~jacobians.Loss.sample_targets`: targets drawn from the
        predictive at ``a`` (..., K) from uniforms ``u`` ``(N, predictive_uniforms(K))`` of
        ``xp`` (``jacobians.xp.predictive``); class indices ``(...,)`` or a's shape."""
        _no_twin(self, "sample_targets")
        entry = predictive_of(self)
        if not isinstance(self.predictive, str):
            raise NotImplementedError(
                f"{type(self).__name__}'s own predictive draws with numpy: write xp_sample_targets(xp, a, u) "
                "to sample it on torch, JAX, CuPy or array-api-strict arrays, or pass numpy arrays"
            )
        from ..xp.predictive import DRAWS

        out = DRAWS[self.predictive](xp, xp.reshape(a, (-1, a.shape[-1])), u)
        return xp.reshape(out, tuple(a.shape[:-1]) if entry.indices else tuple(a.shape))


class GenericElementwise:
    """The generic methods of :class:`~jacobians.ElementwiseLoss`: per-entry terms, ``'mean'``
    over N·K, ``'none'`` ``(..., K)``, diagonal Hessians."""

    def xp_per_element(self, xp, a, y):
        """``e(a_k, y_k)`` per entry, ``(..., K)``."""
        self._xp_require()
        raise NotImplementedError(f"{type(self).__name__} has no array-API path: write xp_per_element(xp, a, y)")

    def xp_per_element_grad(self, xp, a, y):
        """``∂e/∂a_k`` per entry, ``(..., K)``."""
        self._xp_require()
        raise NotImplementedError(f"{type(self).__name__} has no array-API path: write xp_per_element_grad(xp, a, y)")

    def xp_per_element_hessian(self, xp, a, y):
        """``∂²e/∂a_k²`` per entry, ``(..., K)``."""
        self._xp_require()
        raise NotImplementedError(
            f"{type(self).__name__} has no array-API second derivative: write xp_per_element_hessian(xp, a, y)"
        )

    def xp_per_sample(self, xp, a, y):
        return xp.sum(self.xp_per_element(xp, a, y), axis=-1)

    def xp_per_sample_hessian(self, xp, a, y):
        return diagonal_blocks(xp, self.xp_per_element_hessian(xp, a, y))

    def xp_per_sample_grad(self, xp, a, y):
        return self.xp_per_element_grad(xp, a, y)

    def xp_mean_denominator(self, xp, a, y=None):
        """N·K: every entry counts."""
        return math.prod(a.shape)

    def xp_check_targets(self, xp, a, y):
        """``y`` of a's shape, cast to a's dtype (integers and booleans too)."""
        self._xp_require()
        if tuple(y.shape) != tuple(a.shape):
            raise ValueError(f"y must have the shape of a, {tuple(a.shape)}; got shape {tuple(y.shape)}")
        return y if y.dtype == a.dtype else xp.astype(y, a.dtype)

    def xp_terms(self, xp, a, y, need_grad):
        self._xp_require()
        grads = self.xp_per_element_grad(xp, a, y) if need_grad else None
        return self.xp_per_element(xp, a, y), grads, math.prod(a.shape)

    def xp_hessian_terms(self, xp, a, y):
        self._xp_require()
        return self.xp_per_element_hessian(xp, a, y), math.prod(a.shape), True

    def xp_fisher_blocks(self, xp, a):
        """A Bernoulli predictive per entry: ``diag(a(1 − a)(g₁ − g₀)²) + m mᵀ`` with ``g_b``
        :meth:`xp_per_element_grad` at ``y = b`` and ``m`` the mean gradient."""
        if self.predictive != "bernoulli":
            return super().xp_fisher_blocks(xp, a)
        _no_twin(self, "fisher_blocks")
        g0 = self.xp_per_element_grad(xp, a, xp.zeros_like(a))
        g1 = self.xp_per_element_grad(xp, a, xp.ones_like(a))
        m = a * g1 + (1 - a) * g0
        return diagonal_blocks(xp, a * (1 - a) * (g1 - g0) ** 2) + m[..., :, None] * m[..., None, :]


# -- the numpy path's guards, in xp (see jacobians.losses.classification) -------------------
def xp_floor_tiny(xp, a):
    """``max(a, tiny)`` (``tiny`` the dtype's smallest normal): ``log a`` and ``1/a`` finite."""
    return xp.maximum(a, const(xp, xp.finfo(a.dtype).smallest_normal, a))


def _saturated_ratio(xp, c, d, big):
    """``c / d`` for ``d > 0``, ``±big`` where it would overflow: the quotient is taken only
    where ``|c| / big <= d`` (no overflow, so no warning on a numpy-backed namespace), as
    numpy's path clips the overflowed quotient."""
    over = d < xp.abs(c) / big
    one = const(xp, 1.0, d)
    return xp.where(over, xp.where(c < 0, -big, big), c / xp.where(over, one, d))


def xp_neg_ratio(xp, c, safe):
    """``−c / safe`` saturated at the dtype's largest finite value."""
    big = const(xp, xp.finfo(safe.dtype).max, safe)
    return xp.minimum(xp.maximum(_saturated_ratio(xp, -c, safe, big), -big), big)


def xp_curvature_ratio(xp, c, safe):
    """``c / safe²`` for ``c >= 0``, divided twice and saturated at the largest finite value."""
    big = const(xp, xp.finfo(safe.dtype).max, safe)
    h = xp.minimum(_saturated_ratio(xp, c, safe, big), big)
    return xp.minimum(_saturated_ratio(xp, h, safe, big), big)
