"""Second order: the curvature of a head with respect to its logits.

``E`` is the reduced loss that ``head.loss(z, y)`` returns. Rows of the batch do not
interact, so ``∂²E/∂z∂z`` is block diagonal; everything here returns the stack of its
diagonal blocks, shape ``(..., K, K)``, block n = ``∂²E/∂z_n∂z_n`` with the reduction's
factor inside (1/N for ``'mean'``, 1/(N·K) for an elementwise loss, the summed class
weights, zero for ignored rows; with ``'none'`` the Hessian of row n's own loss).

The chain rule, second order::

    H_z = Jᵀ H_a J + Σ_i (∂E/∂a_i) ∇²a_i          (GGN: the first term alone)

A *canonical* pair — the loss is a negative log-likelihood (or Fenchel–Young loss) whose
natural parameter is z through this very activation — is convex in z, and its GGN is its
Hessian. Those pairs have closed forms registered here (:data:`HESSIAN_RULES`), with
their exact square roots and, for the likelihoods, their exact Fisher; any other pair
takes the chain rule from its activation's and loss's pieces.

Fisher kinds (:func:`fisher_operator`, :meth:`Head.fisher <jacobians.Head.fisher>`), each
carrying the row's factor ``c_n`` of ``E = Σ_n c_n ℓ_n`` (so all are on the scale of the
Hessian):

* ``'exact'`` (type-2): ``c_n E_ŷ[∇ℓ_n(ŷ) ∇ℓ_n(ŷ)ᵀ]`` with ``ŷ`` drawn from the model's own
  predictive distribution (:attr:`~jacobians.Loss.predictive`), in closed form;
* ``'mc'``: the same expectation from ``mc_samples`` draws (:func:`sqrt_ggn_sampled`);
* ``'empirical'``: ``c_n ∇ℓ_n ∇ℓ_nᵀ`` at the true targets.

The per-sample loss ``ℓ_n(ŷ)`` is the loss as configured — class weights, label smoothing
and ``pos_weight`` apply to the sampled target exactly as to a real one. So the exact
Fisher equals the Hessian for the plain canonical pairs (softmax + cross-entropy
without weights or smoothing, sigmoid + BCE without ``pos_weight`` or smoothing,
identity + MSE, ...), and differs from it where those options make the loss something
other than the model's log-likelihood.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _kernels, _math
from ._validation import as_float_array
from .activations import Entmax, Entmax15, Identity, LogSoftmax, Sigmoid, Softmax, Sparsemax
from .losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    Entmax15Loss,
    EntmaxLoss,
    KLDivergence,
    Loss,
    MeanSquaredError,
    NLLLoss,
    SparsemaxLoss,
)
from .losses._targets import ClassTargets
from .operators import (
    DenseJacobian,
    DiagonalJacobian,
    DiagonalPlusLowRank,
    DiagonalPlusRankOne,
    JacobianOperator,
    ProjectedDiagonal,
    SimplexBlock,
    SumOperator,
)

__all__ = [
    "HESSIAN_RULES",
    "HessianRule",
    "register_hessian",
    "get_hessian_rule",
    "SECOND_ORDER_METHODS",
    "FISHER_KINDS",
    "PREDICTIVES",
]

SECOND_ORDER_METHODS = ("auto", "fused", "chain")
FISHER_KINDS = ("exact", "mc", "empirical")
#: what ``Loss.predictive`` may say: the model's own distribution of targets given ``a``
PREDICTIVES = {
    "categorical": "class indices drawn from the probabilities a",
    "categorical_log": "class indices drawn from the probabilities exp(a)",
    "bernoulli": "targets of a's shape, each 1 with probability a (independently)",
    "gaussian": "targets a + N(0, ½) (the distribution whose Fisher is the Hessian of (a − y)²)",
}


# -- the registry --------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianRule:
    """A pair's closed-form second order (reduced blocks, from the logits).

    ``hessian(act, loss, z, y)`` → :class:`~jacobians.JacobianOperator`; ``sqrt`` (optional)
    → its exact factor ``(..., K, C)``; ``fisher(act, loss, z, y_or_None)`` (optional) → the
    exact Fisher's unreduced blocks; ``hvp(act, loss, z, y, v)`` (optional) → ``H v`` in one
    pass; ``canonical``: the GGN is the Hessian.
    """

    hessian: Callable
    canonical: bool = False
    sqrt: Callable | None = None
    fisher: Callable | None = None
    hvp: Callable | None = None


#: (activation class, loss class) -> HessianRule
HESSIAN_RULES: dict[tuple[type, type], HessianRule] = {}


def register_hessian(activation_cls: type, loss_cls: type, *, canonical: bool = False, replace: bool = False):
    """Decorator: register ``rule(activation, loss, z, y) -> JacobianOperator or ndarray``,
    the blocks ``∂²E/∂z_n∂z_n`` of a pair in closed form (the loss's reduction applied).

    ``Head.hessian(method='fused')`` (and ``'auto'``) then uses it; ``canonical=True``
    declares that the pair's GGN is its Hessian (``head.ggn_is_hessian``), as for a loss
    that is a negative log-likelihood of the activation's natural parameter.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Quartic(jac.ElementwiseLoss):
    ...     def per_element(self, a, y):
    ...         return (a - y) ** 4
    ...     def per_element_grad(self, a, y):
    ...         return 4 * (a - y) ** 3
    ...     def per_element_hessian(self, a, y):
    ...         return 12 * (a - y) ** 2
    >>> @jac.register_hessian(jac.Identity, Quartic)
    ... def _identity_quartic(act, loss, z, y):
    ...     return loss.hessian_operator(z, y)
    >>> head = jac.Head(jac.Identity(), Quartic())
    >>> z, y = np.array([[1.0, 2.0]]), np.zeros((1, 2))
    >>> head.hessian(z, y, method="fused")           # 12 (z − y)² / (N·K) on the diagonal
    array([[[ 6.,  0.],
            [ 0., 24.]]])
    >>> _ = jac.curvature.HESSIAN_RULES.pop((jac.Identity, Quartic))   # (tidy up)
    """
    from .fused import check_rule_classes

    check_rule_classes(activation_cls, loss_cls)

    def add(rule):
        key = (activation_cls, loss_cls)
        if key in HESSIAN_RULES and HESSIAN_RULES[key].hessian is not rule and not replace:
            raise ValueError(
                f"a Hessian rule for ({activation_cls.__name__}, {loss_cls.__name__}) is already registered; "
                "pass replace=True to replace it"
            )
        HESSIAN_RULES[key] = HessianRule(rule, canonical=bool(canonical))
        return rule

    return add


def _builtin(activation_cls, loss_cls, *, sqrt=None, fisher=None, hvp=None):
    def add(rule):
        HESSIAN_RULES[(activation_cls, loss_cls)] = HessianRule(rule, True, sqrt, fisher, hvp)
        return rule

    return add


def get_hessian_rule(activation, loss) -> HessianRule | None:
    """The rule registered for ``(type(activation), type(loss))``, or None."""
    return HESSIAN_RULES.get((type(activation), type(loss)))


# -- reduction factors ---------------------------------------------------------------------


def _row_factor(loss: Loss, x: np.ndarray, y):
    """``(c, valid)``: the factor ``c_n`` of ``E = Σ c_n ℓ_n`` (one scalar for every row,
    :meth:`~jacobians.Loss.reduction_scale`) and the rows that count (a bool mask, or None
    for all). Without targets ``'mean'`` divides by the number of rows (of entries, for an
    elementwise loss)."""
    t = None if y is None else loss.check_targets(x, y)
    valid = t.valid if isinstance(t, ClassTargets) else None
    return loss.reduction_scale(x, t), valid


def _masked(op: JacobianOperator, c, valid) -> JacobianOperator:
    if valid is None:
        return op if c == 1 else op.scaled(c)
    return op.scaled(c * valid.astype(op.dtype))


# -- built-in canonical rules ------------------------------------------------------------------


def _softmax_family(act, loss, z, y):
    """``(x, t, csum, scale)`` for softmax/log-softmax with a loss ``const − Σ c log p``."""
    z = as_float_array(z, "z")
    t = loss.check_targets(z, y)
    T = getattr(act, "temperature", 1.0)
    x = z if T == 1.0 else z / z.dtype.type(T)
    plain = t.is_index and getattr(loss, "weight", None) is None
    if plain:
        # smoothing keeps Σc = 1: the row sums are 1, or 0 for ignored rows
        csum = np.ones(t.indices.shape, z.dtype) if t.valid is None else t.valid.astype(z.dtype)
    else:
        csum = loss.coefficients(t, z.dtype)[0].sum(axis=-1)
    scale = loss.reduction_scale(z, t) / z.dtype.type(T) ** 2
    return x, t, csum, scale


def _softmax_hessian(act, loss, z, y):
    """``Σc · (diag(p) − p pᵀ)/T²`` per row (times the reduction's factor)."""
    x, _, csum, scale = _softmax_family(act, loss, z, y)
    return SimplexBlock(_kernels.softmax(x), csum * scale)


def _softmax_hvp(act, loss, z, y, v):
    """``Σc (p ⊙ (v − p·v))/T²``: the softmax VJP of v (one fused pass), scaled by ``Σc/T``."""
    x, t, csum, scale = _softmax_family(act, loss, z, y)
    T = getattr(act, "temperature", 1.0)
    plain = t.is_index and t.valid is None and getattr(loss, "weight", None) is None
    factor = scale * z.dtype.type(T) if plain else csum * (scale * z.dtype.type(T))
    return _kernels.softmax_vjp(x, v, T, factor)


def _softmax_sqrt(act, loss, z, y):
    """``√c (diag(√p) − p √pᵀ/Σp)`` with ``√p = exp(½ log p) = e^{(x − m)/2} / √Σe^{x − m}``:
    normal where p itself underflows, and one exp a row entry."""
    x, _, csum, scale = _softmax_family(act, loss, z, y)
    half = np.exp((x - x.max(axis=-1, keepdims=True)) / 2)
    root = half / np.sqrt(np.einsum("...k,...k->...", half, half))[..., None]
    p = root * root
    rc = np.sqrt(csum * scale)[..., None]
    total = p.sum(axis=-1, keepdims=True)
    exact = rc * root * (_math.complement_sums(p) / total)  # the diagonal, 1 − p/Σp summed directly
    return DiagonalPlusRankOne(rc * root, rc * p / total, root, diagonal=exact).dense()


def _class_fisher(p: np.ndarray, loss, dtype) -> JacobianOperator:
    """``E_k~p[g(k) g(k)ᵀ]`` for ``g(k) = p s_k − (1 − ε) w_k e_k − (ε/K) w``, the logit
    gradient of ``−Σ_j w_j q_j log p_j`` at the target ``q = (1 − ε) e_k + ε/K``::

        (1 − ε)² diag(p w²) + A p pᵀ − B (p bᵀ + b pᵀ) + P b bᵀ − (1 − ε)(p rᵀ + r pᵀ − b qᵀ − q bᵀ)

    with ``s_k = (1 − ε) w_k + (ε/K) Σw``, ``b = (ε/K) w``, ``A = Σ p s²``, ``B = Σ p s``,
    ``P = Σ p``, ``r = p w s``, ``q = p w``. Without weights and smoothing: ``diag(p) − p pᵀ``.
    """
    K = p.shape[-1]
    eps = float(getattr(loss, "label_smoothing", 0.0))
    w_attr = getattr(loss, "weight", None)
    if w_attr is None and not eps:
        return SimplexBlock(p, np.ones(p.shape[:-1], dtype))
    w = np.ones(K, dtype) if w_attr is None else w_attr.astype(dtype)
    one = dtype.type(1 - eps)
    b = np.broadcast_to(dtype.type(eps / K) * w, p.shape)
    s = one * w + dtype.type(eps / K) * w.sum()
    A = (p * s * s).sum(axis=-1, keepdims=True)
    B = (p * s).sum(axis=-1, keepdims=True)
    P = p.sum(axis=-1, keepdims=True)
    r, q = p * w * s, p * w
    U = np.stack([p, b, one * r, -one * q], axis=-1)
    V = np.stack([-A * p + B * b + one * r, B * p - P * b - one * q, p, b], axis=-1)
    return DiagonalPlusLowRank(one * one * p * w * w, U, V)


def _softmax_fisher(act, loss, z, y):
    z = as_float_array(z, "z")
    T = getattr(act, "temperature", 1.0)
    x = z if T == 1.0 else z / z.dtype.type(T)
    if isinstance(loss, KLDivergence):  # a one-hot ŷ: −log p_ŷ, whatever the soft targets
        blocks = SimplexBlock(_kernels.softmax(x), np.ones(z.shape[:-1], z.dtype))
    else:
        blocks = _class_fisher(_kernels.softmax(x), loss, z.dtype)
    return blocks if T == 1.0 else blocks.scaled(z.dtype.type(1.0 / T**2))


for _act, _loss in ((Softmax, CrossEntropy), (Softmax, KLDivergence), (LogSoftmax, NLLLoss)):
    _builtin(_act, _loss, sqrt=_softmax_sqrt, fisher=_softmax_fisher, hvp=_softmax_hvp)(_softmax_hessian)


def _bce_parts(loss, z, y):
    """``(e, σ(z), σ(−z), y', p)``: ``e = exp(−|z|)``, the smoothed targets and ``pos_weight``."""
    e = np.exp(-np.abs(z))
    inv = 1 / (1 + e)
    pos = z > 0
    sig, sig_neg = np.where(pos, inv, e * inv), np.where(pos, e * inv, inv)
    pw = loss._pos_weight(z.dtype)
    return e, sig, sig_neg, (None if y is None else loss.smoothed(y)), (1 if pw is None else pw)


def _sigmoid_bce_hessian(act, loss, z, y):
    """``diag(σ(z) σ(−z) (1 − y + p y))``: the derivative of ``σ(z)(1 − y + p y) − p y``."""
    z = as_float_array(z, "z")
    y = loss.check_targets(z, y)
    e, sig, sig_neg, ys, pw = _bce_parts(loss, z, y)
    h = sig * sig_neg * (1 - ys + pw * ys)
    return DiagonalJacobian(h * loss.reduction_scale(z, y))


def _sigmoid_bce_sqrt(act, loss, z, y):
    """``diag(√(c (1 − y + p y)) · e^{−|z|/2} / (1 + e^{−|z|}))``: √(σ(z)σ(−z)) without
    the product underflowing first."""
    z = as_float_array(z, "z")
    y = loss.check_targets(z, y)
    e, _, _, ys, pw = _bce_parts(loss, z, y)
    root = np.exp(-np.abs(z) / 2) / (1 + e) * np.sqrt((1 - ys + pw * ys) * loss.reduction_scale(z, y))
    return DiagonalJacobian(root).dense()


def _sigmoid_bce_fisher(act, loss, z, y):
    """``diag(β²(1 − ε)² σσ̄) + m mᵀ`` with ``β = σ + p σ̄``, ``σ̄ = σ(−z)`` and the mean
    gradient ``m = σσ̄(1 − p) + β ε tanh(z/2)/2`` (``ŷ`` ~ Bernoulli(σ), smoothed to
    ``(1 − ε)ŷ + ε/2``): zero without ``pos_weight`` and smoothing, where the Fisher is
    the Hessian ``diag(σσ̄)``."""
    z = as_float_array(z, "z")
    _, sig, sig_neg, _, pw = _bce_parts(loss, z, None)
    eps = z.dtype.type(loss.label_smoothing)
    curv = sig * sig_neg
    beta = sig + pw * sig_neg
    var = curv * (beta * (1 - eps)) ** 2
    if loss.pos_weight is None and not eps:
        return DiagonalJacobian(curv)
    m = curv * (1 - pw) + beta * eps * np.tanh(z / 2) / 2
    return DiagonalPlusLowRank(var, m[..., None], -m[..., None])


_builtin(Sigmoid, BinaryCrossEntropy, sqrt=_sigmoid_bce_sqrt, fisher=_sigmoid_bce_fisher)(_sigmoid_bce_hessian)


def _identity_mse_hessian(act, loss, z, y):
    z = as_float_array(z, "z")
    loss.check_targets(z, y)
    return DiagonalJacobian(np.full_like(z, 2 * loss.reduction_scale(z, y)))


def _identity_mse_fisher(act, loss, z, y):
    z = as_float_array(z, "z")
    return DiagonalJacobian(np.full_like(z, 2))


_builtin(Identity, MeanSquaredError, fisher=_identity_mse_fisher)(_identity_mse_hessian)


def _fenchel_young_hessian(act, loss, z, y):
    """``E = L(z/T, y)``: the mapping's Jacobian ``diag(d) − d dᵀ/Σd`` at ``z/T``, over T²
    (and over N for ``'mean'``)."""
    T = getattr(act, "temperature", 1.0)
    if T == 1.0:
        return loss.hessian_operator(z, y)
    z = as_float_array(z, "z")
    return loss.hessian_operator(act._scaled(z), y).scaled(z.dtype.type(T) ** -2)


for _act, _loss in ((Sparsemax, SparsemaxLoss), (Entmax15, Entmax15Loss), (Entmax, EntmaxLoss)):
    _builtin(_act, _loss)(_fenchel_young_hessian)


# -- the pieces of the chain rule --------------------------------------------------------------


def _forward(head, z, y):
    """``(a, dE/da, J)`` at ``z``: the activation's output, the reduced loss gradient and the
    Jacobian operator."""
    act, loss = head.activation, head.loss_fn
    a = act(z)
    g = loss.grad(a, y)
    return a, g, act._operator_from_output(z, a)


def _projection_form(J):
    """``(g, v)`` when ``J = diag(g) − g vᵀ = diag(g) (I − 1 vᵀ)`` with ``v >= 0``, ``Σv = 1``
    (every simplex map and log-softmax), else None."""
    if not isinstance(J, DiagonalPlusRankOne) or not J.projector:
        return None
    return J.d, J.v


def _gram(J: JacobianOperator, H: JacobianOperator) -> JacobianOperator:
    """``Jᵀ H J``. For a simplex map (``J = diag(g) P``, ``P = I − 1 vᵀ``) and a diagonal or
    entmax-family H it is ``Pᵀ diag(g² h) P`` (minus ``x xᵀ`` with ``x = Pᵀ(g ⊙ w)`` for
    ``H = diag(c q) − w wᵀ``), whose diagonal is computed without cancellation
    (:class:`~jacobians.operators.ProjectedDiagonal`): where a prediction is confident the
    generic product subtracts numbers far larger than the result."""
    if isinstance(J, DiagonalJacobian) and isinstance(H, SimplexBlock):
        # diag(g) (diag(c q) − w wᵀ) diag(g), its diagonal g² times H's exact one
        gw = J.d * H.u
        return DiagonalPlusRankOne(J.d * J.d * H.d, gw, gw, diagonal=J.d * J.d * H.diagonal())
    form = _projection_form(J)
    if form is not None:
        g, v = form
        if isinstance(H, DiagonalJacobian):
            return ProjectedDiagonal(g * g * H.d, v)
        if isinstance(H, SimplexBlock):
            x = _math.project_columns((g * H.u)[..., None], v)[..., 0]
            outer = DiagonalPlusLowRank(np.zeros_like(x), x[..., None], x[..., None])
            return SumOperator(ProjectedDiagonal(g * g * H.d, v), outer)
    return J.T @ H @ J


def _ggn_chain(head, z, y) -> JacobianOperator:
    a = head.activation(z)
    J = head.activation._operator_from_output(z, a)
    return _gram(J, head.loss_fn.hessian_operator(a, y))


def _hessian_chain(head, z, y) -> JacobianOperator:
    a, g, J = _forward(head, z, y)
    return SumOperator(_gram(J, head.loss_fn.hessian_operator(a, y)), head.activation.hessian_vjp_operator(z, g))


def hessian_operator(head, z, y, method: str = "auto") -> JacobianOperator:
    """The blocks ``∂²E/∂z_n∂z_n`` as a :class:`~jacobians.JacobianOperator`; see
    :meth:`jacobians.Head.hessian`."""
    method = _resolve(head, method)
    z = as_float_array(z, "z")
    if method == "fused":
        op = head.hessian_rule.hessian(head.activation, head.loss_fn, z, y)
        return op if isinstance(op, JacobianOperator) else DenseJacobian(op)
    return _hessian_chain(head, z, y)


def hvp(head, z, y, v, method: str = "auto") -> np.ndarray:
    """``H_n v_n`` per row; see :meth:`jacobians.Head.hvp`."""
    resolved = _resolve(head, method)
    z = as_float_array(z, "z")
    v = as_float_array(v, "v")
    if v.shape != z.shape:
        raise ValueError(f"v must have the shape of z, {z.shape}; got shape {v.shape}")
    v = v.astype(z.dtype, copy=False)
    rule = head.hessian_rule
    if resolved == "fused" and rule.hvp is not None:
        return rule.hvp(head.activation, head.loss_fn, z, y, v)
    return hessian_operator(head, z, y, resolved) @ v


def ggn_operator(head, z, y) -> JacobianOperator:
    """The GGN blocks: the Hessian for a canonical pair, ``Jᵀ H_E J`` otherwise."""
    z = as_float_array(z, "z")
    if head.ggn_is_hessian:
        return hessian_operator(head, z, y, "fused" if head.hessian_rule is not None else "chain")
    _require_chain(head, "ggn")
    return _ggn_chain(head, z, y)


def sqrt_ggn(head, z, y) -> np.ndarray:
    """``S`` of shape ``(..., K, C)`` with ``S Sᵀ`` the GGN blocks."""
    z = as_float_array(z, "z")
    rule = head.hessian_rule
    if head.ggn_is_hessian and rule is not None:
        if rule.sqrt is not None:
            return rule.sqrt(head.activation, head.loss_fn, z, y)
        op = rule.hessian(head.activation, head.loss_fn, z, y)
        return (op if isinstance(op, JacobianOperator) else DenseJacobian(op)).sqrt()
    _require_chain(head, "sqrt_ggn")
    a = head.activation(z)
    J = head.activation._operator_from_output(z, a)
    S = head.loss_fn.hessian_operator(a, y).sqrt()
    form = _projection_form(J)
    if form is not None:  # Jᵀ S = Pᵀ (g ⊙ S), rows projected without cancellation
        g, v = form
        return _math.project_columns(g[..., None] * S, v)
    return J.T.matmat(S)


# -- Fisher ------------------------------------------------------------------------------------


def predictive_kind(loss) -> str:
    """The loss's predictive distribution (one of ``PREDICTIVES``); a ValueError without one."""
    kind = getattr(loss, "predictive", None)
    if kind is None:
        raise ValueError(
            f"{type(loss).__name__} is no negative log-likelihood: it declares no predictive distribution "
            "(Loss.predictive), so there is no Fisher to sample or take the expectation of; use kind='empirical' "
            "or the GGN"
        )
    if kind not in PREDICTIVES:
        raise ValueError(f"{type(loss).__name__}.predictive must be one of {sorted(PREDICTIVES)}; got {kind!r}")
    return kind


def fisher_operator(head, z, y=None, kind: str = "exact", *, mc_samples: int = 1, seed=None) -> JacobianOperator:
    """The Fisher blocks of ``kind``; see :meth:`jacobians.Head.fisher`."""
    if not isinstance(kind, str) or kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {FISHER_KINDS}; got {kind!r}")
    z = as_float_array(z, "z")
    loss = head.loss_fn
    if kind == "empirical":
        if y is None:
            raise ValueError("kind='empirical' needs the true targets y: it is built from the gradients at them")
        g = _row_gradients(head, z, y)
        c, _ = _row_factor(loss, _loss_input(head, z), y)
        return DenseJacobian(np.einsum("...i,...j->...ij", g, g) * c)
    if kind == "mc":
        S = sqrt_ggn_sampled(head, z, mc_samples=mc_samples, seed=seed, y=y)
        return DenseJacobian(S @ np.swapaxes(S, -1, -2))
    predictive_kind(loss)
    c, valid = _row_factor(loss, _loss_input(head, z), y)
    rule = head.hessian_rule
    if rule is not None and rule.fisher is not None:
        blocks = rule.fisher(head.activation, loss, z, y)
    else:
        a = head.activation(z)
        J = head.activation._operator_from_output(z, a)
        blocks = _gram(J, loss.fisher_blocks(a))
    return _masked(blocks, c, valid)


def _loss_input(head, z):
    return z if head.logits_loss else head.activation(z)


def _row_gradients(head, z, y, *, sampled: bool = False) -> np.ndarray:
    """∇_z of each row's own loss (the reduction 'none'), shape of z.

    ``sampled``: ``y`` was drawn from the predictive distribution. ``ignore_index`` selects
    rows by their *true* target (the mask of :func:`_row_factor`); a drawn class equal to it
    is a class like any other, as in the exact Fisher, so the per-row loss here goes without
    it."""
    from .head import Head

    loss = head.loss_fn.with_reduction("none")
    if sampled and getattr(loss, "ignore_index", None) is not None:
        loss.ignore_index = None  # a copy: the head's own loss keeps it
    return Head(head.activation, loss).grad(z, y)


# -- Monte-Carlo columns -----------------------------------------------------------------------


def seed_key(seed) -> int:
    """The sampling key of ``seed``: a non-negative int, a Generator's draw, or a fresh one."""
    if seed is None:
        return int(np.random.default_rng().integers(2**63))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, a numpy.random.Generator or None; got {seed!r}")
    return int(seed) % 2**64


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: the Monte-Carlo columns are computed for blocks of rows of about this many entries (N·M·K)
MC_BLOCK_ENTRIES = 1 << 21


def row_uniforms(key: int, row_start: int, n_rows: int, per_row: int) -> np.ndarray:
    """Uniforms in [0, 1), shape ``(n_rows, per_row)``, for the global rows ``row_start`` ...
    (see :func:`uniforms_for_rows`)."""
    return uniforms_for_rows(key, np.arange(row_start, row_start + n_rows), per_row)


def uniforms_for_rows(key: int, row_ids, per_row: int) -> np.ndarray:
    """Uniforms in [0, 1), shape ``(len(row_ids), per_row)``, a function of (key, global row,
    column) only: SplitMix64 of a Weyl sequence. Any split of the rows into chunks — one
    chunk, Dask blocks along any batch axes — draws the same numbers for the same rows, so
    sampling is reproducible from the seed whatever the chunking."""
    rows = np.asarray(row_ids, dtype=np.uint64).reshape(-1)
    idx = (rows[:, None] * np.uint64(per_row) + np.arange(per_row, dtype=np.uint64)).reshape(-1)
    x = idx * _GOLDEN + np.uint64(key % 2**64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return ((x >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(rows.size, per_row)


def sample_targets(loss, a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Targets drawn from ``loss``'s predictive distribution at ``a`` from uniforms ``u``
    (``(N, U)`` for the N rows of ``a``); class indices or arrays of a's shape."""
    kind = predictive_kind(loss)
    K = a.shape[-1]
    a2 = a.reshape(-1, K)
    if kind in ("categorical", "categorical_log"):
        p = np.exp(a2) if kind == "categorical_log" else a2
        cdf = np.cumsum(p, axis=-1)
        # the first k with cdf_k >= u·Σp, for u in (0, 1]: a class of probability 0 is never drawn
        k = (cdf < (1 - u[:, :1]) * cdf[:, -1:]).sum(axis=-1)
        return np.minimum(k, K - 1).reshape(a.shape[:-1])
    if kind == "bernoulli":
        return (u[:, :K] < a2).astype(a.dtype).reshape(a.shape)
    # Box–Muller: variance ½ per entry
    u1, u2 = 1 - u[:, :K], u[:, K : 2 * K]
    noise = np.sqrt(-np.log(u1)) * np.cos(2 * np.pi * u2)  # N(0, 1/2): sqrt(-2 log u)/sqrt(2)
    return (a2 + noise.astype(a.dtype)).reshape(a.shape)


def _uniforms_per_row(kind: str, K: int) -> int:
    return {"categorical": 1, "categorical_log": 1, "bernoulli": K, "gaussian": 2 * K}[kind]


def check_mc_samples(mc_samples) -> int:
    """``mc_samples`` as an int >= 1 (a ValueError otherwise)."""
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
        raise ValueError(f"mc_samples must be an int >= 1; got {mc_samples!r}")
    return int(mc_samples)


def sqrt_ggn_sampled(head, z, mc_samples: int = 1, seed=None, *, y=None, row_start: int = 0,
                     row_ids=None) -> np.ndarray:
    """Monte-Carlo columns ``(..., K, M)``: ``√(c_n/M) ∇_z ℓ_n(ŷ_m)`` with ``ŷ_m`` drawn from the
    model's predictive distribution; ``E[S Sᵀ]`` is the exact Fisher.

    The draws of row n are a function of (seed, its global index, m): ``row_ids`` (the
    global flat indices of z's rows) or ``row_start + arange(N)``."""
    check_mc_samples(mc_samples)
    z = as_float_array(z, "z")
    loss = head.loss_fn
    kind = predictive_kind(loss)
    key = seed_key(seed)
    a = head.activation(z)
    c, valid = _row_factor(loss, z if head.logits_loss else a, y)
    K = z.shape[-1]
    n = int(np.prod(z.shape[:-1]))
    M = int(mc_samples)
    per = _uniforms_per_row(kind, K)
    z2, a2 = z.reshape(n, K), a.reshape(n, K)
    ids = np.arange(row_start, row_start + n) if row_ids is None else np.asarray(row_ids).reshape(-1)
    if ids.size != n:
        raise ValueError(f"row_ids must hold one index per row of z, {n}; got {ids.size}")
    S = np.empty((n, K, M), dtype=z.dtype)
    step = max(1, MC_BLOCK_ENTRIES // (M * K))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        m = rows.stop - rows.start
        # row r's draws for all M samples, one block: the same numbers however rows are split
        u = uniforms_for_rows(key, ids[rows], M * per).reshape(m * M, per)
        zr = np.broadcast_to(z2[rows, None, :], (m, M, K)).reshape(m * M, K)
        ar = np.broadcast_to(a2[rows, None, :], (m, M, K)).reshape(m * M, K)
        grads = _row_gradients(head, zr, sample_targets(loss, ar, u), sampled=True)
        S[rows] = np.swapaxes(grads.reshape(m, M, K), -1, -2)
    S = S.reshape(z.shape + (M,))
    w = np.sqrt(c / z.dtype.type(mc_samples))
    if valid is not None:
        return S * (w * valid.astype(z.dtype))[..., None, None]
    return S * w


# -- row blocks (the last layer and Dask take the blocks a slice of rows at a time) ----------------

#: the kinds of per-sample blocks :func:`blocks_for_rows` gives
BLOCK_KINDS = ("hessian", "ggn", "fisher", "fisher_mc", "empirical_fisher")


def reduction_factor(head, z, y) -> float:
    """``c`` with the reduced loss's blocks = ``c`` × the blocks of the ``'sum'`` loss, for the
    whole batch ``z`` (and targets ``y``, or None): 1/denominator for ``'mean'``, else 1. A loss
    made by :meth:`~jacobians.Loss.with_denominator` keeps its own denominator."""
    loss = head.loss_fn
    z = as_float_array(z, "z")
    # the denominator reads the shape of the loss's input (z's) and the targets
    return float(loss.reduction_scale(z, y, dtype=np.float64))  # 0 for a denominator of 0


def _check_kind_applies(head, kind: str) -> None:
    if kind not in BLOCK_KINDS:
        raise ValueError(f"kind must be one of {BLOCK_KINDS}; got {kind!r}")
    if kind in ("fisher", "fisher_mc"):
        predictive_kind(head.loss_fn)


def blocks_for_rows(head, kind: str, z, y, *, key: int = 0, mc_samples: int = 1, row_start: int = 0, row_ids=None):
    """The per-sample blocks of ``kind`` for some rows, for a head whose loss has reduction
    ``'sum'`` or ``'none'`` (each row's own blocks: multiply by :func:`reduction_factor` of
    the whole batch for ``'mean'``).

    Returns a :class:`~jacobians.JacobianOperator` (``'hessian'``, ``'ggn'``, ``'fisher'``)
    or a factor ``S`` (n, K, C) whose blocks are ``S Sᵀ`` (``'fisher_mc'``: M sampled
    columns drawn for global rows ``row_start ...`` from ``key``; ``'empirical_fisher'``:
    the rows' own gradients, C = 1).
    """
    if kind == "hessian":
        return hessian_operator(head, z, y)
    if kind == "ggn":
        return ggn_operator(head, z, y)
    if kind == "fisher":
        return fisher_operator(head, z, y, "exact")
    if kind == "fisher_mc":
        S = sqrt_ggn_sampled(head, z, mc_samples, key, y=y, row_start=row_start, row_ids=row_ids)
        return S.reshape(-1, *S.shape[-2:])
    if kind == "empirical_fisher":
        g = _row_gradients(head, as_float_array(z, "z"), y)
        return g.reshape(-1, g.shape[-1])[..., None]
    raise ValueError(f"kind must be one of {BLOCK_KINDS}; got {kind!r}")


# -- dispatch ----------------------------------------------------------------------------------


def _require_chain(head, what: str) -> None:
    if head.logits_loss:
        raise ValueError(
            f"{type(head.loss_fn).__name__} is a Fenchel–Young loss of the logits: its curvature is fused-only "
            f"({what} by the chain rule would need it as a function of {type(head.activation).__name__}'s output); "
            f"use method='fused', or Head(Identity(), {type(head.loss_fn).__name__}()) for the chain rule"
        )


def _resolve(head, method) -> str:
    if not isinstance(method, str) or method not in SECOND_ORDER_METHODS:
        raise ValueError(f"method must be one of {SECOND_ORDER_METHODS}; got {method!r}")
    rule = head.hessian_rule
    if method == "auto":
        return "fused" if rule is not None else "chain"
    if method == "fused" and rule is None:
        raise ValueError(
            f"no Hessian rule is registered for ({type(head.activation).__name__}, {type(head.loss_fn).__name__}); "
            "use method='chain', or register one with jacobians.register_hessian"
        )
    if method == "chain":
        _require_chain(head, "the Hessian")
    return method

