"""The :class:`Activation` base class and the activation registry."""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np

from ..backend import backend_aware
from ..domains import Domain, domain
from ..numerics.validation import as_float_array
from ..operators import DenseJacobian, DiagonalJacobian, JacobianOperator
from ..registry import register_class
from ..xp.blocks import diagonal_blocks as _xp_diag
from ..xp.blocks import eye_like as _xp_eye

__all__ = [
    "Activation",
    "ElementwiseActivation",
    "ACTIVATIONS",
    "register_activation",
    "get_activation",
]

#: name -> activation class, in registration order
ACTIVATIONS: dict[str, type] = {}


def register_activation(cls=None, *, name: str | None = None, replace: bool = False):
    """Add an :class:`Activation` subclass to the registry (usable as a decorator).

    Registered activations are covered by :func:`jacobians.pairs`, the ``check`` command
    and every test that walks the registry.

    Parameters
    ----------
    cls : type
        The class; omit it to use ``@register_activation(name=...)``.
    name : str, optional
        Registry name; default ``cls.name`` or the class name in snake_case.
    replace : bool
        Allow replacing a different class registered under the same name.
    """
    return register_class(ACTIVATIONS, "activation", Activation, cls, name, replace)


def get_activation(name: str) -> type:
    """The activation class registered as ``name``."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise KeyError(f"activation {name!r} not found; valid names are {sorted(ACTIVATIONS)}") from None


class Activation:
    """A final activation ``a = f(z)`` acting on the last axis, ``(..., K) -> (..., K)``.

    Subclass it and write :meth:`forward` and :meth:`jacobian` (or
    :meth:`jacobian_operator`); :meth:`vjp` and :meth:`jvp` then contract with the
    Jacobian. Writing :meth:`vjp` in closed form makes the ``'vjp'`` method fast.

    Attributes
    ----------
    name : str
        Registry name (default: the class name in snake_case).
    output_domain : str
        What the activation outputs, e.g. ``'open_simplex'``; see :mod:`jacobians.domains`.
        Default ``'real'``.
    loop_reference : callable or None
        ``loop_reference(self, z) -> (a, J)``: the plain reference of one sample ``z``
        (K,) in float64, its output ``a`` (K,) and dense Jacobian ``J`` (K, K) written the
        obvious way (loops, ``np.diag``, ``np.outer``, bisection), sharing no code with the
        fast methods. :mod:`jacobians.testing` and the checks compare with it; a class
        without one (None, the default) is listed in the checks' ``report.missing``.
        Not inherited: a subclass may change the math, so it starts with None (write
        ``loop_reference = Parent.loop_reference`` in its body to keep its parent's).
    kinks : callable or None
        ``kinks(self, z, a=None) -> (..., K)``: each entry's distance, in ``z``, to the
        nearest point where the activation is not differentiable (``a``: ``self(z)`` when
        the caller has it). The checks' generated inputs keep
        :data:`~jacobians.checks.KINK_MARGIN` away from them. None (the default): smooth
        everywhere. Inherited.

    Examples
    --------
    A non-symmetric activation, ``a_i = z_i · z_0``:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class ScaleByFirst(jac.Activation):
    ...     def forward(self, z):
    ...         return z * z[..., :1]
    ...     def jacobian(self, z):
    ...         J = np.zeros(z.shape + z.shape[-1:])
    ...         jac.diagonal(J)[...] = z[..., :1]
    ...         J[..., :, 0] += z
    ...         return J
    >>> z = np.array([[2.0, 3.0]])
    >>> ScaleByFirst().vjp(z, np.array([[1.0, 1.0]]))
    array([[7., 2.]])
    """

    name: ClassVar[str | None] = None
    output_domain: ClassVar[str | Domain] = "real"
    loop_reference: ClassVar[Callable | None] = None
    kinks: ClassVar[Callable | None] = None

    def __init_subclass__(cls, **kwargs):
        # every subclass's row-wise methods take Dask arrays too (jacobians._dask)
        super().__init_subclass__(**kwargs)
        _make_dask_aware(cls)
        _guard_xp_path(cls)
        if "loop_reference" not in vars(cls):  # a subclass may change the math
            cls.loop_reference = None

    @classmethod
    def variants(cls, K: int) -> list[dict]:
        """Parameter sets besides the defaults that the checks and the tests also run.

        A list of keyword-argument dicts for ``cls(**kw)`` (empty by default): the
        ``check`` command and the test suite walk them with every valid loss, so that a
        parameter's factor (a temperature, a slope) is checked, not only its default.
        ``K`` is the number of classes of the inputs, for parameters shaped by it.
        """
        return []

    def __call__(self, z) -> np.ndarray:
        return self.forward(z)

    def forward(self, z) -> np.ndarray:
        """The activation ``a = f(z)``, shape ``(..., K)`` like ``z``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(z)")

    def jacobian(self, z, *, out: np.ndarray | None = None, workers: int | None = None) -> np.ndarray:
        """Dense Jacobian ``J[..., i, j] = ∂a_i/∂z_j``, shape ``(..., K, K)``.

        Parameters
        ----------
        z : array_like, shape (..., K)
        out : ndarray, shape (..., K, K), optional
            Buffer to write into.
        workers : int, optional
            Threads building row blocks (default: every available core for outputs of
            4 MiB or more; the calling thread for smaller ones).
        """
        if _overrides(self, "jacobian_operator"):
            return self.jacobian_operator(z).dense(out=out, workers=workers)
        raise NotImplementedError(f"{type(self).__name__} must implement jacobian(z) or jacobian_operator(z)")

    def jacobian_operator(self, z) -> JacobianOperator:
        """The Jacobian as a :class:`~jacobians.JacobianOperator` (structured when possible)."""
        if _overrides(self, "jacobian"):
            return DenseJacobian(self.jacobian(as_float_array(z, "z")))
        raise NotImplementedError(f"{type(self).__name__} must implement jacobian(z) or jacobian_operator(z)")

    def vjp(self, z, g) -> np.ndarray:
        """``g @ J`` per sample (``dE/dz`` from ``g = dE/da``), shape ``(..., K)``."""
        z, g = _check_pair(z, g, "g")
        return self.jacobian_operator(z).vjp(g)

    def jvp(self, z, v) -> np.ndarray:
        """``J @ v`` per sample (directional derivative along ``v``), shape ``(..., K)``."""
        z, v = _check_pair(z, v, "v")
        return self.jacobian_operator(z).jvp(v)

    # -- second order ------------------------------------------------------------------
    def hessian(self, z) -> np.ndarray:
        """Second derivatives ``T[..., i, j, k] = ∂²a_i/∂z_j∂z_k``, shape ``(..., K, K, K)``.

        The whole tensor, for exploration (K³ numbers a sample): the head's second-order
        methods use :meth:`hessian_vjp_operator` instead. Built in one vectorized call,
        ``T[..., i, :, :] = hessian_vjp(z, e_i)`` for all i at once. A custom activation
        writes this method or :meth:`hessian_vjp` (either gives the other).
        """
        if not (_overrides(self, "hessian_vjp_operator") or _overrides(self, "hessian_vjp")):
            raise NotImplementedError(
                f"{type(self).__name__} has no second derivative: write hessian(z) -> (..., K, K, K) or "
                "hessian_vjp(z, g) -> (..., K, K) to use second-order methods"
            )
        z = as_float_array(z, "z")
        K = z.shape[-1]
        rows = np.broadcast_to(z[..., None, :], z.shape[:-1] + (K, K))
        basis = np.broadcast_to(np.eye(K, dtype=z.dtype), rows.shape)
        return self.hessian_vjp(rows, basis)

    def hessian_vjp(self, z, g) -> np.ndarray:
        """``Σ_i g_i ∇²a_i``, shape ``(..., K, K)``: the curvature term of the chain rule.

        The Hessian of a head is ``Jᵀ H_E J + hessian_vjp(z, dE/da)``. Closed form for
        every built-in activation, without the K³ tensor.
        """
        z, g = _check_pair(z, g, "g")
        return self.hessian_vjp_operator(z, g).dense()

    def hessian_vjp_operator(self, z, g) -> JacobianOperator:
        """:meth:`hessian_vjp` as a :class:`~jacobians.JacobianOperator` (structured for the
        built-ins: diagonal for elementwise activations, diagonal minus low rank for the
        simplex maps)."""
        z, g = _check_pair(z, g, "g")
        if _overrides(self, "hessian"):
            return DenseJacobian(np.einsum("...i,...ijk->...jk", g, self.hessian(z)))
        if _overrides(self, "hessian_vjp"):
            return DenseJacobian(self.hessian_vjp(z, g))
        raise NotImplementedError(
            f"{type(self).__name__} has no second derivative: write hessian(z) -> (..., K, K, K) or "
            "hessian_vjp(z, g) -> (..., K, K) to use second-order methods"
        )

    @property
    def domain(self) -> Domain:
        """The output domain as a :class:`~jacobians.domains.Domain`."""
        return domain(self.output_domain)

    def vjp_from_output(self, z, a, g) -> np.ndarray:
        """``Jᵀ g`` at ``z`` given the output ``a = self(z)`` already computed, shape of ``z``.

        The head and the pair rules call this to share one forward pass between the value
        and the gradient. The default ignores ``a`` and calls :meth:`vjp`; a map whose
        Jacobian is a function of its output (softmax, the sparse maps, sigmoid, tanh)
        overrides it to skip the second forward.
        """
        return self.vjp(z, g)

    def jacobian_operator_from_output(self, z, a) -> JacobianOperator:
        """:meth:`jacobian_operator` at ``z`` given the output ``a = self(z)`` already
        computed (see :meth:`vjp_from_output`)."""
        return self.jacobian_operator(z)

    # -- the generic (array API) path: torch, JAX, CuPy, array-api-strict arrays ------------
    # jacobians._arrays.rows validates the inputs and finds the namespace xp, then calls
    # these. They use only the standard and jacobians.xp.shims, write nothing in place and
    # have no data-dependent Python control flow (they trace under jax.jit).
    def xp_forward(self, xp, z):
        """The activation on the generic path, ``a = f(z)``.

        Parameters
        ----------
        xp : namespace
            z's array API namespace.
        z : array, shape ``(..., K)``, float32 or float64

        Returns
        -------
        array, shape ``(..., K)``, z's namespace, dtype and device
        """
        raise _no_xp_path(self)

    def xp_jacobian(self, xp, z):
        """Dense ``J[..., i, j] = ∂a_i/∂z_j`` on the generic path, shape ``(..., K, K)``.

        Default: from :meth:`xp_vjp` (``J[i, :] = e_iᵀ J``) or :meth:`xp_jvp` when the
        class writes one of them.
        """
        K = z.shape[-1]
        rows = xp.broadcast_to(z[..., None, :], tuple(z.shape[:-1]) + (K, K))
        basis = xp.broadcast_to(_xp_eye(xp, z), rows.shape)
        if _xp_overrides(self, "xp_vjp"):
            return self.xp_vjp(xp, rows, basis)
        if _xp_overrides(self, "xp_jvp"):
            return xp.matrix_transpose(self.xp_jvp(xp, rows, basis))
        raise _no_xp_path(self, "xp_jacobian(xp, z) (or xp_vjp / xp_jvp)")

    def xp_vjp(self, xp, z, g):
        """``g @ J`` per sample on the generic path: ``(..., K)`` from ``z`` and ``g``
        ``(..., K)``. Default: contracts ``xp_jacobian``."""
        if not _xp_overrides(self, "xp_jacobian"):
            raise _no_xp_path(self, "xp_jacobian(xp, z) or xp_vjp(xp, z, g)")
        return xp.matmul(g[..., None, :], self.xp_jacobian(xp, z))[..., 0, :]

    def xp_jvp(self, xp, z, v):
        """``J @ v`` per sample on the generic path, shape ``(..., K)``. Default: contracts
        ``xp_jacobian``."""
        if not _xp_overrides(self, "xp_jacobian"):
            raise _no_xp_path(self, "xp_jacobian(xp, z) or xp_jvp(xp, z, v)")
        return xp.matmul(self.xp_jacobian(xp, z), v[..., None])[..., 0]

    def xp_vjp_from_output(self, xp, z, a, g):
        """:meth:`xp_vjp` given ``a = xp_forward(xp, z)`` already computed (the head shares
        one forward pass), shape ``(..., K)``. Default: ignores ``a``."""
        return self.xp_vjp(xp, z, g)

    def xp_jacobian_from_output(self, xp, z, a):
        """``xp_jacobian`` given ``a = xp_forward(xp, z)``, shape ``(..., K, K)``.
        Default: ignores ``a``."""
        return self.xp_jacobian(xp, z)

    def xp_hessian(self, xp, z):
        """``T[..., i, j, k] = ∂²a_i/∂z_j∂z_k`` on the generic path, shape ``(..., K, K, K)``.
        Default: ``T[..., i, :, :] = xp_hessian_vjp(z, e_i)`` for all i in one call."""
        if not _xp_overrides(self, "xp_hessian_vjp"):
            raise _no_xp_path(self, "xp_hessian(xp, z) or xp_hessian_vjp(xp, z, g)", "second-order methods")
        K = z.shape[-1]
        rows = xp.broadcast_to(z[..., None, :], tuple(z.shape[:-1]) + (K, K))
        return self.xp_hessian_vjp(xp, rows, xp.broadcast_to(_xp_eye(xp, z), rows.shape))

    def xp_hessian_vjp(self, xp, z, g):
        """``Σ_i g_i ∇²a_i`` on the generic path, shape ``(..., K, K)``, from ``z`` and
        ``g`` ``(..., K)``. Default: contracts :meth:`xp_hessian`."""
        if not _xp_overrides(self, "xp_hessian"):
            raise _no_xp_path(self, "xp_hessian(xp, z) or xp_hessian_vjp(xp, z, g)", "second-order methods")
        return xp.sum(g[..., :, None, None] * self.xp_hessian(xp, z), axis=-3)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def __eq__(self, other) -> bool:
        if type(self) is not type(other) or vars(self).keys() != vars(other).keys():
            return False
        mine, theirs = vars(self), vars(other)
        return all(_same_value(mine[k], theirs[k]) for k in mine)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted((k, repr(v)) for k, v in vars(self).items()))))


