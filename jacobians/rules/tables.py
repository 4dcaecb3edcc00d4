"""The registries of earlier versions, as views of :data:`~jacobians.rules.RULES`.

``register_fused`` and ``register_hessian`` build or extend the rule of one pair from
functions (``FunctionRule``); ``FUSED`` and ``HESSIAN_RULES`` read and write the
rules' parts as the dictionaries they were (``FUSED[pair]`` is the fused function,
``HESSIAN_RULES[pair]`` a :class:`HessianRule`); ``EXTREME_CLOSED_FORMS`` and
``EXTREME_HESSIANS`` are read-only views of the rules' extreme-logit limits.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Callable

from .base import PARTS, RULES, PairRule, check_rule_classes, install_rule

__all__ = [
    "FunctionRule",
    "HessianRule",
    "register_parts",
    "register_fused",
    "register_hessian",
    "FUSED",
    "HESSIAN_RULES",
    "EXTREME_CLOSED_FORMS",
    "EXTREME_HESSIANS",
]

_SECOND_ORDER = ("hessian", "hvp", "sqrt_hessian", "fisher")


class FunctionRule(PairRule):
    """A rule of one pair made of plain functions ``f(activation, loss, z, y)``: what
    :func:`register_fused` and :func:`register_hessian` build."""

    def __init__(self, pair, *, canonical: bool = False, value_and_grad=None, **parts):
        self.pairs = (tuple(pair),)
        self.canonical = bool(canonical)
        self.value_and_grad = value_and_grad
        for name, fn in parts.items():
            if name not in PARTS:
                raise TypeError(f"unknown part {name!r} of a rule; valid names are {sorted(PARTS)}")
            setattr(self, name, fn)

    def __repr__(self) -> str:
        act, loss = self.pairs[0]
        return f"FunctionRule(({act.__name__}, {loss.__name__}))"


def _parts_of(rule: PairRule | None) -> dict:
    if rule is None:
        return {"canonical": False}
    out = {name: getattr(rule, name) for name in ("value_and_grad", *PARTS)}
    out["canonical"] = rule.canonical
    return out


def register_parts(activation_cls: type, loss_cls: type, *, replace: bool = False, owner: str, **parts) -> None:
    """Build or extend the rule of one pair with ``parts`` (the one body of
    :func:`register_fused` and :func:`register_hessian`). ``owner``: the part whose
    existing value counts as "already registered" (``ValueError`` unless ``replace``)."""
    check_rule_classes(activation_cls, loss_cls)
    key = (activation_cls, loss_cls)
    current = RULES.get(key)
    old = None if current is None else getattr(current, owner)
    if old is not None and old is not parts[owner] and not replace:
        what = "fused rule" if owner == "value_and_grad" else "Hessian rule"
        raise ValueError(
            f"a {what} for ({activation_cls.__name__}, {loss_cls.__name__}) is already registered; "
            "pass replace=True to replace it"
        )
    merged = _parts_of(current)
    merged.update(parts)
    install_rule(FunctionRule(key, **merged), [key], replace=True)


def register_fused(activation_cls: type, loss_cls: type, *, replace: bool = False):
    """Decorator: register ``rule(activation, loss, z, y) -> (value, dE_dz)`` for a pair.

    The rule is looked up by the exact classes of the head's activation and loss (a
    subclass needs its own rule, since it may change the math). The rule must apply
    the loss's reduction (``loss.reduction``). It becomes the ``value_and_grad`` of the
    pair's :class:`~jacobians.PairRule` (see :func:`jacobians.register_rule`, which
    registers every closed form of a pair at once).

    Parameters
    ----------
    activation_cls, loss_cls : type
        :class:`~jacobians.Activation` and :class:`~jacobians.Loss` subclasses.
    replace : bool
        Allow replacing an existing rule for the pair.
    """
    check_rule_classes(activation_cls, loss_cls)

    def add(rule: Callable) -> Callable:
        register_parts(activation_cls, loss_cls, replace=replace, owner="value_and_grad", value_and_grad=rule)
        return rule

    return add


def register_hessian(activation_cls: type, loss_cls: type, *, canonical: bool = False, replace: bool = False):
    """Decorator: register ``rule(activation, loss, z, y) -> JacobianOperator or ndarray``,
    the blocks ``∂²E/∂z_n∂z_n`` of a pair in closed form (the loss's reduction applied).

    ``Head.hessian(method='fused')`` (and ``'auto'``) then uses it; ``canonical=True``
    declares that the pair's GGN is its Hessian (``head.ggn_is_hessian``), as for a loss
    that is a negative log-likelihood of the activation's natural parameter. It becomes
    the ``hessian`` of the pair's :class:`~jacobians.PairRule`.

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
    check_rule_classes(activation_cls, loss_cls)

    def add(rule: Callable) -> Callable:
        register_parts(activation_cls, loss_cls, replace=replace, owner="hessian", hessian=rule,
                       canonical=canonical, hvp=None, sqrt_hessian=None, fisher=None)
        return rule

    return add


@dataclass(frozen=True)
class HessianRule:
    """A pair's closed-form second order (reduced blocks, from the logits), as a record.

    ``hessian(act, loss, z, y)`` → :class:`~jacobians.JacobianOperator`; ``sqrt`` (optional)
    → its exact factor ``(..., K, C)``; ``fisher(act, loss, z, y_or_None)`` (optional) → the
    exact Fisher's unreduced blocks; ``hvp(act, loss, z, y, v)`` (optional) → ``H v`` in one
    pass; ``canonical``: the GGN is the Hessian. ``rule``: the :class:`~jacobians.PairRule`
    it was read from (None for one made by hand).
    """

    hessian: Callable
    canonical: bool = False
    sqrt: Callable | None = None
    fisher: Callable | None = None
    hvp: Callable | None = None
    rule: PairRule | None = field(default=None, compare=False, repr=False)


class _View(MutableMapping):
    """The pairs whose rule has ``part``, read and written through :data:`RULES`."""

    part = "value_and_grad"

    def _has(self, rule) -> bool:
        return getattr(rule, self.part) is not None

    def __iter__(self):
        return iter([key for key, rule in RULES.items() if self._has(rule)])

    def __len__(self) -> int:
        return sum(1 for rule in RULES.values() if self._has(rule))

    def __contains__(self, key) -> bool:
        rule = RULES.get(key)
        return rule is not None and self._has(rule)

    def __getitem__(self, key):
        rule = RULES.get(key)
        if rule is None or not self._has(rule):
            raise KeyError(key)
        return self._read(rule)

    def __delitem__(self, key) -> None:
        rule = RULES.get(key)
        if rule is None or not self._has(rule):
            raise KeyError(key)
        rest = _parts_of(rule)
        for name in self._cleared:
            rest[name] = None
        if rest["value_and_grad"] is None and rest["hessian"] is None:
            del RULES[key]
        else:
            RULES[key] = FunctionRule(key, **rest)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


class _FusedView(_View):
    """``(activation class, loss class) -> rule(activation, loss, z, y)``: the rules' fused
    functions (``value_and_grad``)."""

    _cleared = ("value_and_grad", "extreme_value_and_grad")

    def _read(self, rule):
        return rule.fused_function()

    def __setitem__(self, key, fn) -> None:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, PairRule) and owner.fused_function() is fn:
            install_rule(owner, [key], replace=True)  # a rule's own function: the rule itself
            return
        if not callable(fn):
            raise TypeError(f"a fused rule must be callable; got {fn!r}")
        register_parts(*key, replace=True, owner="value_and_grad", value_and_grad=fn)


