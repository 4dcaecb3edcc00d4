"""Structured operators and ``diagonal`` on generic arrays (torch, JAX, CuPy, array-api-strict).

:class:`ArrayOperator` is the generic twin of :class:`~jacobians.JacobianOperator`: a batch
of K×K blocks in z's namespace, on z's device, applied through the classes' own generic
methods, never densified unless asked (``op.dense()``):

* an activation's Jacobian (:meth:`~jacobians.Activation.jacobian_operator`,
  ``jacobian_operator_from_output``): ``op @ v`` is ``xp_jvp``, ``g @ op`` (``op.vjp(g)``)
  ``xp_vjp_from_output`` with the output computed once, ``dense()`` ``xp_jacobian``; an
  elementwise activation holds ``f'(z)`` only (``diagonal()`` is it, exact);
* an activation's curvature term (``hessian_vjp_operator``): ``diag(g ⊙ f''(z))`` for an
  elementwise activation, else the dense blocks ``xp_hessian_vjp`` (the generic path has
  no structured form of them);
* a head's Hessian and GGN blocks (``Head.hessian_operator``, ``Head.ggn_operator``):
  ``op @ v`` the head's HVP (the GGN's ``Jᵀ H_E J v`` for a pair that is not canonical),
  ``dense()`` the head's blocks.

:func:`jacobians.contract` takes an :class:`ArrayOperator` for ``J`` (its VJP), as it
takes numpy's. ``op.T`` swaps the products (and transposes ``dense()``); ``op.diagonal()`` is a new array
``(..., K)``; ``op.shape``, ``op.dtype``, ``op.batch_shape``, ``op.size`` as numpy's.
``g @ op`` needs the array's ``__matmul__`` to give way (torch and JAX do; array-api-strict
raises ``TypeError``: call ``op.vjp(g)`` there). Everything traces under ``jax.jit``.
"""

from __future__ import annotations

from ..activations.base import ElementwiseActivation
from ..operators.base import BlockShape
from ..xp.blocks import device_of, diagonal_blocks
from ..xp.namespace import namespace_name
from . import heads
from .inputs import activation_input, float_input, namespace_of, same_shape

__all__ = [
    "ArrayOperator",
    "contract",
    "diagonal",
    "block_diagonal",
    "activation_operator",
    "activation_operator_from_output",
    "hessian_vjp_operator",
    "head_operator",
    "METHODS",
]


def block_diagonal(xp, B):
    """Each block's diagonal, ``(..., K, K) -> (..., K)``: the standard's
    ``linalg.diagonal`` (a view on torch and CuPy), else the entries picked by ``where``."""
    linalg = getattr(xp, "linalg", None)
    if linalg is not None and hasattr(linalg, "diagonal"):
        return linalg.diagonal(B)
    eye = xp.eye(B.shape[-1], dtype=xp.bool, device=device_of(B))
    return xp.sum(xp.where(eye, B, xp.zeros_like(B)), axis=-1)


def contract(g, J):
    """:func:`jacobians.contract` on generic arrays: an :class:`ArrayOperator` ``J`` applies
    its VJP (as numpy's operators do); arrays go to :func:`.heads.contract`."""
    if isinstance(J, ArrayOperator):
        return J.vjp(g)
    return heads.contract(g, J)


def diagonal(J):
    """:func:`jacobians.diagonal` of a generic ``J`` (..., K, K): the diagonals ``(..., K)``
    in J's namespace, dtype and device. A view where the namespace gives one (torch,
    CuPy: writing to it writes to J); JAX arrays are immutable, so there it is a new array
    (update J with ``J.at[..., i, i].set`` or build a new one)."""
    xp = namespace_of(J)
    if J.ndim < 2 or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"J must have shape (..., K, K); got shape {tuple(J.shape)}")
    return block_diagonal(xp, J)