#: the row-wise methods of an activation that run on Dask arrays chunk by chunk
DASK_METHODS = ("__call__", "jacobian", "vjp", "jvp", "hessian", "hessian_vjp")
#: the structured operators: a backend that has them (the generic one) builds its own; one
#: without them (Dask) leaves the call to the numpy method
OPERATOR_METHODS = ("jacobian_operator", "jacobian_operator_from_output", "hessian_vjp_operator")


def _make_dask_aware(cls) -> None:
    for name in DASK_METHODS:
        if name in cls.__dict__:
            setattr(cls, name, backend_aware(name)(cls.__dict__[name]))
    for name in OPERATOR_METHODS:
        if name in cls.__dict__:
            setattr(cls, name, backend_aware(name, optional=True)(cls.__dict__[name]))


_make_dask_aware(Activation)


def _same_value(x, y) -> bool:
    """Parameters compare equal: arrays by shape and values, anything else by ``==``."""
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return np.shape(x) == np.shape(y) and bool(np.array_equal(x, y))
    return bool(x == y)


def _overrides(obj, method: str) -> bool:
    return getattr(type(obj), method) is not getattr(Activation, method)


_xp_overrides = _overrides


def _no_xp_path(obj, what: str = "", use: str = "torch/JAX arrays"):
    """The error of a class without (this part of) a generic path: a class without
    ``xp_forward`` is told to write it first."""
    if not what or not _overrides(obj, "xp_forward"):
        what, use = "xp_forward(xp, z) (and xp_jacobian or xp_vjp)", "torch/JAX arrays"
    return NotImplementedError(
        f"{type(obj).__name__} has no array-API path: write {what} to use {use} "
        "(or pass numpy arrays)"
    )


