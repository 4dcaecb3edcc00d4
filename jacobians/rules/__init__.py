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

# the built-in rules register in this order (the order RULES, FUSED and the checks walk)
# isort: off
from . import softmax, sigmoid_bce, identity_mse, fenchel_young  # noqa: F401
# isort: on
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