class ArrayOperator(BlockShape):
    """A batch of K×K blocks on a generic namespace, applied through closures.

    Parameters
    ----------
    xp : namespace
    like : array (..., K)
        z: the batch shape, K, dtype and device of the blocks (and of the vectors they take).
    jvp, vjp : callable
        ``v -> M v`` and ``g -> Mᵀ g`` per row, ``(..., K) -> (..., K)``, for checked
        vectors of ``like``'s shape and dtype.
    dense : callable
        ``() -> (..., K, K)``.
    diagonal : callable, optional
        ``() -> (..., K)``; default the dense blocks' diagonal.
    kind : str
        What the blocks are, for ``repr``.
    """

    __array_ufunc__ = None  # a numpy array on the left defers to __rmatmul__ (then a clear TypeError)

    def __init__(self, xp, like, *, jvp, vjp, dense, diagonal=None, kind="blocks"):
        self.xp = xp
        self._like = like
        self._jvp, self._vjp, self._dense, self._diagonal = jvp, vjp, dense, diagonal
        self.kind = kind
        self.batch_shape = tuple(like.shape[:-1])
        self.size = like.shape[-1]
        self.dtype = like.dtype

    @property
    def device(self):
        """The device of the blocks (z's)."""
        return device_of(self._like)

    def _vector(self, x, name):
        namespace_of(self._like, x)  # one namespace (a TypeError naming both)
        return same_shape(self.xp, self._like, x, name)

    def jvp(self, v):
        """``M @ v`` per row, ``(..., K) -> (..., K)``."""
        return self._jvp(self._vector(v, "v"))

    def vjp(self, g):
        """``g @ M`` per row (``Mᵀ g``), ``(..., K) -> (..., K)``."""
        return self._vjp(self._vector(g, "g"))

    def dense(self):
        """The blocks, shape ``(..., K, K)``, in z's namespace, dtype and device."""
        return self._dense()

    def diagonal(self):
        """Each block's diagonal, a new array ``(..., K)``."""
        if self._diagonal is not None:
            return self._diagonal()
        return block_diagonal(self.xp, self.dense())

    @property
    def T(self) -> ArrayOperator:
        """The transposed blocks ``M[..., j, i]``: the products swapped."""
        xp, dense = self.xp, self._dense
        return ArrayOperator(xp, self._like, jvp=self._vjp, vjp=self._jvp, dense=lambda: xp.matrix_transpose(dense()),
                             diagonal=self._diagonal, kind=self.kind + ".T")

    def __matmul__(self, v):
        if isinstance(v, ArrayOperator):
            return NotImplemented  # products of operators: numpy's operators only
        return self.jvp(v)

    def __rmatmul__(self, g):
        return self.vjp(g)

    def __repr__(self) -> str:
        return (f"ArrayOperator({self.kind}, shape={self.shape}, dtype={self.dtype}, "
                f"namespace={namespace_name(self.xp)})")


def _dense_operator(xp, like, M, kind):
    """Blocks held dense: products by ``matmul``."""
    return ArrayOperator(xp, like, jvp=lambda v: heads._mat_rowvec(xp, M, v), vjp=lambda g: heads._rowvec_mat(xp, g, M),
                         dense=lambda: M, kind=kind)


def _diagonal_operator(xp, like, d, kind):
    """``diag(d)`` per row, holding ``d`` only."""
    return ArrayOperator(xp, like, jvp=lambda v: d * v, vjp=lambda g: g * d, dense=lambda: diagonal_blocks(xp, d),
                         diagonal=lambda: d, kind=kind)


def _elementwise(act) -> bool:
    """An elementwise activation whose generic products are ``f'(z)`` (not rewritten)."""
    cls = type(act)
    return (isinstance(act, ElementwiseActivation) and cls.xp_vjp is ElementwiseActivation.xp_vjp
            and cls.xp_jvp is ElementwiseActivation.xp_jvp)


