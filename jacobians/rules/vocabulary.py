"""One vocabulary for each choice: what every ``method`` and ``kind`` name means.

Every validation of a ``method`` (``Head.grad``, ``hessian``, ``hvp``) and of a ``kind``
(``Head.fisher``, ``linear_curvature``, the row blocks of the last layer and Dask) reads
these two tables.
"""

from __future__ import annotations

__all__ = [
    "METHODS",
    "FIRST_ORDER_METHODS",
    "SECOND_ORDER_METHODS",
    "check_method",
    "KINDS",
    "BLOCK_KINDS",
    "FISHER_KINDS",
    "check_kind",
]

#: method name -> (what it means, the orders it applies to)
METHODS: dict[str, tuple[str, tuple[int, ...]]] = {
    "auto": ("the pair's rule where one is registered, else the generic rule", (1, 2)),
    "fused": ("the pair's rule (jacobians.PairRule); a closed form it leaves out falls back to 'chain'", (1, 2)),
    "vjp": ("the generic rule through the activation's closed-form vector–Jacobian product", (1,)),
    "jacobian": ("the generic rule through the dense Jacobian, built in row blocks", (1,)),
    "chain": ("the generic rule: the chain rule through the activation ('vjp' for the gradient)", (1, 2)),
}
#: the documented methods of ``Head.grad`` / ``value_and_grad`` (``Head.METHODS``); 'chain'
#: is accepted there too and means 'vjp'
FIRST_ORDER_METHODS = ("auto", "fused", "vjp", "jacobian")
#: the methods of ``Head.hessian`` / ``hessian_operator`` / ``hvp``
SECOND_ORDER_METHODS = tuple(name for name, (_, orders) in METHODS.items() if 2 in orders)


def check_method(method, order: int) -> str:
    """``method`` if :data:`METHODS` has it for derivatives of ``order`` (1 or 2), else
    ``ValueError`` listing the documented names."""
    documented = FIRST_ORDER_METHODS if order == 1 else SECOND_ORDER_METHODS
    if not isinstance(method, str) or order not in METHODS.get(method, ("", ()))[1]:
        raise ValueError(f"method must be one of {documented}; got {method!r}")
    return method


#: kind name -> (the blocks it means, what they are): the synonyms users already call
#: ('fisher' of linear_curvature is 'exact' of Head.fisher) mean one thing
KINDS: dict[str, tuple[str, str]] = {
    "hessian": ("hessian", "the Hessian blocks ∂²E/∂z_n∂z_n"),
    "ggn": ("ggn", "the generalized Gauss–Newton blocks Jᵀ H_a J (the Hessian for a canonical pair)"),
    "fisher": ("fisher", "the exact (type-2) Fisher over the model's predictive distribution"),
    "exact": ("fisher", "the exact (type-2) Fisher over the model's predictive distribution"),
    "fisher_mc": ("fisher_mc", "the Fisher from Monte-Carlo draws of the predictive distribution"),
    "mc": ("fisher_mc", "the Fisher from Monte-Carlo draws of the predictive distribution"),
    "empirical_fisher": ("empirical_fisher", "the empirical Fisher c_n ∇ℓ_n ∇ℓ_nᵀ at the true targets"),
    "empirical": ("empirical_fisher", "the empirical Fisher c_n ∇ℓ_n ∇ℓ_nᵀ at the true targets"),
}
#: the names ``linear_curvature`` documents (and the row blocks' meanings)
BLOCK_KINDS = ("hessian", "ggn", "fisher", "fisher_mc", "empirical_fisher")
#: the names ``Head.fisher`` documents
FISHER_KINDS = ("exact", "mc", "empirical")


def check_kind(kind, documented) -> str:
    """The meaning (a name of :data:`BLOCK_KINDS`) of ``kind``, a name of :data:`KINDS` whose
    meaning is one of ``documented``'s (the names the caller documents, listed by the
    ``ValueError`` otherwise)."""
    allowed = {KINDS[name][0] for name in documented}
    if not isinstance(kind, str) or kind not in KINDS or KINDS[kind][0] not in allowed:
        raise ValueError(f"kind must be one of {tuple(documented)}; got {kind!r}")
    return KINDS[kind][0]
