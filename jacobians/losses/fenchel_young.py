"""Fenchel–Young losses of the entmax family (Blondel et al., 2020; Peters et al., 2019).

They are functions of the logits, not of the mapped probabilities::

    L(z, y) = ⟨z, p − y⟩ + H_α(p) − H_α(y),     ∇_z L = p − y,

with ``p`` the mapping of ``z`` (sparsemax, 1.5-entmax, α-entmax) and ``H_α`` the Tsallis
entropy ``H_α(p) = (1 − Σ p^α) / (α(α − 1))``. ``L >= 0``, and ``L = 0`` iff ``p = y``.
With index targets ``H(y) = 0`` and the loss is the entmax package's ``SparsemaxLoss`` /
``Entmax15Loss`` / ``EntmaxBisectLoss``.

A head pairing a loss with its own mapping at a temperature T (``Head(Sparsemax(T),
SparsemaxLoss())``) is the loss of the logits the mapping sees, ``L(z/T, y)``: gradient
``(p − y)/T`` with ``p = map(z/T)`` — as ``Head(Softmax(T), CrossEntropy())`` is the
cross-entropy of ``softmax(z/T)``, gradient ``(s − y)/T``. (The Fenchel–Young loss of the
tempered map itself, ``T·L(z/T, y)``, would have gradient ``p − y``; it is that loss times
T.)

On torch, JAX, CuPy and array-api-strict arrays the same formulas run through the ``xp_``
methods (the mapping's generic forward, Jacobian and product at temperature 1; no
value-dependent Python branch, so they trace under ``jax.jit``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..activations import Entmax, Entmax15, Sparsemax
from ..numerics import entmax, sparse
from ..numerics.validation import alpha_rows, check_alpha
from ..operators import SimplexBlock
from ..xp.blocks import simplex_sqrt
from . import references
from ._targets import (
    IGNORE_INDEX,
    ClassTargets,
    check_class_targets,
    check_ignore_index,
    xp_check_class_targets,
    xp_class_coefficients,
    xp_class_denominator,
)
from .base import Loss, register_loss

__all__ = ["FenchelYoungLoss", "SparsemaxLoss", "Entmax15Loss", "EntmaxLoss"]


def _rowdot(x, y):
    return np.einsum("...k,...k->...", x, y)


class FenchelYoungLoss(Loss):
    """Base of the Fenchel–Young losses: a mapping ``p(z)`` and its Tsallis index α.

    Parameters
    ----------
    ignore_index : int, optional
        Index targets equal to it contribute nothing (and are not counted by ``'mean'``).
    reduction : {'mean', 'sum', 'none'}
        ``'none'`` gives shape ``(...,)``.
    """

    target_kind = "class"
    alpha: ClassVar[float]

    def __init__(self, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(reduction)
        self.ignore_index = check_ignore_index(ignore_index)

    @classmethod
    def variants(cls, K):
        return [{"ignore_index": IGNORE_INDEX}]

    def mapping(self, z: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """The loss's own mapping ``p(z)``, rows of ``z`` (..., K)."""
        raise NotImplementedError

    def _alpha(self, p: np.ndarray):
        """α for the rows of ``p``: a float, or ``(..., 1)`` float64 for per-row α."""
        return self.alpha

    def tsallis_entropy(self, p: np.ndarray) -> np.ndarray:
        """``H_α(p) = (1 − Σ p^α) / (α(α − 1))`` per row, shape ``(...,)``."""
        alpha = self._alpha(p)
        if not isinstance(alpha, np.ndarray):
            powered = p * p if alpha == 2 else p * np.sqrt(p) if alpha == 1.5 else p**alpha
            return (1 - powered.sum(axis=-1)) / p.dtype.type(alpha * (alpha - 1))
        a = alpha.astype(p.dtype)
        return ((1 - (p**a).sum(axis=-1, keepdims=True)) / (a * (a - 1)))[..., 0]

    def _mapped_entropy(self, p: np.ndarray) -> np.ndarray:
        """``H_α(p)`` per row for ``p`` on the simplex (the mapping's output), as
        ``Σ p (1 − p^{α−1}) / (α(α − 1))``: with ``Σp = 1`` it is ``tsallis_entropy(p)``, but a
        sum of non-negative terms (``1 − Σ p^α`` cancels where p is nearly one-hot, and its
        error is multiplied by ``1/(α(α − 1))``, 100 at α = 1.01)."""
        alpha = self._alpha(p)
        if not isinstance(alpha, np.ndarray) and alpha == 2:
            terms = p * (1 - p)
        elif not isinstance(alpha, np.ndarray) and alpha == 1.5:
            terms = p * (1 - np.sqrt(p))
        else:
            a = alpha if not isinstance(alpha, np.ndarray) else alpha.astype(p.dtype)
            with np.errstate(divide="ignore", invalid="ignore"):
                terms = np.where(p > 0, -p * np.expm1((a - 1) * np.log(np.where(p > 0, p, 1))), 0)
        scale = alpha * (alpha - 1)
        if isinstance(scale, np.ndarray):
            return (terms.sum(axis=-1, keepdims=True) / scale.astype(p.dtype))[..., 0]
        return terms.sum(axis=-1) / p.dtype.type(scale)

    def own_mapping_mismatch(self, activation) -> str | None:
        """Why ``activation``, an instance of the loss's own mapping (``logits_of``), does not
        pair with this loss — a message — or None when it does."""
        return None

    def check_targets(self, a, y):
        return check_class_targets(a, y, ignore_index=self.ignore_index)

    def per_sample(self, z, y):
        return self._terms(z, self.check_targets(z, y), need_grad=False)[0]

    def per_sample_grad(self, z, y):
        return self._terms(z, self.check_targets(z, y), need_grad=True)[1]

    def per_sample_hessian(self, z, y):
        return self._hessian_terms(z, self.check_targets(z, y))[0].dense()

    def mean_denominator(self, z, y=None):
        """N, the rows not ignored."""
        t = None if y is None else y if isinstance(y, ClassTargets) else self.check_targets(z, y)
        if t is None or t.valid is None:
            return int(np.prod(np.shape(z)[:-1]))
        return int(np.count_nonzero(t.valid))

    def curvature_weights(self, p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """``d`` of the mapping's Jacobian ``diag(d) − d dᵀ/Σd`` from its output ``p``."""
        raise NotImplementedError

    def _hessian_terms(self, z, t):
        """The mapping's Jacobian ``diag(d) − d dᵀ/Σd`` (``∇²L = ∂p/∂z``, whatever y; zero
        for ignored rows, which ``'mean'`` does not count)."""
        d = self.curvature_weights(self.mapping(z))
        if t.valid is None:
            return SimplexBlock(d, 1.0), int(np.prod(z.shape[:-1]))
        return SimplexBlock(d, t.valid.astype(d.dtype)), int(np.count_nonzero(t.valid))

    def _terms(self, z, t, need_grad, temperature: float = 1.0):
        """Unreduced ``L(z/T, y)``, its gradient in ``z/T`` (``p − y``) and the denominator."""
        m = z.max(axis=-1, keepdims=True)
        x = z - m  # the shift keeps huge logits exact (⟨z, p − y⟩ = ⟨z − m, p − y⟩ + m (1 − Σy))
        if temperature != 1.0:
            T = z.dtype.type(temperature)
            x /= T
            m = m / T
        p = self.mapping(x)
        y = t.dense(z.dtype)
        diff = p - y
        values = _rowdot(x, diff) + m[..., 0] * (1 - y.sum(axis=-1))
        values += self._mapped_entropy(p)
        if not t.is_index:
            values -= self.tsallis_entropy(y)
        n = int(np.prod(z.shape[:-1]))
        if t.valid is not None:
            values = np.where(t.valid, values, 0).astype(z.dtype, copy=False)
            diff *= t.valid[..., None]
            n = int(np.count_nonzero(t.valid))
        return values, (diff if need_grad else None), n

    def tempered_value_and_grad(self, z, y, temperature: float = 1.0):
        """``(value, dE/dz)`` of ``L(z/T, y)``, reduced: what ``Head(own mapping with
        temperature T, this loss)`` computes (gradient ``(p − y)/T``, ``p = map(z/T)``)."""
        z, t = self._prepare(z, y)
        values, diff, denom = self._terms(z, t, True, temperature)
        if temperature != 1.0:
            diff /= diff.dtype.type(temperature)
        return self.reduce(values, diff, denom)

    # -- the generic (array API) path: z (..., K), targets of z's namespace ------------------
    # The loss's own mapping at temperature 1 (``xp_map``) gives p, its Jacobian
    # ``diag(d) − d dᵀ/Σd`` (the loss's Hessian) and its products; everything else is the
    # numpy formulas above, masked by ``where`` (no value-dependent Python branch: jit-safe).
    def xp_mapping(self):
        """The generic twin of :meth:`mapping`: the activation (with its generic methods)
        whose forward is the loss's own mapping at temperature 1."""
        return self.logits_of()

    def xp_map(self):
        """:meth:`xp_mapping`, or a ``NotImplementedError`` for a subclass that writes its
        own numpy :meth:`mapping` but no ``xp_mapping`` (its parent's map would be wrong)."""
        self.xp_require_twin("mapping")
        return self.xp_mapping()

    def xp_alpha(self, xp, like):
        """α for the rows of ``like`` (``_alpha``'s twin): a float, or ``(..., 1)`` of like's
        dtype and device."""
        return self.alpha

    def xp_check_targets(self, xp, a, y):
        """A ``ClassTargets`` of ``xp`` arrays (see ``xp_check_class_targets``)."""
        self._xp_require()
        return xp_check_class_targets(xp, a, y, ignore_index=self.ignore_index)

    def _xp_targets(self, xp, a, y):
        return y if isinstance(y, ClassTargets) else self.xp_check_targets(xp, a, y)

    def xp_mean_denominator(self, xp, a, y=None):
        """N, the rows not ignored (a 0-d array with ``ignore_index``)."""
        if y is None:
            return super().xp_mean_denominator(xp, a)
        return xp_class_denominator(xp, self._xp_targets(xp, a, y), a)

    def xp_tsallis_entropy(self, xp, q, mapped: bool = False):
        """``H_α(q)`` per row, ``(...,)``: :meth:`tsallis_entropy`, or for ``mapped`` (q the
        mapping's output) ``_mapped_entropy``'s sum of non-negative terms."""
        alpha = self.xp_alpha(xp, q)
        fixed = not hasattr(alpha, "shape")
        if fixed and alpha == 2:
            terms = q * (1 - q) if mapped else q * q
        elif fixed and alpha == 1.5:
            terms = q * (1 - xp.sqrt(q)) if mapped else q * xp.sqrt(q)
        else:
            on = q > 0
            log_q = xp.log(xp.where(on, q, xp.ones_like(q)))
            terms = xp.where(on, (-q * xp.expm1((alpha - 1) * log_q)) if mapped else q * xp.exp((alpha - 1) * log_q), xp.zeros_like(q))
        total = xp.sum(terms, axis=-1, keepdims=True)
        out = (total if mapped else 1 - total) / (alpha * (alpha - 1))
        return out[..., 0]

    def xp_terms(self, xp, z, y, need_grad, temperature: float = 1.0):
        """Unreduced ``L(z/T, y)``, its gradient in ``z/T`` (``p − y``) and the denominator
        (``_terms``'s twin)."""
        t = self._xp_targets(xp, z, y)
        m = xp.max(z, axis=-1, keepdims=True)
        x = z - m
        if temperature != 1.0:
            x, m = x / temperature, m / temperature
        p = self.xp_map().xp_forward(xp, x)
        yd, denom = xp_class_coefficients(xp, t, z)  # dense targets (zero rows where ignored)
        diff = p - yd
        values = xp.sum(x * diff, axis=-1) + m[..., 0] * (1 - xp.sum(yd, axis=-1))
        values = values + self.xp_tsallis_entropy(xp, p, mapped=True)
        if not t.is_index:
            values = values - self.xp_tsallis_entropy(xp, yd)
        if t.valid is not None:
            values = xp.where(t.valid, values, xp.zeros_like(values))
            diff = diff * xp.astype(t.valid[..., None], z.dtype)
        return values, (diff if need_grad else None), denom

    def xp_tempered_value_and_grad(self, xp, z, y, temperature: float = 1.0):
        """``(value, dE/dz)`` of ``L(z/T, y)``, reduced (:meth:`tempered_value_and_grad`'s
        twin): what a head of the loss's own mapping at temperature T computes."""
        values, diff, denom = self.xp_terms(xp, z, y, True, temperature)
        return self.xp_reduce(xp, values, diff if temperature == 1.0 else diff / temperature, denom)

    def xp_per_sample(self, xp, z, y):
        return self.xp_terms(xp, z, y, need_grad=False)[0]

    def xp_per_sample_grad(self, xp, z, y):
        return self.xp_terms(xp, z, y, need_grad=True)[1]

    def xp_per_sample_hessian(self, xp, z, y):
        return self.xp_hessian_terms(xp, z, y)[0]

    def _xp_curvature(self, xp, z, y):
        """``(map, p, valid (..., 1) or None, denominator)`` of the Hessian's rows."""
        t = self._xp_targets(xp, z, y)
        act = self.xp_map()
        valid = None if t.valid is None else xp.astype(t.valid[..., None], z.dtype)
        return act, act.xp_forward(xp, z), valid, self.xp_mean_denominator(xp, z, t)

    def xp_hessian_terms(self, xp, z, y):
        """The mapping's Jacobian ``diag(d) − d dᵀ/Σd`` (``∇²L = ∂p/∂z``, whatever y; zero
        for ignored rows), ``(..., K, K)`` (``_hessian_terms``'s twin)."""
        act, p, valid, denom = self._xp_curvature(xp, z, y)
        H = act.xp_jacobian_from_output(xp, z, p)
        return (H if valid is None else H * valid[..., None]), denom, False

    def xp_sqrt_hessian(self, xp, z, y):
        """numpy's factor of the Hessian blocks (``SimplexBlock.sqrt``) with the reduction's
        factor and the ignored rows: ``jacobians.xp.blocks.simplex_sqrt`` of the map's
        weights ``d``."""
        act, p, valid, denom = self._xp_curvature(xp, z, y)
        d = act.xp_gradient_weights(xp, p)
        scale, _ = self._xp_scale(xp, denom, z)
        c = valid if scale is None else scale if valid is None else valid * scale
        if c is not None and c.ndim < d.ndim:
            c = xp.broadcast_to(xp.reshape(c, (1,) * d.ndim), (*d.shape[:-1], 1))
        return simplex_sqrt(xp, d, xp.sqrt(d), c)

    def xp_hvp(self, xp, z, y, v):
        """``(diag(d) − d dᵀ/Σd) v`` per row with the reduction's factor, ``(..., K)``, from
        the mapping's product (v centred on the largest d), without the blocks."""
        act, p, valid, denom = self._xp_curvature(xp, z, y)
        Hv = act.xp_vjp_from_output(xp, z, p, v)
        scale, _ = self._xp_scale(xp, denom, z)
        scale = valid if scale is None else scale if valid is None else valid * scale
        return Hv if scale is None else Hv * scale

@register_loss
class SparsemaxLoss(FenchelYoungLoss):
    """Sparsemax loss (Martins & Astudillo, 2016) on logits ``z``: gradient ``sparsemax(z) − y``.

    ``Head(Sparsemax(), SparsemaxLoss())`` runs the fused rule only (the loss is not a
    function of sparsemax's output); ``Head(Identity(), SparsemaxLoss())`` runs every
    method.

    Parameters
    ----------
    ignore_index : int, optional
    reduction : {'mean', 'sum', 'none'}

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import SparsemaxLoss
    >>> z = np.array([[2.0, 0.0, -1.0]])
    >>> float(SparsemaxLoss()(z, np.array([0])))   # confident and right: zero loss
    0.0
    >>> SparsemaxLoss().grad(z, np.array([1]))
    array([[ 1., -1.,  0.]])
    """

    name = "sparsemax_loss"
    loop_reference = references.sparsemax_loss_rows
    kinks = references.sparsemax_loss_kinks
    alpha = 2.0
    logits_of = Sparsemax

    def mapping(self, z):
        return sparse.sparsemax(z)

    def xp_mapping(self):
        return self.logits_of()

    @staticmethod
    def curvature_weights(p):
        return (p > 0).astype(p.dtype)


@register_loss
class Entmax15Loss(FenchelYoungLoss):
    """1.5-entmax loss (Peters et al., 2019) on logits ``z``: gradient ``entmax15(z) − y``.

    Parameters
    ----------
    ignore_index : int, optional
    reduction : {'mean', 'sum', 'none'}

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import Entmax15Loss
    >>> float(Entmax15Loss()(np.array([[4.0, 0.0]]), np.array([0])))
    0.0
    """

    name = "entmax15_loss"
    loop_reference = references.entmax15_loss_rows
    kinks = references.entmax15_loss_kinks
    alpha = 1.5
    logits_of = Entmax15

    def mapping(self, z):
        return sparse.entmax15(z)

    def xp_mapping(self):
        return self.logits_of()

    @staticmethod
    def curvature_weights(p):
        return np.sqrt(p)


@register_loss
class EntmaxLoss(FenchelYoungLoss):
    r"""α-entmax loss (Peters et al., 2019) on logits ``z``, any α > 1: gradient
    ``entmax_α(z) − y``.

    ``L(z, y) = ⟨z, p − y⟩ + H_α(p) − H_α(y)`` with ``p = entmax_α(z)``. α = 2 is
    :class:`SparsemaxLoss`, α = 1.5 :class:`Entmax15Loss`, α → 1 the cross-entropy of
    softmax. ``Head(Entmax(α), EntmaxLoss(α))`` runs the fused rule only; a map and a loss
    of different α are not a pair (``ValueError``); ``Head(Identity(), EntmaxLoss(α))``
    runs every method.

    Parameters
    ----------
    alpha : float or array_like, default 1.5
        α > 1, finite; an array gives each row its own α (shapes as for
        :class:`~jacobians.Entmax`).
    ignore_index : int, optional
    reduction : {'mean', 'sum', 'none'}

    Examples
    --------
    >>> import numpy as np
    >>> from jacobians import EntmaxLoss, SparsemaxLoss
    >>> z, y = np.array([[2.0, 0.5, -1.0]]), np.array([1])
    >>> float(EntmaxLoss(alpha=2.0)(z, y)) == float(SparsemaxLoss()(z, y))
    True
    >>> EntmaxLoss(alpha=2.0).grad(z, y)                  # sparsemax(z) − e_y
    array([[ 1., -1.,  0.]])
    """

    name = "entmax_loss"
    loop_reference = references.entmax_loss_rows
    kinks = references.entmax_loss_kinks
    logits_of = Entmax

    def __init__(self, alpha=1.5, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index, reduction)
        self.alpha = check_alpha(alpha)

    @classmethod
    def variants(cls, K):
        # the α of Entmax.variants (a map pairs with the loss of its own α); ignore_index is the
        # base class's, checked with SparsemaxLoss and Entmax15Loss
        return [{"alpha": 1.2}, {"alpha": 1.75}, {"alpha": 2.5}]

    def _alpha(self, p):
        return alpha_rows(self.alpha, p)

    def xp_mapping(self):
        return Entmax(alpha=self.alpha)

    def xp_alpha(self, xp, like):
        return self.xp_map().xp_alpha(xp, like)

    def mapping(self, z):
        return entmax.entmax(z, self._alpha(z))

    def curvature_weights(self, p):
        return entmax.entmax_weights(p, self._alpha(p))

    def own_mapping_mismatch(self, activation) -> str | None:
        mine, theirs = self.alpha, activation.alpha
        try:
            same = np.array_equal(*np.broadcast_arrays(np.asarray(mine), np.asarray(theirs)))
        except ValueError:  # shapes that do not broadcast
            same = False
        if same:
            return None
        return (
            f"Entmax(alpha={theirs!r}) and EntmaxLoss(alpha={mine!r}) have different α: the loss is the "
            "Fenchel–Young loss of its own map, so pair Entmax(alpha=a) with EntmaxLoss(alpha=a) (the same "
            "value, or arrays equal once broadcast)"
        )

    def alpha_grad(self, z, y) -> np.ndarray:
        r"""``∂E/∂α`` of the reduced loss, per row: shape ``z.shape[:-1]`` (0 for ignored rows).

        p maximises ``⟨z, p⟩ + H_α(p)``, so α moves the loss only through the entropies
        (Danskin): ``∂L/∂α = ∂_α H_α(p) − ∂_α H_α(y)`` at fixed ``p`` and ``y``, with::

            ∂_α H_α(q) = −Σ q^α log q / (α(α − 1)) − (1 − Σ q^α)(2α − 1) / (α(α − 1))²

        (0 for a one-hot ``y``). The reduction's factor is inside (1/N for ``'mean'``): sum
        the entries for a shared α; a per-row α takes its own. For a head with a
        temperature, pass the logits the loss sees, ``z / T``.

        Examples
        --------
        >>> import numpy as np
        >>> from jacobians import EntmaxLoss
        >>> z, y, h = np.array([[1.0, 0.5, -3.0]]), np.array([1]), 1e-6
        >>> numeric = (EntmaxLoss(1.5 + h)(z, y) - EntmaxLoss(1.5 - h)(z, y)) / (2 * h)
        >>> bool(np.isclose(EntmaxLoss(1.5).alpha_grad(z, y).sum(), numeric))
        True
        """
        z, t = self._prepare(z, y)
        x = z - z.max(axis=-1, keepdims=True)
        p = self.mapping(x)
        values = self._entropy_alpha_derivative(p, mapped=True)
        if not t.is_index:
            values = values - self._entropy_alpha_derivative(t.dense(z.dtype))
        n = int(np.prod(z.shape[:-1]))
        if t.valid is not None:
            values = np.where(t.valid, values, 0).astype(z.dtype, copy=False)
            n = int(np.count_nonzero(t.valid))
        if self.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                values = values / values.dtype.type(n)
        return values

    def _entropy_alpha_derivative(self, q, mapped: bool = False):
        """``∂_α H_α(q)`` per row, ``(...,)``; ``mapped``: q is the mapping's output (Σq = 1),
        and ``1 − Σ q^α`` is summed as ``Σ q (1 − q^{α−1})`` (see ``_mapped_entropy``)."""
        alpha = self._alpha(q)
        a = alpha.astype(q.dtype) if isinstance(alpha, np.ndarray) else alpha
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q = np.log(np.where(q > 0, q, 1))
            powered = np.where(q > 0, q * np.exp((a - 1) * log_q), 0)  # q^α
            qlog = powered * log_q
            rest = np.where(q > 0, -q * np.expm1((a - 1) * log_q), 0) if mapped else None
        c = a * (a - 1)
        gap = rest.sum(axis=-1, keepdims=True) if mapped else 1 - powered.sum(axis=-1, keepdims=True)
        out = -qlog.sum(axis=-1, keepdims=True) / c - gap * (2 * a - 1) / (c * c)
        return out[..., 0].astype(q.dtype, copy=False)