#: numpy method -> the generic method computing the same math (see _guard_xp_path)
XP_TWINS = {
    "forward": "xp_forward",
    "jacobian": "xp_jacobian",
    "vjp": "xp_vjp",
    "jvp": "xp_jvp",
    "derivative": "xp_derivative",
    "second_derivative": "xp_second_derivative",
    "gradient_weights": "xp_gradient_weights",
    "vjp_from_output": "xp_vjp_from_output",
    "jacobian_operator_from_output": "xp_jacobian_from_output",
    "hessian_vjp_operator": "xp_hessian_vjp",
    "_curvature": "xp_curvature",
}


def _guard_xp_path(cls) -> None:
    """A subclass that changes a numpy method but not its generic twin, inherited from a
    class that wrote both, would compute its parent's math on torch/JAX arrays: its twin
    raises instead. (The base class's derived defaults are not twins: they follow.)"""
    for numpy_name, xp_name in XP_TWINS.items():
        if numpy_name not in vars(cls) or xp_name in vars(cls):
            continue
        owner = next((k for k in cls.__mro__[1:] if xp_name in vars(k)), None)
        if owner is None or owner is Activation or numpy_name not in vars(owner):
            continue

        def stale(self, xp, *args, _n=numpy_name, _x=xp_name):
            raise NotImplementedError(
                f"{type(self).__name__} has no array-API path: it overrides {_n} but not {_x}, "
                f"so the inherited {_x} would compute its parent's math; write {_x}(xp, ...) "
                "to use torch/JAX arrays (or pass numpy arrays)"
            )

        setattr(cls, xp_name, stale)


