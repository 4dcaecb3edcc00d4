"""A head's factors and Fisher blocks on generic arrays: ``sqrt_ggn``, ``fisher`` of every
kind, ``sqrt_ggn_sampled``, and the per-row blocks the last layer sums (:func:`row_blocks`)."""

from __future__ import annotations

from . import heads
from .heads import _hessian, _inputs
from .inputs import namespace_of, unsupported

__all__ = ["head_blocks", "sqrt_ggn", "head_sqrt_ggn_sampled", "head_fisher", "row_blocks"]


def head_blocks(head, name, z, y, *args, sizes=None):
    """:func:`.heads.head_blocks` (Hessian, GGN) and the GGN's factor ``'sqrt_ggn'``."""
    if name == "sqrt_ggn":
        xp, z, y = _inputs(head, z, y)
        return sqrt_ggn(xp, head, z, y)
    return heads.head_blocks(head, name, z, y, *args, sizes=sizes)


def sqrt_ggn(xp, head, z, y):
    raise unsupported("Head.sqrt_ggn", xp)


def head_sqrt_ggn_sampled(head, z, mc_samples, seed, y=None):
    raise unsupported("Head.sqrt_ggn_sampled", namespace_of(z, targets=(y,)))


def head_fisher(head, z, y, kind, mc_samples, seed):
    raise unsupported("Head.fisher", namespace_of(z, targets=(y,)))


def row_blocks(head, meaning, z, y, *, key=0, mc_samples=1, row_ids=None):
    """The per-sample blocks of ``meaning`` (a :data:`~jacobians.rules.vocabulary.KINDS`
    meaning) for the rows of ``z`` (already checked: one namespace, z detached and float),
    for a head whose loss has reduction ``'sum'`` or ``'none'``; the generic twin of
    :func:`jacobians.fisher.blocks_for_rows`.

    Returns ``('blocks', B)`` with ``B`` of shape ``(n, K, K)`` (``'hessian'``, ``'ggn'``,
    ``'fisher'``) or ``('factor', S)`` with ``S`` of shape ``(n, K, C)`` and blocks
    ``S Sᵀ`` (``'fisher_mc'``: M columns drawn for the global rows ``row_ids`` from
    ``key``; ``'empirical_fisher'``: the rows' own gradients, C = 1).
    """
    xp = namespace_of(z, targets=(y,))
    K = z.shape[-1]
    if meaning == "hessian":
        return "blocks", xp.reshape(_hessian(xp, head, z, y, "fused"), (-1, K, K))
    if meaning == "ggn":
        return "blocks", xp.reshape(_hessian(xp, head, z, y, "fused", gauss_newton_only=True), (-1, K, K))
    raise unsupported(f"linear_curvature(kind={meaning!r})", xp)
