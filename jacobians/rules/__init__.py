"""Pair rules (``jacobians.rules``; ``jacobians.pairs`` is the function listing the valid
pairs): everything known in closed form about an (activation, loss) pair.

:class:`~jacobians.PairRule` (``base``) is the pair object, :data:`RULES` its registry;
the built-in rules live one module per family — ``softmax`` (softmax + CE/KL, log-softmax
+ NLL), ``sigmoid_bce``, ``identity_mse``, ``fenchel_young`` — and :mod:`.chain` is the
generic rule every pair falls back to. :mod:`.tables` keeps the
registries of earlier versions (``FUSED``, ``HESSIAN_RULES``, ``register_fused``,
``register_hessian``) as views of :data:`RULES`; :mod:`.vocabulary` says what each
``method`` and ``kind`` name means.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import PARTS, RULES, PairRule, get_rule, register_rule
from .chain import GENERIC, ChainRule
from .tables import (
    EXTREME_CLOSED_FORMS,
    EXTREME_HESSIANS,
    FUSED,
    HESSIAN_RULES,
    HessianRule,
    register_fused,
    register_hessian,
)

__all__ = [
    "PairRule",
    "RULES",
    "register_rule",
    "get_rule",
    "PARTS",
    "ChainRule",
    "GENERIC",
    "FUSED",
    "HESSIAN_RULES",
    "HessianRule",
    "register_fused",
    "register_hessian",
    "EXTREME_CLOSED_FORMS",
    "EXTREME_HESSIANS",
]

# Every module of this package is imported here, in the order of their names, and each
# built-in family registers its rules as it is imported: a new family is one new module,
# with no line to add here.
for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")
del _module