def _check_pair(z, x, name: str) -> tuple[np.ndarray, np.ndarray]:
    z = as_float_array(z, "z")
    x = as_float_array(x, name, like=z)
    if x.shape != z.shape:
        raise ValueError(f"{name} must have the shape of z, {z.shape}; got shape {x.shape}")
    return z, x


class ElementwiseActivation(Activation):
    """An activation applied to each entry, ``a_k = f(z_k)``: its Jacobian is diagonal.

    Subclasses write :meth:`forward` and :meth:`derivative`; the Jacobian, VJP and JVP
    follow (``vjp = g · f'(z)``, ``jvp = f'(z) · v``).
    """

    def derivative(self, z) -> np.ndarray:
        """``f'(z)``, shape ``(..., K)``: the diagonal of the Jacobian."""
        raise NotImplementedError(f"{type(self).__name__} must implement derivative(z)")

    def second_derivative(self, z) -> np.ndarray:
        """``f''(z)``, shape ``(..., K)``: ``∂²a_k/∂z_k²``, the only nonzero second derivatives."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement second_derivative(z) -> (..., K) for second-order methods"
        )

    def hessian_vjp_operator(self, z, g) -> DiagonalJacobian:
        z, g = _check_pair(z, g, "g")
        return DiagonalJacobian(g * self.second_derivative(z))

    def jacobian_operator(self, z) -> DiagonalJacobian:
        return DiagonalJacobian(self.derivative(as_float_array(z, "z")))

    def jacobian(self, z, *, out=None, workers=None) -> np.ndarray:
        return self.jacobian_operator(z).dense(out=out, workers=workers)

    def vjp(self, z, g) -> np.ndarray:
        z, g = _check_pair(z, g, "g")
        return g * self.derivative(z)

    def jvp(self, z, v) -> np.ndarray:
        z, v = _check_pair(z, v, "v")
        return self.derivative(z) * v

    # -- generic path: everything from xp_derivative / xp_second_derivative ---------------
    def xp_derivative(self, xp, z):
        """``f'(z)`` on the generic path, shape ``(..., K)``, z's dtype and device."""
        raise _no_xp_path(self, "xp_forward(xp, z) and xp_derivative(xp, z)")

    def xp_second_derivative(self, xp, z):
        """``f''(z)`` on the generic path, shape ``(..., K)``."""
        raise _no_xp_path(self, "xp_second_derivative(xp, z)", "second-order methods")

    def xp_jacobian(self, xp, z):
        """``diag(f'(z))``, shape ``(..., K, K)``."""
        return _xp_diag(xp, self.xp_derivative(xp, z))

    def xp_vjp(self, xp, z, g):
        """``g ⊙ f'(z)``, shape ``(..., K)``."""
        return g * self.xp_derivative(xp, z)

    def xp_jvp(self, xp, z, v):
        """``f'(z) ⊙ v``, shape ``(..., K)``."""
        return self.xp_derivative(xp, z) * v

    def xp_hessian_vjp(self, xp, z, g):
        """``diag(g ⊙ f''(z))``, shape ``(..., K, K)``."""
        return _xp_diag(xp, g * self.xp_second_derivative(xp, z))

    def xp_hessian(self, xp, z):
        """``T[..., i, j, k] = δ_ij δ_ik f''(z_i)``, shape ``(..., K, K, K)``."""
        eye = _xp_eye(xp, z)
        cube = eye[:, :, None] * eye[:, None, :]
        return xp.where(cube != 0, self.xp_second_derivative(xp, z)[..., :, None, None], xp.zeros_like(cube))
