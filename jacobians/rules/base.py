"""The pair object: everything known in closed form about one (activation, loss) pair.

A :class:`PairRule` subclass lists the pairs it serves (``pairs``), says whether they are
canonical, and writes what it knows in closed form. Every method takes
``(activation, loss, z, y)`` (plus ``v`` for :meth:`~PairRule.hvp`) and applies the loss's
reduction, whose factor it reads from :meth:`jacobians.Loss.reduction_scale` (so a rule is
exact on a piece of a batch too, with :meth:`~jacobians.Loss.with_denominator`).

``value_and_grad`` is required. The other closed forms are optional: a rule leaves one out
by leaving its attribute None (the base class's value), and the head then falls back to
the generic rule, the chain rule (:mod:`jacobians.rules.chain`) — for ``hvp`` first to the
rule's own Hessian times ``v``, for ``sqrt_hessian`` of a canonical pair to the Hessian
operator's exact factor.
"""

from __future__ import annotations

from typing import Callable, ClassVar

from ..activations import Activation
from ..losses import Loss

__all__ = ["PairRule", "RULES", "register_rule", "get_rule", "install_rule", "check_rule_classes", "PARTS"]

#: the closed forms a rule may write besides ``value_and_grad``, with their meaning
PARTS = {
    "hessian": "the Hessian blocks ∂²E/∂z_n∂z_n: a JacobianOperator (or an array (..., K, K))",
    "hvp": "H_n v_n per row, shape of z, in one pass",
    "sqrt_hessian": "S (..., K, C) with S Sᵀ the Hessian blocks, exactly (a canonical pair's GGN factor)",
    "fisher": "the exact (type-2) Fisher's unreduced blocks in z, a JacobianOperator",
    "extreme_value_and_grad": "(value, dE/dz) at the logits of jacobians.checks.extreme_inputs, in float64, "
    "or None where the loss's options leave the closed form",
    "extreme_hessian": "the Hessian blocks at the logits of jacobians.checks.extreme_inputs, float64",
}