class _HessianView(_View):
    """``(activation class, loss class) -> HessianRule``: the rules' second order."""

    part = "hessian"
    _cleared = ("hessian", "hvp", "sqrt_hessian", "fisher", "extreme_hessian")

    def _read(self, rule):
        record = rule.__dict__.get("_hessian_record")
        if record is None:
            record = HessianRule(rule.hessian, rule.canonical, rule.sqrt_hessian, rule.fisher, rule.hvp, rule)
            rule.__dict__["_hessian_record"] = record
        return record

    def __setitem__(self, key, record) -> None:
        if not isinstance(record, HessianRule):
            raise TypeError(f"HESSIAN_RULES takes jacobians.curvature.HessianRule records; got {record!r}")
        if record.rule is not None and record.rule.__dict__.get("_hessian_record") is record:
            install_rule(record.rule, [key], replace=True)  # a rule's own record: the rule itself
            return
        register_parts(*key, replace=True, owner="hessian", hessian=record.hessian, canonical=record.canonical,
                       sqrt_hessian=record.sqrt, fisher=record.fisher, hvp=record.hvp)


class _ReadOnly(Mapping):
    """A read-only view of one part of the rules, as a function of ``call`` arguments."""

    def __init__(self, part: str, wrap: Callable):
        self.part, self.wrap = part, wrap

    def __iter__(self):
        return iter([key for key, rule in RULES.items() if getattr(rule, self.part) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, key):
        rule = RULES.get(key)
        if rule is None or getattr(rule, self.part) is None:
            raise KeyError(key)
        return self.wrap(getattr(rule, self.part))


#: (activation class, loss class) -> ``rule(activation, loss, z, y) -> (value, dE/dz)``
FUSED: MutableMapping = _FusedView()
#: (activation class, loss class) -> :class:`HessianRule`
HESSIAN_RULES: MutableMapping = _HessianView()
#: (activation class, loss class) -> ``closed(act, loss, z, y)``: (value, dE/dz) at
#: extreme logits (None when the loss's parameters leave the closed form); read-only
EXTREME_CLOSED_FORMS: Mapping = _ReadOnly("extreme_value_and_grad", lambda fn: fn)
#: (activation class, loss class) -> ``closed(head, z, y)``: the Hessian blocks at extreme
#: logits; read-only
EXTREME_HESSIANS: Mapping = _ReadOnly(
    "extreme_hessian", lambda fn: (lambda head, z, y: fn(head.activation, head.loss_fn, z, y))
)