def _jacobian_operator(xp, act, z, a):
    if _elementwise(act):
        return _diagonal_operator(xp, z, act.xp_derivative(xp, z), f"{type(act).__name__} Jacobian")
    if a is None:
        a = act.xp_forward(xp, z)  # once: the VJP and the dense blocks share it
    return ArrayOperator(
        xp, z,
        jvp=lambda v: act.xp_jvp(xp, z, v),
        vjp=lambda g: act.xp_vjp_from_output(xp, z, a, g),
        dense=lambda: act.xp_jacobian_from_output(xp, z, a),
        kind=f"{type(act).__name__} Jacobian",
    )


def activation_operator(act, fn, z):
    """``act.jacobian_operator(z)`` for a generic z."""
    xp, z = activation_input(z)
    return _jacobian_operator(xp, act, z, None)


def activation_operator_from_output(act, fn, z, a):
    """``act.jacobian_operator_from_output(z, a)`` for generic z and a (a checked to have
    z's shape, cast to its dtype)."""
    xp = namespace_of(z, a)
    z = float_input(xp, z, "z")
    return _jacobian_operator(xp, act, z, same_shape(xp, z, a, "a"))


def hessian_vjp_operator(act, fn, z, g):
    """``act.hessian_vjp_operator(z, g)`` for generic z and g: ``diag(g ⊙ f''(z))`` for an
    elementwise activation, else the dense blocks ``xp_hessian_vjp``."""
    xp = namespace_of(z, g)
    z = float_input(xp, z, "z")
    g = same_shape(xp, z, g, "g")
    kind = f"{type(act).__name__} hessian_vjp"
    if _elementwise(act) and type(act).xp_hessian_vjp is ElementwiseActivation.xp_hessian_vjp:
        return _diagonal_operator(xp, z, g * act.xp_second_derivative(xp, z), kind)
    return _dense_operator(xp, z, act.xp_hessian_vjp(xp, z, g), kind)


def _ggn_product(head, z, y):
    """``v -> Jᵀ H_E J v`` per row (the GGN of a pair that is not canonical), O(N·K) for
    structured activations and losses."""
    xp, z, y = heads._inputs(head, z, y)
    a, yl, _ = heads._chain_parts(xp, head, z, y)
    act, loss = head.activation, head.loss_fn
    return lambda v: act.xp_vjp_from_output(xp, z, a, loss.xp_hvp(xp, a, yl, act.xp_jvp(xp, z, v)))


def head_operator(head, name, z, y, method="auto"):
    """``Head.hessian_operator`` (``name='hessian'``) or ``Head.ggn_operator``
    (``'ggn'``) for generic z: the head's blocks on demand (``dense()``) and its products
    without them (``op @ v``: :meth:`~jacobians.Head.hvp`; the GGN's ``Jᵀ H_E J v``)."""
    xp, z, y = heads._inputs(head, z, y)
    head.loss_fn.xp_check_targets(xp, z, y)  # now: bad targets, or a loss without a generic path
    kind = f"{type(head.activation).__name__}+{type(head.loss_fn).__name__} {name}"
    if name == "hessian":
        def dense():
            return heads.head_blocks(head, "hessian", z, y, method)

        def product(v):
            return heads.head_hvp(head, z, y, v, method)
    else:
        def dense():
            return heads.head_blocks(head, "ggn", z, y)

        if head.logits_loss or head.ggn_is_hessian:
            def product(v):
                return heads.head_hvp(head, z, y, v, "auto")
        else:
            product = _ggn_product(head, z, y)
    # the blocks are symmetric: the VJP is the same product
    return ArrayOperator(xp, z, jvp=product, vjp=product, dense=dense, kind=kind)


#: the activations' operator methods (jacobians.backend.backend_aware(name, optional=True))
METHODS = {
    "jacobian_operator": activation_operator,
    "jacobian_operator_from_output": activation_operator_from_output,
    "hessian_vjp_operator": hessian_vjp_operator,
}