class PairRule:
    """Closed forms of an (activation, loss) pair, or of a family of pairs.

    Attributes
    ----------
    pairs : tuple of (activation class, loss class)
        The exact classes served (a subclass needs its own rule: it may change the math).
    canonical : bool
        The loss is a negative log-likelihood (or Fenchel–Young loss) of the activation's
        natural parameter: convex in z, its GGN is its Hessian.
    replace : bool
        :func:`register_rule` may replace the rules already registered for these pairs.

    Notes
    -----
    The methods take ``(activation, loss, z, y)`` (``hvp`` also ``v``) and apply the loss's
    reduction. ``value_and_grad`` → ``(value, dE/dz)`` is required; ``hessian``, ``hvp``,
    ``sqrt_hessian``, ``fisher``, ``extreme_value_and_grad`` and ``extreme_hessian`` are
    optional (see :data:`~jacobians.rules.PARTS`): None, the base class's value, where the rule leaves one
    out.

    Examples
    --------
    Identity + a quartic loss, its Hessian in closed form:

    >>> import numpy as np
    >>> import jacobians as jac
    >>> class Quartic(jac.ElementwiseLoss):
    ...     def per_element(self, a, y):
    ...         return (a - y) ** 4
    ...     def per_element_grad(self, a, y):
    ...         return 4 * (a - y) ** 3
    ...     def per_element_hessian(self, a, y):
    ...         return 12 * (a - y) ** 2
    >>> @jac.register_rule
    ... class IdentityQuartic(jac.PairRule):
    ...     pairs = ((jac.Identity, Quartic),)
    ...     def value_and_grad(self, activation, loss, z, y):
    ...         return loss.value_and_grad(z, y)
    ...     def hessian(self, activation, loss, z, y):
    ...         return jac.DiagonalJacobian(12 * (z - y) ** 2 * loss.reduction_scale(z, y))
    >>> head = jac.Head(jac.Identity(), Quartic())
    >>> head.method, type(jac.get_rule(head.activation, head.loss_fn)).__name__
    ('fused', 'IdentityQuartic')
    >>> head.hessian(np.array([[1.0, 2.0]]), np.zeros((1, 2)))     # 12 (z − y)² / (N·K)
    array([[[ 6.,  0.],
            [ 0., 24.]]])
    >>> _ = jac.RULES.pop((jac.Identity, Quartic))                   # (tidy up)
    """

    pairs: ClassVar[tuple[tuple[type, type], ...]] = ()
    canonical: ClassVar[bool] = False
    replace: ClassVar[bool] = False

    value_and_grad: Callable | None = None
    hessian: Callable | None = None
    hvp: Callable | None = None
    sqrt_hessian: Callable | None = None
    fisher: Callable | None = None
    extreme_value_and_grad: Callable | None = None
    extreme_hessian: Callable | None = None

    def fused_function(self) -> Callable | None:
        """``value_and_grad`` as one object for as long as the rule lives (None when the rule
        has none): what :attr:`jacobians.Head.fused_rule` and ``jacobians.fused.FUSED`` give."""
        if self.value_and_grad is None:
            return None
        return self.__dict__.setdefault("_fused_function", self.value_and_grad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: (activation class, loss class) -> the rule instance serving the pair
RULES: dict[tuple[type, type], PairRule] = {}


def check_rule_classes(activation_cls, loss_cls) -> None:
    """``TypeError`` unless a rule's pair is an Activation subclass and a Loss subclass."""
    if not (isinstance(activation_cls, type) and issubclass(activation_cls, Activation)):
        raise TypeError(f"activation_cls must be an Activation subclass; got {activation_cls!r}")
    if not (isinstance(loss_cls, type) and issubclass(loss_cls, Loss)):
        raise TypeError(f"loss_cls must be a Loss subclass; got {loss_cls!r}")


def install_rule(rule: PairRule, pairs, *, replace: bool = False) -> None:
    """Put ``rule`` in :data:`RULES` for every pair of ``pairs`` (all or none: a pair that
    has another rule is refused unless ``replace``)."""
    pairs = tuple(pairs)
    for act_cls, loss_cls in pairs:
        check_rule_classes(act_cls, loss_cls)
    for act_cls, loss_cls in pairs:
        old = RULES.get((act_cls, loss_cls))
        if old is not None and old is not rule and not replace:
            raise ValueError(
                f"a rule for ({act_cls.__name__}, {loss_cls.__name__}) is already registered "
                f"({type(old).__name__}); pass replace=True (or set replace = True on the rule class) to replace it"
            )
    for key in pairs:
        RULES[key] = rule


def register_rule(cls=None, *, replace: bool = False):
    """Class decorator: register a :class:`PairRule` subclass for each of its ``pairs``.

    One instance serves them all; :func:`get_rule` finds it by the exact classes of an
    activation and a loss. ``TypeError`` for a class that is no PairRule, for pairs that
    are not (Activation subclass, Loss subclass) tuples, or without ``value_and_grad``;
    ``ValueError`` for a pair that has a rule already, unless ``replace=True`` (or the
    class sets ``replace = True``). Usable as ``@register_rule`` or
    ``@register_rule(replace=True)``.
    """

    def add(rule_cls):
        if not (isinstance(rule_cls, type) and issubclass(rule_cls, PairRule)):
            raise TypeError(f"register_rule takes a PairRule subclass; got {rule_cls!r}")
        pairs = rule_cls.pairs
        ok = isinstance(pairs, (tuple, list)) and len(pairs) > 0
        if not ok or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise TypeError(
                f"{rule_cls.__name__}.pairs must be a non-empty tuple of (activation class, loss class) "
                f"tuples; got {pairs!r}"
            )
        if not callable(getattr(rule_cls, "value_and_grad", None)):
            raise TypeError(f"{rule_cls.__name__} must define value_and_grad(self, activation, loss, z, y)")
        for name in PARTS:
            part = getattr(rule_cls, name, None)
            if part is not None and not callable(part):
                raise TypeError(f"{rule_cls.__name__}.{name} must be a method or None; got {part!r}")
        install_rule(rule_cls(), [tuple(p) for p in pairs], replace=replace or bool(rule_cls.replace))
        return rule_cls

    return add if cls is None else add(cls)


def get_rule(activation, loss) -> PairRule | None:
    """The rule registered for ``(type(activation), type(loss))``, or None."""
    return RULES.get((type(activation), type(loss)))
