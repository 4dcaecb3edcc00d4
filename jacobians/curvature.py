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
Hessian. Those pairs have closed forms in their :class:`~jacobians.PairRule` (:mod:`jacobians.rules`;
:data:`HESSIAN_RULES` is a view of them), with their exact square roots and, for the
likelihoods, their exact Fisher; any other pair takes the chain rule from its activation's
and loss's pieces (:mod:`jacobians.rules.chain`).

This module is the public face of the second order: the rules live in
:mod:`jacobians.rules`, the head's Hessian, HVP and GGN in :mod:`jacobians.second_order`,
the Fisher and the row blocks in :mod:`jacobians.fisher`, the sampling in
:mod:`jacobians.sampling`.

Fisher kinds (:func:`fisher_operator`, :meth:`Head.fisher <jacobians.Head.fisher>`; every name
and its synonyms in :data:`jacobians.rules.vocabulary.KINDS`), each
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

# the functions of the former module, for code that reached them here
from .fisher import (  # noqa: F401
    blocks_for_rows,
    fisher_operator,
    reduction_factor,
    sample_targets,
    sqrt_ggn_sampled,
)
from .numerics.sampling import MC_BLOCK_ENTRIES, row_uniforms, uniforms_for_rows  # noqa: F401
from .numerics.sampling import PREDICTIVES as _DISTRIBUTIONS
from .rules import HESSIAN_RULES, RULES, HessianRule, register_hessian  # noqa: F401
from .rules.chain import gram, projection_form  # noqa: F401
from .rules.vocabulary import FISHER_KINDS, SECOND_ORDER_METHODS
from .second_order import ggn_operator, hessian_operator, hvp, sqrt_ggn  # noqa: F401

__all__ = [
    "HESSIAN_RULES",
    "HessianRule",
    "register_hessian",
    "get_hessian_rule",
    "SECOND_ORDER_METHODS",
    "FISHER_KINDS",
    "PREDICTIVES",
]

#: what ``Loss.predictive`` may name: the model's own distribution of targets given ``a``
#: (:data:`jacobians.sampling.PREDICTIVES`, whose entries also say how to draw from it)
PREDICTIVES = {name: entry.description for name, entry in _DISTRIBUTIONS.items()}


def get_hessian_rule(activation, loss) -> HessianRule | None:
    """The closed-form second order registered for ``(type(activation), type(loss))`` (a
    :class:`HessianRule` read from its :class:`~jacobians.PairRule`), or None."""
    return HESSIAN_RULES.get((type(activation), type(loss)))
